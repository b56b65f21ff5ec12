"""libllama's calibration capture bound with ctypes, and the model that feeds it.

:class:`CaptureModel` runs text through our llama.cpp build (f16 cache, flash attention) with
the capture as its eval callback; :class:`MomentCapture` reads the float64 moments back. Never
imports the app.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.gguf import GgufInfo
from engine.runtime import load_llama_cpp


class MomentCapture:
    """The libllama calibration capture (``llama_fraqtl_calib_*``), bound with ctypes."""

    def __init__(self, llama_cpp: Any, n_layer: int, n_head_kv: int, hd_k: int, hd_v: int) -> None:
        lib = llama_cpp.llama_cpp._lib
        if not hasattr(lib, "llama_fraqtl_calib_init"):
            from engine.errors import PatchedBuildMissingError

            raise PatchedBuildMissingError("llama_fraqtl_calib_init is missing")
        lib.llama_fraqtl_calib_init.restype = ctypes.c_void_p
        lib.llama_fraqtl_calib_init.argtypes = [ctypes.c_int32] * 4
        lib.llama_fraqtl_calib_free.restype = None
        lib.llama_fraqtl_calib_free.argtypes = [ctypes.c_void_p]
        lib.llama_fraqtl_calib_callback.restype = ctypes.c_void_p
        lib.llama_fraqtl_calib_callback.argtypes = []
        lib.llama_fraqtl_calib_tokens.restype = ctypes.c_int64
        lib.llama_fraqtl_calib_tokens.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char]
        lib.llama_fraqtl_calib_moments.restype = ctypes.c_bool
        lib.llama_fraqtl_calib_moments.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char,
                                                   ctypes.POINTER(ctypes.c_double)]
        lib.llama_fraqtl_calib_add_moments.restype = ctypes.c_bool
        lib.llama_fraqtl_calib_add_moments.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char,
                                                       ctypes.POINTER(ctypes.c_double), ctypes.c_int64]
        self._lib = lib
        self.n_layer, self.n_head_kv, self.hd = n_layer, n_head_kv, {"k": hd_k, "v": hd_v}
        self.handle = lib.llama_fraqtl_calib_init(n_layer, n_head_kv, hd_k, hd_v)
        if not self.handle:
            raise EngineError(f"libllama refused a calibration capture for {n_layer}×{n_head_kv} heads of {hd_k}/{hd_v}.")
        self.callback = ctypes.cast(lib.llama_fraqtl_calib_callback(), llama_cpp.ggml_backend_sched_eval_callback)

    def enable_queries(self, n_head: int) -> None:
        """Also fold the post-RoPE queries of every KV head's query heads (kind "q")."""
        self._lib.llama_fraqtl_calib_enable_q.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        self._lib.llama_fraqtl_calib_enable_q.restype = ctypes.c_bool
        if not self._lib.llama_fraqtl_calib_enable_q(self.handle, n_head):
            raise EngineError(f"libllama refused a query capture of {n_head} heads on {self.n_head_kv} KV heads.")
        self.hd["q"] = self.hd["k"]

    def tokens(self, layer: int, kind: str) -> int:
        return int(self._lib.llama_fraqtl_calib_tokens(self.handle, layer, kind.encode()))

    def moments(self, layer: int, kind: str) -> np.ndarray:
        hd = self.hd[kind]
        out = np.zeros((self.n_head_kv, hd, hd), dtype=np.float64)
        ok = self._lib.llama_fraqtl_calib_moments(self.handle, layer, kind.encode(),
                                                  out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        if not ok:
            raise EngineError(f"libllama could not return the {kind.upper()} moments of layer {layer}.")
        return out

    def all_moments(self, kind: str) -> np.ndarray:
        return np.stack([self.moments(il, kind) for il in range(self.n_layer)])

    def add_moments(self, layer: int, kind: str, moments: np.ndarray, n_tokens: int) -> None:
        data = np.ascontiguousarray(moments, dtype=np.float64)
        ok = self._lib.llama_fraqtl_calib_add_moments(self.handle, layer, kind.encode(),
                                                      data.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), n_tokens)
        if not ok:
            raise EngineError(f"libllama could not take the saved {kind.upper()} moments of layer {layer}.")

    def close(self) -> None:
        if self.handle:
            self._lib.llama_fraqtl_calib_free(self.handle)
            self.handle = None


def rope_params(info: GgufInfo, n_ctx: int) -> dict[str, Any]:
    """RoPE settings for ``n_ctx``: YaRN with freq_scale n_ctx_train/n_ctx above the trained context."""
    if info.n_ctx_train > 0 and n_ctx > info.n_ctx_train:
        return {"scaling": "yarn", "freq_scale": info.n_ctx_train / n_ctx, "orig_ctx": info.n_ctx_train}
    return {"scaling": "none"}


class CaptureModel:
    """The model with an f16-cache, flash-attention context whose eval callback is the capture."""

    def __init__(self, model_path: Path, info: GgufInfo, n_ctx: int, n_batch: int, n_threads: int) -> None:
        llama_cpp = load_llama_cpp()
        from llama_cpp import _logger

        _logger.set_verbose(bool(os.environ.get("FRAQTL_LLAMA_VERBOSE")))
        self.L = L = llama_cpp.llama_cpp
        self.capture = MomentCapture(llama_cpp, info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = int(os.environ.get("FRAQTL_CALIBRATE_GPU_LAYERS", "-1"))
        self.model = L.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            self.capture.close()
            raise EngineError(f"llama.cpp could not load {model_path}; check that it is a GGUF this build supports.")
        self.vocab = L.llama_model_get_vocab(self.model)
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.type_k = cparams.type_v = 1  # GGML_TYPE_F16: exact K/V, no attn-rot
        cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        rope = rope_params(info, n_ctx)
        if rope["scaling"] == "yarn":
            cparams.rope_scaling_type = L.LLAMA_ROPE_SCALING_TYPE_YARN
            cparams.rope_freq_scale = rope["freq_scale"]
            cparams.yarn_orig_ctx = rope["orig_ctx"]
        cparams.cb_eval = self.capture.callback
        cparams.cb_eval_user_data = ctypes.c_void_p(self.capture.handle)
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            self.close()
            raise EngineError(f"llama.cpp could not create a {n_ctx}-token context for calibration; lower --ctx.")
        self.memory = L.llama_get_memory(self.ctx)
        self.n_batch = n_batch

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (self.L.llama_token * cap)()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, cap, False, False)
        if n < 0:
            buf = (self.L.llama_token * -n)()
            n = self.L.llama_tokenize(self.vocab, data, len(data), buf, -n, False, False)
        return list(buf[:n])

    @property
    def bos(self) -> int | None:
        if self.L.llama_vocab_get_add_bos(self.vocab):
            tok = self.L.llama_vocab_bos(self.vocab)
            return int(tok) if tok >= 0 else None
        return None

    def clear(self) -> None:
        self.L.llama_memory_clear(self.memory, True)

    def decode(self, tokens: Sequence[int]) -> None:
        arr = (self.L.llama_token * len(tokens))(*tokens)
        rc = self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} during calibration; lower --ctx or --tokens.")

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.L.llama_model_free(self.model)
            self.model = None
        self.capture.close()

"""``fraqtl-calibrate``: D2 sidecars for any llama-family GGUF, from calibration text.

Runs the model over text through our llama.cpp build with an f16 cache and flash attention;
libllama's calibration capture (``llama_fraqtl_calib_*``) folds post-RoPE K and V of every
(layer, KV head) into float64 uncentered second moments, so no activation is ever kept.
Sequences are as long as the context (post-RoPE statistics depend on position); above the
trained context YaRN scales RoPE by ``n_ctx / n_ctx_train``. The moments are eigendecomposed
(eigenvalues decreasing) into the bases U of the K and V sidecars (format v1, see
:mod:`engine.sidecar`), written with a JSON manifest.

K rank rule (``--k-rank auto``): per (layer, head) the smallest R that is a multiple of 8,
at least 8 and at most head_dim, whose top-R eigenvalues hold at least ``--k-energy``
(default 0.80) of the head's energy (trace of its second moment). ``--k-rank N`` fixes R.

After every sequence the moments, the token count and the corpus position are saved in
``DIR/.fraqtl-calibrate-state.npz``; Ctrl-C (or a crash) loses at most the current
sequence, and the same command resumes. Sidecars are written through temp files and a
rename, so a half-written sidecar never sits in place. This module never imports the app.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import engine
from engine import locations, models
from engine.arms import LOCKED
from engine.corpus import builtin_texts
from engine.errors import EngineError
from engine.files import sha256_file, write_atomic, write_figure
from engine.gguf import GgufInfo, read_gguf
from engine.runtime import fraqtl_version, load_llama_cpp
from engine.sidecar import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MIN_RANK,
    SidecarFile,
    default_file_names,
    write_manifest,
    write_sidecar,
)

TOOL = "fraqtl-calibrate"
DEFAULT_TOKENS = 16384
DEFAULT_K_ENERGY = 0.80
DEFAULT_BATCH = 2048  # CPU flash attention runs ~2x faster with 2048-token ubatches than 512
STATE_NAME = ".fraqtl-calibrate-state.npz"
STATE_VERSION = 1
RANK_STEP = 8
SHARE_RANKS = (8, 16, 32)  # energy shares reported in the manifest at these ranks


class CalibrationInterrupted(EngineError):
    def __init__(self, tokens_done: int, tokens_total: int, state_path: Path) -> None:
        self.tokens_done, self.tokens_total, self.state_path = tokens_done, tokens_total, state_path
        if tokens_done:
            saved = f"the moments of those tokens are saved in {state_path}; run the same command again to resume."
        else:
            saved = "no sequence had finished, so nothing was saved; run the command again to start over."
        super().__init__(f"Calibration stopped after {tokens_done:,} of {tokens_total:,} tokens; {saved}")


class CorpusError(EngineError):
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"Cannot use {path} as calibration text ({reason}); pass a text, markdown or PDF file.")


class NonFiniteMomentsError(EngineError):
    def __init__(self, kind: str, layer: int, head: int, n_bad: int) -> None:
        self.kind, self.layer, self.head, self.n_bad = kind, layer, head, n_bad
        super().__init__(
            f"The captured {kind.upper()} moments are not finite ({n_bad:,} values, the first in layer {layer} "
            f"head {head}): the model's activations overflow, as a random-weight model's do (e.g. one from "
            "`fraqtl-bench shape-model`), so no basis can be computed. Calibrate a model with trained weights; "
            "for memory and speed runs on a shape model use the random control basis instead "
            "(`fraqtl-bench memory --basis random`)."
        )


# ------------------------------------------------------------------------------------ math


def check_moments(kind: str, moments: np.ndarray) -> None:
    """Raise NonFiniteMomentsError when any (layer, head) moment ``[L, H, d, d]`` is not finite."""
    finite = np.isfinite(moments).all(axis=(-2, -1))
    if not finite.all():
        layer, head = (int(i) for i in np.argwhere(~finite)[0])
        raise NonFiniteMomentsError(kind, layer, head, int((~np.isfinite(moments)).sum()))


def eigenbasis(moment: np.ndarray, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing, >= 0) and orthonormal U[d][c] of a second moment ``[..., d, d]``.

    ``moment`` is the sum of x xᵀ over ``n_tokens`` rows; eigenvalues are per token. Each
    column's sign is fixed so that its largest-magnitude entry is positive (deterministic files).
    """
    m = np.asarray(moment, dtype=np.float64) / max(n_tokens, 1)
    m = 0.5 * (m + np.swapaxes(m, -1, -2))
    w, u = np.linalg.eigh(m)
    w, u = w[..., ::-1], u[..., ::-1]
    idx = np.argmax(np.abs(u), axis=-2)[..., None, :]
    signs = np.sign(np.take_along_axis(u, idx, axis=-2))
    signs[signs == 0] = 1.0
    return np.clip(w, 0.0, None), np.ascontiguousarray(u * signs)


def energy_share(eigenvalues: np.ndarray, rank: int | np.ndarray) -> np.ndarray:
    """Share of the energy in the top ``rank`` directions, per row of ``eigenvalues [..., d]``."""
    w = np.asarray(eigenvalues, dtype=np.float64)
    cum = np.cumsum(w, axis=-1)
    total = cum[..., -1]
    r = np.broadcast_to(np.asarray(rank), total.shape)
    top = np.take_along_axis(cum, (r - 1)[..., None].astype(np.int64), axis=-1)[..., 0]
    return np.where(total > 0, top / np.where(total > 0, total, 1.0), 1.0)


def energy_rank(eigenvalues: np.ndarray, target: float, step: int = RANK_STEP, minimum: int = MIN_RANK) -> int:
    """Smallest R (a multiple of ``step``, >= ``minimum``, <= d) with top-R energy share >= target."""
    w = np.asarray(eigenvalues, dtype=np.float64)
    d = w.shape[-1]
    total = w.sum()
    if total <= 0:
        return min(minimum, d)
    cum = np.cumsum(w) / total
    for r in range(minimum, d + 1, step):
        if cum[r - 1] >= target - 1e-12:
            return r
    return d


def choose_ranks(eigenvalues: np.ndarray, k_rank: int | str, target: float = DEFAULT_K_ENERGY) -> np.ndarray:
    """int32 ranks [layers, heads]: fixed ``k_rank`` or the energy rule when it is 'auto'."""
    lead = eigenvalues.shape[:-1]
    if k_rank != "auto":
        return np.full(lead, int(k_rank), dtype=np.int32)
    flat = eigenvalues.reshape(-1, eigenvalues.shape[-1])
    return np.array([energy_rank(w, target) for w in flat], dtype=np.int32).reshape(lead)


# ------------------------------------------------------------------------------------ corpus


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    path: Path
    sha256: str
    n_bytes: int
    source: str
    licence: str


def read_text(path: Path) -> str:
    """The text of a .txt/.md (UTF-8) or .pdf file."""
    if not path.is_file():
        raise CorpusError(str(path), "no such file")
    if path.suffix.lower() == ".pdf":
        try:
            from pypdf import PdfReader

            reader = PdfReader(str(path))
            text = "\n\n".join((page.extract_text() or "") for page in reader.pages)
        except Exception as exc:  # pypdf raises many types on damaged files
            raise CorpusError(str(path), f"the PDF cannot be read: {exc}") from exc
        if not text.strip():
            raise CorpusError(str(path), f"its {len(reader.pages)} pages have no text layer (a scan?)")
        return text
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorpusError(str(path), str(exc)) from exc


def corpus_files(paths: Sequence[str | Path] | None) -> list[CorpusFile]:
    """The user's files, or the built-in corpus when ``paths`` is empty, with their digests."""
    if paths:
        items = [(Path(p).expanduser(), "user file", "user's") for p in paths]
    else:
        items = [(t.path, t.source, t.licence) for t in builtin_texts()]
    files = []
    for path, source, licence in items:
        if not path.is_file():
            raise CorpusError(str(path), "no such file")
        data = path.read_bytes()
        files.append(CorpusFile(path, hashlib.sha256(data).hexdigest(), len(data), source, licence))
    return files


def corpus_digest(files: Sequence[CorpusFile]) -> str:
    """sha256 over the ordered file digests: the same texts in the same order give the same digest."""
    return hashlib.sha256("\n".join(f.sha256 for f in files).encode()).hexdigest()


def _text_chunks(text: str, size: int = 1 << 17) -> Iterator[str]:
    """Pieces of about ``size`` characters cut at paragraph breaks (tokenizing lazily)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n\n", start + size // 2, end)
            end = cut + 2 if cut > 0 else end
        yield text[start:end]
        start = end


# ------------------------------------------------------------------------------------ capture


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


# ------------------------------------------------------------------------------------ run


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    model_path: Path
    out_dir: Path
    corpus: tuple[Path, ...] = ()  # empty: the built-in corpus
    tokens: int = DEFAULT_TOKENS
    ctx: int | None = None  # None: min(n_ctx_train, tokens)
    k_rank: int | str = "auto"
    k_energy: float = DEFAULT_K_ENERGY
    v_protect: int | None = None  # None: the locked recipe's V rank at this head_dim
    n_batch: int = DEFAULT_BATCH
    n_threads: int | None = None
    stem: str | None = None  # file name stem; None: from the model file name


@dataclasses.dataclass(frozen=True)
class CalibrationProgress:
    tokens_done: int
    tokens_total: int
    sequence: int  # 1-based sequence being evaluated
    n_sequences: int
    tok_s: float
    eta_s: float
    resumed_tokens: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationResult:
    k_path: Path
    v_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    k: SidecarFile
    v: SidecarFile
    k_eigenvalues: np.ndarray  # [layers, heads, d] per token, decreasing
    v_eigenvalues: np.ndarray
    tokens: int
    seconds: float  # evaluation time of this run (excluding resumed work)
    resumed_tokens: int


def default_ctx(info: GgufInfo, tokens: int) -> int:
    trained = info.n_ctx_train or 4096
    return max(64, min(trained, tokens))


def model_stem(path: Path) -> str:
    return path.stem.lower().replace(".", "-")


def _plan_sequences(model: CaptureModel, files: Sequence[CorpusFile], budget: int, ctx: int) -> list[list[int]]:
    """Token sequences of ``ctx`` tokens (BOS first where the model wants one) up to ``budget`` tokens."""
    bos = model.bos
    body = ctx - (1 if bos is not None else 0)
    sep = model.tokenize("\n\n")
    stream: list[int] = []
    need = budget  # tokens beyond BOS we want in total (upper bound)
    for i, f in enumerate(files):
        if len(stream) >= need:
            break
        if i:
            stream.extend(sep)
        for chunk in _text_chunks(read_text(f.path)):
            stream.extend(model.tokenize(chunk))
            if len(stream) >= need:
                break
    sequences = []
    pos = 0
    total = 0
    while pos < len(stream) and total < budget:
        room = min(body, budget - total - (1 if bos is not None else 0))
        if room <= 0:
            break
        seq = ([bos] if bos is not None else []) + stream[pos : pos + room]
        if len(seq) < min(64, ctx):  # too short to say anything about positions; stop
            break
        sequences.append(seq)
        pos += room
        total += len(seq)
    return sequences


def _fingerprint(model_sha: str, digest: str, tokens: int, ctx: int, rope: dict[str, Any]) -> str:
    # what fixes the token sequences and their statistics; --batch/--threads may change on resume
    return json.dumps({"v": STATE_VERSION, "model": model_sha, "corpus": digest, "tokens": tokens, "ctx": ctx,
                       "rope": rope}, sort_keys=True)


def _save_state(path: Path, fingerprint: str, seq_done: int, tokens_done: int, capture: MomentCapture) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, fingerprint=np.array(fingerprint), seq_done=np.int64(seq_done), tokens_done=np.int64(tokens_done),
             mk=capture.all_moments("k"), mv=capture.all_moments("v"),
             nk=np.array([capture.tokens(i, "k") for i in range(capture.n_layer)], dtype=np.int64),
             nv=np.array([capture.tokens(i, "v") for i in range(capture.n_layer)], dtype=np.int64))
    write_atomic(path, buf.getvalue())


def _load_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            return {k: z[k] for k in ("seq_done", "tokens_done", "mk", "mv", "nk", "nv")}
    except (OSError, ValueError, KeyError):
        return None  # a damaged state file: start over


def _check_counts(capture: MomentCapture, expected: int) -> None:
    for il in range(capture.n_layer):
        for kind in ("k", "v"):
            found = capture.tokens(il, kind)
            if found != expected:
                hint = (" (the graph has no post-RoPE 'Kcur-N'/'Vcur-N' tensors this capture understands)"
                        if found == 0 else "")
                raise EngineError(
                    f"Calibration captured {found:,} {kind.upper()} rows in layer {il} but fed {expected:,} tokens"
                    f"{hint}; this model cannot be calibrated with this build."
                )


def calibrate(
    config: CalibrationConfig,
    on_progress: Callable[[CalibrationProgress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CalibrationResult:
    """Run a calibration (resuming a saved state with the same inputs) and write the sidecars."""
    model_path = Path(config.model_path)
    info = read_gguf(model_path)
    if info.n_layer <= 0 or info.n_head_kv <= 0:
        raise EngineError(f"{model_path} has no attention layers the capture understands (arch {info.arch}).")
    if config.k_rank != "auto":
        k = int(config.k_rank)
        if not MIN_RANK <= k <= info.head_dim_k or k % RANK_STEP:
            raise EngineError(f"--k-rank {k} must be a multiple of 8 between 8 and head_dim {info.head_dim_k}.")
    if not 0.0 < config.k_energy <= 1.0:
        raise EngineError(f"--k-energy {config.k_energy} must lie in (0, 1].")
    v_protect = config.v_protect if config.v_protect is not None else LOCKED.protected(info.head_dim_v, "v")
    if not MIN_RANK <= v_protect <= info.head_dim_v:
        raise EngineError(f"--v-protect {v_protect} must lie between 8 and head_dim {info.head_dim_v}.")
    if config.tokens < 64:
        raise EngineError(f"--tokens {config.tokens} is too few; give at least 64.")
    ctx = config.ctx or default_ctx(info, config.tokens)
    if ctx < 64:
        raise EngineError(f"--ctx {ctx} is too short; give at least 64.")
    n_batch = max(32, min(config.n_batch, ctx))
    files = corpus_files(config.corpus)
    digest = corpus_digest(files)
    model_sha = models.model_sha256(model_path)
    rope = rope_params(info, ctx)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_NAME
    fingerprint = _fingerprint(model_sha, digest, config.tokens, ctx, rope)
    n_threads = config.n_threads or max(os.cpu_count() or 1, 1)

    model = CaptureModel(model_path, info, ctx, n_batch, n_threads)
    try:
        sequences = _plan_sequences(model, files, config.tokens, ctx)
        if not sequences:
            raise CorpusError(", ".join(str(f.path) for f in files), "it has fewer than 64 tokens")
        total = sum(len(s) for s in sequences)
        state = _load_state(state_path, fingerprint)
        seq_done, tokens_done = 0, 0
        if state is not None:
            seq_done, tokens_done = int(state["seq_done"]), int(state["tokens_done"])
            for il in range(info.n_layer):
                model.capture.add_moments(il, "k", state["mk"][il], int(state["nk"][il]))
                model.capture.add_moments(il, "v", state["mv"][il], int(state["nv"][il]))
            _check_counts(model.capture, tokens_done)
        resumed = tokens_done
        t0 = time.perf_counter()
        fed = 0
        stop_reason: BaseException | None = None
        for i in range(seq_done, len(sequences)):
            seq = sequences[i]
            model.clear()
            try:
                for start in range(0, len(seq), n_batch):
                    if should_stop():
                        raise KeyboardInterrupt
                    batch = seq[start : start + n_batch]
                    model.decode(batch)
                    fed += len(batch)
                    rate = fed / max(time.perf_counter() - t0, 1e-9)
                    done = tokens_done + start + len(batch)
                    on_progress(CalibrationProgress(done, total, i + 1, len(sequences), rate,
                                                    (total - done) / max(rate, 1e-9), resumed))
            except KeyboardInterrupt as exc:
                stop_reason = exc
                break
            tokens_done += len(seq)
            _check_counts(model.capture, tokens_done)
            _save_state(state_path, fingerprint, i + 1, tokens_done, model.capture)
        if stop_reason is not None:
            raise CalibrationInterrupted(tokens_done, total, state_path)
        seconds = time.perf_counter() - t0
        mk, mv = model.capture.all_moments("k"), model.capture.all_moments("v")
        libllama = fraqtl_version()
    finally:
        model.close()

    check_moments("k", mk)
    check_moments("v", mv)
    wk, uk = eigenbasis(mk, tokens_done)
    wv, uv = eigenbasis(mv, tokens_done)
    with np.errstate(over="ignore"):  # moments that overflow in fp16 after the eigensolver
        check_moments("k", uk.astype(np.float16))
        check_moments("v", uv.astype(np.float16))
    ranks = choose_ranks(wk, config.k_rank, config.k_energy)
    k_side = SidecarFile("k", uk.astype(np.float32), ranks=ranks)
    v_side = SidecarFile("v", uv.astype(np.float32), protect=v_protect)
    stem = config.stem or model_stem(model_path)
    k_name, v_name = default_file_names(stem)
    k_path = write_sidecar(k_side, out_dir / k_name)
    v_path = write_sidecar(v_side, out_dir / v_name)
    manifest = build_manifest(
        info=info, model_path=model_path, model_sha=model_sha, k_path=k_path, v_path=v_path, files=files,
        digest=digest, tokens=tokens_done, n_sequences=len(sequences), ctx=ctx, n_batch=n_batch, rope=rope,
        k_rank=config.k_rank, k_energy=config.k_energy, v_protect=v_protect, ranks=ranks, wk=wk, wv=wv,
        seconds=seconds, tok_s=(tokens_done - resumed) / max(seconds, 1e-9), n_threads=n_threads,
        resumed=resumed, libllama=libllama,
    )
    manifest_path = write_manifest(out_dir / MANIFEST_NAME, manifest)
    state_path.unlink(missing_ok=True)
    return CalibrationResult(k_path, v_path, manifest_path, manifest, k_side, v_side, wk, wv, tokens_done,
                             seconds, resumed)


def _r(x: np.ndarray, digits: int = 5) -> list[Any]:
    return np.round(np.asarray(x, dtype=np.float64), digits).tolist()


def build_manifest(*, info: GgufInfo, model_path: Path, model_sha: str, k_path: Path, v_path: Path,
                   files: Sequence[CorpusFile], digest: str, tokens: int, n_sequences: int, ctx: int, n_batch: int,
                   rope: dict[str, Any], k_rank: int | str, k_energy: float, v_protect: int, ranks: np.ndarray,
                   wk: np.ndarray, wv: np.ndarray, seconds: float, tok_s: float, n_threads: int, resumed: int,
                   libllama: str) -> dict[str, Any]:
    def spectrum(w: np.ndarray, r: np.ndarray | int) -> dict[str, Any]:
        return {
            "energy_top_r": _r(energy_share(w, r)),  # [layer][head]
            "energy_top_r_per_layer": _r(energy_share(w, r).mean(axis=1)),
            **{f"energy_top_{n}_per_layer": _r(energy_share(w, min(n, w.shape[-1])).mean(axis=1))
               for n in SHARE_RANKS},
            "trace_per_token": _r(w.sum(axis=-1), 4),  # [layer][head]
            "top_eigenvalue": _r(w[..., 0], 4),
        }

    return {
        "format": MANIFEST_FORMAT,
        "tool": TOOL,
        "tool_version": engine.__version__,
        "libllama": libllama,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "model": {
            "file": model_path.name, "sha256": model_sha, "arch": info.arch, "name": info.name,
            "n_layer": info.n_layer, "n_head_kv": info.n_head_kv, "head_dim_k": info.head_dim_k,
            "head_dim_v": info.head_dim_v, "n_ctx_train": info.n_ctx_train,
        },
        "files": {"k": k_path.name, "v": v_path.name, "k_sha256": sha256_file(k_path), "v_sha256": sha256_file(v_path)},
        "recipe": {
            "k_rank": k_rank if k_rank == "auto" else int(k_rank),
            "k_rank_rule": (f"smallest multiple of {RANK_STEP} >= {MIN_RANK} with top-R energy share >= {k_energy}"
                            if k_rank == "auto" else "fixed"),
            "k_energy_target": k_energy if k_rank == "auto" else None,
            "k_ranks": ranks.astype(int).tolist(),
            "k_rank_mean": round(float(ranks.mean()), 3),
            "v_protect": v_protect,
        },
        "calibration": {
            "corpus": [{"file": f.path.name, "sha256": f.sha256, "bytes": f.n_bytes, "source": f.source,
                        "licence": f.licence} for f in files],
            "corpus_digest": digest,
            "tokens": tokens,
            "sequences": n_sequences,
            "ctx": ctx,
            "n_batch": n_batch,
            "rope": rope,
            "cache": "f16",
            "flash_attn": True,
            "accumulation": "float64 uncentered second moments, post-RoPE K, V as is",
            "seconds": round(seconds, 2),
            "tok_s": round(tok_s, 1),
            "threads": n_threads,
            "resumed_tokens": resumed,
        },
        "spectra": {"k": spectrum(wk, ranks), "v": spectrum(wv, v_protect)},
    }


# ------------------------------------------------------------------------------------ report


def write_report(result: CalibrationResult, out_dir: Path, title: str = "Calibration") -> list[Path]:
    """A receipt: JSON (manifest + full spectra), markdown and a PNG of per-layer top-R energy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    m = result.manifest
    ranks = result.k.ranks
    assert ranks is not None
    ek = energy_share(result.k_eigenvalues, ranks)  # [layer, head]
    ev = energy_share(result.v_eigenvalues, result.v.protect)
    data = {
        "title": title,
        "manifest": m,
        "eigenvalues_normalised": {  # per head, divided by the head's trace
            kind: _r(w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-30), 6)
            for kind, w in (("k", result.k_eigenvalues), ("v", result.v_eigenvalues))
        },
    }
    json_path = out_dir / "calibration.json"
    write_atomic(json_path, json.dumps(data, indent=1) + "\n", mode=0o644)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    layers = np.arange(ek.shape[0])
    d = result.k_eigenvalues.shape[-1]
    rk_locked = LOCKED.protected(d, "k")
    ek_locked = energy_share(result.k_eigenvalues, rk_locked)
    for share, label, style in (
        (ek, f"K, auto ranks (mean {ranks.mean():.1f})", "-o"),
        (ek_locked, f"K, R={rk_locked} (locked recipe)", "-^"),
        (ev, f"V, R={result.v.protect} (protect)", "--s"),
    ):
        line, = axes[0].plot(layers, share.mean(axis=1), style, ms=3, label=label)
        axes[0].fill_between(layers, share.min(axis=1), share.max(axis=1), color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("energy share in top R directions")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("Top-R energy per layer (mean over KV heads, band: min..max)")
    for kind, w, style in (("K", result.k_eigenvalues, "-"), ("V", result.v_eigenvalues, "--")):
        share = np.cumsum(w, axis=-1) / np.maximum(w.sum(axis=-1, keepdims=True), 1e-30)
        axes[1].plot(np.arange(1, d + 1), share.reshape(-1, d).mean(axis=0), style, label=f"{kind} (mean over layers, heads)")
        axes[1].fill_between(np.arange(1, d + 1), share.reshape(-1, d).min(axis=0), share.reshape(-1, d).max(axis=0),
                             alpha=0.15)
    axes[1].set_xlabel("R (directions kept)")
    axes[1].set_ylabel("cumulative energy share")
    axes[1].set_title("Cumulative spectrum (band: min..max)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{title}: {m['calibration']['tokens']:,} tokens at ctx {m['calibration']['ctx']}")
    fig.tight_layout()
    png_path = out_dir / "energy.png"
    write_figure(png_path, fig, dpi=110)
    plt.close(fig)

    cal = m["calibration"]
    lines = [
        f"# {title}",
        "",
        f"- model: `{m['model']['file']}` (sha256 `{m['model']['sha256'][:16]}…`, {m['model']['arch']}, "
        f"{m['model']['n_layer']} layers × {m['model']['n_head_kv']} KV heads × head_dim {m['model']['head_dim_k']})",
        f"- corpus: {', '.join(c['file'] for c in cal['corpus'])} (digest `{cal['corpus_digest'][:16]}…`)",
        f"- tokens: {cal['tokens']:,} in {cal['sequences']} sequences of up to {cal['ctx']} tokens; "
        f"f16 cache, flash attention, RoPE {cal['rope']['scaling']}",
        f"- evaluation time: {cal['seconds']:.1f} s ({cal['tok_s']:.0f} tok/s, {cal['threads']} threads)",
        f"- K rank rule: {m['recipe']['k_rank_rule']}; mean K rank {m['recipe']['k_rank_mean']}; V protect {m['recipe']['v_protect']}",
        f"- reproduce: `{m.get('command', 'fraqtl-calibrate')}`",
        "",
        "Energy share in the top R directions (mean over KV heads; min over heads in brackets):",
        "",
        f"| layer | K ranks | K top-R | V top-R (R={result.v.protect}) | K top-{rk_locked} (locked) | V top-8 |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    v8 = energy_share(result.v_eigenvalues, min(8, result.v_eigenvalues.shape[-1]))
    for il in range(ek.shape[0]):
        lines.append(
            f"| {il} | {'/'.join(str(int(r)) for r in ranks[il])} | {ek[il].mean():.3f} ({ek[il].min():.3f}) | "
            f"{ev[il].mean():.3f} ({ev[il].min():.3f}) | {ek_locked[il].mean():.3f} | {v8[il].mean():.3f} |"
        )
    lines += ["", f"All layers: K top-R {ek.mean():.3f} (auto ranks), K top-{rk_locked} {ek_locked.mean():.3f}, "
              f"V top-{result.v.protect} {ev.mean():.3f}.", "",
              "K rank rule at other energy targets (ranks over all layers and heads):", "",
              "| target | mean rank | min | max |", "|---:|---:|---:|---:|"]
    for target in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        r = choose_ranks(result.k_eigenvalues, "auto", target)
        lines.append(f"| {target:.2f} | {r.mean():.1f} | {r.min()} | {r.max()} |")
    lines += ["", "![energy](energy.png)", ""]
    md_path = out_dir / "README.md"
    write_atomic(md_path, "\n".join(lines), mode=0o644)
    return [json_path, md_path, png_path]


# ------------------------------------------------------------------------------------ CLI


def _parse_rank(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'auto' or a number") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=TOOL,
        description="Calibrate D2 sidecars (K and V eigenbases, format v1) for a llama-family GGUF.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file or registry key (default: the bundled SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--corpus", action="append", default=[], metavar="FILE",
                   help="calibration text (.txt, .md, .pdf); repeat for more; default: the built-in corpus")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help=f"token budget (default {DEFAULT_TOKENS})")
    p.add_argument("--ctx", type=int, default=None,
                   help="sequence length (default: min(trained context, --tokens)); above the trained context YaRN is used")
    p.add_argument("--k-rank", type=_parse_rank, default="auto",
                   help="K protected rank per head: 'auto' (energy rule, see --k-energy) or a multiple of 8")
    p.add_argument("--k-energy", type=float, default=DEFAULT_K_ENERGY,
                   help=f"energy share the auto K rank must reach (default {DEFAULT_K_ENERGY})")
    p.add_argument("--v-protect", type=int, default=None,
                   help="V protected rank written in the V header (default: the locked recipe at this head_dim)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"tokens per ubatch (default {DEFAULT_BATCH})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output folder (default: <data dir>/sidecars/<model>, where the engine looks)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="also write a receipt (calibration.json, README.md, energy.png) in DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    try:
        model_path = models.resolve(args.model)
        out_dir = args.output or (locations.data_dir() / "sidecars" / model_stem(model_path))
        config = CalibrationConfig(
            model_path=model_path, out_dir=out_dir, corpus=tuple(Path(c) for c in args.corpus), tokens=args.tokens,
            ctx=args.ctx, k_rank=args.k_rank, k_energy=args.k_energy, v_protect=args.v_protect, n_batch=args.batch,
            n_threads=args.threads,
        )
        progress = Progress(
            TextColumn("[bold]calibrating[/] seq {task.fields[seq]}"), BarColumn(),
            TextColumn("{task.fields[count]} tokens"), TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(), console=console, disable=args.quiet,
        )
        task = progress.add_task("calibrate", total=None, seq="-", count="-", rate="-", eta="-")

        def on_progress(p: CalibrationProgress) -> None:
            eta = "-" if not math.isfinite(p.eta_s) else time.strftime("%M:%S", time.gmtime(p.eta_s))
            progress.update(task, completed=p.tokens_done, total=p.tokens_total, seq=f"{p.sequence}/{p.n_sequences}",
                            count=f"{p.tokens_done:,}/{p.tokens_total:,}", rate=f"{p.tok_s:,.0f}", eta=eta)

        with progress:
            result = calibrate(config, on_progress)
        command = "fraqtl-calibrate " + " ".join(argv if argv is not None else sys.argv[1:])
        result.manifest["command"] = command
        write_manifest(result.manifest_path, result.manifest)
        if args.report:
            write_report(result, args.report, f"Calibration of {model_path.name}")
    except CalibrationInterrupted as exc:
        console.print(f"[yellow]{exc}[/]")
        return 130
    except KeyboardInterrupt:
        console.print("[yellow]Calibration stopped; run the same command again to resume from the last finished sequence.[/]")
        return 130
    except EngineError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    ek = energy_share(result.k_eigenvalues, result.k.ranks).mean()  # type: ignore[arg-type]
    ev = energy_share(result.v_eigenvalues, result.v.protect).mean()
    resumed = f", {result.resumed_tokens:,} resumed" if result.resumed_tokens else ""
    console.print(
        f"wrote {result.k_path}, {result.v_path} and {result.manifest_path.name} from {result.tokens:,} tokens"
        f"{resumed} in {result.seconds:.1f} s; energy in the top R: K {ek:.3f} (mean rank "
        f"{result.manifest['recipe']['k_rank_mean']}), V {ev:.3f} (R={result.v.protect})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The runtime: one model with one arm's KV cache, turning prompts into events.

A :class:`Runtime` loads a GGUF through our patched llama-cpp-python, keeps the tokens it
has evaluated, and on each call evaluates only what differs from the cached prefix (a
follow-up question after a long document evaluates just the question). Generation is
greedy and yields :mod:`engine.events`; a ``should_stop`` callable is checked between
batches and between tokens. This module never imports the app; it is the one code path
the app, the benchmarks and the tests all drive.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine import d2 as d2_module
from engine import rpc
from engine.arms import ArmConfig
from engine.d2 import D2Settings, KvMemory
from engine.errors import (
    ArmUnavailableError,
    ContextMemoryError,
    ContextOverflowError,
    EngineError,
    PatchedBuildMissingError,
    SidecarFormatError,
    SidecarMismatchError,
)
from engine.events import AnswerDone, Event, PrefillProgress, Token
from engine.estimates import context_bytes
from engine.gguf import GgufInfo, read_gguf
from engine.memory_check import check_context_memory
from engine.sampling import GREEDY, Sampling, TokenSampler

Message = dict[str, str]


def load_llama_cpp() -> Any:
    """Import llama_cpp and check that it is our patched build."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise PatchedBuildMissingError(f"cannot import llama_cpp: {exc}") from exc
    version = getattr(llama_cpp.llama_cpp, "llama_fraqtl_version", None)
    if version is None:
        raise PatchedBuildMissingError("llama_fraqtl_version is missing")
    return llama_cpp


def fraqtl_version() -> str:
    return load_llama_cpp().llama_cpp.llama_fraqtl_version().decode()


class Runtime:
    """A loaded model with one arm, reusing its KV cache across calls."""

    def __init__(
        self,
        model_path: str | Path,
        arm: ArmConfig | str = "f16",
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_gpu_layers: int = -1,
        yarn: bool = False,
        logits_all: bool = False,
        n_threads: int | None = None,
        d2: D2Settings | None = None,
        rpc_servers: Sequence[str] = (),
        split_mode: str = "layer",
        tensor_split: Sequence[float] | None = None,
    ) -> None:
        self.llama_cpp = load_llama_cpp()
        self.arm = ArmConfig.parse(arm) if isinstance(arm, str) else arm
        self.info: GgufInfo = read_gguf(model_path)
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.logits_all = logits_all
        self.n_evaluated_total = 0
        kwargs: dict[str, Any] = self._placement(rpc_servers, split_mode, tensor_split)
        if yarn and n_ctx > self.info.n_ctx_train > 0:
            # the same scaling calibration uses above the trained context
            kwargs.update(
                rope_scaling_type=self.llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
                rope_freq_scale=self.info.n_ctx_train / n_ctx,
                yarn_orig_ctx=self.info.n_ctx_train,
            )
        self.d2_settings: D2Settings | None = None
        self.memory_arm = self.arm
        self._d2_c: ctypes.Structure | None = None  # kept alive while llama.cpp may read it
        if self.arm.is_d2:
            self.d2_settings = d2 if d2 is not None else d2_module.settings_for(self.info, self.arm)
            self._check_sidecars()
            self._d2_c = self.d2_settings.c_params(self.info)
            # what the context allocates: kauto's K per layer from this context's own K sidecar
            k_file = self.d2_settings.k_sidecar if self.d2_settings.basis == "sidecar" else None
            self.memory_arm = dataclasses.replace(
                self.arm, recipe=d2_module.resolve_k_layers(self.d2_settings.recipe, self.info, k_file))
            kwargs["fraqtl_params"] = ctypes.cast(ctypes.pointer(self._d2_c), ctypes.c_void_p)
        else:
            kwargs.update(type_k=self.arm.ggml_type, type_v=self.arm.ggml_type)
        self._check_memory(n_gpu_layers)
        try:
            self.llm = self.llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_gpu_layers=0 if self.arm.on_cpu else n_gpu_layers,
                # an @cpu arm is a CPU reference: llama.cpp would otherwise run a prompt's large
                # batches on a GPU it finds (op offload), and the reference would be the GPU's
                op_offload=not self.arm.on_cpu,
                flash_attn=True,
                logits_all=logits_all,
                n_threads=n_threads or max(os.cpu_count() or 1, 1),
                verbose=bool(os.environ.get("FRAQTL_LLAMA_VERBOSE")),
                **kwargs,
            )
        except TypeError as exc:
            raise PatchedBuildMissingError(f"llama_cpp does not take the fraqtl parameters: {exc}") from exc
        except ValueError as exc:
            detail = self._last_fraqtl_error()
            if not detail and "llama_context" in str(exc):  # llama.cpp logs why; most often memory ran out
                raise ContextMemoryError(self.arm.label, n_ctx, context_bytes(self.info, self.memory_arm, n_ctx, n_batch),
                                         None, str(exc)) from exc
            raise ArmUnavailableError(self.arm.label, detail or str(exc)) from exc
        self._vocab = self.llama_cpp.llama_model_get_vocab(self.llm.model)

    def _placement(self, rpc_servers: Sequence[str], split_mode: str,
                   tensor_split: Sequence[float] | None) -> dict[str, Any]:
        """Where the layers go: llama.cpp's split over local GPUs and RPC servers (checked first)."""
        modes = {"none": self.llama_cpp.LLAMA_SPLIT_MODE_NONE, "layer": self.llama_cpp.LLAMA_SPLIT_MODE_LAYER}
        if split_mode not in modes:
            raise EngineError(f"The split mode '{split_mode}' is not one of {', '.join(modes)}; "
                              "layer spreads the layers over the GPUs, none keeps them on one.")
        self.rpc_servers = rpc.parse_endpoints(rpc_servers)
        self.rpc_devices: list[rpc.RpcServer] = []
        if self.rpc_servers:
            if self.arm.on_cpu:
                raise ArmUnavailableError(self.arm.label, "an @cpu arm keeps every layer on this machine; "
                                                          "remove the RPC servers or the @cpu")
            self.rpc_devices = rpc.register(self.llama_cpp, self.rpc_servers, need_d2=self.arm.is_d2)
        elif rpc.registered():
            # ggml cannot forget a server: llama.cpp would quietly keep putting layers there
            raise EngineError(f"This process already sent layers to the RPC servers {', '.join(rpc.registered())}; "
                              "a runtime without them needs a process of its own (the engine worker).")
        kwargs: dict[str, Any] = {"split_mode": modes[split_mode]}
        if tensor_split:
            if any(x < 0 for x in tensor_split) or sum(tensor_split) <= 0:
                raise EngineError(f"The tensor split {list(tensor_split)} must be shares of zero or more with a "
                                  "positive sum, one per device (e.g. 1,1 for two equal GPUs).")
            kwargs["tensor_split"] = list(tensor_split)
        return kwargs

    def _check_memory(self, n_gpu_layers: int) -> None:
        """Refuse a context that cannot fit where its cache will live before llama.cpp tries.

        In host memory, a context larger than the memory available would make llama.cpp fail
        after seconds of work, or be killed by the system's out-of-memory killer on hosts that
        overcommit; in VRAM, fail after loading the weights. See :mod:`engine.memory_check`;
        FRAQTL_NO_MEMORY_CHECK=1 skips it (llama.cpp's own failure is then reported the same way).
        """
        if self.rpc_servers:
            return  # the servers hold the layers they take and refuse what does not fit
        # llama_supports_gpu_offload() is true on every build with the RPC backend: ask for a local GPU
        check_context_memory(self.info, self.memory_arm, self.n_ctx, self.n_batch,
                             gpu_build=rpc.has_local_gpu(self.llama_cpp),
                             n_gpu_layers=0 if self.arm.on_cpu else n_gpu_layers)

    def _check_sidecars(self) -> None:
        """Validate the D2 sidecar files before llama.cpp reads them; a bad one makes the arm unavailable.

        The ArmUnavailableError's cause is the named sidecar error (a non-orthonormal basis, which
        would corrupt attention silently, is SidecarNotOrthonormalError naming layer and head).
        """
        assert self.d2_settings is not None
        try:
            self.d2_settings.check_files(self.info)
        except SidecarMismatchError as exc:
            raise ArmUnavailableError(self.arm.label, (
                f"sidecar {exc.path} has the wrong dims for this model ({exc.field} is {exc.found}, the model has "
                f"{exc.expected}); use the sidecar calibrated for this model")) from exc
        except SidecarFormatError as exc:
            raise ArmUnavailableError(self.arm.label, str(exc)) from exc

    # ------------------------------------------------------------------ tokens

    def _last_fraqtl_error(self) -> str:
        return d2_module.last_error(self.llama_cpp)

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render messages with the model's chat template (plain text for base models)."""
        template = self.info.chat_template
        if not template:
            parts = [m["content"] for m in messages]
            return "\n\n".join(parts) + ("\n\nAnswer:" if add_generation_prompt else "")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos = self.detokenize([self.llm.token_eos()]) if self.llm.token_eos() >= 0 else ""
        bos = self.detokenize([self.llm.token_bos()]) if self.llm.token_bos() >= 0 else ""
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                        add_generation_prompt=add_generation_prompt)
        return formatter(messages=list(messages)).prompt

    def chat_tokens(self, messages: Sequence[Message]) -> list[int]:
        return self.tokenize(self.chat_prompt(messages), add_bos=False, special=True)

    # ------------------------------------------------------------------ evaluation

    @property
    def n_cached(self) -> int:
        return int(self.llm.n_tokens)

    def _reuse_prefix(self, tokens: Sequence[int]) -> int:
        cached = self.llm.input_ids[: self.llm.n_tokens]
        n = min(len(cached), len(tokens))
        if n == 0:
            return 0
        same = np.asarray(cached[:n]) == np.asarray(tokens[:n], dtype=cached.dtype)
        mismatch = np.flatnonzero(~same)
        prefix = int(mismatch[0]) if mismatch.size else n
        # Always re-evaluate at least the last token so that fresh logits exist.
        return min(prefix, len(tokens) - 1)

    def _d2_ring_safe(self, reused: int) -> int:
        """Where a cut may keep its prefix without losing D2's exact window.

        D2 keeps the last ``window`` positions exact in a ring; the tokens a cut removes took
        the ring slots of the oldest window positions before the cut, which would stay
        compressed for good. Re-evaluating the window before the cut (at most ``window`` plus
        one batch of tokens; the document before it is kept) restores what a fresh prefill holds.
        """
        if self.d2_settings is None:
            return reused
        sinks, window = self.d2_settings.recipe.sinks, self.d2_settings.recipe.window
        if window <= 0 or sinks + window >= int(self.llm.n_ctx()):
            return reused  # no ring wrap: every position has a slot of its own
        # back to a batch boundary, so the re-evaluated tokens see the ubatches a fresh prefill has
        return min(reused, (max(reused - window, 0) // self.n_batch) * self.n_batch)

    def truncate(self, n_keep: int) -> None:
        """Forget cached tokens from n_keep on (llama.cpp seq_rm; works for every arm)."""
        n_keep = max(0, min(n_keep, self.n_cached))
        mem = self.llama_cpp.llama_get_memory(self.llm.ctx)
        ok = self.llama_cpp.llama_memory_seq_rm(mem, -1, n_keep, -1)
        if not ok:
            raise EngineError(
                f"The {self.arm.label} cache could not drop tokens from position {n_keep}; "
                "the document will be prefilled again."
            )
        self.llm.n_tokens = n_keep

    def prefill(
        self, tokens: Sequence[int], should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[PrefillProgress]:
        """Evaluate ``tokens`` (reusing the cached prefix), yielding progress per batch."""
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(len(tokens), self.n_ctx)
        reused = self._reuse_prefix(tokens)
        if reused < self.n_cached:
            reused = self._d2_ring_safe(reused)
            self.truncate(reused)
        todo = list(tokens[reused:])
        t0 = time.perf_counter()
        done = 0
        yield PrefillProgress(0, len(todo), reused, 0.0, 0.0)
        # batches end at multiples of n_batch counted from the first token, whatever was reused:
        # D2 decides which rows are exact per ubatch, so equal boundaries give a cached prefix
        # the same result as a fresh prefill
        first = min(len(todo), self.n_batch - reused % self.n_batch)
        bounds = [0, *range(first, len(todo), self.n_batch), len(todo)]
        for lo, hi in zip(bounds, bounds[1:]):
            if should_stop():
                return
            batch = todo[lo:hi]
            self.llm.eval(batch)
            done += len(batch)
            self.n_evaluated_total += len(batch)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            rate = done / elapsed
            yield PrefillProgress(done, len(todo), reused, rate, (len(todo) - done) / max(rate, 1e-9))

    def last_logits(self) -> np.ndarray:
        n_vocab = self.llm.n_vocab()
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    def is_end(self, token: int) -> bool:
        return bool(self.llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def generate(
        self,
        prompt_tokens: Sequence[int],
        max_tokens: int = 256,
        should_stop: Callable[[], bool] = lambda: False,
        sampling: Sampling = GREEDY,
    ) -> Iterator[Event]:
        """Prefill the prompt (reusing the cache), then decode (greedy by default), yielding events."""
        sampler = TokenSampler(sampling)  # an unusable setting is refused before any work
        n_before = self.n_evaluated_total
        t0 = time.perf_counter()
        last: PrefillProgress | None = None
        for progress in self.prefill(prompt_tokens, should_stop):
            last = progress
            yield progress
        n_evaluated = self.n_evaluated_total - n_before
        prefill_s = max(time.perf_counter() - t0, 1e-9)
        if should_stop() or last is None or last.done < last.total:
            yield AnswerDone("", len(prompt_tokens), n_evaluated, 0, n_evaluated / prefill_s, 0.0, "cancelled")
            return
        generated: list[int] = []
        recent = list(prompt_tokens[-sampling.repeat_last_n:]) if sampling.repeat_last_n else []
        pending = b""
        text_parts: list[str] = []
        finish = "length"
        t1 = time.perf_counter()
        room = self.n_ctx - self.n_cached - 1
        for _ in range(min(max_tokens, room)):
            token = sampler.pick(self.last_logits(), recent)
            if self.is_end(token):
                finish = "stop"
                break
            generated.append(token)
            recent.append(token)
            pending += self.llm.detokenize([token])
            text, pending = _split_utf8(pending)
            if text:
                text_parts.append(text)
                yield Token(text, token)
            if should_stop():
                finish = "cancelled"
                break
            self.llm.eval([token])
        else:
            if room < max_tokens:
                finish = "length"
        if pending:
            text_parts.append(pending.decode("utf-8", errors="replace"))
        decode_s = max(time.perf_counter() - t1, 1e-9)
        yield AnswerDone(
            text="".join(text_parts),
            n_prompt=len(prompt_tokens),
            n_evaluated=n_evaluated,
            n_generated=len(generated),
            prefill_tok_s=n_evaluated / prefill_s,
            decode_tok_s=len(generated) / decode_s if generated else 0.0,
            finish=finish,
            token_ids=tuple(generated),
        )

    def answer(self, messages: Sequence[Message], max_tokens: int = 256,
               should_stop: Callable[[], bool] = lambda: False, sampling: Sampling = GREEDY) -> Iterator[Event]:
        return self.generate(self.chat_tokens(messages), max_tokens, should_stop, sampling)

    # ------------------------------------------------------------------ memory

    def kv_memory(self) -> KvMemory | None:
        """What llama.cpp allocated for this context's KV cache (K, V, D2 extras) and its types."""
        recipe = self.memory_arm.recipe
        k_types = recipe.k_layer_types(self.info.head_dim_k) if recipe is not None else ()
        return d2_module.kv_memory(self.llama_cpp, self.llm.ctx, k_types)

    def kv_bytes(self) -> int:
        """Bytes of the K and V cache tensors llama.cpp allocated for this context."""
        mem = self.kv_memory()
        return mem.kv_bytes if mem else 0

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None  # type: ignore[assignment]


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the complete UTF-8 prefix of ``data``; keep an unfinished sequence for later."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""



"""Will a context fit? The engine's estimate against the memory it will live in, before llama.cpp tries.

Where the cache lives in host memory (a CPU build, an ``@cpu`` arm, no layer offloaded) the
context's cache and buffers are compared with the memory the system has available; where it
lives in VRAM (a GPU build with every layer offloaded) the model, cache and buffers are compared
with the free memory NVML reports for the GPUs llama.cpp will use (it splits layers over them in
proportion to their free memory). A context that does not fit is a
:class:`~engine.errors.ContextMemoryError` carrying both numbers and what to choose instead.

This module never refuses on a guess: without a reading (no /proc/meminfo, no NVML, a partial
offload) it lets llama.cpp try and says why in the log, once per reason. It never imports the app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from engine import nvml
from engine.arms import ArmConfig
from engine.errors import ContextMemoryError
from engine.estimates import context_bytes, estimate, host_available_bytes
from engine.gguf import GgufInfo

log = logging.getLogger("fraqtl-chat.engine")
_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)


def gpu_description(devices: list[nvml.DeviceMemory]) -> str:
    """'GPU 0 (NVIDIA H200)' or 'GPUs 0, 1 (NVIDIA H200) together'."""
    names = ", ".join(dict.fromkeys(d.name for d in devices))
    if len(devices) == 1:
        return f"GPU {devices[0].index} ({names})"
    return f"GPUs {', '.join(str(d.index) for d in devices)} ({names}) together"


def check_context_memory(
    info: GgufInfo,
    arm: ArmConfig,
    n_ctx: int,
    n_batch: int,
    *,
    gpu_build: bool,
    n_gpu_layers: int = -1,
    host_available: Callable[[], int | None] | None = None,
    gpu_free: Callable[[], list[nvml.DeviceMemory]] | None = None,
) -> str:
    """Raise ContextMemoryError if the context cannot fit where its cache will live.

    Returns what was checked, in a few words, for the log. ``gpu_build`` is llama.cpp's
    ``llama_supports_gpu_offload()``; the readings default to :func:`host_available_bytes` and
    :func:`engine.nvml.free_memory`. FRAQTL_NO_MEMORY_CHECK=1 skips every check.
    """
    if os.environ.get("FRAQTL_NO_MEMORY_CHECK") == "1":
        return "skipped (FRAQTL_NO_MEMORY_CHECK=1)"
    if not gpu_build or arm.on_cpu or n_gpu_layers == 0:
        available = (host_available or host_available_bytes)()
        if available is None:
            _say_once("memory pre-check skipped: the system does not report its available memory")
            return "skipped: no host memory reading"
        needed = context_bytes(info, arm, n_ctx, n_batch)
        if needed > available:
            raise ContextMemoryError(arm.label, n_ctx, needed, available)
        return "host memory"
    if 0 < n_gpu_layers < info.n_layer:
        _say_once(f"GPU memory pre-check skipped: only {n_gpu_layers} of {info.n_layer} layers are offloaded, "
                  "so the cache is split between host and GPU; llama.cpp will report a failure itself")
        return "skipped: partial offload"
    try:
        devices = (gpu_free or nvml.free_memory)()
    except nvml.TelemetryUnavailable as exc:
        _say_once(f"GPU memory pre-check skipped: NVML cannot read free GPU memory ({exc}); "
                  "llama.cpp will report a failure itself")
        return "skipped: no NVML reading"
    if not devices:
        _say_once("GPU memory pre-check skipped: NVML lists no GPU for this process")
        return "skipped: no GPU listed"
    needed = estimate(info, arm, n_ctx, n_batch).total_bytes  # weights, cache, exact copies, buffers, bases
    free = sum(d.free for d in devices)
    if needed > free:
        raise ContextMemoryError(arm.label, n_ctx, needed, free, device=gpu_description(devices))
    return f"GPU memory ({gpu_description(devices)})"

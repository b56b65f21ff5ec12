"""The out-of-memory pre-check: the engine's estimate against host memory, or the GPUs' free memory.

No GPU here: NVML is a fake reading (or a fake pynvml module) and the llama.cpp backend a fake
that says it is a GPU build and fails the test if a context is created after a refusal.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

from engine import memory_check, nvml
from engine.arms import ArmConfig
from engine.errors import ContextMemoryError
from engine.estimates import context_bytes, estimate
from engine.gguf import GgufInfo, TensorInfo

GIB = 2**30
H200 = "NVIDIA H200"


def mistral_shape() -> GgufInfo:
    """The Mistral-7B shape with one 1 GiB f32 tensor standing in for the weights."""
    meta = {
        "general.architecture": "llama", "llama.block_count": 32, "llama.embedding_length": 4096,
        "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
        "llama.feed_forward_length": 14336, "llama.vocab_size": 32768, "llama.context_length": 32768,
    }
    weights = TensorInfo("token_embd.weight", (GIB // 4,), 0, 0)
    return GgufInfo(Path("mistral-shape.gguf"), 3, meta, (weights,), GIB)


INFO = mistral_shape()
F16 = ArmConfig.parse("f16")
N_CTX, N_BATCH = 131072, 256
NEEDED = estimate(INFO, F16, N_CTX, N_BATCH).total_bytes  # about 17.1 GiB: 1 GiB weights + 16 GiB cache + buffers


def gpus(*free_gib: float) -> list[nvml.DeviceMemory]:
    return [nvml.DeviceMemory(i, H200, int(f * GIB), 140 * GIB) for i, f in enumerate(free_gib)]


def no_host_reading_expected() -> int:
    raise AssertionError("a cache in VRAM must not be checked against host memory")


def no_gpu_reading_expected() -> list[nvml.DeviceMemory]:
    raise AssertionError("a cache in host memory must not be checked against the GPU")


@pytest.fixture(autouse=True)
def checks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAQTL_NO_MEMORY_CHECK", raising=False)
    memory_check._said.clear()


def check(arm: ArmConfig = F16, n_gpu_layers: int = -1, *, gpu_build: bool = True, host=no_host_reading_expected,
          gpu=no_gpu_reading_expected) -> str:
    return memory_check.check_context_memory(INFO, arm, N_CTX, N_BATCH, gpu_build=gpu_build,
                                             n_gpu_layers=n_gpu_layers, host_available=host, gpu_free=gpu)


def test_the_estimate_counts_weights_cache_and_buffers() -> None:
    assert INFO.weights_bytes == GIB
    assert NEEDED == GIB + context_bytes(INFO, F16, N_CTX, N_BATCH)
    assert 17 * GIB < NEEDED < 18 * GIB


def test_a_context_larger_than_the_gpus_free_memory_is_refused_with_the_numbers() -> None:
    with pytest.raises(ContextMemoryError) as refused:
        check(gpu=lambda: gpus(12.0))
    err = refused.value
    assert (err.n_ctx, err.needed, err.available, err.device) == (N_CTX, NEEDED, 12 * GIB, f"GPU 0 ({H200})")
    assert str(err) == (
        f"A 131,072-token context with the f16 cache needs about {NEEDED / GIB:.1f} GiB of GPU memory for the "
        f"model, its cache and buffers, but GPU 0 ({H200}) has 12.0 GiB free; choose a smaller context or a "
        "smaller cache (q8_0 or d2), or close what else uses the GPU, then start the engine again.")


def test_a_context_that_fits_in_the_free_memory_is_let_through() -> None:
    assert check(gpu=lambda: gpus(NEEDED / GIB + 0.01)) == f"GPU memory (GPU 0 ({H200}))"
    q8 = ArmConfig.parse("q8_0")  # the same context with a smaller cache fits where f16 does not
    assert estimate(INFO, q8, N_CTX, N_BATCH).total_bytes < 12 * GIB
    memory_check.check_context_memory(INFO, q8, N_CTX, N_BATCH, gpu_build=True, gpu_free=lambda: gpus(12.0),
                                      host_available=no_host_reading_expected)


def test_several_gpus_count_together() -> None:
    assert check(gpu=lambda: gpus(10.0, 10.0)).startswith("GPU memory (GPUs 0, 1")
    with pytest.raises(ContextMemoryError, match=r"but GPUs 0, 1 \(NVIDIA H200\) together have 16.0 GiB free"):
        check(gpu=lambda: gpus(8.0, 8.0))


def test_without_nvml_it_never_refuses_and_says_so_in_the_log_once(caplog: pytest.LogCaptureFixture) -> None:
    def unavailable() -> list[nvml.DeviceMemory]:
        raise nvml.TelemetryUnavailable("no NVIDIA driver found (NVML Shared Library Not Found)")

    with caplog.at_level(logging.WARNING, logger="fraqtl-chat.engine"):
        assert check(gpu=unavailable) == "skipped: no NVML reading"
        assert check(gpu=unavailable) == "skipped: no NVML reading"
        assert check(gpu=list) == "skipped: no GPU listed"
    said = [r.getMessage() for r in caplog.records]
    assert said == ["GPU memory pre-check skipped: NVML cannot read free GPU memory (no NVIDIA driver found "
                    "(NVML Shared Library Not Found)); llama.cpp will report a failure itself",
                    "GPU memory pre-check skipped: NVML lists no GPU for this process"]


def test_a_partial_offload_is_not_guessed_at(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fraqtl-chat.engine"):
        assert check(n_gpu_layers=10) == "skipped: partial offload"
    assert "only 10 of 32 layers are offloaded" in caplog.text
    assert check(n_gpu_layers=99, gpu=lambda: gpus(40.0)).startswith("GPU memory")  # 99 >= 32: every layer


def test_a_cache_in_host_memory_keeps_the_host_check() -> None:
    cache_only = context_bytes(INFO, F16, N_CTX, N_BATCH)  # weights are memory-mapped: not counted
    for arm, gpu_build, n_gpu_layers in [(F16, False, -1), (ArmConfig.parse("f16@cpu"), True, -1), (F16, True, 0)]:
        with pytest.raises(ContextMemoryError) as refused:
            check(arm, n_gpu_layers, gpu_build=gpu_build, host=lambda: 8 * GIB)
        assert (refused.value.needed, refused.value.available, refused.value.device) == (cache_only, 8 * GIB, "")
        assert "this machine has 8.0 GiB available" in str(refused.value)
        assert check(arm, n_gpu_layers, gpu_build=gpu_build, host=lambda: cache_only) == "host memory"
    assert check(gpu_build=False, host=lambda: None) == "skipped: no host memory reading"


def test_the_switch_turns_every_check_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAQTL_NO_MEMORY_CHECK", "1")
    assert check(gpu=lambda: gpus(0.5)).startswith("skipped")
    assert check(gpu_build=False, host=lambda: 0).startswith("skipped")


class ContextCreated(Exception):
    """The fake backend was asked to create a context."""


class FakeGpuBackend:
    """llama_cpp as a CUDA build: a context must never be created after a refusal."""

    LLAMA_ROPE_SCALING_TYPE_YARN = 2
    LLAMA_SPLIT_MODE_NONE = 0
    LLAMA_SPLIT_MODE_LAYER = 1
    created = 0

    @staticmethod
    def llama_supports_gpu_offload() -> bool:
        return True

    def Llama(self, **kwargs: object) -> None:  # noqa: N802 - llama_cpp's name
        FakeGpuBackend.created += 1
        raise ContextCreated


def test_the_runtime_refuses_before_llama_cpp_creates_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import runtime

    monkeypatch.setattr(runtime, "load_llama_cpp", FakeGpuBackend)
    monkeypatch.setattr(runtime.rpc, "has_local_gpu", lambda llama_cpp: True)  # a CUDA build's device list
    monkeypatch.setattr(runtime, "read_gguf", lambda path: INFO)
    monkeypatch.setattr(nvml, "free_memory", lambda: gpus(12.0))
    with pytest.raises(ContextMemoryError) as refused:
        runtime.Runtime("mistral-shape.gguf", "f16", n_ctx=N_CTX, n_batch=N_BATCH)
    assert FakeGpuBackend.created == 0 and refused.value.device == f"GPU 0 ({H200})"
    monkeypatch.setattr(nvml, "free_memory", lambda: gpus(40.0))  # enough: llama.cpp is asked
    with pytest.raises(ContextCreated):
        runtime.Runtime("mistral-shape.gguf", "f16", n_ctx=N_CTX, n_batch=N_BATCH)
    assert FakeGpuBackend.created == 1


def test_the_gpu_refusal_crosses_the_process_boundary_whole() -> None:
    from engine.worker import _error_payload, rebuild_error

    err = ContextMemoryError("f16", N_CTX, NEEDED, 12 * GIB, device=f"GPU 0 ({H200})")
    back = rebuild_error(*_error_payload(err))
    assert type(back) is ContextMemoryError and str(back) == str(err)
    assert (back.needed, back.available, back.device) == (NEEDED, 12 * GIB, f"GPU 0 ({H200})")


class FakePynvml(types.ModuleType):
    """The pynvml calls free_memory makes, over three fake H200s (NVML indices 0-2)."""

    def __init__(self, driver: bool = True) -> None:
        super().__init__("pynvml")
        self.driver = driver
        self.free = [30 * GIB, 20 * GIB, 10 * GIB]

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if not self.driver:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 3

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        if index >= 3:
            raise RuntimeError("Invalid Argument")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:  # noqa: N802
        return int(uuid.rsplit("-", 1)[1])

    def nvmlDeviceGetIndex(self, handle: int) -> int:  # noqa: N802
        return handle

    def nvmlDeviceGetName(self, handle: int) -> bytes:  # noqa: N802
        return H200.encode()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:  # noqa: N802
        return types.SimpleNamespace(free=self.free[handle], total=140 * GIB, used=140 * GIB - self.free[handle])


def test_free_memory_reads_the_gpus_cuda_will_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml())
    assert [d.free for d in nvml.free_memory(None)] == [30 * GIB, 20 * GIB, 10 * GIB]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert len(nvml.free_memory()) == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert [(d.index, d.free) for d in nvml.free_memory()] == [(2, 10 * GIB), (0, 30 * GIB)]
    assert [d.index for d in nvml.free_memory("GPU-fake-1")] == [1]
    assert nvml.free_memory("") == [] and [d.index for d in nvml.free_memory("1,,2")] == [1]
    with pytest.raises(nvml.TelemetryUnavailable, match="names a device NVML cannot map"):
        nvml.free_memory("all")
    with pytest.raises(nvml.TelemetryUnavailable, match="NVML failed"):
        nvml.free_memory("7")
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml(driver=False))
    with pytest.raises(nvml.TelemetryUnavailable, match="no NVIDIA driver found"):
        nvml.free_memory()

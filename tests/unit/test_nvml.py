"""engine.nvml's sampler over several GPUs, with fake NVML devices (no driver needed)."""

from __future__ import annotations

from engine.nvml import GpuSample, NvmlSampler

MIB = 2**20


class FakeGpu:
    def __init__(self, index: int, used: list[int], process: list[int | None]) -> None:
        self.index, self.name = index, f"GPU{index}"
        self.used, self.process, self.i = used, process, 0

    def sample(self, pids=()) -> GpuSample:
        i = min(self.i, len(self.used) - 1)
        self.i += 1
        return GpuSample(float(i), self.used[i] * MIB, 1000 * MIB, self.process[i], self.index)


def test_each_gpu_and_the_total_keep_their_own_peak() -> None:
    # the GPUs peak at different moments: the total's peak is the largest simultaneous sum,
    # not the sum of the per-GPU peaks
    gpu0 = FakeGpu(0, [100, 500, 200], [None, None, None])
    gpu1 = FakeGpu(1, [100, 150, 600], [None, None, None])
    sampler = NvmlSampler(devices=[gpu0, gpu1])
    for _ in range(3):
        sampler.sample_now()
    assert [t.peak_used for t in sampler.gpus] == [500 * MIB, 600 * MIB]
    assert sampler.peak_used == 800 * MIB  # 200 + 600, not 500 + 600
    assert [t.peak_estimate for t in sampler.gpus] == [400 * MIB, 500 * MIB]  # above each baseline
    assert sampler.baseline_used == 200 * MIB
    assert sampler.peak_process is None  # the driver gave no per-process figure
    assert sampler.process_estimate(sampler.history[-1]) == 600 * MIB
    assert sampler.process_estimate(sampler.gpus[1].history[-1]) == 500 * MIB


def test_per_process_figures_add_up_when_every_gpu_gives_one() -> None:
    sampler = NvmlSampler(devices=[FakeGpu(0, [10, 20], [0, 7 * MIB]), FakeGpu(1, [10, 30], [0, 9 * MIB])])
    sampler.sample_now()
    total = sampler.sample_now()
    assert total is not None and total.index == -1 and total.process_used == 16 * MIB
    assert sampler.peak_process == 16 * MIB
    assert [t.peak_process for t in sampler.gpus] == [7 * MIB, 9 * MIB]


def test_one_gpu_reads_as_before() -> None:
    sampler = NvmlSampler(devices=[FakeGpu(0, [100, 300], [None, None])])
    sampler.sample_now()
    last = sampler.sample_now()
    assert last is not None and last.index == 0
    assert sampler.peak_used == 300 * MIB and sampler.process_estimate(last) == 200 * MIB
    assert sampler.device is sampler.devices[0] and sampler.available


def test_no_gpu_is_unavailable_with_a_reason(monkeypatch) -> None:
    from engine import nvml

    def refuse(cls):
        raise nvml.TelemetryUnavailable("No NVIDIA driver found (test), so GPU telemetry is off.")

    monkeypatch.setattr(nvml.Nvml, "all", classmethod(refuse))
    sampler = NvmlSampler()
    assert not sampler.available and sampler.sample_now() is None
    assert sampler.unavailable_reason and "telemetry is off" in sampler.unavailable_reason

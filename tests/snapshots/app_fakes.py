"""Fakes for snapshot tests: an engine that answers instantly and an NVML sampler with fixed figures."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from engine.errors import ArmUnavailableError
from engine.events import AnswerDone, Event, PrefillProgress, Token
from engine.nvml import GpuSample, NvmlSampler
from engine.sampling import GREEDY, Sampling
from engine.worker import EngineLoaded, EngineSpec

GIB = 2**30
MIB = 2**20
ANSWER = "The railway was designed by the chief engineer **Marta Quell** [p. 1]."


class FakeEngine:
    """Counts tokens as 4/3 per word and answers with a fixed sentence (d2: unavailable)."""

    def __init__(self, spec: EngineSpec, tokens_per_word: float = 4 / 3) -> None:
        self.spec = spec
        self.tokens_per_word = tokens_per_word
        self.pid: int | None = None

    def start(self) -> EngineLoaded:
        if self.spec.arm.startswith("d2"):
            raise ArmUnavailableError(self.spec.arm, "this build has no D2 cache yet.")
        return EngineLoaded(self.spec.arm, self.spec.n_ctx, 8192, 0, 0)

    def count_chat_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return int(sum(len(m["content"].split()) for m in messages) * self.tokens_per_word) + 8

    def answer(self, messages: Sequence[dict[str, str]], max_tokens: int = 256,
               sampling: Sampling = GREEDY) -> Iterator[Event]:
        self.last_sampling = sampling
        n_prompt = self.count_chat_tokens(messages)
        evaluated = n_prompt if max_tokens == 0 else 17
        yield PrefillProgress(0, evaluated, n_prompt - evaluated, 0.0, 0.0)
        yield PrefillProgress(evaluated, evaluated, n_prompt - evaluated, 812.0, 0.0)
        if max_tokens == 0:
            yield AnswerDone("", n_prompt, evaluated, 0, 812.0, 0.0, "length")
            return
        words = ANSWER.split(" ")
        offset = {"f16": 0, "q8_0": 0, "q4_0": 1}.get(self.spec.arm, 0)
        for i, word in enumerate(words):
            yield Token(("" if i == 0 else " ") + word, 100 + i)
        ids = tuple(100 + i + (offset if i > 8 else 0) for i in range(len(words)))
        yield AnswerDone(ANSWER, n_prompt, evaluated, len(words), 812.0, 96.5, "stop", ids)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeDevice:
    name = "NVIDIA H200"


class FakeSampler:
    """An NvmlSampler look-alike with a fixed history (no thread, no timer)."""

    def __init__(self, available: bool = True) -> None:
        self.available = available
        self.device = FakeDevice() if available else None
        self.unavailable_reason = None if available else (
            "No NVIDIA driver found (NVML Shared Library Not Found), so GPU telemetry is off.")
        used = [900, 905, 930, 1010, 1180, 1290, 1300, 1302, 1302, 1298, 1301, 1302]
        self.history: deque[GpuSample] = deque(
            (GpuSample(float(i), (2 * GIB) + u * MIB, 140 * GIB, u * MIB) for i, u in enumerate(used))
            if available else ())
        self.baseline_used = 2 * GIB
        self.peak_used = (2 * GIB + max(used) * MIB) if available else 0
        self.peak_process = max(used) * MIB if available else None

    def sample_now(self) -> GpuSample | None:
        return self.history[-1] if self.history else None

    def process_estimate(self, sample: GpuSample) -> int:
        return sample.process_used or max(sample.device_used - self.baseline_used, 0)

    def start(self) -> FakeSampler:
        return self

    def stop(self) -> None:
        pass


def fake_estimate(info, arm, n_ctx: int, n_ubatch: int = 512):
    """Fixed estimates, so that snapshots do not move when the engine's memory model is refined."""
    from engine.estimates import KvEstimate

    per_token = {"f16": 23040, "q8_0": 12240, "q4_0": 6480, "d2": 8190}[arm.name]
    return KvEstimate(arm.label, n_ctx, 96 * MIB, per_token * n_ctx, 0, 40 * MIB)


def fake_split_estimate(info, arm, n_ctx: int, shares, n_ubatch: int = 512, n_gpu_layers: int = -1):
    """The fixed estimate split 17:16 over the devices, whatever their shares (two GPUs in the tests)."""
    from engine.estimates import DeviceEstimate

    whole = fake_estimate(info, arm, n_ctx)
    n = len(shares)
    return tuple(DeviceEstimate(i, (), i == n - 1, whole.weights_bytes // n, whole.kv_bytes // n, 0, 0,
                                whole.compute_bytes // n) for i in range(n))


class FakeNvmlDevice:
    """One GPU as engine.nvml.Nvml presents it, with scripted figures (the last one repeats)."""

    def __init__(self, index: int, used_mib: Sequence[int], name: str = "NVIDIA H200") -> None:
        self.index, self.name, self.used = index, name, list(used_mib)
        self.calls = 0

    def sample(self, pids=()) -> GpuSample:
        used = self.used[min(self.calls, len(self.used) - 1)]
        self.calls += 1
        return GpuSample(float(self.calls), 2 * GIB + used * MIB, 140 * GIB, used * MIB, self.index)


class TwoGpuSampler(NvmlSampler):
    """The real sampler over two fake GPUs, sampled a fixed number of times (no thread)."""

    def __init__(self) -> None:
        super().__init__(devices=[FakeNvmlDevice(0, [0, 400, 700, 812, 810]),
                                  FakeNvmlDevice(1, [0, 300, 600, 690, 688])])
        for _ in range(5):
            self.sample_now()

    def start(self) -> TwoGpuSampler:
        return self

"""GPU memory telemetry through NVML (the ``nvidia-ml-py`` package, imported as pynvml).

:class:`NvmlSampler` polls every GPU's total/used and, where the driver allows, the memory
of given processes, in a background thread (200 ms by default), keeping the peak and a
rolling history per GPU and for all of them together (a model split over GPUs). Without a
driver or GPU it reports why, once, and samples nothing: the caller shows estimates alone.
:func:`free_memory` reads the free memory of the GPUs a new llama.cpp context will use, for the
runtime's pre-check. This module never imports the app.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class GpuSample:
    t: float  # time.monotonic()
    device_used: int  # bytes used on the device
    device_total: int
    process_used: int | None  # bytes used by the watched processes, None if the driver does not say
    index: int = 0  # the GPU's NVML index; -1 for the sum over every GPU


@dataclasses.dataclass
class GpuTrack:
    """One GPU's figures as the sampler keeps them: history, baseline and peaks."""

    index: int
    name: str
    history: deque[GpuSample]
    baseline_used: int | None = None
    peak_used: int = 0
    peak_process: int | None = None

    def add(self, sample: GpuSample) -> None:
        if self.baseline_used is None:
            self.baseline_used = sample.device_used
        self.history.append(sample)
        self.peak_used = max(self.peak_used, sample.device_used)
        if sample.process_used is not None:
            self.peak_process = max(self.peak_process or 0, sample.process_used)

    def process_estimate(self, sample: GpuSample) -> int:
        """The watched processes' use: NVML per-process figure, else device used minus the baseline."""
        if sample.process_used:
            return sample.process_used
        return max(sample.device_used - (self.baseline_used or 0), 0)

    @property
    def peak_estimate(self) -> int:
        return self.peak_process or max(self.peak_used - (self.baseline_used or 0), 0)


class TelemetryUnavailable(Exception):
    """NVML cannot be used here; the message says why in one sentence."""


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
    """One GPU's memory as NVML reports it (bytes)."""

    index: int  # NVML's index
    name: str
    free: int
    total: int


def free_memory(visible: str | None = None) -> list[DeviceMemory]:
    """Free memory of the GPUs CUDA will show llama.cpp: all of them, or those ``CUDA_VISIBLE_DEVICES``
    names (NVML indices or ``GPU-…`` UUIDs); ``visible`` defaults to that variable.

    Raises TelemetryUnavailable (saying why) where NVML cannot tell: no package, no driver, a
    device list it cannot map.
    """
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - dependency
        raise TelemetryUnavailable("nvidia-ml-py is not installed") from exc
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses
        raise TelemetryUnavailable(f"no NVIDIA driver found ({exc})") from exc
    try:
        if visible is None:
            handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
        else:
            handles = []
            for entry in (e.strip() for e in visible.split(",")):
                if not entry:
                    break  # CUDA stops at the first empty or invalid entry
                if entry.isdigit():
                    handles.append((int(entry), pynvml.nvmlDeviceGetHandleByIndex(int(entry))))
                elif entry.startswith(("GPU-", "MIG-")):
                    handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
                    handles.append((int(pynvml.nvmlDeviceGetIndex(handle)), handle))
                else:
                    raise TelemetryUnavailable(f"CUDA_VISIBLE_DEVICES={visible!r} names a device NVML cannot map")
        found = []
        for index, handle in handles:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            found.append(DeviceMemory(index, name.decode() if isinstance(name, bytes) else str(name),
                                      int(info.free), int(info.total)))
        return found
    except TelemetryUnavailable:
        raise
    except Exception as exc:
        raise TelemetryUnavailable(f"NVML failed ({exc})") from exc
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nothing to do about a failed shutdown
            pass


class Nvml:
    """A thin, typed view of one NVML device."""

    @staticmethod
    def count() -> int:
        """How many GPUs NVML sees (0 without a driver)."""
        try:
            import pynvml

            pynvml.nvmlInit()
            return int(pynvml.nvmlDeviceGetCount())
        except Exception:  # no package, driver or GPU
            return 0

    @classmethod
    def all(cls) -> list[Nvml]:
        """Every GPU, in NVML's order (CUDA's too unless CUDA_DEVICE_ORDER says otherwise)."""
        if cls.count() == 0:
            return [cls(0)]  # raises with the reason
        return [cls(i) for i in range(cls.count())]

    def __init__(self, index: int = 0) -> None:
        self.index = index
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - dependency
            raise TelemetryUnavailable("nvidia-ml-py is not installed, so GPU telemetry is off.") from exc
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # pynvml raises NVMLError subclasses
            raise TelemetryUnavailable(f"No NVIDIA driver found ({exc}), so GPU telemetry is off.") from exc
        try:
            count = pynvml.nvmlDeviceGetCount()
            if count <= index:
                raise TelemetryUnavailable(f"No NVIDIA GPU {index} (found {count}), so GPU telemetry is off.")
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self.handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self.driver = str(pynvml.nvmlSystemGetDriverVersion())
        except TelemetryUnavailable:
            raise
        except Exception as exc:
            raise TelemetryUnavailable(f"NVML failed ({exc}), so GPU telemetry is off.") from exc
        self._nv = pynvml

    def sample(self, pids: Iterable[int] = ()) -> GpuSample:
        info = self._nv.nvmlDeviceGetMemoryInfo(self.handle)
        process_used: int | None = None
        wanted = set(pids)
        if wanted:
            try:
                procs = self._nv.nvmlDeviceGetComputeRunningProcesses(self.handle)
                found = [p.usedGpuMemory for p in procs if p.pid in wanted and p.usedGpuMemory is not None]
                process_used = sum(found) if found else 0
            except Exception:
                process_used = None  # containers often hide other PIDs
        return GpuSample(time.monotonic(), int(info.used), int(info.total), process_used, self.index)


class NvmlSampler:
    """Polls every GPU in a background thread; keeps peaks and a bounded history per GPU and in total.

    ``history``, ``baseline_used``, ``peak_used`` and ``peak_process`` are the sums over the GPUs
    sampled at the same moment (on one GPU, that GPU's figures); ``gpus`` has each GPU's own.
    """

    def __init__(
        self,
        interval_s: float = 0.2,
        pids: Callable[[], Iterable[int]] = lambda: (os.getpid(),),
        history: int = 300,
        device: Nvml | None = None,
        devices: Sequence[Nvml] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.pids = pids
        self.unavailable_reason: str | None = None
        opened: list[Nvml] = list(devices) if devices is not None else ([device] if device is not None else [])
        if devices is None and device is None:
            try:
                opened = Nvml.all()
            except TelemetryUnavailable as exc:
                self.unavailable_reason = str(exc)
        self.devices = opened
        self.device: Nvml | None = opened[0] if opened else None
        self.gpus = [GpuTrack(getattr(d, "index", i), getattr(d, "name", "GPU"), deque(maxlen=history))
                     for i, d in enumerate(opened)]
        self.total = GpuTrack(-1, "all GPUs", deque(maxlen=history))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # the totals, under the names a one-GPU caller has always used
    @property
    def history(self) -> deque[GpuSample]:
        return self.total.history

    @property
    def baseline_used(self) -> int | None:
        return self.total.baseline_used

    @property
    def peak_used(self) -> int:
        return self.total.peak_used

    @property
    def peak_process(self) -> int | None:
        return self.total.peak_process

    @property
    def available(self) -> bool:
        return self.device is not None

    def sample_now(self) -> GpuSample | None:
        """Sample every GPU; returns the total (on one GPU, that GPU's sample)."""
        if self.device is None:
            return None
        pids = tuple(self.pids())
        samples = [d.sample(pids) for d in self.devices]
        processes = [s.process_used for s in samples]
        total = GpuSample(samples[0].t, sum(s.device_used for s in samples), sum(s.device_total for s in samples),
                          None if any(p is None for p in processes) else sum(p or 0 for p in processes),
                          samples[0].index if len(samples) == 1 else -1)
        with self._lock:
            for track, sample in zip(self.gpus, samples):
                track.add(sample)
            self.total.add(total)
        return total

    def process_estimate(self, sample: GpuSample) -> int:
        """This process's use: NVML per-process figure, else device used minus the baseline."""
        track = self.total if sample.index == -1 or len(self.gpus) <= 1 else self.gpus[self._position(sample.index)]
        return track.process_estimate(sample)

    def _position(self, index: int) -> int:
        for i, track in enumerate(self.gpus):
            if track.index == index:
                return i
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_now()
            except Exception as exc:  # the driver went away: stop quietly with a reason
                self.unavailable_reason = f"GPU telemetry stopped ({exc})."
                return

    def start(self) -> NvmlSampler:
        if self.device is not None and self._thread is None:
            self.sample_now()
            self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> NvmlSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

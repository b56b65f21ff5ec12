"""Runs one arm's job in its own worker process and turns whatever happens into an outcome.

The parent watches the child's GPU memory with the engine's NVML sampler (200 ms, per process
where the driver allows, else device used minus the baseline taken before the child started),
shows progress, keeps the child's llama.cpp log, and classifies the end: ``ok``,
``unavailable`` (the arm cannot run here, with the engine's reason) or ``failed`` (an error or
a crash, with the exit status and the log's tail). Never raises for an arm's failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.nvml import MIB, NvmlSampler

#: llama.cpp's buffer report, e.g. "llama_kv_cache:      CUDA0 KV buffer size =  4096.00 MiB"
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|RS)\s+buffer size\s*=\s*([\d.]+)\s*MiB")
#: log lines that show which cache path actually ran (types, rotation, D2, graph splits)
_MARKERS = re.compile(r"fraqtl|\bd2\b|llama_kv_cache: size|attn_rot|graph splits|flash_attn\s+=|buffer size", re.I)


@dataclasses.dataclass
class ArmOutcome:
    arm: str
    status: str  # ok | unavailable | failed
    reason: str
    result: dict[str, Any]
    wall_s: float
    peak_vram_mib: float | None
    telemetry: str  # "nvml-process", "nvml-device-minus-baseline" or why there is none
    buffers_mib: dict[str, float]
    markers: list[str]
    log_tail: str
    # each GPU's peak (per process where the driver allows, else used minus its baseline) and its
    # free memory before the worker started (llama.cpp's default layer split follows it); None without NVML
    peak_vram_mib_gpus: list[float] | None = None
    free_mib_gpus: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        return "ok" if self.ok else f"{self.status}: {self.reason}"


_ERROR = re.compile(r"GGML_ASSERT|error|cannot|abort|fatal|what\(\)|Traceback|Exception", re.I)


def _last_error(log: str) -> str:
    """The log line that says why a worker died (not the backtrace below it), else the last line."""
    lines = [line.strip() for line in log.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR.search(line) and not line.startswith(("/", "python")) and "ggml_abort+" not in line:
            return line
    return lines[-1] if lines else "no output"


def parse_buffers(log: str) -> dict[str, float]:
    """llama.cpp's buffer sizes by 'device kind' (e.g. 'CUDA0 KV'), summed over repeats."""
    sizes: dict[str, float] = {}
    for device, kind, mib in _BUFFER.findall(log):
        key = f"{device} {kind}"
        sizes[key] = round(sizes.get(key, 0.0) + float(mib), 2)
    return sizes


def kv_bytes_from_buffers(buffers: dict[str, float]) -> int | None:
    kv = [mib for key, mib in buffers.items() if key.endswith(" KV")]
    return int(round(sum(kv) * MIB)) if kv else None


def run_arm(
    job: dict[str, Any],
    workdir: Path,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    timeout_s: float = 3600.0,
    sampler_factory: Callable[..., NvmlSampler] = NvmlSampler,
) -> ArmOutcome:
    """Run ``job`` in ``python -m bench.worker``; never raises for the arm's own failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{job['op']}-{job['arm']}-{job['n_ctx']}")
    job_path = workdir / f"{tag}.job.json"
    result_path = workdir / f"{tag}.result.json"
    log_path = workdir / f"{tag}.log"
    job_path.write_text(json.dumps(job))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ, FRAQTL_LLAMA_VERBOSE="1", PYTHONUNBUFFERED="1")
    env.update(job.get("env") or {})  # e.g. CUDA_VISIBLE_DEVICES for a one-GPU placement
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                       env.get("PYTHONPATH", "")]))
    child: dict[str, int] = {}
    sampler = sampler_factory(pids=lambda: tuple(child.values()))
    sampler.start()  # the first sample, before the child starts, is the baseline
    t0 = time.perf_counter()
    rc: int | None
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", str(job_path), str(result_path)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env,
        )
        child["pid"] = proc.pid
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        for line in proc.stdout:
            if line.startswith("@progress"):
                _, done, total = line.split()
                on_progress(int(done), int(total))
            if time.monotonic() > deadline:
                proc.kill()
                break
        try:
            rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop()
    log_text = log_path.read_text(errors="replace")
    result: dict[str, Any] = {}
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except json.JSONDecodeError:
            result = {}
    status = result.get("status", "failed")
    reason = result.get("reason", "")
    if status == "running" or rc != 0:
        status = "failed"
        how = f"killed after {timeout_s:.0f} s" if time.monotonic() > deadline else f"exit status {rc}"
        reason = reason or f"worker process stopped ({how}): {_last_error(log_text)[-300:]}"
    peak: float | None = None
    telemetry = sampler.unavailable_reason or "nvml"
    if sampler.available:
        if sampler.peak_process:
            peak, telemetry = sampler.peak_process / MIB, "nvml-process"
        else:
            peak = max(sampler.peak_used - (sampler.baseline_used or 0), 0) / MIB
            telemetry = "nvml-device-minus-baseline"
    per_gpu: list[float] | None = None
    free: list[float] | None = None
    gpus = getattr(sampler, "gpus", [])
    if sampler.available and gpus:
        per_gpu = [round(track.peak_estimate / MIB, 1) for track in gpus]
        free = [round((track.history[0].device_total - track.history[0].device_used) / MIB, 1)
                if track.history else 0.0 for track in gpus]
    markers = list(dict.fromkeys(line.strip() for line in log_text.splitlines()
                                 if _MARKERS.search(line) and not line.startswith("llama_model_loader")))[:40]
    return ArmOutcome(
        arm=job["arm"], status=status, reason=reason, result=result, wall_s=wall,
        peak_vram_mib=peak, telemetry=telemetry, buffers_mib=parse_buffers(log_text),
        markers=markers, log_tail="\n".join(log_text.splitlines()[-20:]),
        peak_vram_mib_gpus=per_gpu, free_mib_gpus=free,
    )


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"fraqtl-bench-{prefix}-"))


def progress_bar() -> Any:
    """A rich progress display on stderr (one bar per arm); silent where stderr is no terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True))


def run_arms(
    arms: list[str], make_job: Callable[[str], dict[str, Any]], workdir: Path, label: str,
    timeout_s: float = 3600.0,
) -> list[ArmOutcome]:
    """Run each arm's job in turn, one process each, with a progress bar per arm."""
    outcomes: list[ArmOutcome] = []
    with progress_bar() as bar:
        for arm in arms:
            task = bar.add_task(f"{label} {arm}", total=None)
            outcome = run_arm(make_job(arm), workdir,
                              on_progress=lambda d, t, task=task: bar.update(task, completed=d, total=t),
                              timeout_s=timeout_s)
            bar.update(task, description=f"{label} {arm} [{outcome.status}]")
            outcomes.append(outcome)
    return outcomes


def base_row(outcome: ArmOutcome, n_ctx: int, info: Any) -> dict[str, Any]:
    """The fields every row carries: arm, context, status, memory figures, markers."""
    from engine.arms import ArmConfig
    arm = ArmConfig.parse(outcome.arm)
    measured = int(outcome.result.get("kv_bytes") or 0) or kv_bytes_from_buffers(outcome.buffers_mib)
    from bench.receipt import METRICS

    row: dict[str, Any] = dict.fromkeys(METRICS)  # every metric present; None where it does not apply
    sidecars = outcome.result.get("sidecars") or {}
    control = bool(sidecars.get("control"))
    row.update({
        # a control arm never reads as the calibrated one
        "arm": f"{arm.label} ({sidecars.get('basis')}-basis control)" if control else arm.label,
        "basis": sidecars.get("basis"),
        "n_ctx": n_ctx,
        "status": outcome.summary(),
        "peak_vram_mib": round(outcome.peak_vram_mib, 1) if outcome.peak_vram_mib is not None else None,
        "telemetry": outcome.telemetry,
        "kv_bytes": measured if outcome.ok else None,
        "kv_bytes_estimate": _kv_estimate(info, arm, n_ctx),
        "kv_bits_per_element": _bits_per_element(info, arm),
        "peak_rss_mib": round(outcome.result.get("peak_rss_mib", 0.0), 1) or None,
        "wall_s": round(outcome.wall_s, 2),
        "buffers_mib": outcome.buffers_mib,
        "markers": outcome.markers,
    })
    return row


def _bits_per_element(info: Any, arm: Any) -> float | None:
    """Allocated bits per cached element; kauto's from its sidecar's ranks (None without sidecars)."""
    from engine.d2 import memory_arm
    from engine.errors import EngineError

    try:
        return round(memory_arm(info, arm).bits_per_element(info.head_dim_k, info.head_dim_v), 4)
    except EngineError:
        return None


def _kv_estimate(info: Any, arm: Any, n_ctx: int) -> int | None:
    """The estimate of the K and V tensors; None for a kauto arm whose model has no sidecars."""
    from engine.errors import EngineError
    from engine.estimates import kv_bytes

    try:
        return kv_bytes(info, arm, n_ctx)
    except EngineError:
        return None

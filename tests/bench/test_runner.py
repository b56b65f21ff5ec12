"""The arm runner: failures become rows, llama.cpp's buffer report is parsed."""

import json
from pathlib import Path

from bench.runner import kv_bytes_from_buffers, parse_buffers, run_arm
from engine.models import resolve

LOG = """load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
llama_kv_cache:      CUDA0 KV buffer size =  4096.00 MiB
llama_context:  CUDA_Host  output buffer size =     0.12 MiB
sched_reserve:      CUDA0 compute buffer size =   560.02 MiB
"""


def test_parse_buffers() -> None:
    buffers = parse_buffers(LOG)
    assert buffers == {"CPU_Mapped model": 92.1, "CUDA0 KV": 4096.0, "CUDA_Host output": 0.12,
                       "CUDA0 compute": 560.02}
    assert kv_bytes_from_buffers(buffers) == 4096 * 1024 * 1024


def test_worker_crash_becomes_a_failed_outcome(tmp_path: Path) -> None:
    job = {"op": "no-such-op", "model": str(resolve(None)), "arm": "f16", "n_ctx": 256, "n_gpu_layers": 0}
    outcome = run_arm(job, tmp_path)
    assert outcome.status == "failed" and "no-such-op" in outcome.reason


def test_process_death_becomes_a_failed_outcome(tmp_path: Path, monkeypatch) -> None:
    # A job the worker cannot even parse: the process exits non-zero without a result file.
    job = {"op": "generate", "model": str(tmp_path / "missing.gguf"), "arm": "f16", "n_ctx": 256}
    monkeypatch.setattr(json, "dumps", lambda obj, **kw: "{not json")
    outcome = run_arm(job, tmp_path)
    assert outcome.status == "failed" and "exit status 1" in outcome.reason


def test_unavailable_arm_is_reported_with_its_reason(tmp_path: Path) -> None:
    job = {"op": "generate", "model": str(resolve(None)), "arm": "d2:k16v32", "n_ctx": 256, "n_gpu_layers": 0,
           "prompts": []}
    outcome = run_arm(job, tmp_path)
    assert outcome.status in ("unavailable", "ok")
    if outcome.status == "unavailable":
        assert outcome.reason


def test_failure_reason_is_the_error_line_not_the_backtrace() -> None:
    from bench.runner import _last_error

    log = ("llama_kv_cache: size = 31.99 MiB\n"
           "ggml-backend.cpp:941: pre-allocated tensor (cache_k_l0 (view)) in a buffer (CUDA0) that cannot run "
           "the operation (SET_ROWS)\n"
           "/x/libggml-base.so.0(ggml_abort+0x15b)[0x7f57a2d1101b]\n"
           "python3(_start+0x25)[0x657a05]\n")
    assert "cannot run the operation (SET_ROWS)" in _last_error(log)

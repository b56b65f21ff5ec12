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


def test_d2_worker_records_the_sidecars_it_used(tmp_path: Path, monkeypatch) -> None:
    # before the fix every receipt said "sidecars": {} (the worker read rt._d2, which does not exist)
    from engine import locations

    monkeypatch.setenv("FRAQTL_DATA_DIR", str(tmp_path / "data"))  # no user sidecars: the shipped ones
    job = {"op": "fill", "model": str(resolve(None)), "arm": "d2", "n_ctx": 256, "n_gpu_layers": 0}
    outcome = run_arm(job, tmp_path)
    assert outcome.ok, outcome.reason
    record = outcome.result["sidecars"]
    assert record["control"] is False and record["source"].startswith("shipped sidecars/ folder")
    assert len(record["files"]) == 2
    assert all(Path(p).is_relative_to(locations.SIDECARS_DIR) and len(d) == 64 for p, d in record["files"].items())


def test_random_basis_control_is_labelled(tmp_path: Path) -> None:
    from bench.runner import base_row
    from engine.gguf import read_gguf

    job = {"op": "fill", "model": str(resolve(None)), "arm": "d2", "n_ctx": 256, "n_gpu_layers": 0,
           "basis": "random", "seed": 3}
    outcome = run_arm(job, tmp_path)
    assert outcome.ok, outcome.reason
    assert outcome.result["sidecars"] == {"basis": "random", "recipe": "k16v32", "control": True, "seed": 3,
                                          "note": "random orthonormal bases (control), not calibrated for this model"}
    row = base_row(outcome, 256, read_gguf(resolve(None)))
    assert row["arm"] == "d2 (random-basis control)" and row["basis"] == "random"


def test_decode_is_timed_after_warm_up(tmp_path: Path) -> None:
    job = {"op": "fill", "model": str(resolve(None)), "arm": "f16", "n_ctx": 256, "n_gpu_layers": 0,
           "fill_tokens": 32, "warmup_tokens": 4, "decode_tokens": 8}
    outcome = run_arm(job, tmp_path)
    assert outcome.ok, outcome.reason
    fill = outcome.result["fill"]
    assert (fill["warmup_tokens"], fill["timed_tokens"]) == (4, 8)
    assert fill["decode_tok_s"] > 0
    # llama.cpp's own eval time counts exactly the timed tokens (reset after the warm-up)
    assert fill["llama_eval_tokens"] == 8 and fill["llama_eval_tok_s"] > 0


def test_cli_refuses_too_few_timed_decode_tokens(capsys) -> None:
    from bench.cli import MIN_TIMED_TOKENS, main

    assert main(["speed", "--quick", "--decode", "8"]) == 1
    assert f"at least {MIN_TIMED_TOKENS}" in capsys.readouterr().err

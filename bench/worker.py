"""The bench worker: one arm, one process. ``python -m bench.worker JOB.json RESULT.json``.

The harness starts one worker per arm so that its memory is attributable (NVML per process,
or device used minus the baseline) and a crash becomes a failure row instead of ending the
run. A job is a JSON file naming the model, the arm, the context and one operation:

* ``generate``: greedy answers to prompts given as token ids (every arm gets the same ids);
* ``kld``: per-token logits over text chunks; the reference arm writes its log-probabilities,
  the others compare against them (KLD, same-top-token rate, PPL);
* ``fill``: fill the context (prefill speed), then decode a few tokens (decode speed).

The result file is rewritten after every prompt, so answers made before a crash survive.
Progress goes to stdout as ``@progress DONE TOTAL`` lines. This module never imports the app.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from engine.files import write_atomic
from engine.metrics import kld as kld_per_token
from engine.metrics import log_softmax

PROGRESS = "@progress"


def _progress(done: int, total: int) -> None:
    print(f"{PROGRESS} {done} {total}", flush=True)


def _write(path: Path, result: dict[str, Any]) -> None:
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_atomic(path, json.dumps(result))


def sidecar_record(settings: Any) -> dict[str, Any]:
    """What supplied a D2 arm's bases: the sidecar files (sha256, which folder) or a control basis.

    Empty for upstream arms. A random or identity basis is a control, marked ``control`` so that
    a receipt can never pass it off as calibrated sidecars.
    """
    if settings is None:
        return {}
    from engine.files import sha256_file
    from engine.sidecar import sidecar_origin

    record: dict[str, Any] = {"basis": settings.basis, "recipe": settings.recipe.label}
    if settings.basis != "sidecar":
        record.update(control=True, seed=settings.seed,
                      note=f"{settings.basis} orthonormal bases (control), not calibrated for this model")
        return record
    paths = [Path(p) for p in (settings.k_sidecar, settings.v_sidecar) if p]
    record["control"] = False
    record["files"] = {str(p): sha256_file(p) for p in paths}
    record["source"] = sidecar_origin(paths[0]) if paths else "none (identity bases)"
    return record


def open_runtime(job: dict[str, Any], logits_all: bool = False) -> Any:
    from engine.arms import ArmConfig
    from engine.d2 import D2Settings
    from engine.runtime import Runtime

    arm = ArmConfig.parse(job["arm"])
    d2 = None
    if arm.is_d2 and job.get("basis", "sidecar") != "sidecar":  # a control arm: no calibrated sidecars
        assert arm.recipe is not None
        d2 = D2Settings(recipe=arm.recipe, basis=str(job["basis"]), seed=int(job.get("seed", 0)))
    return Runtime(
        job["model"], job["arm"], n_ctx=int(job["n_ctx"]), n_batch=int(job.get("n_batch", 512)),
        n_gpu_layers=int(job.get("n_gpu_layers", -1)), yarn=bool(job.get("yarn", False)),
        logits_all=logits_all, n_threads=job.get("n_threads"), d2=d2,
        split_mode=str(job.get("split_mode", "layer")), tensor_split=job.get("tensor_split"),
        rpc_servers=tuple(job.get("rpc_servers") or ()),
    )


def run_generate(rt: Any, job: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    from engine.events import AnswerDone

    answers: list[dict[str, Any]] = result.setdefault("answers", [])
    prompts = job["prompts"]
    for i, prompt in enumerate(prompts):
        done: AnswerDone | None = None
        for event in rt.generate(prompt["tokens"], max_tokens=int(job.get("max_tokens", 32))):
            if isinstance(event, AnswerDone):
                done = event
        assert done is not None
        answers.append({
            "id": prompt["id"], "text": done.text, "n_prompt": done.n_prompt, "n_evaluated": done.n_evaluated,
            "n_generated": done.n_generated, "finish": done.finish,
            "prefill_tok_s": done.prefill_tok_s, "decode_tok_s": done.decode_tok_s,
        })
        _write(out, result)
        _progress(i + 1, len(prompts))


def run_kld(rt: Any, job: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    ref_dir = Path(job["ref_dir"])
    is_ref = bool(job.get("write_ref"))
    score_from = int(job["score_from"])
    chunks: list[list[int]] = job["chunks"]
    klds: list[np.ndarray] = []
    max_diff = 0.0  # the largest |Δ log-prob| against the reference, over every scored position and token
    same: list[np.ndarray] = []
    nll: list[np.ndarray] = []
    per_chunk: list[dict[str, float]] = []
    total = sum(len(c) for c in chunks)
    done = 0
    for ci, chunk in enumerate(chunks):
        rt.truncate(0)
        for progress in rt.prefill(chunk):
            _progress(done + progress.done, total)
        done += len(chunk)
        n = len(chunk)
        logp = log_softmax(np.asarray(rt.llm.scores[score_from : n - 1]))
        targets = np.asarray(chunk[score_from + 1 : n])
        token_nll = -logp[np.arange(len(targets)), targets]
        nll.append(token_nll)
        ref_path = ref_dir / f"chunk{ci:03d}.npy"
        if is_ref:
            np.save(ref_path, logp.astype(np.float32))
            kld = np.zeros(len(targets))
            top = np.ones(len(targets), dtype=bool)
        else:
            ref = np.load(ref_path).astype(np.float64)
            kld = kld_per_token(ref, logp)
            max_diff = max(max_diff, float(np.abs(ref - logp).max()))
            top = ref.argmax(axis=-1) == logp.argmax(axis=-1)
        klds.append(kld)
        same.append(top)
        per_chunk.append({"kld_mean": float(kld.mean()), "ppl": float(np.exp(token_nll.mean())),
                          "same_top_rate": float(top.mean())})
    all_kld = np.concatenate(klds)
    all_nll = np.concatenate(nll)
    result["kld"] = {
        "n_tokens": int(all_kld.size),
        "kld_mean": float(all_kld.mean()),
        "kld_median": float(np.median(all_kld)),
        "kld_p90": float(np.percentile(all_kld, 90)),
        "kld_p99": float(np.percentile(all_kld, 99)),
        "kld_max": float(all_kld.max()),
        "same_top_rate": float(np.concatenate(same).mean()),
        "max_abs_logp_diff": max_diff,
        "ppl": float(np.exp(all_nll.mean())),
        "kld_percentiles": [float(v) for v in np.percentile(all_kld, np.arange(101))],
        "per_chunk": per_chunk,
    }
    _write(out, result)


def _llama_perf(rt: Any) -> Any:
    """llama.cpp's own timings for this context (``llama_perf_context``), or None where absent."""
    fn = getattr(rt.llama_cpp.llama_cpp, "llama_perf_context", None)
    return fn(rt.llm.ctx) if fn is not None else None


def run_fill(rt: Any, job: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    """Prefill ``fill_tokens`` random ids, decode ``warmup_tokens`` untimed, then time ``decode_tokens``.

    Beside the engine's wall-clock rate, llama.cpp's own eval time for the timed tokens is kept
    (``llama_perf_context``, reset after the warm-up): the upstream reference for the same tokens.
    """
    n_decode = int(job.get("decode_tokens", 0))
    n_warm = int(job.get("warmup_tokens", 0)) if n_decode else 0
    n_fill = int(job.get("fill_tokens", 0))
    n_vocab = rt.llm.n_vocab()
    rng = np.random.default_rng(int(job.get("seed", 0)))
    tokens = [int(t) for t in rng.integers(min(300, n_vocab // 2), n_vocab, size=n_fill)]
    fill: dict[str, Any] = {"n_fill": n_fill, "n_decode": n_decode, "warmup_tokens": n_warm, "timed_tokens": n_decode}
    total = n_fill + n_warm + n_decode
    if n_fill:
        t0 = time.perf_counter()
        for progress in rt.prefill(tokens):
            _progress(progress.done, total)
        fill["prefill_s"] = time.perf_counter() - t0
        fill["prefill_tok_s"] = n_fill / max(fill["prefill_s"], 1e-9)
    if n_decode:
        for _ in range(n_warm):  # first tokens after a prefill pay for graph changes and cold caches
            rt.llm.eval([int(np.argmax(rt.last_logits()))])
        reset = getattr(rt.llama_cpp.llama_cpp, "llama_perf_context_reset", None)
        if reset is not None:
            reset(rt.llm.ctx)
        t1 = time.perf_counter()
        for k in range(n_decode):
            token = int(np.argmax(rt.last_logits()))
            rt.llm.eval([token])
            if k % 8 == 7:
                _progress(n_fill + n_warm + k + 1, total)
        fill["decode_s"] = time.perf_counter() - t1
        fill["decode_tok_s"] = n_decode / max(fill["decode_s"], 1e-9)
        perf = _llama_perf(rt) if reset is not None else None
        if perf is not None and perf.n_eval >= n_decode and perf.t_eval_ms > 0:
            fill["llama_eval_tok_s"] = perf.n_eval / (perf.t_eval_ms / 1000.0)
            fill["llama_eval_tokens"] = int(perf.n_eval)
    result["fill"] = fill
    _write(out, result)


OPS = {"generate": run_generate, "kld": run_kld, "fill": run_fill}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    job = json.loads(Path(args[0]).read_text())
    out = Path(args[1])
    result: dict[str, Any] = {"status": "running", "arm": job["arm"], "pid": os.getpid()}
    from engine.arms import ArmConfig
    from engine.errors import ArmUnavailableError, EngineError

    arm = ArmConfig.parse(job["arm"])
    t0 = time.perf_counter()
    try:
        rt = open_runtime(job, logits_all=job["op"] == "kld")
    except ArmUnavailableError as exc:
        result.update(status="unavailable", reason=exc.reason)
        _write(out, result)
        return 0
    except ImportError as exc:
        if arm.is_d2:  # the D2 cache is not in this build yet
            result.update(status="unavailable", reason=f"the D2 engine is not in this build ({exc})")
            _write(out, result)
            return 0
        raise
    except EngineError as exc:
        result.update(status="failed", reason=str(exc))
        _write(out, result)
        return 0
    result["load_s"] = time.perf_counter() - t0
    result["kv_bytes"] = rt.kv_bytes()
    result["sidecars"] = sidecar_record(rt.d2_settings)
    _write(out, result)
    try:
        OPS[job["op"]](rt, job, result, out)
    except Exception as exc:  # a failure row with the reason, never a lost run
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        _write(out, result)
        return 0
    finally:
        rt.close()
    result["status"] = "ok"
    _write(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``fraqtl-bench memory`` and ``speed``: peak VRAM, llama.cpp's buffers and tokens/s per arm.

For each context length and arm, one worker process loads the model with that arm's cache,
fills the context with the same random token ids (prefill tokens/s) and decodes a few tokens
greedily (decode tokens/s). The parent samples NVML every 200 ms (per process where the
driver allows, else device used minus the baseline before the worker started), parses
llama.cpp's own buffer report (model / KV / compute), and puts the analytic estimate from
``engine.estimates`` beside it. Without a GPU the VRAM columns stay empty and say why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import plots, receipt, runner

MIB = 1024 * 1024


def run(kind: str, args: argparse.Namespace, model: Path, argv: list[str] | None) -> Path:
    from engine.arms import ArmConfig
    from engine.estimates import estimate
    from engine.gguf import read_gguf

    from bench.cli import WARMUP_TOKENS

    info = read_gguf(model)
    decode = args.decode
    warmup = WARMUP_TOKENS if decode else 0
    fill = not args.no_fill
    grid = {"contexts": args.ctx, "arms": args.arms, "n_ubatch": args.batch, "fill": fill, "decode_tokens": decode,
            "decode_warmup_tokens": warmup, "basis": args.basis, "seed": args.seed, "flash_attn": True,
            "n_gpu_layers": args.n_gpu_layers, "yarn": args.yarn}
    rec = receipt.new_receipt(kind, model, argv, grid)
    work = runner.scratch_dir(kind)
    with runner.progress_bar() as bar:
        for ctx in args.ctx:
            for arm in args.arms:
                job = {"op": "fill", "model": str(model), "arm": arm, "n_ctx": ctx, "n_batch": args.batch,
                       "n_gpu_layers": args.n_gpu_layers, "n_threads": args.threads, "yarn": args.yarn,
                       "seed": args.seed, "decode_tokens": decode, "warmup_tokens": warmup, "basis": args.basis,
                       "fill_tokens": max(ctx - decode - warmup - 8, 0) if fill else 0}
                task = bar.add_task(f"{kind} {arm} @{ctx}", total=None)
                outcome = runner.run_arm(job, work, timeout_s=args.timeout,
                                         on_progress=lambda d, t, task=task: bar.update(task, completed=d, total=t))
                bar.update(task, description=f"{kind} {arm} @{ctx} [{outcome.status}]")
                row = runner.base_row(outcome, ctx, info)
                est = estimate(info, ArmConfig.parse(arm), ctx, n_ubatch=args.batch)
                fill_result = outcome.result.get("fill", {})
                row.update(
                    prefill_tok_s=round(fill_result["prefill_tok_s"], 1) if "prefill_tok_s" in fill_result else None,
                    decode_tok_s=round(fill_result["decode_tok_s"], 2) if "decode_tok_s" in fill_result else None,
                    n_fill=fill_result.get("n_fill"),
                    decode_warmup_tokens=fill_result.get("warmup_tokens"),
                    decode_timed_tokens=fill_result.get("timed_tokens"),
                    llama_eval_tok_s=(round(fill_result["llama_eval_tok_s"], 2)
                                      if "llama_eval_tok_s" in fill_result else None),
                    estimate_total_mib=round(est.total_mib, 1),
                    estimate_kv_mib=round((est.kv_bytes + est.exact_copy_bytes) / MIB, 1),
                    estimate_weights_mib=round(est.weights_bytes / MIB, 1),
                    estimate_compute_mib=round(est.compute_bytes / MIB, 1),
                    kv_mib=round(row["kv_bytes"] / MIB, 1) if row["kv_bytes"] else None,
                )
                if row["decode_tok_s"] and row["llama_eval_tok_s"]:
                    row["engine_vs_llama"] = round(row["decode_tok_s"] / row["llama_eval_tok_s"], 3)
                if row["kv_bytes"]:
                    row["kv_estimate_error"] = round(row["kv_bytes_estimate"] / row["kv_bytes"] - 1, 5)
                if outcome.result.get("sidecars"):
                    rec["sidecars"][row["arm"]] = outcome.result["sidecars"]
                rec["results"].append(row)
    out = receipt.receipt_dir(args.out, args.name or f"{kind}-{receipt.model_slug(rec['model'])}")
    md = receipt.header_markdown(rec, "Peak VRAM per arm" if kind == "memory" else "Prefill and decode speed per arm")
    telemetry = {row["telemetry"] for row in rec["results"]}
    md += (f"\nFlash attention, ubatch {args.batch}; context {'filled with ' if fill else 'allocated, not filled; '}"
           f"random token ids, then {warmup} untimed warm-up and {decode} timed greedy decode tokens "
           "(decode_tok_s: the engine's wall clock; llama_eval_tok_s: llama.cpp's own eval time for the same "
           "tokens, llama_perf_context). Peak VRAM from NVML every 200 ms "
           f"({', '.join(sorted(telemetry))}); llama.cpp buffers from its own log; estimate from GGUF metadata.\n\n")
    cols = (["arm", "n_ctx", "status", "peak_vram_mib", "estimate_total_mib", "kv_mib", "estimate_kv_mib",
             "kv_bits_per_element", "prefill_tok_s", "decode_tok_s", "llama_eval_tok_s", "decode_timed_tokens"]
            if kind == "memory" else
            ["arm", "n_ctx", "status", "prefill_tok_s", "decode_tok_s", "llama_eval_tok_s", "engine_vs_llama",
             "decode_timed_tokens", "n_fill", "peak_vram_mib", "kv_bits_per_element"])
    md += receipt.markdown_table(rec["results"], cols)
    md += "\n\n### llama.cpp buffers (MiB)\n\n"
    for row in rec["results"]:
        md += f"- {row['arm']} @ {row['n_ctx']}: " + ", ".join(f"{k} {v}" for k, v in row["buffers_mib"].items()) + "\n"
    series: dict[str, list[tuple[int, float]]] = {}
    ref: dict[str, list[tuple[int, float]]] = {}
    for row in rec["results"]:
        if kind == "memory":
            value = row["peak_vram_mib"] if row["peak_vram_mib"] is not None else None
            ref.setdefault(row["arm"], []).append((row["n_ctx"], row["estimate_total_mib"] / 1024))
        else:
            value = row["decode_tok_s"]
        if value is not None and row["status"] == "ok":
            series.setdefault(row["arm"], []).append((row["n_ctx"], value / 1024 if kind == "memory" else value))
    if kind == "memory":
        if not series:  # no GPU here: plot the estimates alone
            series, ref = {f"{arm} (estimate)": pts for arm, pts in ref.items()}, {}
        plots.lines(out / "memory.png", "Peak VRAM per arm (dashed: estimate)", "GiB", series, ref)
        md += "\n![memory](memory.png)\n"
    elif series:
        plots.lines(out / "speed.png", "Decode tokens/s after filling the context", "tokens/s", series)
        md += "\n![speed](speed.png)\n"
    receipt.write(out, rec, md)
    return out

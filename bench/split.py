"""``fraqtl-bench split``: one model's layers over several GPUs against the same run on one GPU.

For each context and arm the model is run twice in worker processes: on GPU 0 alone
(``CUDA_VISIBLE_DEVICES=0``, split mode none) and over ``--gpus`` GPUs (llama.cpp's
``split_mode=layer``, shares from ``--tensor-split`` or, by default, each GPU's free memory).
Each run fills the context (prefill tok/s) and decodes (decode tok/s, after warm-up tokens);
the parent samples every GPU with NVML, so a row carries the peak per GPU and in total, and
llama.cpp's own buffers per device beside ``engine.estimates.split_estimate``. Then the
agreement: the same text through d2 on one GPU and d2 split, next-token log-probabilities
compared position by position (KLD, same top token, max |Δ log p|). Never imports the app.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import plots, receipt, runner

MIB = 1024 * 1024
RunArm = Callable[..., runner.ArmOutcome]


def placements(gpus: int, split_mode: str, tensor_split: list[float] | None) -> list[dict[str, Any]]:
    """The two ways each arm runs: GPU 0 alone, then split over ``gpus`` GPUs."""
    if gpus < 2:
        raise ValueError(f"--gpus {gpus}: a split needs at least 2 GPUs")
    if tensor_split is not None and len(tensor_split) != gpus:
        raise ValueError(f"--tensor-split has {len(tensor_split)} shares for {gpus} GPUs; give one per GPU")
    order = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # CUDA's device i is NVML's GPU i, whose memory is sampled
    return [
        {"label": "1 GPU", "gpus": 1, "split_mode": "none", "tensor_split": None,
         "env": {**order, "CUDA_VISIBLE_DEVICES": "0"}},
        {"label": f"{gpus} GPUs", "gpus": gpus, "split_mode": split_mode, "tensor_split": tensor_split,
         "env": {**order, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))}},
    ]


def device_buffers(buffers: dict[str, float], n_devices: int) -> list[dict[str, float]]:
    """llama.cpp's model / KV / compute buffers of CUDA0..CUDA{n-1} (MiB)."""
    out = []
    for i in range(n_devices):
        out.append({kind: buffers.get(f"CUDA{i} {kind}", 0.0) for kind in ("model", "KV", "compute")})
    return out


def fill_row(outcome: runner.ArmOutcome, place: dict[str, Any], n_ctx: int, info: Any, n_ubatch: int) -> dict[str, Any]:
    """One (arm, context, placement) row: speeds, peaks per GPU and total, buffers and estimates per device."""
    from engine.arms import ArmConfig
    from engine.estimates import split_estimate

    row = runner.base_row(outcome, n_ctx, info)
    fill = outcome.result.get("fill", {})
    n = place["gpus"]
    peaks = outcome.peak_vram_mib_gpus[:n] if outcome.peak_vram_mib_gpus else None
    # the split llama.cpp made: the shares asked for, else each visible GPU's free memory before the run
    shares = place["tensor_split"] or ((outcome.free_mib_gpus or [])[:n] if outcome.free_mib_gpus else None) or [1.0] * n
    est = split_estimate(info, ArmConfig.parse(outcome.arm), n_ctx, shares, n_ubatch=n_ubatch)
    buffers = device_buffers(outcome.buffers_mib, n)
    row.update(
        placement=place["label"], gpus=n, split_mode=place["split_mode"],
        prefill_tok_s=round(fill["prefill_tok_s"], 1) if "prefill_tok_s" in fill else None,
        decode_tok_s=round(fill["decode_tok_s"], 2) if "decode_tok_s" in fill else None,
        peak_vram_mib_gpus=peaks,
        layers_per_gpu=[len(d.layers) for d in est],
        estimate_mib_gpus=[round(d.total_mib, 1) for d in est],
        buffers_mib_gpus=[round(sum(b.values()), 1) for b in buffers] if outcome.ok else None,
    )
    if outcome.ok:
        # llama.cpp logs model, KV and compute buffers; D2's bases and exact copies are allocated apart
        # (llama_fraqtl_attach logs their total), so the comparison leaves them out
        row["estimate_error_gpus"] = [
            round((e.weights_bytes + e.kv_bytes + e.compute_bytes) / MIB / sum(b.values()) - 1, 4)
            if sum(b.values()) else None for e, b in zip(est, buffers)]
    return row


def run(args: argparse.Namespace, model: Path, argv: list[str] | None, run_arm: RunArm = runner.run_arm,
        agreement_model: Path | None = None) -> Path:
    from engine.gguf import read_gguf

    from bench.cli import WARMUP_TOKENS

    info = read_gguf(model)
    places = placements(args.gpus, args.split_mode, args.tensor_split)
    warmup = WARMUP_TOKENS if args.decode else 0
    grid = {"contexts": args.ctx, "arms": args.arms, "gpus": args.gpus, "split_mode": args.split_mode,
            "tensor_split": args.tensor_split, "n_ubatch": args.batch, "decode_tokens": args.decode,
            "decode_warmup_tokens": warmup, "basis": args.basis, "seed": args.seed, "flash_attn": True,
            "yarn": args.yarn, "placements": [p["label"] for p in places],
            "agreement_model": str(agreement_model) if agreement_model else None}
    rec = receipt.new_receipt("split", model, argv, grid)
    work = runner.scratch_dir("split")
    try:
        for ctx in args.ctx:
            for arm in args.arms:
                for place in places:
                    job = {"op": "fill", "model": str(model), "arm": arm, "n_ctx": ctx, "n_batch": args.batch,
                           "n_gpu_layers": -1, "n_threads": args.threads, "yarn": args.yarn, "seed": args.seed,
                           "decode_tokens": args.decode, "warmup_tokens": warmup, "basis": args.basis,
                           "fill_tokens": max(ctx - args.decode - warmup - 8, 0),
                           "split_mode": place["split_mode"], "tensor_split": place["tensor_split"],
                           "env": place["env"]}
                    outcome = run_arm(job, work, timeout_s=args.timeout)
                    print(f"split {arm} @{ctx} {place['label']}: {outcome.summary()}", flush=True)
                    row = fill_row(outcome, place, ctx, info, args.batch)
                    if outcome.result.get("sidecars"):
                        rec["sidecars"][row["arm"]] = outcome.result["sidecars"]
                    rec["results"].append(row)
        rec["agreement"] = agreement(args, agreement_model, places, work, run_arm) if agreement_model else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return write_receipt(args, rec)


def agreement(args: argparse.Namespace, model: Path, places: list[dict[str, Any]], work: Path,
              run_arm: RunArm) -> dict[str, Any]:
    """d2 split against d2 on one GPU over the same chunks: the one-GPU run is the reference."""
    from bench.kld import chunks_of_text
    from bench.tasks import PromptBuilder

    pb = PromptBuilder(model)
    try:
        chunks, sources = chunks_of_text(pb, args.agreement_chunks, args.agreement_len, args.seed)
    finally:
        pb.close()
    ref_dir = work / "agreement-ref"
    ref_dir.mkdir(parents=True, exist_ok=True)
    score_from = args.agreement_len // 2
    runs = []
    for place in places:
        job = {"op": "kld", "model": str(model), "arm": "d2", "n_ctx": args.agreement_len + 256,
               "n_batch": min(args.batch, 512), "n_gpu_layers": -1, "n_threads": args.threads, "chunks": chunks,
               "score_from": score_from, "ref_dir": str(ref_dir), "write_ref": place is places[0],
               "split_mode": place["split_mode"], "tensor_split": place["tensor_split"], "env": place["env"]}
        outcome = run_arm(job, work, timeout_s=args.timeout)
        print(f"agreement d2 {place['label']}: {outcome.summary()}", flush=True)
        runs.append(outcome)
        if not outcome.ok:
            break
    result: dict[str, Any] = {"model": str(model), "chunks": args.agreement_chunks, "chunk_len": args.agreement_len,
                              "scored_from": score_from, "sources": sources,
                              "status": "; ".join(f"{p['label']}: {o.summary()}" for p, o in zip(places, runs))}
    if len(runs) == 2 and runs[1].ok:
        kld = runs[1].result["kld"]
        result.update({k: kld.get(k) for k in ("n_tokens", "kld_mean", "kld_max", "same_top_rate",
                                                "max_abs_logp_diff")})
        result["buffers_mib"] = runs[1].buffers_mib
    return result


def write_receipt(args: argparse.Namespace, rec: dict[str, Any]) -> Path:
    out = receipt.receipt_dir(args.out, args.name or f"split-{receipt.model_slug(rec['model'])}")
    md = receipt.header_markdown(rec, f"One GPU against a layer split over {args.gpus} GPUs")
    md += (f"\nFlash attention, ubatch {args.batch}; each context filled with random token ids, then "
           f"{rec['grid']['decode_warmup_tokens']} untimed warm-up and {args.decode} timed greedy decode tokens. "
           "Peak VRAM from NVML every 200 ms on every GPU (per process where the driver allows, else used minus "
           "the GPU's baseline); buffers from llama.cpp's log (CUDA<i> model + KV + compute); estimates from "
           "engine.estimates.split_estimate with the free memory each GPU had before the run as the split shares "
           "(llama.cpp's default) or --tensor-split.\n\n")
    rows = rec["results"]
    md += receipt.markdown_table(rows, ["arm", "n_ctx", "placement", "status", "peak_vram_mib", "peak_vram_mib_gpus",
                                        "layers_per_gpu", "buffers_mib_gpus", "estimate_mib_gpus",
                                        "estimate_error_gpus", "prefill_tok_s", "decode_tok_s"])
    md += ("\nestimate_mib_gpus: everything the estimate puts on each GPU (D2's bases and exact copies "
           "included); estimate_error_gpus: its weights + KV + compute against llama.cpp's buffers there.\n")
    md += "\n\n" + ratio_lines(rows)
    agree = rec.get("agreement")
    if agree:
        md += (f"\n### Logits: d2 split against d2 on one GPU\n\n{agree['chunks']} chunks × {agree['chunk_len']} "
               f"tokens of {Path(agree['model']).name}, positions {agree['scored_from']}+ scored: "
               f"{agree['status']}.\n\n")
        if agree.get("kld_mean") is not None:
            md += (f"- KLD mean {agree['kld_mean']:.3g}, max {agree['kld_max']:.3g}; same top token "
                   f"{agree['same_top_rate']:.4f}; max |Δ log p| {agree['max_abs_logp_diff']:.3g} over "
                   f"{agree['n_tokens']:,} positions\n")
    md += "\n### llama.cpp buffers (MiB)\n\n"
    for row in rows:
        md += f"- {row['arm']} @ {row['n_ctx']} ({row['placement']}): " + ", ".join(
            f"{k} {v}" for k, v in row["buffers_mib"].items()) + "\n"
    series: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["status"] != "ok" or not row.get("peak_vram_mib_gpus"):
            continue
        for i, peak in enumerate(row["peak_vram_mib_gpus"]):
            series.setdefault(f"{row['placement']}: GPU {i}", {})[f"{row['arm']} @{row['n_ctx'] // 1024}K"] = peak / 1024
    if series:
        plots.bars(out / "split.png", "Peak VRAM per GPU: one GPU vs layer split", "GiB", series)
        md += "\n![peak VRAM per GPU](split.png)\n"
    receipt.write(out, rec, md)
    return out


def ratio_lines(rows: list[dict[str, Any]]) -> str:
    """Per arm and context: the split's total peak and speeds against the one-GPU run."""
    lines = []
    by_key: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["arm"], row["n_ctx"]), {})[row["placement"]] = row
    for (arm, ctx), pair in by_key.items():
        one = pair.get("1 GPU")
        split = next((r for p, r in pair.items() if p != "1 GPU"), None)
        if not one or not split or one["status"] != "ok" or split["status"] != "ok":
            continue
        parts = []
        for key, name in (("peak_vram_mib", "total peak"), ("prefill_tok_s", "prefill"), ("decode_tok_s", "decode")):
            if one.get(key) and split.get(key) is not None:
                parts.append(f"{name} ×{split[key] / one[key]:.3f}")
        if parts:
            lines.append(f"- {arm} @ {ctx}: split / one GPU: " + ", ".join(parts))
    return "\n".join(lines) + "\n" if lines else ""

"""``fraqtl-bench niah`` and ``ruler``: paired retrieval over long contexts, scored per answer.

Cases are built once (token-verified lengths), then every arm answers the very same token
ids greedily in its own process. Each answer is scored (exact / content / digits for codes,
recall and F1 for sets and QA) and paired with the f16 answer to the same prompt: an arm wrong
where f16 was right is a *flip*; a case every arm gets wrong is a *model limit*. Every raw
answer goes into the receipt.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import evaltext, plots, receipt, runner
from bench.scoring import classify
from bench.tasks import EXACT_WINDOW, Case, PromptBuilder, niah_cases, ruler_cases, score_case


def _answer_all(args: argparse.Namespace, model: Path, cases: list[Case], label: str) -> list[runner.ArmOutcome]:
    arms = ["f16"] + [a for a in args.arms if a != "f16"] if "f16" in args.arms else list(args.arms)
    n_ctx = max(c.n_prompt for c in cases) + args.max_tokens + 64
    work = runner.scratch_dir(label)
    prompts = [{"id": c.id, "tokens": c.tokens} for c in cases]

    def make_job(arm: str) -> dict[str, Any]:
        return {"op": "generate", "model": str(model), "arm": arm, "n_ctx": n_ctx, "n_batch": args.batch,
                "n_gpu_layers": args.n_gpu_layers, "n_threads": args.threads, "prompts": prompts,
                "max_tokens": args.max_tokens, "yarn": bool(getattr(args, "yarn", False)),
                "basis": getattr(args, "basis", "sidecar"), "seed": args.seed}

    return runner.run_arms(arms, make_job, work, label, timeout_s=args.timeout)


def pair(cases: list[Case], outcomes: list[runner.ArmOutcome]) -> list[dict[str, Any]]:
    """Per case: every arm's raw answer and scores, with its class against f16."""
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    for outcome in outcomes:
        answers[outcome.arm] = {a["id"]: a for a in outcome.result.get("answers", [])}
    records = []
    for case in cases:
        per_arm: dict[str, Any] = {}
        for outcome in outcomes:
            raw = answers[outcome.arm].get(case.id)
            if raw is None:
                per_arm[outcome.arm] = {"text": None, "status": outcome.summary()}
                continue
            per_arm[outcome.arm] = {**raw, **score_case(case, raw["text"])}
        scored = [a for a in per_arm.values() if "right" in a]
        all_wrong = bool(scored) and not any(a["right"] for a in scored)
        f16 = per_arm.get("f16", {})
        for arm, a in per_arm.items():
            if "right" not in a:
                continue
            if arm == "f16" or "right" not in f16:
                a["class"] = "ok" if a["right"] else "model_limit" if all_wrong else "miss"
            else:
                a["class"] = classify(a["right"], f16["right"], all_wrong)
        records.append({**case.public(), "answers": per_arm})
    return records


def _rows(records: list[dict[str, Any]], outcomes: list[runner.ArmOutcome], info: Any, by_task: bool) -> list[dict]:
    rows = []
    contexts = sorted({r["target_ctx"] for r in records})
    tasks = sorted({r["task"] for r in records}) if by_task else [None]
    for outcome in outcomes:
        for ctx in contexts:
            for task in tasks:
                group = [r for r in records if r["target_ctx"] == ctx and (task is None or r["task"] == task)]
                row = runner.base_row(outcome, ctx, info)
                if task is not None:
                    row["task"] = task
                scored = [r["answers"][outcome.arm] for r in group if "right" in r["answers"][outcome.arm]]
                row["n_prompt_mean"] = round(sum(r["n_prompt"] for r in group) / max(len(group), 1), 1)
                row["fill_min"] = min((r["fill"] for r in group), default=None)
                if not scored:
                    row.update(niah_total=len(group), niah_exact=None, niah_content=None, flips_vs_f16=None)
                    rows.append(row)
                    continue
                classes = [a["class"] for a in scored]
                row.update(
                    niah_total=len(group),
                    niah_exact=sum(bool(a.get("exact")) for a in scored),
                    niah_content=sum(bool(a.get("content")) for a in scored),
                    niah_right=sum(bool(a["right"]) for a in scored),
                    score_mean=round(sum(a["score"] for a in scored) / len(scored), 4),
                    flips_vs_f16=classes.count("flip") if outcome.arm != "f16" else 0,
                    gains_vs_f16=classes.count("gain"),
                    model_limit=classes.count("model_limit"),
                    prefill_tok_s=round(max(a["prefill_tok_s"] for a in scored), 1),
                    decode_tok_s=round(sum(a["decode_tok_s"] for a in scored) / len(scored), 1),
                )
                if "digits" in scored[0]:
                    row["niah_digits"] = sum(bool(a.get("digits")) for a in scored)
                if "f1" in scored[0]:
                    row["f1_mean"] = round(sum(a["f1"] for a in scored) / len(scored), 4)
                rows.append(row)
    return rows


def paired_flips(records: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    """Per arm, paired with f16 on the same prompts: flips (f16 right, arm wrong) and gains, split by
    whether the needle lay in D2's exact window or in the compressed region before it."""
    rows = []
    for arm in arms:
        if arm == "f16":
            continue
        row: dict[str, Any] = {"arm": arm}
        for where, pick in (("all", lambda r: True), ("compressed", lambda r: r.get("in_exact_window") is False),
                            ("window", lambda r: r.get("in_exact_window") is True)):
            group = [r for r in records if pick(r) and "right" in r["answers"].get(arm, {})
                     and "right" in r["answers"].get("f16", {})]
            row[f"n_{where}"] = len(group)
            row[f"flips_{where}"] = sum(r["answers"][arm].get("class") == "flip" for r in group)
            row[f"gains_{where}"] = sum(r["answers"][arm].get("class") == "gain" for r in group)
        rows.append(row)
    return rows


def _window_note(records: list[dict[str, Any]]) -> str:
    placed = [r for r in records if r.get("in_exact_window") is not None]
    outside = sum(r["in_exact_window"] is False for r in placed)
    note = (f"Needles more than {EXACT_WINDOW} tokens from the end of the prompt (in D2's compressed region): "
            f"{outside} of {len(placed)}.")
    if placed and outside * 2 < len(placed):
        note += " Most needles sit in the exact window here, so this run barely tests the compressed cache."
    return note + "\n\n"


def _receipt(kind: str, args: argparse.Namespace, model: Path, argv: list[str] | None, grid: dict[str, Any],
             cases: list[Case], outcomes: list[runner.ArmOutcome]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from engine.gguf import read_gguf

    info = read_gguf(model)
    rec = receipt.new_receipt(kind, model, argv, grid)
    records = pair(cases, outcomes)
    rec["results"] = _rows(records, outcomes, info, by_task=kind == "ruler")
    rec["cases"] = records
    rec["paired_flips"] = paired_flips(records, [o.arm for o in outcomes])
    for outcome in outcomes:
        if outcome.result.get("sidecars"):
            rec["sidecars"][outcome.arm] = outcome.result["sidecars"]
    return rec, records


def _flips_markdown(rec: dict[str, Any]) -> str:
    md = "\n\n## Paired flips vs f16 (f16 right, arm wrong), by where the needle lay\n\n"
    return md + receipt.markdown_table(rec["paired_flips"], ["arm", "n_all", "flips_all", "gains_all",
                                                             "n_compressed", "flips_compressed", "n_window",
                                                             "flips_window"]) + "\n"


def run_niah(args: argparse.Namespace, model: Path, argv: list[str] | None) -> Path:
    pb = PromptBuilder(model)
    try:
        cases = niah_cases(pb, args.ctx, args.depths, args.needles, args.seed, args.text)
    finally:
        pb.close()
    grid = {"contexts": args.ctx, "depths": args.depths, "needles": args.needles, "seed": args.seed,
            "max_tokens": args.max_tokens, "arms": args.arms, "n_batch": args.batch, "min_fill": 0.95,
            "text": evaltext.describe(args.text), "exact_window": EXACT_WINDOW, "basis": args.basis}
    outcomes = _answer_all(args, model, cases, "niah")
    rec, records = _receipt("niah", args, model, argv, grid, cases, outcomes)
    out = receipt.receipt_dir(args.out, args.name or f"niah-{receipt.model_slug(rec['model'])}")
    md = receipt.header_markdown(rec, "NIAH: needles in a haystack")
    md += (f"\nHaystack: {evaltext.label(args.text)}. Contexts {args.ctx} tokens (each prompt ≥ 95 % of its "
           f"target, counted with the model's tokenizer), depths {args.depths}, {args.needles} needle(s) per cell; "
           f"greedy, ≤ {args.max_tokens} tokens. exact = code verbatim, content = all digits right (separators "
           "ignored).\n\n")
    md += _window_note(records)
    md += receipt.markdown_table(rec["results"], ["arm", "n_ctx", "status", "niah_exact", "niah_content",
                                                  "niah_digits", "niah_total", "flips_vs_f16", "gains_vs_f16",
                                                  "model_limit", "fill_min", "peak_vram_mib"])
    md += _flips_markdown(rec)
    md += "\n\n## Paired answers (content scorer)\n\n"
    arms = [o.arm for o in outcomes]
    md += ("| case | tokens | from end | expected | " + " | ".join(arms) + " |\n|"
           + "---|" * (4 + len(arms)) + "\n")
    for r in records:
        cells = []
        for arm in arms:
            a = r["answers"][arm]
            if a.get("text") is None:
                cells.append("–")
            else:
                mark = "✓" if a.get("content") else "✗"
                cls = a.get("class", "")
                cells.append(f"{mark} {cls}" if cls not in ("ok", "") else mark)
        md += (f"| {r['id']} | {r['n_prompt']} | {r.get('needle_from_end') or '–'} | {r['refs'][0]} | "
               + " | ".join(cells) + " |\n")
    for outcome in outcomes:
        if not outcome.result.get("answers"):
            continue
        grid_cells: dict[tuple[int, float], tuple[int, int]] = defaultdict(lambda: (0, 0))
        flips: dict[tuple[int, float], int] = defaultdict(int)
        for r in records:
            a = r["answers"][outcome.arm]
            if "right" not in a:
                continue
            key = (r["target_ctx"], r["depth"])
            found, total = grid_cells[key]
            grid_cells[key] = (found + int(a["right"]), total + 1)
            flips[key] += int(a.get("class") == "flip")
        png = plots.niah_heatmap(out, outcome.arm, args.ctx, args.depths, dict(grid_cells), dict(flips))
        md += f"\n![NIAH {outcome.arm}]({png.name})\n"
    receipt.write(out, rec, md)
    return out


def run_ruler(args: argparse.Namespace, model: Path, argv: list[str] | None) -> Path:
    pb = PromptBuilder(model)
    try:
        cases = ruler_cases(pb, args.ctx, args.tasks, args.samples, args.seed, args.text)
    finally:
        pb.close()
    grid = {"contexts": args.ctx, "tasks": args.tasks, "samples": args.samples, "seed": args.seed,
            "max_tokens": args.max_tokens, "arms": args.arms, "n_batch": args.batch, "min_fill": 0.95,
            "text": evaltext.describe(args.text), "basis": args.basis}
    outcomes = _answer_all(args, model, cases, "ruler")
    rec, records = _receipt("ruler", args, model, argv, grid, cases, outcomes)
    out = receipt.receipt_dir(args.out, args.name or f"ruler-{receipt.model_slug(rec['model'])}")
    md = receipt.header_markdown(rec, "RULER-style tasks")
    md += (f"\nHaystack of the NIAH-style tasks and VT: {evaltext.label(args.text)}. "
           "Tasks from the RULER paper's definitions, generated offline: niah_multikey (content match), "
           "niah_multivalue and vt and cwe (share of references recalled; a case is right when all are), "
           "qa (token F1; right when the answer contains the reference).\n\n")
    md += receipt.markdown_table(rec["results"], ["arm", "n_ctx", "task", "status", "score_mean", "f1_mean",
                                                  "niah_right", "niah_total", "flips_vs_f16", "model_limit"])
    md += _flips_markdown(rec)
    series: dict[str, dict[str, float]] = {}
    for row in rec["results"]:
        if row.get("score_mean") is not None:
            series.setdefault(row["arm"], {})[f"{row['task']}@{row['n_ctx']}"] = row["score_mean"]
    if series:
        plots.bars(out / "ruler.png", "RULER-style scores per task and context", "mean score", series)
        md += "\n\n![RULER](ruler.png)\n"
    md += "\n## Answers\n\n| case | tokens | refs | " + " | ".join(o.arm for o in outcomes) + " |\n"
    md += "|" + "---|" * (3 + len(outcomes)) + "\n"
    for r in records:
        cells = [f"{r['answers'][o.arm].get('score', 0):.2f}" if "score" in r["answers"][o.arm] else "–"
                 for o in outcomes]
        md += f"| {r['id']} | {r['n_prompt']} | {', '.join(r['refs'])} | " + " | ".join(cells) + " |\n"
    receipt.write(out, rec, md)
    return out

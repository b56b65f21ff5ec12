"""``fraqtl-bench kld``: how far each arm's next-token distribution drifts from the f16 cache.

The text is the shipped evaluation text (:mod:`bench.evaltext`: real prose and technical
writing, never used for calibration; ``--text synthetic`` for the templated generator), cut
into chunks of ``chunk_len`` tokens (a BOS first), alternating between its files; each arm evaluates the same chunks with logits for every position. As llama.cpp's
perplexity tool does, only the second half of each chunk is scored, so every scored token
sees at least half a chunk of context. The f16 arm runs first and writes its log-probs; the
others report KLD(f16 ‖ arm) per token (mean, median, p90, p99, max), the share of tokens
whose top token matches f16, and their own perplexity.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from bench import evaltext, plots, receipt, runner, text
from bench.tasks import PromptBuilder
from engine.errors import EngineError


def chunks_of_text(pb: PromptBuilder, n_chunks: int, chunk_len: int, seed: int,
                   text_name: str = evaltext.DEFAULT_TEXT) -> tuple[list[list[int]], list[str]]:
    """``n_chunks`` chunks of ``chunk_len`` tokens and the document each came from.

    Real text: each file is tokenized and cut in order, and chunks are taken from the files in
    turn (prose, technical, prose, ...). Synthetic: one seeded document, grown until it is long enough.
    """
    bos = pb.rt.llm.token_bos()
    body = chunk_len - 1 if bos >= 0 else chunk_len
    head = [bos] if bos >= 0 else []
    if text_name == "synthetic":
        need = n_chunks * body
        n_sentences = need // 6 + 64
        while True:
            tokens = pb.rt.tokenize(text.paragraphs(seed, n_sentences))
            if len(tokens) >= need:
                break
            n_sentences *= 2
        return [head + tokens[i * body : (i + 1) * body] for i in range(n_chunks)], ["synthetic"] * n_chunks
    per_doc: list[list[tuple[str, list[int]]]] = []
    for name, doc in evaltext.documents(text_name, seed, 0):
        tokens = pb.rt.tokenize(doc)
        per_doc.append([(name, tokens[i * body : (i + 1) * body]) for i in range(len(tokens) // body)])
    chunks: list[list[int]] = []
    sources: list[str] = []
    for i in range(max(len(d) for d in per_doc)):
        for doc_chunks in per_doc:
            if i < len(doc_chunks) and len(chunks) < n_chunks:
                name, toks = doc_chunks[i]
                chunks.append(head + toks)
                sources.append(name)
    if len(chunks) < n_chunks:
        raise EngineError(f"The evaluation text holds {len(chunks)} chunks of {chunk_len} tokens, not {n_chunks}; "
                          "ask for fewer or shorter chunks.")
    return chunks, sources


def run(args: argparse.Namespace, model: Path, argv: list[str] | None) -> Path:
    from engine.gguf import read_gguf

    info = read_gguf(model)
    arms = args.arms if "f16" in args.arms else ["f16", *args.arms]
    arms = ["f16"] + [a for a in arms if a != "f16"]  # the reference goes first
    pb = PromptBuilder(model)
    try:
        chunks, sources = chunks_of_text(pb, args.chunks, args.chunk_len, args.seed, args.text)
    finally:
        pb.close()
    score_from = args.chunk_len // 2
    grid = {"chunks": args.chunks, "chunk_len": args.chunk_len, "score_from": score_from, "seed": args.seed,
            "arms": arms, "n_batch": args.batch, "text": evaltext.describe(args.text), "chunk_sources": sources, "basis": args.basis}
    rec = receipt.new_receipt("kld", model, argv, grid)
    work = runner.scratch_dir("kld")
    ref_dir = work / "ref"
    ref_dir.mkdir()
    n_ctx = args.chunk_len + 256

    def make_job(arm: str) -> dict[str, Any]:
        return {"op": "kld", "model": str(model), "arm": arm, "n_ctx": n_ctx, "n_batch": args.batch,
                "n_gpu_layers": args.n_gpu_layers, "n_threads": args.threads, "chunks": chunks,
                "score_from": score_from, "ref_dir": str(ref_dir), "write_ref": arm == "f16",
                "basis": args.basis, "seed": args.seed}

    try:
        outcomes: list[runner.ArmOutcome] = []
        with runner.progress_bar() as bar:
            for arm in arms:
                task = bar.add_task(f"kld {arm}", total=None)
                if outcomes and not outcomes[0].ok:
                    outcome = runner.ArmOutcome(arm, "unavailable", f"the f16 reference failed ({outcomes[0].reason})",
                                                {}, 0.0, None, "", {}, [], "")
                else:
                    outcome = runner.run_arm(make_job(arm), work, timeout_s=args.timeout,
                                             on_progress=lambda d, t, task=task: bar.update(task, completed=d, total=t))
                bar.update(task, description=f"kld {arm} [{outcome.status}]")
                outcomes.append(outcome)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    klds: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        row = runner.base_row(outcome, args.chunk_len, info)
        kld = outcome.result.get("kld") if outcome.ok else None
        row.update({k: (kld[k] if kld else None) for k in
                    ("kld_mean", "kld_median", "kld_p90", "kld_p99", "kld_max", "same_top_rate", "ppl", "n_tokens")})
        if kld:
            row["per_chunk"] = kld["per_chunk"]
            klds[row["arm"]] = kld
        if outcome.result.get("sidecars"):
            rec["sidecars"][row["arm"]] = outcome.result["sidecars"]
        rec["results"].append(row)

    out = receipt.receipt_dir(args.out, args.name or f"kld-{receipt.model_slug(rec['model'])}")
    if klds:
        plots.kld_plot(out / "kld.png", klds)
    md = receipt.header_markdown(rec, "KLD vs the f16 cache")
    md += (f"\n{args.chunks} chunks × {args.chunk_len} tokens of {evaltext.label(args.text)}; positions "
           f"{score_from}–{args.chunk_len - 1} of each chunk scored.\n\n")
    md += receipt.markdown_table(rec["results"], ["arm", "status", "kld_mean", "kld_median", "kld_p99", "kld_max",
                                                  "same_top_rate", "ppl", "n_tokens", "kv_bits_per_element",
                                                  "peak_vram_mib"])
    md += "\n\n![KLD](kld.png)\n" if klds else "\n"
    receipt.write(out, rec, md)
    return out

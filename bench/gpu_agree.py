"""How closely two arms agree token by token: a prompt evaluated as one prefill, then its last
tokens one at a time (the single-query decode path), logits compared per span.

Used by the GPU test (D2 on the GPU against its CPU reference) and, from the command line, on the
GPU machine to put a disagreement beside the floor of the same comparison for f16 (GPU f16 against
CPU f16: different rounding, same cache) and beside an all-exact D2 (every row from the f16 copies),
which separates the compressed rows from the arithmetic:

    python -m bench.gpu_agree --pairs f16/f16@cpu,d2/d2@cpu,d2:k32v16s8w8192/d2:k32v16s8w8192@cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from engine import metrics

N_PROMPT = 2048
N_DECODE = 256


def corpus_tokens(model: Path, n: int = N_PROMPT) -> list[int]:
    """The first ``n`` tokens of the shipped corpus text (the same for every arm)."""
    from engine.runtime import Runtime

    corpus = Path(__file__).resolve().parents[1] / "engine" / "corpus"
    text = "\n\n".join(p.read_text() for p in sorted(corpus.glob("*.txt")) if "LICENSE" not in p.name)
    rt = Runtime(model, "f16", n_ctx=256)
    try:
        toks = rt.tokenize(text)
    finally:
        rt.close()
    if len(toks) < n:
        raise ValueError(f"the corpus has {len(toks)} tokens, fewer than {n}")
    return toks[:n]


def arm_logits(model: Path, arm: str, toks: list[int], n_decode: int = N_DECODE) -> np.ndarray:
    """Logits of every position: all but the last ``n_decode`` tokens in one prefill, those one by one."""
    from engine.runtime import Runtime

    rt = Runtime(model, arm, n_ctx=len(toks) + 256, n_batch=512, logits_all=True)
    try:
        head = len(toks) - n_decode
        rt.llm.eval(toks[:head])
        for t in toks[head:]:
            rt.llm.eval([t])
        return np.array(rt.llm.scores[: len(toks)], dtype=np.float64)
    finally:
        rt.close()


def agreement(ref: np.ndarray, other: np.ndarray, n_decode: int = N_DECODE) -> dict[str, float]:
    """Top-1 agreement and KLD(ref || other): over the second half (the test's span), over its
    prefilled part and over the decoded tokens alone."""
    n = len(ref)
    spans = {"": slice(n // 2, n), "_prefill": slice(n // 2, n - n_decode), "_decode": slice(n - n_decode, n)}
    out: dict[str, float] = {}
    lr, lo = metrics.log_softmax(ref), metrics.log_softmax(other)
    for suffix, span in spans.items():
        out[f"top1{suffix}"] = float((ref[span].argmax(1) == other[span].argmax(1)).mean())
        out[f"kld{suffix}"] = float(metrics.kld(lr[span], lo[span]).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: the bundled model)")
    ap.add_argument("--pairs", required=True,
                    help="comma-separated REF/OTHER arm pairs, e.g. f16/f16@cpu,d2/d2@cpu")
    ap.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    from engine.models import resolve

    model = resolve(str(args.model) if args.model else None)
    toks = corpus_tokens(model)
    cache: dict[str, np.ndarray] = {}
    results: dict[str, Any] = {"model": model.name, "tokens": len(toks), "decoded_one_by_one": N_DECODE}
    for pair in args.pairs.split(","):
        ref, sep, other = pair.partition("/")
        if not sep or not ref or not other:
            ap.error(f"--pairs: {pair!r} is not REF/OTHER (e.g. d2/d2@cpu)")
        for arm in (ref, other):
            if arm not in cache:
                cache[arm] = arm_logits(model, arm, toks)
        results[f"{other} vs {ref}"] = agreement(cache[ref], cache[other])
        print(f"{other} vs {ref}: {json.dumps(results[f'{other} vs {ref}'])}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""KLD(f16 ‖ d2) on SmolLM2 with the calibrated sidecars vs random orthonormal and identity bases.

Same recipe for every basis; a short exact window so that most attended positions are compressed.
Text: held-out chunks from the end of the built-in corpus (calibration read only its first 16K tokens).
Run from the repo root: .venv/bin/python bench/receipts/<this folder>/kld_vs_basis.py [OUT.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from engine import models, sidecar
from engine.arms import ArmConfig
from engine.corpus import builtin_texts
from engine.d2 import D2Settings
from engine.runtime import Runtime

RECIPE = "k16v32s8w64"
CHUNKS, CHUNK_LEN, SCORE_FROM = 2, 1024, 256


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logprobs(rt: Runtime, chunks: list[list[int]]) -> list[np.ndarray]:
    out = []
    for chunk in chunks:
        rt.truncate(0)
        rt.llm.n_tokens = 0
        for _ in rt.prefill(chunk):
            pass
        out.append(log_softmax(np.asarray(rt.llm.scores[SCORE_FROM : len(chunk) - 1])))
    return out


def main() -> None:
    model = models.resolve(None)
    found = sidecar.find_sidecars(models.model_sha256(model), [Path("sidecars")])
    assert found, "run from the repo root with the shipped sidecars"
    k_path, v_path, _ = found
    ref = Runtime(model, "f16", n_ctx=CHUNK_LEN + 64, n_batch=512, logits_all=True)
    text = builtin_texts()[-1].path.read_text()
    tokens = ref.tokenize(text)
    bos = ref.llm.token_bos()
    body = CHUNK_LEN - 1
    tail = tokens[-CHUNKS * body :]
    chunks = [[bos] + tail[i * body : (i + 1) * body] for i in range(CHUNKS)]
    ref_lp = logprobs(ref, chunks)
    ref.close()
    arm = ArmConfig.parse(f"d2:{RECIPE}")
    rows = []
    for name, settings in (
        ("calibrated", D2Settings(recipe=arm.recipe, k_sidecar=k_path, v_sidecar=v_path)),
        ("random seed 0", D2Settings(recipe=arm.recipe, basis="random", seed=0)),
        ("random seed 1", D2Settings(recipe=arm.recipe, basis="random", seed=1)),
        ("identity", D2Settings(recipe=arm.recipe, basis="identity")),
    ):
        t0 = time.perf_counter()
        rt = Runtime(model, arm, n_ctx=CHUNK_LEN + 64, n_batch=512, logits_all=True, d2=settings)
        lp = logprobs(rt, chunks)
        rt.close()
        kld = np.concatenate([(np.exp(r) * (r - a)).sum(axis=-1) for r, a in zip(ref_lp, lp)])
        same = np.concatenate([r.argmax(-1) == a.argmax(-1) for r, a in zip(ref_lp, lp)])
        rows.append({"basis": name, "kld_mean": float(kld.mean()), "kld_median": float(np.median(kld)),
                     "kld_p99": float(np.quantile(kld, 0.99)), "same_top": float(same.mean()),
                     "n_tokens": int(kld.size), "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    result = {"recipe": RECIPE, "chunks": CHUNKS, "chunk_len": CHUNK_LEN, "score_from": SCORE_FROM,
              "text": "last tokens of engine/corpus/python-language-reference.txt (held out)", "rows": rows}
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The recipe a calibration recommends: the recipes that cost the locked recipe's bytes, scored on
text the calibration never read.

Each candidate trades protected K directions against V ones at the model's head size (only the
ones whose cache is exactly as large as the locked recipe's; kauto recipes, K per layer from the K
sidecar's ranks, when they cost no more), reads a held-out stretch of the
calibration corpus (the tokens after those the moments came from) with the new sidecars, and is
scored by the mean KL divergence of its next-token distributions from the f16 cache's. The lowest
is written into the manifest as ``recipe.recommended`` with every candidate's score, so plain
``d2`` uses it (engine.d2.recipe_for). Never imports the app.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.arms import LOCKED, ArmConfig, Recipe
from engine.gguf import GgufInfo
from engine.metrics import kld, log_softmax

#: K ranks tried (at head_dim 128); V takes the rest of the locked recipe's protected directions
K_RANKS = (8, 16, 24, 32, 40)
#: V ranks tried beside kauto's K (at head_dim 128)
KAUTO_V_RANKS = (16, 32)
DEFAULT_HOLDOUT = 2048
#: the exact recent-token window while scoring: short, so that most of what the second half of the
#: held-out text attends to is compressed, as in a long document
SCORE_WINDOW = 128


@dataclasses.dataclass(frozen=True)
class RecipeChoice:
    recommended: Recipe
    scores: dict[str, float]  # recipe label -> mean KLD vs f16 on the held-out tokens
    n_tokens: int
    skipped: int  # corpus tokens before the held-out stretch (the calibration's)
    # kauto recipes not scored because the sidecar's ranks make them cost more: label -> why
    refused: dict[str, str] = dataclasses.field(default_factory=dict)

    def manifest_fields(self) -> dict[str, Any]:
        ranked = ", ".join(f"{k} {v:.5f}" for k, v in sorted(self.scores.items(), key=lambda kv: kv[1]))
        refused = {"refused": dict(self.refused)} if self.refused else {}
        return {**refused,
            "recommended": self.recommended.label,
            "recommended_why": (
                f"lowest mean KLD vs the f16 cache over the second half of {self.n_tokens:,} held-out corpus tokens "
                f"(after the {self.skipped:,} calibrated on; exact window {SCORE_WINDOW} while scoring) among the "
                f"recipes with the locked {LOCKED.label}'s bytes (kauto: no more): {ranked}"
            ),
            "candidates": {k: round(v, 6) for k, v in self.scores.items()},
        }


def equal_memory_recipes(info: GgufInfo, base: Recipe = LOCKED) -> list[Recipe]:
    """Recipes whose cache at this model's head sizes is exactly ``base``'s, one per distinct layout."""
    def layout(r: Recipe) -> tuple[int, int]:
        return r.protected(info.head_dim_k, "k"), r.protected(info.head_dim_v, "v")

    def size(r: Recipe) -> float:
        return ArmConfig("d2", r).kv_bytes_per_token(1, 1, info.head_dim_k, info.head_dim_v)

    total = base.k_rank + base.v_rank
    found: dict[tuple[int, int], Recipe] = {layout(base): base}
    for k in K_RANKS:
        v = total - k
        if not 8 <= v <= 128:
            continue
        r = dataclasses.replace(base, k_rank=k, v_rank=v)
        if size(r) == size(base) and layout(r) not in found:
            found[layout(r)] = r
    return list(found.values())


def kauto_recipes(info: GgufInfo, ranks: Sequence[Sequence[int]], base: Recipe = LOCKED,
                  ) -> tuple[list[Recipe], dict[str, str]]:
    """kauto recipes (K per layer from the K sidecar's ``ranks``) that cost no more than ``base``, and
    why the others were left out. V takes :data:`KAUTO_V_RANKS` (at head_dim 128)."""
    def size(r: Recipe) -> float:
        return ArmConfig("d2", r).kv_bytes_per_token(info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v)

    allowed: list[Recipe] = []
    refused: dict[str, str] = {}
    seen: set[int] = set()
    for v in KAUTO_V_RANKS:
        rec = dataclasses.replace(base, k_auto=True, v_rank=v).with_k_ranks(ranks, info.head_dim_k)
        if rec.protected(info.head_dim_v, "v") in seen:
            continue
        seen.add(rec.protected(info.head_dim_v, "v"))
        if size(rec) <= size(base):
            allowed.append(rec)
        else:
            refused[rec.label] = (f"{size(rec) / size(base) - 1:+.1%} bytes over {base.label} with this sidecar's "
                                  "K ranks (one block type per layer, its largest head rank)")
    return allowed, refused


def held_out(stream: Sequence[int], skip: int, n_tokens: int) -> list[int]:
    """``n_tokens`` of the corpus token stream after the first ``skip`` (empty when it is too short)."""
    piece = list(stream[skip : skip + n_tokens])
    return piece if len(piece) == n_tokens else []


def choose_recipe(model_path: Path, info: GgufInfo, k_path: Path, v_path: Path, tokens: Sequence[int],
                  skipped: int, n_threads: int | None = None) -> RecipeChoice:
    """Score every equal-memory recipe on ``tokens`` (held out) and pick the lowest mean KLD."""
    from engine.d2 import D2Settings
    from engine.runtime import Runtime

    from engine.sidecar import read_sidecar

    ranks = read_sidecar(k_path, "k", info).ranks
    assert ranks is not None
    auto, refused = kauto_recipes(info, ranks.tolist())
    candidates = equal_memory_recipes(info) + auto
    n_ctx = len(tokens) + 16
    score_from = len(tokens) // 2  # positions that see mostly compressed rows

    def logprobs(arm: ArmConfig, d2: D2Settings | None) -> np.ndarray:
        rt = Runtime(model_path, arm, n_ctx=n_ctx, n_batch=min(512, n_ctx), logits_all=True,
                     n_threads=n_threads, d2=d2)
        try:
            for _ in rt.prefill(list(tokens)):
                pass
            return log_softmax(np.asarray(rt.llm.scores[score_from : len(tokens) - 1]))
        finally:
            rt.close()

    ref = logprobs(ArmConfig.parse("f16"), None)
    scores: dict[str, float] = {}
    for recipe in candidates:
        scored = dataclasses.replace(recipe, window=min(recipe.window, SCORE_WINDOW))
        d2 = D2Settings(recipe=scored, k_sidecar=k_path, v_sidecar=v_path)
        scores[recipe.label] = float(kld(ref, logprobs(ArmConfig("d2", scored), d2)).mean())
    best = min(candidates, key=lambda r: (scores[r.label], r != LOCKED))  # ties keep the locked recipe
    return RecipeChoice(best, scores, len(tokens), skipped, refused)

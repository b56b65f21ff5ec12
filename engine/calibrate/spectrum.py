"""The spectrum of captured moments: eigenbases, energy shares, and the K rank rule.

Pure numpy on float64 second moments; never runs a model, never imports the app.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.errors import EngineError
from engine.sidecar import MIN_RANK


DEFAULT_K_ENERGY = 0.80
RANK_STEP = 8


class NonFiniteMomentsError(EngineError):
    def __init__(self, kind: str, layer: int, head: int, n_bad: int) -> None:
        self.kind, self.layer, self.head, self.n_bad = kind, layer, head, n_bad
        super().__init__(
            f"The captured {kind.upper()} moments are not finite ({n_bad:,} values, the first in layer {layer} "
            f"head {head}): the model's activations overflow, as a random-weight model's do (e.g. one from "
            "`fraqtl-bench shape-model`), so no basis can be computed. Calibrate a model with trained weights; "
            "for memory and speed runs on a shape model use the random control basis instead "
            "(`fraqtl-bench memory --basis random`)."
        )


def check_moments(kind: str, moments: np.ndarray) -> None:
    """Raise NonFiniteMomentsError when any (layer, head) moment ``[L, H, d, d]`` is not finite."""
    finite = np.isfinite(moments).all(axis=(-2, -1))
    if not finite.all():
        layer, head = (int(i) for i in np.argwhere(~finite)[0])
        raise NonFiniteMomentsError(kind, layer, head, int((~np.isfinite(moments)).sum()))


def eigenbasis(moment: np.ndarray, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing, >= 0) and orthonormal U[d][c] of a second moment ``[..., d, d]``.

    ``moment`` is the sum of x xᵀ over ``n_tokens`` rows; eigenvalues are per token. Each
    column's sign is fixed so that its largest-magnitude entry is positive (deterministic files).
    """
    m = np.asarray(moment, dtype=np.float64) / max(n_tokens, 1)
    m = 0.5 * (m + np.swapaxes(m, -1, -2))
    w, u = np.linalg.eigh(m)
    w, u = w[..., ::-1], u[..., ::-1]
    idx = np.argmax(np.abs(u), axis=-2)[..., None, :]
    signs = np.sign(np.take_along_axis(u, idx, axis=-2))
    signs[signs == 0] = 1.0
    return np.clip(w, 0.0, None), np.ascontiguousarray(u * signs)


def energy_share(eigenvalues: np.ndarray, rank: int | np.ndarray) -> np.ndarray:
    """Share of the energy in the top ``rank`` directions, per row of ``eigenvalues [..., d]``."""
    w = np.asarray(eigenvalues, dtype=np.float64)
    cum = np.cumsum(w, axis=-1)
    total = cum[..., -1]
    r = np.broadcast_to(np.asarray(rank), total.shape)
    top = np.take_along_axis(cum, (r - 1)[..., None].astype(np.int64), axis=-1)[..., 0]
    return np.where(total > 0, top / np.where(total > 0, total, 1.0), 1.0)


def energy_rank(eigenvalues: np.ndarray, target: float, step: int = RANK_STEP, minimum: int = MIN_RANK) -> int:
    """Smallest R (a multiple of ``step``, >= ``minimum``, <= d) with top-R energy share >= target."""
    w = np.asarray(eigenvalues, dtype=np.float64)
    d = w.shape[-1]
    total = w.sum()
    if total <= 0:
        return min(minimum, d)
    cum = np.cumsum(w) / total
    for r in range(minimum, d + 1, step):
        if cum[r - 1] >= target - 1e-12:
            return r
    return d


def choose_ranks(eigenvalues: np.ndarray, k_rank: int | str, target: float = DEFAULT_K_ENERGY,
                 budget: float | None = None) -> np.ndarray:
    """int32 ranks [layers, heads]: fixed ``k_rank``, the energy rule when it is 'auto', or for
    'budget' the energy rule at the highest target whose kauto cache fits ``budget`` K bytes per
    head (:func:`budget_target`)."""
    lead = eigenvalues.shape[:-1]
    if k_rank == "budget":
        if budget is None:
            raise EngineError("the 'budget' K rank rule needs a byte budget.")
        return choose_ranks(eigenvalues, "auto", budget_target(eigenvalues, budget))
    if k_rank != "auto":
        return np.full(lead, int(k_rank), dtype=np.int32)
    flat = eigenvalues.reshape(-1, eigenvalues.shape[-1])
    return np.array([energy_rank(w, target) for w in flat], dtype=np.int32).reshape(lead)


K_ORDERS = ("query", "energy")


def query_order(eigenvalues: np.ndarray, basis: np.ndarray, q_moments: np.ndarray,
                q_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """K's directions reordered by their share of the attention scores' second moment.

    A score is q·k = Σ_c (q·u_c)(k·u_c); with q and k uncorrelated, direction c adds
    E[(q·u_c)²]·E[(k·u_c)²] = (u_cᵀ Q u_c)·λ_c to E[(q·k)²], where Q is the second moment of the
    queries that read this KV head (summed over its query heads). The engine keeps the first
    directions exact, so they should be the ones the scores depend on most, not the ones K has
    most energy in. ``eigenvalues [..., c]``, ``basis [..., d, c]`` (columns are directions),
    ``q_moments [..., d, d]`` (sums over ``q_tokens`` tokens); returns both reordered, stable
    among equal shares.
    """
    q = np.asarray(q_moments, dtype=np.float64) / max(q_tokens, 1)
    u = np.asarray(basis, dtype=np.float64)
    q_var = np.einsum("...dc,...de,...ec->...c", u, q, u)
    share = np.asarray(eigenvalues, dtype=np.float64) * np.clip(q_var, 0.0, None)
    order = np.argsort(-share, axis=-1, kind="stable")
    return (np.take_along_axis(eigenvalues, order, axis=-1),
            np.ascontiguousarray(np.take_along_axis(basis, order[..., None, :], axis=-1)))


#: kauto's V rank (at head_dim 128) when the K ranks are fitted to the locked recipe's bytes
BUDGET_V_RANK = 16


def kauto_budget(head_dim_k: int, head_dim_v: int) -> float:
    """K bytes per token and head that kautov16 may spend, averaged over layers: the locked recipe's
    K + V bytes minus V's at 16 protected directions (at head_dim 128)."""
    from engine.arms import LOCKED

    v = dataclasses.replace(LOCKED, v_rank=BUDGET_V_RANK)
    return LOCKED.head_bytes(head_dim_k, "k") + LOCKED.head_bytes(head_dim_v, "v") - v.head_bytes(head_dim_v, "v")


def budget_target(eigenvalues: np.ndarray, budget: float, step: float = 0.005) -> float:
    """The highest energy target (a multiple of ``step``) whose energy-rule ranks make kauto's K cache
    fit ``budget`` bytes per token and head, averaged over layers.

    kauto stores every head of a layer with the block type of the layer's largest rank (one K tensor
    per layer in llama.cpp), so the cost of a target is that of each layer's largest head rank,
    rounded up to a block type. Raises EngineError when even the smallest ranks cost more.
    """
    from engine.arms import LOCKED, kauto_protect

    w = np.asarray(eigenvalues, dtype=np.float64)
    d = w.shape[-1]
    for target in np.round(np.arange(1.0, 0.0, -step), 6):
        ranks = choose_ranks(w, "auto", float(target))
        cost = np.mean([LOCKED.block_bytes(d, kauto_protect(int(layer.max()), d), "k") for layer in ranks])
        if cost <= budget + 1e-9:
            return float(target)
    raise EngineError(f"no K ranks fit {budget:g} bytes per head: even {MIN_RANK} directions per head cost more.")

"""How far one cache's next-token distributions are from another's: the one log-softmax and KL
divergence that the bench, the calibrator's recipe choice and the tests share.

Never imports the app.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (stable for large logits)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kld(ref_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(ref || other) per position from log-probabilities, clipped at 0 (rounding can go below)."""
    ref = np.asarray(ref_logp, dtype=np.float64)
    return np.maximum((np.exp(ref) * (ref - np.asarray(logp, dtype=np.float64))).sum(axis=-1), 0.0)

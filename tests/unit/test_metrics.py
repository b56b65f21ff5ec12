"""The one log-softmax and KL divergence the bench, the recipe choice and the tests share."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.metrics import kld, log_softmax

logits = arrays(np.float64, (3, 7), elements=st.floats(-50, 50, allow_nan=False))


@given(logits)
def test_log_softmax_is_a_distribution_even_for_large_logits(x: np.ndarray) -> None:
    p = np.exp(log_softmax(x + 1e4))  # shifted far up: a naive exp overflows
    assert np.all(np.isfinite(p))
    assert np.allclose(p.sum(axis=-1), 1.0)


@given(logits, logits)
def test_kld_is_zero_for_the_same_and_positive_otherwise(a: np.ndarray, b: np.ndarray) -> None:
    la, lb = log_softmax(a), log_softmax(b)
    assert np.allclose(kld(la, la), 0.0)
    d = kld(la, lb)
    assert np.all(d >= 0.0)
    # against the definition, summed over the vocabulary
    want = (np.exp(la) * (la - lb)).sum(axis=-1)
    assert np.allclose(d, np.maximum(want, 0.0))


def test_kld_is_not_symmetric_and_names_its_reference() -> None:
    ref = log_softmax(np.array([[4.0, 0.0, 0.0]]))
    other = log_softmax(np.array([[0.0, 0.0, 0.0]]))
    assert kld(ref, other)[0] != kld(other, ref)[0]
    assert kld(ref, other)[0] > 0.5

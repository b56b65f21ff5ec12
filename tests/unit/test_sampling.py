"""Token choice: greedy is argmax, the penalty is llama.cpp's, temperature and top-p sample as stated."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import SamplingError
from engine.sampling import GREEDY, Sampling, TokenSampler, penalize


def test_greedy_is_argmax_and_the_default() -> None:
    logits = np.array([0.1, 2.5, -1.0, 2.4], dtype=np.float32)
    assert GREEDY.greedy and Sampling() == GREEDY
    assert TokenSampler().pick(logits, recent=[1, 1, 1]) == 1  # no penalty unless asked for
    assert GREEDY.describe() == "greedy"


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = np.array([2.0, -1.0, 3.0, 0.5], dtype=np.float32)
    out = penalize(logits, [0, 1, 0, 99, -5], 2.0)  # repeats count once; ids outside the vocabulary are ignored
    assert out.tolist() == [1.0, -2.0, 3.0, 0.5]
    assert logits.tolist() == [2.0, -1.0, 3.0, 0.5]  # the caller's logits are untouched
    # greedy with a penalty moves off the token just repeated
    sampler = TokenSampler(Sampling(repeat_penalty=2.0))
    assert sampler.pick(np.array([3.0, 2.0]), recent=[0]) == 1
    assert sampler.pick(np.array([3.0, 2.0]), recent=[]) == 0
    # only the last repeat_last_n tokens count
    assert TokenSampler(Sampling(repeat_penalty=2.0, repeat_last_n=1)).pick(np.array([3.0, 2.0]), recent=[0, 1]) == 0


def test_temperature_samples_the_softmax_and_a_seed_reproduces_it() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    draws = [TokenSampler(Sampling(temperature=1.0, seed=7)).pick(logits) for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed, the same token
    sampler = TokenSampler(Sampling(temperature=1.0, seed=1))
    counts = np.bincount([sampler.pick(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.03)
    hot = TokenSampler(Sampling(temperature=4.0, seed=1))  # a high temperature flattens the distribution
    flat = np.bincount([hot.pick(logits) for _ in range(4000)], minlength=3) / 4000
    assert flat[2] > 0.27 and flat[0] < 0.42


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    sampler = TokenSampler(Sampling(temperature=1.0, top_p=0.8, seed=3))
    seen = {sampler.pick(logits) for _ in range(500)}
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.8
    tiny = TokenSampler(Sampling(temperature=1.0, top_p=1e-6, seed=3))
    assert {tiny.pick(logits) for _ in range(50)} == {0}  # the most likely token is always kept
    assert Sampling(temperature=0.7, top_p=0.9, repeat_penalty=1.2).describe() == "T 0.7 · top-p 0.9 · repeat ×1.2"


@pytest.mark.parametrize(("sampling", "message"), [
    (Sampling(temperature=-0.1), "The temperature must be between 0 .greedy. and 5, not -0.1."),
    (Sampling(temperature=float("nan")), "The temperature must be"),
    (Sampling(top_p=0.0), "The top-p must be above 0 and at most 1"),
    (Sampling(top_p=1.5), "The top-p must be above 0 and at most 1"),
    (Sampling(repeat_penalty=0.9), "The repetition penalty must be between 1 .off. and 5, not 0.9."),
    (Sampling(repeat_last_n=-1), "The repetition window must be 0 or more tokens"),
])
def test_values_out_of_range_are_named(sampling: Sampling, message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        TokenSampler(sampling)

"""How the next token is chosen from the logits: greedy, or sampled with temperature and top-p.

:class:`Sampling` is a small frozen value that travels with each answer request (the worker
pipes it to the child unchanged). The default is greedy with no repetition penalty, which
is exactly ``argmax`` of the logits: the arm comparisons and the benchmarks rely on that.
The penalty follows llama.cpp's (a token seen in the last ``repeat_last_n`` tokens has a
positive logit divided by it and a negative one multiplied by it). This module must never
import the app.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from engine.errors import SamplingError

MAX_TEMPERATURE = 5.0
MAX_REPEAT_PENALTY = 5.0


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy (argmax); above 0 the logits are divided by it and sampled
    top_p: float = 1.0  # nucleus: sample only from the smallest set of tokens holding this probability
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # how far back the penalty looks, prompt tokens included
    seed: int | None = None  # None: a fresh seed for each answer

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> Sampling:
        """Raise :class:`SamplingError` for a value the sampler cannot use."""
        if not (np.isfinite(self.temperature) and 0.0 <= self.temperature <= MAX_TEMPERATURE):
            raise SamplingError("temperature", self.temperature, f"between 0 (greedy) and {MAX_TEMPERATURE:g}")
        if not (np.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise SamplingError("top-p", self.top_p, "above 0 and at most 1 (1 keeps every token)")
        if not (np.isfinite(self.repeat_penalty) and 1.0 <= self.repeat_penalty <= MAX_REPEAT_PENALTY):
            raise SamplingError("repetition penalty", self.repeat_penalty,
                                f"between 1 (off) and {MAX_REPEAT_PENALTY:g}")
        if self.repeat_last_n < 0:
            raise SamplingError("repetition window", self.repeat_last_n, "0 or more tokens")
        return self

    def describe(self) -> str:
        """A few words for a status line or a transcript: ``greedy`` or ``T 0.7 · top-p 0.9``."""
        parts = ["greedy"] if self.greedy else [f"T {self.temperature:g}"]
        if not self.greedy and self.top_p < 1.0:
            parts.append(f"top-p {self.top_p:g}")
        if self.repeat_penalty != 1.0:
            parts.append(f"repeat ×{self.repeat_penalty:g}")
        return " · ".join(parts)


GREEDY = Sampling()


class TokenSampler:
    """Picks tokens for one answer; holds the random generator so a seed reproduces the answer."""

    def __init__(self, sampling: Sampling = GREEDY) -> None:
        self.sampling = sampling.validate()
        self.rng = np.random.default_rng(sampling.seed)

    def pick(self, logits: np.ndarray, recent: Sequence[int] = ()) -> int:
        """The next token for ``logits`` (one row, n_vocab); ``recent`` are the tokens so far."""
        s = self.sampling
        if s.repeat_penalty != 1.0 and s.repeat_last_n and len(recent):
            logits = penalize(logits, recent[-s.repeat_last_n:], s.repeat_penalty)
        if s.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / s.temperature
        order = np.argsort(-scaled, kind="stable")
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if s.top_p < 1.0:
            # keep tokens until their mass reaches top_p (within rounding); the most likely is always kept
            keep = int(np.searchsorted(np.cumsum(probs), s.top_p - 1e-12, side="left")) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])


def penalize(logits: np.ndarray, tokens: Sequence[int], penalty: float) -> np.ndarray:
    """llama.cpp's repetition penalty over the distinct ``tokens`` (a copy; ``logits`` is kept)."""
    out = logits.copy()
    seen = np.unique(np.asarray(tokens, dtype=np.int64))
    seen = seen[(seen >= 0) & (seen < len(out))]
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out

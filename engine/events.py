"""Events a runtime yields while it turns a prompt into an answer.

Small frozen dataclasses, picklable, so that a worker process can send them over a pipe
unchanged. This module must never import the app.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PrefillProgress:
    done: int  # prompt tokens evaluated so far in this call
    total: int  # prompt tokens this call must evaluate (after prefix reuse)
    reused: int  # prompt tokens taken from the cache without evaluation
    tok_s: float
    eta_s: float


@dataclasses.dataclass(frozen=True)
class Token:
    text: str
    token_id: int


@dataclasses.dataclass(frozen=True)
class AnswerDone:
    text: str
    n_prompt: int  # tokens in the whole prompt
    n_evaluated: int  # prompt tokens evaluated by this call (the rest were reused)
    n_generated: int
    prefill_tok_s: float
    decode_tok_s: float
    finish: str  # "stop" (end of generation token), "length", "cancelled"
    token_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class EngineFailed:
    """Sent by a worker when its runtime raised or its process died."""

    message: str
    kind: str  # the error class name


Event = PrefillProgress | Token | AnswerDone | EngineFailed

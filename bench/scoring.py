"""Scorers for retrieval answers: exact, content, digits-only, token F1 and set recall.

Pure functions over strings, so that every receipt can be re-scored from its raw answers.
* exact: the code appears in the answer exactly as written (separators included).
* content: every letter and digit of the code appears, in order and contiguous, once
  separators (spaces, dashes, dots, commas …) are ignored on both sides; case-insensitive.
* digits: only the digits are compared (letters and separators ignored).
* f1: SQuAD-style token F1 (lower-case, punctuation and articles dropped).
* recall_all: RULER's ``string_match_all`` — the share of references found in the answer.
This module never loads a model.
"""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _alnum(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def score_exact(answer: str, code: str) -> bool:
    return bool(code) and code in answer


def score_content(answer: str, code: str) -> bool:
    want = _alnum(code)
    return bool(want) and want in _alnum(answer)


def score_digits(answer: str, code: str) -> bool:
    want = _digits(code)
    return bool(want) and want in _digits(answer)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def f1(prediction: str, reference: str) -> float:
    """Token-level F1 of a prediction against one reference (SQuAD rules)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, references: list[str]) -> float:
    return max((f1(prediction, r) for r in references), default=0.0)


def recall_all(prediction: str, references: list[str]) -> float:
    """Share of references that occur in the prediction (case-insensitive)."""
    if not references:
        return 0.0
    low = prediction.lower()
    return sum(ref.lower() in low for ref in references) / len(references)


def set_f1(prediction: str, references: list[str]) -> float:
    """F1 between the set of words in the prediction and a reference set of single words."""
    refs = {r.lower() for r in references}
    pred = set(normalize_answer(prediction).split())
    if not refs or not pred:
        return 0.0
    hit = len(refs & pred)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(pred), hit / len(refs)
    return 2 * precision * recall / (precision + recall)


def classify(arm_right: bool, f16_right: bool, all_wrong: bool) -> str:
    """Failure class of one arm's answer against the fp16 baseline on the same prompt."""
    if arm_right:
        return "gain" if not f16_right else "ok"
    if all_wrong:
        return "model_limit"
    return "flip" if f16_right else "miss"

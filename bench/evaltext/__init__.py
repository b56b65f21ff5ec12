"""The evaluation text: real prose and technical writing for KLD chunks and retrieval haystacks.

Shipped with the bench (provenance and licences in ``README.md`` beside this file), read
offline, and never used for calibration: ``fraqtl-calibrate`` reads ``engine/corpus`` and a
test keeps the two disjoint. ``real`` (the default) is these files; ``synthetic`` is the
templated generator :mod:`bench.text`, kept for comparison with older receipts. This module
only reads and cuts text; it never runs a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any

from bench import text as synthetic

EVALTEXT_DIR = Path(__file__).resolve().parent
TEXT_CHOICES = ("real", "synthetic")
DEFAULT_TEXT = "real"


@dataclasses.dataclass(frozen=True)
class EvalText:
    """One shipped evaluation file and where it comes from."""

    filename: str
    kind: str  # "prose" or "technical"
    source: str
    licence: str

    @property
    def path(self) -> Path:
        return EVALTEXT_DIR / self.filename

    def read(self) -> str:
        return _read(self.filename)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


EVAL_TEXTS: tuple[EvalText, ...] = (
    EvalText("adventures-of-sherlock-holmes.txt", "prose",
             "Arthur Conan Doyle, The Adventures of Sherlock Holmes (1892), adventures I-IV; "
             "Project Gutenberg eBook #1661", "public domain"),
    EvalText("rust-book-smart-pointers-and-concurrency.txt", "technical",
             "The Rust Programming Language (rust-lang/book @917544888a55), chapters 15-16, prose only",
             "MIT OR Apache-2.0 (see LICENSE-rust-book-MIT.txt)"),
)


@cache
def _read(filename: str) -> str:
    return (EVALTEXT_DIR / filename).read_text(encoding="utf-8")


def check_choice(name: str) -> str:
    if name not in TEXT_CHOICES:
        from engine.errors import EngineError

        raise EngineError(f"'{name}' is not an evaluation text; choose one of {', '.join(TEXT_CHOICES)}.")
    return name


def describe(name: str) -> dict[str, Any]:
    """What a receipt records about the text: its name and, for real text, each file's provenance."""
    if check_choice(name) == "synthetic":
        return {"name": "synthetic", "generator": "bench.text.paragraphs (templated sentences, seeded)"}
    return {"name": "real", "files": [{"file": t.filename, "kind": t.kind, "source": t.source,
                                       "licence": t.licence, "sha256": t.sha256} for t in EVAL_TEXTS]}


def label(name: str) -> str:
    """One line for a receipt's markdown."""
    if check_choice(name) == "synthetic":
        return "synthetic templated prose (bench.text.paragraphs)"
    return "real text: " + "; ".join(f"{t.source} ({t.licence})" for t in EVAL_TEXTS)


#: longest filler unit in words: a fit to a token target must be able to stop within ~5 %
MAX_UNIT_WORDS = 12

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))\s+(?=[\"'“‘(A-Z0-9_`])")


@cache
def _sentences_of(filename: str) -> tuple[str, ...]:
    out: list[str] = []
    for para in _read(filename).split("\n\n"):
        for sentence in _SENTENCE_END.split(para.strip()):
            words = sentence.split()
            # a long sentence is cut into pieces so that a haystack can be fitted closely to its length
            out.extend(" ".join(words[i : i + MAX_UNIT_WORDS]) for i in range(0, len(words), MAX_UNIT_WORDS))
    return tuple(out)


def sentences(name: str, seed: int, n: int) -> list[str]:
    """``n`` consecutive sentences of filler (a haystack), the same for the same (name, seed, n).

    Real text: a contiguous run starting at a seed-chosen point, alternating between the files
    (prose, then technical writing, ...) and wrapping around. Units are sentences, and sentences
    longer than MAX_UNIT_WORDS words are cut into pieces, so a needle may sit inside a long sentence.
    """
    if check_choice(name) == "synthetic":
        return synthetic.sentences(seed, n)
    pools = [_sentences_of(t.filename) for t in EVAL_TEXTS]
    out: list[str] = []
    which = seed % len(pools)
    pos = [(seed * 7919) % len(p) for p in pools]
    while len(out) < n:
        pool = pools[which]
        take = min(n - len(out), 400)  # runs of ~400 sentences keep each passage coherent
        for _ in range(take):
            out.append(pool[pos[which] % len(pool)])
            pos[which] += 1
        which = (which + 1) % len(pools)
    return out


def documents(name: str, seed: int, n_sentences: int) -> list[tuple[str, str]]:
    """(label, text) documents for KLD chunks: each real file whole, or one synthetic document."""
    if check_choice(name) == "synthetic":
        return [("synthetic", synthetic.paragraphs(seed, n_sentences))]
    return [(t.filename, t.read()) for t in EVAL_TEXTS]

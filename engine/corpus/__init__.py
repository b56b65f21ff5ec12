"""The built-in calibration corpus that ``fraqtl-calibrate`` uses when given no ``--corpus``.

Two English technical texts, shipped as package data (see ``SOURCES.md`` for provenance):
``technical-prose.txt``, written for this project (MIT, like the rest of the repository), and
``python-language-reference.txt``, sections of the Python Language Reference taken from
CPython 3.11's ``pydoc_data/topics.py`` (PSF License Version 2, ``LICENSE-PSF.txt``). Order
matters: a small token budget reads the original prose first. This module only names files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class CorpusText:
    """One built-in text and where it comes from."""

    filename: str
    source: str
    licence: str

    @property
    def path(self) -> Path:
        return CORPUS_DIR / self.filename


BUILTIN: tuple[CorpusText, ...] = (
    CorpusText("technical-prose.txt", "written for fraqtl-chat", "MIT"),
    CorpusText(
        "python-language-reference.txt",
        "Python Language Reference sections from CPython 3.11.7 pydoc_data/topics.py",
        "PSF-2.0 (see LICENSE-PSF.txt)",
    ),
)


def builtin_texts() -> tuple[CorpusText, ...]:
    return BUILTIN

"""Page citations in answers (``[p. 3]``, ``(p. 3)``, ``page 3``), checked against the pages.

A citation is *found* when its page exists and the sentence citing it is supported by that
page: a quoted passage must appear on the page; otherwise most of the sentence's content
words must, and a sentence with none ("See [p. 2].") is never found. This module only reads text.
"""

from __future__ import annotations

import dataclasses
import re

from app.ingest import Document

_CITE = re.compile(r"[\[(]\s*(?:p|pp|page)\.?\s*(\d+)\s*[\])]|\bpage\s+(\d+)\b", re.IGNORECASE)
_QUOTE = re.compile(r"[\"“]([^\"”]{8,})[\"”]")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]{3,}")
_STOP = {"this", "that", "with", "from", "which", "were", "have", "there", "their", "page", "they",
         "about", "would", "also", "document", "according", "into", "than", "them", "these", "been"}


@dataclasses.dataclass(frozen=True)
class Citation:
    page: int
    found: bool
    reason: str  # why it was not found, "" when found

    @property
    def label(self) -> str:
        return f"p. {self.page} ✓" if self.found else f"p. {self.page} ✗ {self.reason}"


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _sentence_around(text: str, start: int, end: int) -> str:
    left = max(text.rfind(". ", 0, start), text.rfind("\n", 0, start))
    right_candidates = [i for i in (text.find(". ", end), text.find("\n", end)) if i >= 0]
    right = min(right_candidates) if right_candidates else len(text)
    return text[left + 1 : right]


def check_citations(answer: str, document: Document) -> list[Citation]:
    """Every page cited in ``answer``, in order of first mention, checked against ``document``."""
    results: dict[int, Citation] = {}
    for match in _CITE.finditer(answer):
        number = int(match.group(1) or match.group(2))
        if number in results and results[number].found:
            continue
        page = document.page(number)
        if page is None:
            results[number] = Citation(number, False, "no such page")
            continue
        sentence = _sentence_around(answer, match.start(), match.end())
        page_text = _squash(page)
        quotes = _QUOTE.findall(sentence)
        if quotes:
            ok = all(_squash(q) in page_text for q in quotes)
            results[number] = Citation(number, ok, "" if ok else "quote not on that page")
            continue
        words = {w.lower() for w in _WORD.findall(_CITE.sub("", sentence))} - _STOP
        if not words:  # "See [p. 2]." claims nothing that could be checked: never a ✓
            results[number] = Citation(number, False, "nothing in the sentence to check")
            continue
        hits = sum(1 for w in words if w in page_text)
        ok = hits / len(words) >= 0.5
        results[number] = Citation(number, ok, "" if ok else "not supported by that page")
    return list(results.values())

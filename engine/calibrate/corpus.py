"""Calibration text: the user's files (text, markdown, PDF) or the built-in corpus, with digests.

Only reads files; never runs a model, never imports the app.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.corpus import builtin_texts
from engine.errors import EngineError


class CorpusError(EngineError):
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"Cannot use {path} as calibration text ({reason}); pass a text, markdown or PDF file.")


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    path: Path
    sha256: str
    n_bytes: int
    source: str
    licence: str


def read_text(path: Path) -> str:
    """The text of a .txt/.md (UTF-8) or .pdf file."""
    if not path.is_file():
        raise CorpusError(str(path), "no such file")
    if path.suffix.lower() == ".pdf":
        try:
            from pypdf import PdfReader

            reader = PdfReader(str(path))
            text = "\n\n".join((page.extract_text() or "") for page in reader.pages)
        except Exception as exc:  # pypdf raises many types on damaged files
            raise CorpusError(str(path), f"the PDF cannot be read: {exc}") from exc
        if not text.strip():
            raise CorpusError(str(path), f"its {len(reader.pages)} pages have no text layer (a scan?)")
        return text
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorpusError(str(path), str(exc)) from exc


def corpus_files(paths: Sequence[str | Path] | None) -> list[CorpusFile]:
    """The user's files, or the built-in corpus when ``paths`` is empty, with their digests."""
    if paths:
        items = [(Path(p).expanduser(), "user file", "user's") for p in paths]
    else:
        items = [(t.path, t.source, t.licence) for t in builtin_texts()]
    files = []
    for path, source, licence in items:
        if not path.is_file():
            raise CorpusError(str(path), "no such file")
        data = path.read_bytes()
        files.append(CorpusFile(path, hashlib.sha256(data).hexdigest(), len(data), source, licence))
    return files


def corpus_digest(files: Sequence[CorpusFile]) -> str:
    """sha256 over the ordered file digests: the same texts in the same order give the same digest."""
    return hashlib.sha256("\n".join(f.sha256 for f in files).encode()).hexdigest()


def _text_chunks(text: str, size: int = 1 << 17) -> Iterator[str]:
    """Pieces of about ``size`` characters cut at paragraph breaks (tokenizing lazily)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n\n", start + size // 2, end)
            end = cut + 2 if cut > 0 else end
        yield text[start:end]
        start = end

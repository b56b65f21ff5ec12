"""Document ingest: PDF (page by page, with ``[p. N]`` markers), Markdown and plain text.

Text is NFKC-normalised and words hyphenated across line breaks are joined. The extracted
pages are cached by the file's sha256 under the platformdirs cache dir, so a document opens
instantly the second time. Every failure is a :class:`~app.errors.DocumentError` with one
sentence for the person. This module never touches the model or the UI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.files import write_atomic
from app.errors import (
    BinaryFileError,
    CorruptPdfError,
    DocumentError,
    DocumentNotFoundError,
    DocumentTooLargeError,
    EmptyDocumentError,
    EncryptedPdfError,
    FolderDroppedError,
    IngestCancelledError,
    IngestTimeoutError,
    PageRangeError,
    PdfBombError,
    ScannedPdfError,
    TooManyPagesError,
    UnreadableDocumentError,
)
from app.paths import path_kind
from engine import locations

INGEST_VERSION = 1  # bump when extraction changes, so cached text is extracted again
DEFAULT_MAX_BYTES = 64 * 2**20
DEFAULT_MAX_PAGES = 2000  # far more than 128K tokens hold; a page range is chosen after reading
DEFAULT_MAX_SECONDS = 120.0  # checked between pages
DEFAULT_MAX_PAGE_CONTENT = 2**20  # a page's drawing instructions; pypdf reads ~0.1 MB of them a second
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text", ""}

#: ``on_progress(done_pages, total_pages)``
Progress = Callable[[int, int], None]
#: ``on_warning(sentence)``: something went wrong that does not stop the document from opening
Warn = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class IngestLimits:
    """How much reading one document may take; checked before and between pages."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pages: int = DEFAULT_MAX_PAGES
    max_seconds: float = DEFAULT_MAX_SECONDS
    max_page_content: int = DEFAULT_MAX_PAGE_CONTENT  # bytes; a larger page is skipped with a warning
    should_stop: Callable[[], bool] = lambda: False  # a person pressed Esc
    clock: Callable[[], float] = time.monotonic  # seconds; tests pass one that a busy machine cannot move


@dataclasses.dataclass(frozen=True)
class Document:
    """An extracted document: its pages (one for unpaged text) and where it came from."""

    title: str
    source: str
    sha256: str
    kind: str  # "pdf" or "text"
    pages: tuple[str, ...]
    first_page: int = 1  # page number of pages[0] (a page range starts later)
    paged: bool = False  # True for PDFs and texts with form feeds: the model sees [p. N] markers
    parts: tuple[str, ...] = ()  # the files of a document joined from several, in order
    whole_title: str = ""  # a page range's: the title of the document it was cut from

    @property
    def sources(self) -> list[str]:
        """Every file this document was read from (one, or several when joined)."""
        return list(self.parts) or [self.source]

    def __post_init__(self) -> None:
        if self.kind == "pdf" or len(self.pages) > 1:
            object.__setattr__(self, "paged", True)

    @property
    def page_numbers(self) -> range:
        return range(self.first_page, self.first_page + len(self.pages))

    @property
    def text(self) -> str:
        """The text given to the model: pages with ``[p. N]`` markers when the document has pages."""
        if not self.paged:
            return self.pages[0]
        return "\n\n".join(f"[p. {n}]\n{page}" for n, page in zip(self.page_numbers, self.pages, strict=True))

    def page(self, number: int) -> str | None:
        index = number - self.first_page
        return self.pages[index] if 0 <= index < len(self.pages) else None

    def page_range(self, first: int, last: int) -> Document:
        """The pages first..last (1-based, inclusive) as a document of their own."""
        numbers = self.page_numbers
        if not (numbers.start <= first <= last < numbers.stop):
            raise PageRangeError(f"{first}-{last}", len(self.pages))
        lo, hi = first - self.first_page, last - self.first_page + 1
        whole = self.whole_title or self.title  # a range of a range names the pages once
        pages = f"p. {first}" if first == last else f"pp. {first}–{last}"
        return dataclasses.replace(self, title=f"{whole} ({pages})", pages=self.pages[lo:hi],
                                   first_page=first, whole_title=whole)

    def parse_range(self, text: str) -> Document:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[-–:]\s*(\d+))?\s*", text)
        if not match:
            raise PageRangeError(text, len(self.pages))
        first = int(match.group(1))
        last = int(match.group(2) or first)
        try:
            return self.page_range(first, last)
        except PageRangeError:
            raise PageRangeError(text, len(self.pages)) from None

    @classmethod
    def join(cls, documents: Sequence[Document]) -> Document:
        """Several documents as one, pages numbered on; each starts with its title."""
        if len(documents) == 1:
            return documents[0]
        pages: list[str] = []
        for doc in documents:
            for i, page in enumerate(doc.pages):
                pages.append(f"## {doc.title}\n\n{page}" if i == 0 else page)
        digest = hashlib.sha256("".join(d.sha256 for d in documents).encode()).hexdigest()
        title = " + ".join(d.title for d in documents)
        sources = tuple(source for d in documents for source in d.sources)
        return cls(title, sources[0], digest, "pdf", tuple(pages), parts=sources)


# ---------------------------------------------------------------------------- text clean-up

_HYPHEN_BREAK = re.compile(r"(\w)[-\u00ad]\n[ \t]*(\w)")
_SPACES = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFKC, Unix newlines, words split by a hyphen at a line end joined, blank runs collapsed."""
    text = unicodedata.normalize("NFKC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    text = _SPACES.sub("\n", text)
    return _BLANKS.sub("\n\n", text).strip()


# ---------------------------------------------------------------------------- readers


def _read_pdf(path: Path, on_progress: Progress | None, limits: IngestLimits,
              on_warning: Warn | None = None) -> list[str]:
    import pypdf
    from pypdf import filters
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PdfReadError

    started = limits.clock()
    done = total = 0
    try:
        reader = pypdf.PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):  # an owner-password-only PDF opens with the empty password
                    raise EncryptedPdfError(str(path))
            except (NotImplementedError, DependencyError, FileNotDecryptedError, PdfReadError) as exc:
                raise EncryptedPdfError(str(path)) from exc
        total = len(reader.pages)
        if total > limits.max_pages:
            raise TooManyPagesError(str(path), total, limits.max_pages)
        pages: list[str] = []
        for done in range(total):
            if limits.should_stop():
                raise IngestCancelledError(str(path), done, total)
            elapsed = limits.clock() - started
            if elapsed > limits.max_seconds:
                raise IngestTimeoutError(str(path), elapsed, done, total)
            page = reader.pages[done]
            size = _content_size(page)
            if size > limits.max_page_content:  # one such page would hold the reader for minutes
                pages.append("")
                if on_warning:
                    on_warning(str(PageSkippedWarning(path.name, done + 1, size, limits.max_page_content)))
            else:
                pages.append(normalize(page.extract_text() or ""))
            if on_progress:
                on_progress(done + 1, total)
    except DocumentError:
        raise
    except LimitReachedError as exc:
        raise PdfBombError(str(path), filters.ZLIB_MAX_OUTPUT_LENGTH // 10**6) from exc
    except FileNotDecryptedError as exc:
        raise EncryptedPdfError(str(path)) from exc
    except MemoryError as exc:
        raise CorruptPdfError(str(path), f"page {done + 1} needs more memory than is free") from exc
    except RecursionError as exc:
        raise CorruptPdfError(str(path), "its objects nest without end") from exc
    except OSError as exc:
        raise UnreadableDocumentError(str(path), exc.strerror or type(exc).__name__) from exc
    except Exception as exc:  # pypdf meets malformed files with many exception types: all mean "damaged"
        raise CorruptPdfError(str(path), _reason(exc)) from exc
    if total == 0:
        raise CorruptPdfError(str(path), "it has no pages")
    if not any(p.strip() for p in pages):
        raise ScannedPdfError(str(path), total)
    return pages


def _content_size(page: object) -> int:
    """Bytes of drawing instructions text extraction would read: the page's and its forms'."""
    contents = page.get_contents()  # type: ignore[attr-defined]
    data = contents.get_data() if contents is not None else b""
    size = len(data)
    resources = page.get("/Resources")  # type: ignore[attr-defined]
    xobjects = resources.get_object().get("/XObject") if resources is not None else None
    for name, ref in (xobjects.get_object().items() if xobjects is not None else ()):
        if str(name).encode("latin-1", "replace") not in data:
            continue  # resources are often shared by every page: count only the forms this page draws
        form = ref.get_object()
        if form.get("/Subtype") == "/Form":  # images are not decoded for text; forms are
            size += len(form.get_data())
    return size


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def _read_text(path: Path, data: bytes) -> list[str]:
    if b"\x00" in data[:8192]:
        raise BinaryFileError(str(path))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        sample = data[:8192]
        controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
        if controls > len(sample) * 0.02:
            raise BinaryFileError(str(path)) from None
        text = data.decode("cp1252", errors="replace")
    # A form feed is a page break (as in RFCs); text without one is a single page.
    pages = [normalize(p) for p in text.split("\f")]
    pages = [p for p in pages if p]
    if not pages:
        raise EmptyDocumentError(str(path))
    return pages


def _cache_file(digest: str) -> Path:
    return locations.cache_dir() / "documents" / f"{digest}.v{INGEST_VERSION}.json"


def _read_cache(cached: Path) -> tuple[str, list[str]] | None:
    """The cached kind and pages, or None when there is no usable cache entry."""
    try:
        if not cached.is_file():
            return None
        record = json.loads(cached.read_text("utf-8"))
        kind, pages = record["kind"], record["pages"]
        if kind in ("pdf", "text") and isinstance(pages, list) and pages and all(isinstance(p, str) for p in pages):
            return kind, pages
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        cached.unlink(missing_ok=True)
    except OSError:
        pass
    return None


def load_document(path: str | Path, on_progress: Progress | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES, use_cache: bool = True,
                  limits: IngestLimits | None = None, on_warning: Warn | None = None) -> Document:
    """Read a PDF or text file into a :class:`Document`; raises a DocumentError on bad input.

    Nothing else escapes: unreadable files, damaged PDFs, compression bombs, too many pages,
    the time limit and a stop all end in a DocumentError. A cache that cannot be written
    (a full disk) is reported through ``on_warning`` and the document still opens.
    """
    limits = limits or IngestLimits(max_bytes=max_bytes)
    path = Path(path).expanduser()
    kind_on_disk = path_kind(path)
    if kind_on_disk == "folder":
        raise FolderDroppedError(str(path))
    if kind_on_disk == "missing":
        raise DocumentNotFoundError(str(path))
    try:
        size = path.stat().st_size
        if size == 0:
            raise EmptyDocumentError(str(path))
        if size > limits.max_bytes:
            raise DocumentTooLargeError(str(path), size, limits.max_bytes)
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableDocumentError(str(path), exc.strerror or type(exc).__name__) from exc
    digest = hashlib.sha256(data).hexdigest()
    cached = _cache_file(digest)
    record = _read_cache(cached) if use_cache else None
    if record is not None:
        kind, pages = record
        if len(pages) > limits.max_pages:
            raise TooManyPagesError(str(path), len(pages), limits.max_pages)
        if on_progress:
            on_progress(len(pages), len(pages))
        return Document(path.name, str(path), digest, kind, tuple(pages))
    left_out: list[str] = []  # a document with pages left out is not cached: the warning must come again

    def warn(text: str) -> None:
        left_out.append(text)
        if on_warning:
            on_warning(text)

    if data.startswith(b"%PDF") or path.suffix.lower() == ".pdf":
        kind, pages = "pdf", _read_pdf(path, on_progress, limits, warn)
    else:
        kind, pages = "text", _read_text(path, data)
        if len(pages) > limits.max_pages:
            raise TooManyPagesError(str(path), len(pages), limits.max_pages)
        if on_progress:
            on_progress(len(pages), len(pages))
    try:
        if not left_out:
            write_atomic(cached, json.dumps({"kind": kind, "pages": pages, "source": str(path)}))
    except OSError as exc:  # a full or read-only disk costs the cache, not the document
        if on_warning:
            on_warning(str(CacheNotWrittenWarning(path.name, exc.strerror or type(exc).__name__)))
    return Document(path.name, str(path), digest, kind, tuple(pages))


class CacheNotWrittenWarning(UserWarning):
    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"The extracted text of {name} could not be cached ({reason}); it is open, but will be "
                         "read again next time: free some disk space.")


class PageSkippedWarning(UserWarning):
    def __init__(self, name: str, page: int, size: int, limit: int) -> None:
        self.name, self.page, self.size, self.limit = name, page, size, limit
        super().__init__(f"Page {page} of {name} was left out: it holds {size / 2**20:,.1f} MiB of drawing "
                         f"instructions, over the {limit / 2**20:,.0f} MiB a page may hold; the other pages are open.")

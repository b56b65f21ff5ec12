"""Errors a person can meet when opening a document, each one sentence with the numbers in it."""

from __future__ import annotations


class DocumentError(Exception):
    """Base class: a document the app cannot use, and what to do about it."""


class DocumentNotFoundError(DocumentError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"There is no file at {path}; check the path and try again.")


class FolderDroppedError(DocumentError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} is a folder; drop or type the PDF, Markdown or text files inside it instead.")


class EmptyDocumentError(DocumentError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} is empty; pick a document that contains text.")


class BinaryFileError(DocumentError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} is a binary file, not text or PDF; open a PDF, Markdown or plain-text file.")


class EncryptedPdfError(DocumentError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} is an encrypted PDF; remove its password (e.g. print it to a new PDF) and open it again.")


class CorruptPdfError(DocumentError):
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} is a damaged PDF that cannot be read ({reason}); re-export or re-download it.")


class ScannedPdfError(DocumentError):
    def __init__(self, path: str, pages: int) -> None:
        self.path, self.pages = path, pages
        super().__init__(
            f"{path} has no text layer on any of its {pages} page(s) (a scan?); run OCR on it first "
            "(e.g. `ocrmypdf`) and open the result."
        )


class DocumentTooLargeError(DocumentError):
    def __init__(self, path: str, size: int, limit: int) -> None:
        self.path, self.size, self.limit = path, size, limit
        super().__init__(
            f"{path} is {size / 2**20:,.1f} MiB, over the {limit / 2**20:,.0f} MiB limit; split it or raise "
            "FRAQTL_MAX_DOCUMENT_MB."
        )


class PageRangeError(DocumentError):
    def __init__(self, text: str, pages: int) -> None:
        self.text, self.pages = text, pages
        super().__init__(f"'{text}' is not a page range within 1–{pages}; write it like 3-12.")


class UnreadableDocumentError(DocumentError):
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} could not be read ({reason}); check that it is yours to read and try again.")


class PdfBombError(DocumentError):
    def __init__(self, path: str, limit_mb: int) -> None:
        self.path, self.limit_mb = path, limit_mb
        super().__init__(
            f"{path} holds a stream that unpacks to more than {limit_mb} MB (a compression bomb?); "
            "re-export it with a PDF printer, or open the pages you need as text."
        )


class TooManyPagesError(DocumentError):
    def __init__(self, path: str, pages: int, limit: int) -> None:
        self.path, self.pages, self.limit = path, pages, limit
        super().__init__(
            f"{path} has {pages:,} pages, over the {limit:,}-page limit; split it or raise FRAQTL_MAX_PAGES."
        )


class IngestTimeoutError(DocumentError):
    def __init__(self, path: str, seconds: float, done: int, total: int) -> None:
        self.path, self.seconds, self.done, self.total = path, seconds, done, total
        super().__init__(
            f"Reading {path} stopped after {seconds:,.0f} s at page {done:,} of {total:,}; split it, or raise "
            "FRAQTL_INGEST_TIMEOUT_S."
        )


class IngestCancelledError(DocumentError):
    def __init__(self, path: str, done: int, total: int) -> None:
        self.path, self.done, self.total = path, done, total
        super().__init__(f"Stopped reading {path} at page {done:,} of {total:,}; open it again when you want it.")


class EngineHungError(Exception):
    """The engine process is alive but has reported nothing for too long."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"The engine has reported nothing for {seconds:,.0f} s and seems hung; the transcript "
                         "is kept.")

"""Document ingest: PDF pages with markers, text clean-up, the cache, and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from app.errors import (
    BinaryFileError,
    CorruptPdfError,
    DocumentNotFoundError,
    DocumentTooLargeError,
    EmptyDocumentError,
    EncryptedPdfError,
    PageRangeError,
    ScannedPdfError,
)
from app.ingest import Document, load_document, normalize


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("FRAQTL_CACHE_DIR", str(folder))
    return folder


def make_pdf(path: Path, pages: list[list[str]]) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


@pytest.fixture
def text_pdf(tmp_path: Path) -> Path:
    return make_pdf(tmp_path / "manual.pdf", [
        ["The pump station opened in 1923.", "Its chief was Ada Brill."],
        ["The reservoir holds 40,000 cubic metres of", "water and its infor-", "mation desk opens at nine."],
        ["Appendix: maintenance every spring."],
    ])


def test_pdf_pages_are_marked_and_dehyphenated(text_pdf: Path) -> None:
    progress: list[tuple[int, int]] = []
    doc = load_document(text_pdf, on_progress=lambda d, t: progress.append((d, t)))
    assert doc.kind == "pdf" and doc.paged and len(doc.pages) == 3
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert doc.text.startswith("[p. 1]\nThe pump station opened in 1923.")
    assert "[p. 2]" in doc.text and "[p. 3]" in doc.text
    assert "information desk" in doc.page(2)
    assert doc.page(4) is None


def test_second_open_comes_from_the_cache(text_pdf: Path, cache_dir: Path) -> None:
    first = load_document(text_pdf)
    cached = list((cache_dir / "documents").glob(f"{first.sha256}.*.json"))
    assert len(cached) == 1
    cached[0].write_text(cached[0].read_text().replace("Ada Brill", "Ada Cached"))
    again = load_document(text_pdf)
    assert "Ada Cached" in again.text and again.sha256 == first.sha256
    assert "Ada Brill" in load_document(text_pdf, use_cache=False).text


def test_normalize_nfkc_hyphens_and_newlines() -> None:
    assert normalize("e\ufb03cient   \r\nwork") == "efficient\nwork"
    assert normalize("a long docu-\n  ment here") == "a long document here"
    assert normalize("keep well-known words") == "keep well-known words"
    assert normalize("one\n\n\n\n\ntwo") == "one\n\ntwo"


def test_markdown_and_form_feed_pages(tmp_path: Path) -> None:
    plain = tmp_path / "notes.md"
    plain.write_text("# Notes\n\nJust one page.\n", encoding="utf-8")
    doc = load_document(plain)
    assert doc.kind == "text" and not doc.paged and doc.text == "# Notes\n\nJust one page."
    paged = tmp_path / "rfc.txt"
    paged.write_text("Page one.\f\nPage two.\n\f", encoding="utf-8")
    doc = load_document(paged)
    assert doc.paged and doc.pages == ("Page one.", "Page two.")
    assert doc.text == "[p. 1]\nPage one.\n\n[p. 2]\nPage two."


def test_latin1_text_is_read(tmp_path: Path) -> None:
    path = tmp_path / "old.txt"
    path.write_bytes("Caf\xe9 cr\xe8me".encode("cp1252"))
    assert load_document(path).text == "Café crème"


def test_page_range_and_join(text_pdf: Path, tmp_path: Path) -> None:
    doc = load_document(text_pdf)
    part = doc.parse_range("2-3")
    assert part.first_page == 2 and part.text.startswith("[p. 2]") and part.page(1) is None
    assert part.parse_range("3").pages == (doc.page(3),)
    # a range of a range (the overflow dialog's choice, then the session's range applied to it) is
    # named by its pages once
    assert part.title == f"{doc.title} (pp. 2–3)"
    assert part.parse_range("2-3").title == part.title and part.parse_range("3").title == f"{doc.title} (p. 3)"
    for bad in ("0-2", "3-9", "two", "3-2"):
        with pytest.raises(PageRangeError, match="page range within 1–3"):
            doc.parse_range(bad)
    notes = tmp_path / "notes.txt"
    notes.write_text("Extra notes.", encoding="utf-8")
    joined = Document.join([doc, load_document(notes)])
    assert len(joined.pages) == 4 and joined.page(4).startswith("## notes.txt")
    assert joined.title == "manual.pdf + notes.txt"


# ---------------------------------------------------------------------------- bad inputs


def test_encrypted_pdf(text_pdf: Path, tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=PdfReader(str(text_pdf)))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    locked = tmp_path / "locked.pdf"
    with locked.open("wb") as fh:
        writer.write(fh)
    with pytest.raises(EncryptedPdfError, match="is an encrypted PDF; remove its password"):
        load_document(locked)


def test_owner_password_only_pdf_opens(text_pdf: Path, tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=PdfReader(str(text_pdf)))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    restricted = tmp_path / "restricted.pdf"
    with restricted.open("wb") as fh:
        writer.write(fh)
    assert "Ada Brill" in load_document(restricted).text


def test_corrupt_pdf(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n" + bytes(range(1, 200)) * 5)
    with pytest.raises(CorruptPdfError, match="is a damaged PDF that cannot be read"):
        load_document(broken)


def test_scanned_pdf_without_text_layer(tmp_path: Path) -> None:
    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        pdf.rect(20, 20, 100, 60, style="F")  # an "image" of a page, no text
    scanned = tmp_path / "scan.pdf"
    pdf.output(str(scanned))
    with pytest.raises(ScannedPdfError, match="has no text layer on any of its 2 page") as info:
        load_document(scanned)
    assert info.value.pages == 2


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(EmptyDocumentError, match="is empty; pick a document that contains text"):
        load_document(empty)
    blank = tmp_path / "blank.md"
    blank.write_text("  \n\n \f \n")
    with pytest.raises(EmptyDocumentError):
        load_document(blank)


def test_binary_file(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(BinaryFileError, match="is a binary file, not text or PDF"):
        load_document(image)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentNotFoundError, match="There is no file at .*nowhere.pdf; check the path"):
        load_document(tmp_path / "nowhere.pdf")


def test_document_too_large(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    with pytest.raises(DocumentTooLargeError, match="over the 0 MiB limit; split it or raise FRAQTL_MAX_DOCUMENT_MB") as info:
        load_document(big, max_bytes=1000)
    assert (info.value.size, info.value.limit) == (5000, 1000)


# ---------------------------------------------------------------------------- hostile PDFs (issue 13)

import errno
import time

import pypdf

from app.errors import (
    FolderDroppedError,
    IngestCancelledError,
    IngestTimeoutError,
    PdfBombError,
    TooManyPagesError,
)
from app.ingest import IngestLimits
from hostile_pdfs import compression_bomb, text_pages


def test_compression_bomb_is_refused_quickly(tmp_path: Path) -> None:
    bomb = compression_bomb(tmp_path / "bomb.pdf")
    assert bomb.stat().st_size < 200_000
    started = time.monotonic()
    with pytest.raises(PdfBombError, match=r"unpacks to more than 75 MB \(a compression bomb\?\); re-export") as info:
        load_document(bomb)
    assert time.monotonic() - started < 10
    assert info.value.limit_mb == 75


def test_page_limit_is_checked_before_any_page_is_read(tmp_path: Path) -> None:
    many = text_pages(tmp_path / "many.pdf", 3000)
    progress: list[int] = []
    started = time.monotonic()
    with pytest.raises(TooManyPagesError, match="has 3,000 pages, over the 2,000-page limit; split it or raise "
                                                "FRAQTL_MAX_PAGES") as info:
        load_document(many, on_progress=lambda d, t: progress.append(d))
    assert time.monotonic() - started < 5 and progress == []
    assert (info.value.pages, info.value.limit) == (3000, 2000)
    assert len(load_document(many, limits=IngestLimits(max_pages=3000)).pages) == 3000
    with pytest.raises(TooManyPagesError):  # a cached copy is held to the same limit
        load_document(many, limits=IngestLimits(max_pages=10))
    paged = tmp_path / "feeds.txt"
    paged.write_text("\f".join(f"page {i}" for i in range(20)))
    with pytest.raises(TooManyPagesError, match="has 20 pages, over the 5-page limit"):
        load_document(paged, limits=IngestLimits(max_pages=5))


def test_time_limit_and_cancel_stop_between_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = text_pages(tmp_path / "slow.pdf", 40)
    # each page "takes" 20 s on the reader's clock, whatever this machine's load; opening the file takes none
    now = [1000.0]

    def page_read(done: int, total: int) -> None:
        now[0] += 20.0

    real_reader = pypdf.PdfReader

    def slow_open(*args, **kwargs):  # a loaded machine: real time passes that the limit must not count
        time.sleep(0.05)
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(pypdf, "PdfReader", slow_open)
    with pytest.raises(IngestTimeoutError, match=r"stopped after 40 s at page 2 of 40; split it, or raise "
                                                 "FRAQTL_INGEST_TIMEOUT_S") as info:
        load_document(pdf, on_progress=page_read, limits=IngestLimits(max_seconds=30, clock=lambda: now[0]))
    assert (info.value.done, info.value.total) == (2, 40)  # pages 1 and 2 read (40 s > 30 s), not a third
    monkeypatch.setattr(pypdf, "PdfReader", real_reader)
    seen: list[int] = []
    with pytest.raises(IngestCancelledError, match="Stopped reading .*slow.pdf at page 3 of 40") as stopped:
        load_document(pdf, on_progress=lambda d, t: seen.append(d),
                      limits=IngestLimits(should_stop=lambda: len(seen) >= 3))
    assert stopped.value.done == 3 and seen == [1, 2, 3]
    assert len(load_document(pdf).pages) == 40  # nothing half-read was cached


def test_full_disk_costs_the_cache_not_the_document(text_pdf: Path, monkeypatch: pytest.MonkeyPatch,
                                                     cache_dir: Path) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("app.ingest.write_atomic", full)
    warnings: list[str] = []
    doc = load_document(text_pdf, on_warning=warnings.append)
    assert "Ada Brill" in doc.text
    assert warnings == ["The extracted text of manual.pdf could not be cached (No space left on device); it is "
                        "open, but will be read again next time: free some disk space."]
    assert not list(cache_dir.glob("documents/*.json"))


def test_aes_encrypted_pdf_with_and_without_a_user_password(text_pdf: Path, tmp_path: Path) -> None:
    for user, name in (("secret", "locked.pdf"), ("", "restricted.pdf")):
        writer = PdfWriter(clone_from=PdfReader(str(text_pdf)))
        writer.encrypt(user_password=user, owner_password="owner", algorithm="AES-256")
        with (tmp_path / name).open("wb") as fh:
            writer.write(fh)
    with pytest.raises(EncryptedPdfError, match="locked.pdf is an encrypted PDF; remove its password"):
        load_document(tmp_path / "locked.pdf")
    assert "Ada Brill" in load_document(tmp_path / "restricted.pdf").text


def test_truncated_and_malformed_pdfs_end_in_a_document_error(text_pdf: Path, tmp_path: Path) -> None:
    data = text_pdf.read_bytes()
    cases = {
        "half.pdf": data[: len(data) // 2],
        "header-only.pdf": data[:9],
        "no-xref.pdf": data.replace(b"xref", b"xxxx").replace(b"startxref", b"startxxxx"),
        "bad-xref.pdf": data[: data.rindex(b"startxref")] + b"startxref\n999999999\n%%EOF\n",
        "garbage-objects.pdf": data.replace(b" 0 obj", b" 0 obk"),
        "loop.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 1 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
        "huge-length.pdf": data.replace(b"/Length ", b"/Length 9999999999", 1),
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        try:
            doc = load_document(path, use_cache=False)
        except (CorruptPdfError, ScannedPdfError, EmptyDocumentError) as exc:
            assert str(exc).startswith(str(path)) and str(exc).endswith("."), name
        else:  # pypdf may recover a damaged file: then the text must be real
            assert "pump station" in doc.text, name


def test_a_folder_is_not_a_document(tmp_path: Path) -> None:
    with pytest.raises(FolderDroppedError, match="is a folder; drop or type"):
        load_document(tmp_path)
    with pytest.raises(DocumentNotFoundError):
        load_document(tmp_path / ("x" * 300))  # a name too long for the file system


def test_pyproject_requires_a_pypdf_with_decompression_limits() -> None:
    import tomllib

    import pypdf
    from pypdf import filters

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    requirement = next(d for d in pyproject["project"]["dependencies"] if d.startswith("pypdf"))
    floor = tuple(int(x) for x in requirement.split(">=")[1].split(",")[0].strip().split("."))
    assert floor >= (7, 0), requirement  # 7.0 limits streams, images and XFA; 4.x limited nothing
    assert tuple(int(x) for x in pypdf.__version__.split(".")[:2]) >= floor[:2]
    for limit in ("ZLIB_MAX_OUTPUT_LENGTH", "LZW_MAX_OUTPUT_LENGTH", "MAX_DECLARED_STREAM_LENGTH"):
        assert getattr(filters, limit) <= 75_000_000, limit


def test_one_huge_page_is_left_out_with_a_warning_not_read_for_minutes(tmp_path: Path) -> None:
    from pypdf.generic import DecodedStreamObject, NameObject

    pdf = text_pages(tmp_path / "huge.pdf", 3)
    writer = PdfWriter(clone_from=PdfReader(str(pdf)))
    huge = DecodedStreamObject()
    huge.set_data(b"BT /F1 12 Tf 72 720 Td " + b"(The dam holds water.) Tj 0 -14 Td " * 40_000 + b"ET\n")  # 1.4 MB
    writer.pages[1][NameObject("/Contents")] = writer._add_object(huge)
    with (tmp_path / "huge.pdf").open("wb") as fh:
        writer.write(fh)
    warnings: list[str] = []
    started = time.monotonic()
    doc = load_document(tmp_path / "huge.pdf", on_warning=warnings.append)
    assert time.monotonic() - started < 5  # reading that page would take about 15 s
    assert doc.pages[1] == "" and "pump station" in doc.pages[0] and "pump station" in doc.pages[2]
    assert warnings == ["Page 2 of huge.pdf was left out: it holds 1.3 MiB of drawing instructions, over the 1 MiB "
                        "a page may hold; the other pages are open."]
    load_document(tmp_path / "huge.pdf", on_warning=warnings.append)
    assert len(warnings) == 2  # not cached: the second open says so again


def test_a_huge_form_on_a_page_counts_as_its_content(tmp_path: Path) -> None:
    from pypdf.generic import ArrayObject, DecodedStreamObject, DictionaryObject, FloatObject, NameObject

    pdf = text_pages(tmp_path / "form.pdf", 2)
    writer = PdfWriter(clone_from=PdfReader(str(pdf)))
    form = DecodedStreamObject()
    form.set_data(b"BT /F1 12 Tf 72 720 Td " + b"(The dam holds water.) Tj 0 -14 Td " * 40_000 + b"ET\n")
    form.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Form"),
                 NameObject("/BBox"): ArrayObject([FloatObject(0), FloatObject(0), FloatObject(612), FloatObject(792)])})
    page = writer.pages[0]
    resources = page["/Resources"].get_object()
    resources[NameObject("/XObject")] = DictionaryObject({NameObject("/Fm1"): writer._add_object(form)})
    small = DecodedStreamObject()
    small.set_data(b"/Fm1 Do\n")
    page[NameObject("/Contents")] = writer._add_object(small)
    with (tmp_path / "form.pdf").open("wb") as fh:
        writer.write(fh)
    warnings: list[str] = []
    started = time.monotonic()
    doc = load_document(tmp_path / "form.pdf", on_warning=warnings.append)
    assert time.monotonic() - started < 5
    assert doc.pages[0] == "" and "pump station" in doc.pages[1]
    assert warnings and warnings[0].startswith("Page 1 of form.pdf was left out: it holds 1.3 MiB")

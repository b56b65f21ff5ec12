"""Hostile PDFs made with pypdf in a few milliseconds: bombs, many pages, broken structure."""

from __future__ import annotations

import zlib
from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, EncodedStreamObject, NameObject

TEXT_OPS = b"BT /F1 12 Tf 72 720 Td (The pump station opened in 1923.) Tj ET\n"


def _font(writer: PdfWriter) -> DictionaryObject:
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    return DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})})


def text_pages(path: Path, n_pages: int, text: bytes = TEXT_OPS) -> Path:
    """``n_pages`` pages sharing one content stream with a line of text (cheap at any count)."""
    writer = PdfWriter()
    stream = DecodedStreamObject()
    stream.set_data(text)
    contents = writer._add_object(stream)
    resources = _font(writer)
    for _ in range(n_pages):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Contents")] = contents
        page[NameObject("/Resources")] = resources
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def compression_bomb(path: Path, unpacked_mib: int = 80) -> Path:
    """One page whose content stream inflates to ``unpacked_mib`` MiB (pypdf stops at 75 MB)."""
    packer = zlib.compressobj(9)
    chunk = b"0 0 m " * (2**20 // 6)
    packed = b"".join(packer.compress(chunk) for _ in range(unpacked_mib)) + packer.flush()
    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    stream = EncodedStreamObject()
    stream._data = packed  # already compressed: written as is
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    page[NameObject("/Contents")] = writer._add_object(stream)
    page[NameObject("/Resources")] = _font(writer)  # with a font, text extraction reads the stream
    with path.open("wb") as fh:
        writer.write(fh)
    return path

"""What terminals paste when a file is dropped on them."""

from __future__ import annotations

from pathlib import Path

from app.paths import existing_files, parse_dropped_paths


def test_quotes_escapes_uris_and_several_paths(tmp_path: Path) -> None:
    assert parse_dropped_paths("'/tmp/My Report.pdf'") == [Path("/tmp/My Report.pdf")]
    assert parse_dropped_paths('"/tmp/My Report.pdf"') == [Path("/tmp/My Report.pdf")]
    assert parse_dropped_paths(r"/tmp/My\ Report\ \(v2\).pdf") == [Path("/tmp/My Report (v2).pdf")]
    assert parse_dropped_paths("file:///tmp/My%20Report.pdf") == [Path("/tmp/My Report.pdf")]
    assert parse_dropped_paths("file://localhost/tmp/a.pdf") == [Path("/tmp/a.pdf")]
    assert parse_dropped_paths("'/tmp/a b.pdf' /tmp/c.md\n/tmp/d.txt") == [
        Path("/tmp/a b.pdf"), Path("/tmp/c.md"), Path("/tmp/d.txt")]
    assert parse_dropped_paths("  ") == []
    assert parse_dropped_paths("'/tmp/unbalanced.pdf") == [Path("/tmp/unbalanced.pdf")]


def test_unquoted_path_with_spaces_and_questions(tmp_path: Path) -> None:
    doc = tmp_path / "annual report.pdf"
    doc.write_bytes(b"%PDF")
    assert parse_dropped_paths(f" {doc} \n") == [doc]
    assert existing_files(f"'{doc}'") == [doc]
    assert existing_files("Who built the lighthouse?") == []
    assert existing_files(f"{doc} /nowhere/else.pdf") == []

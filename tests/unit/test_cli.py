"""The ``fraqtl-chat`` command line (no UI started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.samples import DEFAULT_SAMPLE
from app.ingest import load_document


def test_help_runs_as_a_console_script() -> None:
    result = subprocess.run([sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "usage: fraqtl-chat" in result.stdout and "--serve" in result.stdout


def test_arguments() -> None:
    args = build_parser().parse_args(["a.pdf", "b.md", "--arm", "q8_0", "--ctx", "16384", "--yarn"])
    assert [p.name for p in args.files] == ["a.pdf", "b.md"] and args.arm == "q8_0" and args.ctx == 16384


def test_missing_file_is_refused_before_the_ui(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAQTL_CONFIG_DIR", str(tmp_path))
    assert main([str(tmp_path / "nowhere.pdf")]) == 2
    assert "There is no file at" in capsys.readouterr().err
    assert main(["--arm", "f32"]) == 2
    assert "not an arm" in capsys.readouterr().err


def test_bundled_sample_has_distinct_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAQTL_CACHE_DIR", str(tmp_path))
    doc = load_document(DEFAULT_SAMPLE)
    assert doc.paged and len(doc.pages) == 4
    assert "Marta Quell" in doc.page(1) and "Brannock Tunnel" in doc.page(2) and "Copper Wren" in doc.page(3)

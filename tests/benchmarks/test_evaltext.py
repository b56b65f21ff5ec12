"""The shipped evaluation text: provenance recorded, modest size, disjoint from calibration."""

from __future__ import annotations

import re

import pytest

from bench import evaltext, text
from engine.corpus import CORPUS_DIR, builtin_texts


def _shingles(body: str, n: int = 8) -> set[str]:
    words = re.findall(r"[a-z0-9']+", body.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_files_are_documented_and_modest() -> None:
    readme = (evaltext.EVALTEXT_DIR / "README.md").read_text()
    total = 0
    for t in evaltext.EVAL_TEXTS:
        assert t.path.is_file() and t.filename in readme and t.licence
        total += t.path.stat().st_size
    assert 100_000 < total < 400_000
    assert "public domain" in readme and "MIT" in readme and "Never used for calibration" in readme


def test_disjoint_from_the_calibration_corpus() -> None:
    calib = {t.path.resolve() for t in builtin_texts()}
    assert all(p.is_relative_to(CORPUS_DIR) for p in calib)
    assert not any(t.path.resolve() in calib for t in evaltext.EVAL_TEXTS)
    from engine.calibrate import corpus_files

    assert {f.path.resolve() for f in corpus_files([])} == calib  # the calibration default
    calib_shingles: set[str] = set()
    for path in calib:
        calib_shingles |= _shingles(path.read_text())
    for t in evaltext.EVAL_TEXTS:
        shared = _shingles(t.read()) & calib_shingles
        assert not shared, f"{t.filename} shares passages with the calibration corpus: {sorted(shared)[:3]}"


def test_real_text_is_the_default_and_deterministic() -> None:
    a = evaltext.sentences("real", 2048, 500)
    assert a == evaltext.sentences("real", 2048, 500) and len(a) == 500
    assert a != evaltext.sentences("real", 4096, 500)
    both = " ".join(a)
    assert "Holmes" in both and "thread" in both  # runs from both files
    assert evaltext.sentences("synthetic", 7, 20) == text.sentences(7, 20)
    assert evaltext.DEFAULT_TEXT == "real"
    from bench.tasks import _filler

    assert _filler(2048) == evaltext.sentences("real", 2048, 2048 // 8 + 64)


def test_receipt_names_the_text() -> None:
    real = evaltext.describe("real")
    assert [f["file"] for f in real["files"]] == [t.filename for t in evaltext.EVAL_TEXTS]
    assert all(len(f["sha256"]) == 64 and f["licence"] for f in real["files"])
    assert evaltext.describe("synthetic")["name"] == "synthetic"
    assert "Sherlock" in evaltext.label("real")
    with pytest.raises(Exception, match="not an evaluation text"):
        evaltext.describe("wikipedia")


def test_cli_defaults_to_real_text() -> None:
    from bench.cli import build_parser

    for command in ("kld", "niah", "ruler"):
        assert build_parser().parse_args([command]).text == "real"
        assert build_parser().parse_args([command, "--text", "synthetic"]).text == "synthetic"

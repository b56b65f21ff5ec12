"""Fixtures for the app's functional tests: the real default model and private app folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from app_pilot import SHORT_DOCUMENT



@pytest.fixture(scope="session")
def model_path() -> Path:
    """The default model (SmolLM2-135M-Instruct), resolved before any folder is redirected."""
    from engine.models import resolve

    try:
        return resolve(None)
    except Exception as exc:  # pragma: no cover - no model and no network
        pytest.skip(f"default model unavailable: {exc}")


@pytest.fixture
def app_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Cache, config and session folders of the app, private to one test."""
    for name in ("CACHE", "DATA", "CONFIG"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(folder))
    return tmp_path


@pytest.fixture
def short_document(tmp_path: Path) -> Path:
    path = tmp_path / "velmora harbour.md"  # a space, so that a pasted path must be quoted
    path.write_text(SHORT_DOCUMENT, encoding="utf-8")
    return path

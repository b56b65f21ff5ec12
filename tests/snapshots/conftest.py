"""Fixtures of the snapshot and UI tests: the model's metadata, private folders, fixed estimates."""

from __future__ import annotations

from pathlib import Path

import pytest

from app_fakes import fake_estimate, fake_split_estimate


@pytest.fixture(scope="module")
def model_path() -> Path:
    from engine.models import resolve

    return resolve(None)  # only its GGUF metadata is read (for the estimates); make fetches it


@pytest.fixture(autouse=True)
def app_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("app.ui.widgets._vram_panel.estimate", fake_estimate)
    monkeypatch.setattr("app.ui.widgets._vram_panel.split_estimate", fake_split_estimate)
    monkeypatch.setattr("app.compare.estimate", fake_estimate)
    for name in ("CACHE", "DATA", "CONFIG"):
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(tmp_path / name.lower()))
    return tmp_path

"""Fixtures for the app's functional tests: the real default model and private app folders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SHORT_DOCUMENT = """# The Harbour of Velmora

The lighthouse of Velmora was built in 1847 by the engineer Tomas Ardel. Its lamp can be seen
31 kilometres out to sea.

The harbour master is Ilse Varga. The fishing fleet has 23 boats, and the main catch is blue mackerel.

Every August the town holds the Lantern Regatta, which was won last year by the boat Grey Heron.
"""


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


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    """Let the app run until ``condition()`` holds (the model runs in another process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.1)
    await asyncio.sleep(0)

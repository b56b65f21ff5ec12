"""Hostile documents through the app: each ends in one sentence, the app stays up, Esc stops reading."""

from __future__ import annotations

import sys
from pathlib import Path

from app.errors import PdfBombError, TooManyPagesError
from app.samples import DEFAULT_SAMPLE
from app.settings import Settings
from app.ui import create_app
from app_fakes import FakeEngine, FakeSampler
from test_app_ui import make_app, status, until

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from hostile_pdfs import compression_bomb, text_pages  # noqa: E402


async def test_a_bomb_and_too_many_pages_leave_the_open_document_usable(model_path, tmp_path: Path) -> None:
    bomb = compression_bomb(tmp_path / "bomb.pdf")
    many = text_pages(tmp_path / "many.pdf", 40)
    app = create_app(Settings(n_ctx=8192, max_tokens=64, max_pages=30), [DEFAULT_SAMPLE], model_path,
                     factory=FakeEngine, sampler=FakeSampler(available=False), vram_refresh_s=0)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        for path, error in ((bomb, PdfBombError(str(bomb), 75)), (many, TooManyPagesError(str(many), 40, 30))):
            screen.open_paths([path])
            await until(pilot, lambda: screen.state == "ready", steps=500)
            assert status(screen) == str(error)
            assert app.document.title == DEFAULT_SAMPLE.name  # the open document stays


async def test_esc_stops_reading_a_long_pdf(model_path, tmp_path: Path, monkeypatch) -> None:
    import time

    import app.ingest

    pdf = text_pages(tmp_path / "long.pdf", 200)
    real = app.ingest.normalize
    monkeypatch.setattr(app.ingest, "normalize", lambda text: (time.sleep(0.01), real(text))[1])  # ~2 s in all
    fraqtl = make_app(model_path, paths=())
    async with fraqtl.run_test(size=(120, 36)) as pilot:
        screen = fraqtl.chat_screen
        screen.open_paths([pdf])
        await until(pilot, lambda: "Extracting text: page" in status(screen))
        assert "Esc stops" in status(screen)
        await pilot.press("escape")
        await until(pilot, lambda: screen.state == "empty")
        assert status(screen).startswith(f"Stopped reading {pdf} at page ")
        assert fraqtl.document is None
        # the same file opens in full afterwards (nothing half-read was cached)
        monkeypatch.setattr(app.ingest, "normalize", real)
        screen.open_paths([pdf])
        await until(pilot, lambda: screen.state == "ready", steps=1000)
        assert len(fraqtl.document.pages) == 200

"""Regenerate the SVG screenshots in docs/screenshots/ with the real default model.

Run ``.venv/bin/python docs/screenshots.py`` for all of them, or name some
(``docs/screenshots.py document models``) to skip the slow comparison. Every figure on them is real: the answers come
from SmolLM2-135M-Instruct on this machine, and without a GPU the VRAM panel shows the
estimates and the reason telemetry is off.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
SIZE = (132, 40)


async def wait(pilot, condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not get there in time")
        await pilot.pause(0.2)
    await pilot.pause(0.5)


WANTED = set(sys.argv[1:]) or {"chat", "compare", "settings", "overflow", "document", "models"}


def save(app, name: str) -> None:
    if name not in WANTED:
        return
    app.clear_notifications()
    app.save_screenshot(filename=f"{name}.svg", path=str(OUT))
    print(f"wrote docs/screenshots/{name}.svg")


async def main() -> None:
    sys.path.insert(0, str(ROOT))
    from app.samples import DEFAULT_SAMPLE
    from app.settings import Settings
    from app.ui import create_app
    from engine.models import resolve

    model = resolve(None)
    for name in ("CACHE", "DATA", "CONFIG"):
        os.environ[f"FRAQTL_{name}_DIR"] = tempfile.mkdtemp(prefix=f"fraqtl-docs-{name.lower()}-")
    OUT.mkdir(parents=True, exist_ok=True)

    app = create_app(Settings(n_ctx=4096, max_tokens=48), [DEFAULT_SAMPLE], model)
    async with app.run_test(size=SIZE) as pilot:
        chat = app.chat_screen
        await wait(pilot, lambda: chat.state == "ready")
        for question in ("Who designed the railway?", "How long is the Brannock Tunnel?"):
            before = chat.last_done
            chat.query_one("#question").value = question
            await pilot.press("enter")
            await wait(pilot, lambda: chat.last_done is not before and chat.state == "ready")
        chat.query_one("#question").cursor_blink = False
        save(app, "chat")
        await pilot.press("f6")
        await wait(pilot, lambda: bool(app.screen.query("#document-pages")), 10)
        app.screen.show_page(2)
        await pilot.pause(0.5)
        save(app, "document")
        await pilot.press("escape")
        await pilot.press("f7")
        await wait(pilot, lambda: bool(app.screen.query("#models-list")) and app.screen.checks == 0, 60)
        save(app, "models")
        await pilot.press("escape")
        if "compare" in WANTED:
            app.settings.max_tokens = 24  # quantized caches decode slowly on a CPU
            await pilot.press("f2")
            await wait(pilot, lambda: bool(app.screen.query("#compare-run")), 10)
            await pilot.click("#compare-run")
            await wait(pilot, lambda: bool(app.screen.results), 900)
            app.screen.query_one("#compare-question").cursor_blink = False
            save(app, "compare")
            await pilot.press("escape")
        await pilot.press("f4")
        await wait(pilot, lambda: bool(app.screen.query("#settings-save")), 10)
        save(app, "settings")

    if "overflow" not in WANTED:
        return
    small = create_app(Settings(n_ctx=512, max_tokens=48), [DEFAULT_SAMPLE], model)
    async with small.run_test(size=SIZE) as pilot:
        await wait(pilot, lambda: bool(small.screen.query("#overflow-numbers")), 120)
        small.screen.query_one("#overflow-range").cursor_blink = False
        save(small, "overflow")


if __name__ == "__main__":
    asyncio.run(main())

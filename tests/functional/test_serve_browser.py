"""``fraqtl-chat --serve`` in a real browser: headless Chromium drives the served app.

The served app runs the real SmolLM2 model on the CPU. Set ``FRAQTL_UPDATE_SCREENSHOTS=1``
to write the screenshot the README shows (``docs/screenshots/browser.png``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.samples import DEFAULT_SAMPLE
from app_pilot import SHORT_DOCUMENT
from served_browser import ROOT, ServedApp, TerminalPage, answer_after, chromium, plain, status_line

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the dev extra: "
                                     "`pip install -e '.[dev]'`")

pytestmark = pytest.mark.slow
ENGINE = "spawn_main"  # the command line of an engine worker process (multiprocessing spawn)
QUESTION = "Who designed the railway?"


@pytest.fixture
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium(), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def served(model_path: Path, app_dirs: Path, tmp_path: Path) -> Iterator[ServedApp]:
    """The served app with a short document open, small context and answers."""
    first = tmp_path / "velmora harbour.md"
    first.write_text(SHORT_DOCUMENT, encoding="utf-8")
    env = dict(os.environ, FRAQTL_N_CTX="2048", FRAQTL_MAX_TOKENS="40", FRAQTL_N_THREADS="2")
    app = ServedApp(["--model", str(model_path), str(first)], env, tmp_path / "server.log")
    yield app
    app.stop()
    assert app.process.returncode is not None


def test_browser_opens_the_sample_asks_and_reads_the_streamed_answer(browser, served: ServedApp,
                                                                    app_dirs: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    tab = TerminalPage(page, served.url)
    tab.wait_for(lambda t: "velmora harbour.md" in t and status_line(t).startswith("Ready"),
                 "the first document to be prefilled")

    tab.press("Control+o")  # the Open dialog: a path on the machine that runs the app
    tab.wait_for(lambda t: "Open a document" in t and "dropped on the page is uploaded" in plain(t), "the Open dialog", 30)
    tab.type(str(DEFAULT_SAMPLE))
    tab.press("Enter")
    tab.wait_for(lambda t: "orrin-valley-railway.md · 4 pages" in t and status_line(t).startswith("Ready"),
                 "the sample to be prefilled")

    tab.type(QUESTION)
    tab.press("Enter")
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while not status_line(text := tab.text()).startswith("Answered"):
        assert time.monotonic() < deadline, f"no finished answer after 120 s; the page shows:\n{text}"
        answer = answer_after(text, QUESTION)
        if answer and (not seen or seen[-1] != answer):
            seen.append(answer)
        time.sleep(0.05)
    final = answer_after(text, QUESTION)
    assert "Marta Quell" in final, final
    assert " tokens · " in text  # the answer's footer: token count and speed
    partial = [a for a in seen if len(a) < len(final)]
    assert partial, f"the answer appeared all at once, not streamed: {seen}"

    shot = served.log.parent / "browser.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("FRAQTL_UPDATE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots" / "browser.png"
        target.write_bytes(shot.read_bytes())

    # a file dropped on the page is uploaded into the cache's uploads folder and opened by the app
    dropped = page.evaluate_handle("""() => {
        const transfer = new DataTransfer();
        transfer.items.add(new File(["# Lamps\\n\\nThe lamp room has 12 brass lamps.\\n"], "lamp room.md"));
        return transfer;
    }""")
    page.dispatch_event("body", "drop", {"dataTransfer": dropped})
    page.wait_for_selector("#fraqtl-drop-note >> text=opening", timeout=30_000)
    tab.wait_for(lambda t: "lamp room.md" in t and status_line(t).startswith("Ready"), "the dropped file to open")
    uploads = list((app_dirs / "cache" / "uploads").glob("*/lamp room.md"))
    assert len(uploads) == 1 and "12 brass lamps" in uploads[0].read_text()


def test_a_second_tab_gets_a_message_and_no_second_engine(browser, served: ServedApp) -> None:
    first = TerminalPage(browser.new_page(), served.url)
    first.wait_for(lambda t: status_line(t).startswith("Ready"), "the first tab's document to be prefilled")
    assert served.count(ENGINE) == 1 and served.count("app.cli") == 1

    second = TerminalPage(browser.new_page(), served.url)
    text = second.wait_for(lambda t: "One session at a time" in t, "the second tab's message", 60)
    assert "already open in another browser tab" in plain(text)
    time.sleep(1)
    assert served.count(ENGINE) == 1, served.descendants()
    assert served.count("app.cli") == 1 and served.count("app.ui.session_busy") == 1

    first.page.close()  # the first session ends, its engine with it; the second tab can reload
    deadline = time.monotonic() + 60
    while served.count(ENGINE) or served.count("app.cli"):
        assert time.monotonic() < deadline, f"the closed tab's session is still running: {served.descendants()}"
        time.sleep(0.2)
    second.page.reload()
    second.wait_for(lambda t: "velmora harbour.md" in t and status_line(t).startswith("Ready"),
                    "the reloaded tab's session")
    assert served.count(ENGINE) == 1

"""The document view: the text with its page markers, a page list, and citations that jump to a page."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, OptionList, Static, TextArea

from app.ingest import load_document
from app.settings import Settings
from app.ui import create_app
from app.ui.screens import DocumentScreen
from app.ui.screens._document import marker_rows
from app.ui.widgets import AnswerView
from app_fakes import FakeEngine, FakeSampler
from engine.events import AnswerDone, PrefillProgress, Token
from test_app_ui import until

CITED = "The ferry to Hallan Point leaves at 7:40 from pier nine [p. 30]."


def paged_text(path: Path) -> Path:
    """40 pages split by form feeds; some hold other line breaks a reader may meet (CR, VT, U+2028)."""
    pages = [f"Page {n} is about item number {n}.\nIt has a second line." for n in range(1, 41)]
    pages[4] = "Carriage\rreturns and a vertical\x0btab\u2028and a line separator."
    pages[29] = "The ferry to Hallan Point leaves at 7:40 from pier nine, every weekday."
    path.write_text("\f".join(pages), encoding="utf-8")
    return path


class CitingEngine(FakeEngine):
    def answer(self, messages, max_tokens=256, sampling=None):
        if not max_tokens:
            yield from super().answer(messages, max_tokens)
            return
        yield PrefillProgress(17, 17, 0, 800.0, 0.0)
        yield Token(CITED, 1)
        yield AnswerDone(CITED, 40, 17, 12, 800.0, 90.0, "stop", (1,))


def test_each_page_marker_is_on_the_row_the_view_jumps_to(tmp_path: Path) -> None:
    document = load_document(paged_text(tmp_path / "ferries.txt"))
    area = TextArea(document.text)
    rows = marker_rows(document)
    assert list(rows) == list(range(1, 41))
    assert all(area.document.get_line(row) == f"[p. {n}]" for n, row in rows.items())
    part = document.parse_range("28-33")  # a page range keeps the document's page numbers
    assert list(marker_rows(part)) == [28, 29, 30, 31, 32, 33] and marker_rows(part)[28] == 0


async def test_a_citation_opens_the_document_at_its_page(model_path, tmp_path: Path) -> None:
    path = paged_text(tmp_path / "ferries.txt")
    app = create_app(Settings(n_ctx=8192, max_tokens=64), [path], model_path, factory=CitingEngine,
                     sampler=FakeSampler(available=False), vram_refresh_s=0)
    async with app.run_test(size=(200, 40)) as pilot:
        chat = app.chat_screen
        await until(pilot, lambda: chat.state == "ready")
        chat.ask("When does the ferry leave?")
        await until(pilot, lambda: chat.state == "ready" and chat.last_done is not None)
        meta = chat.query_one(AnswerView).query_one(".answer-meta", Static)
        text = str(meta.render())
        assert "citations: p. 30 ✓" in text
        await pilot.click(meta, offset=(text.index("p. 30 ✓") + 2, 0))
        assert meta.region.height == 1  # one line, so the offset below is the link's
        await until(pilot, lambda: isinstance(app.screen, DocumentScreen) and app.screen.shown_page == 30)
        view = app.screen
        area = view.query_one(TextArea)
        row = marker_rows(view.document)[30]
        assert area.selected_text == "[p. 30]" and area.scroll_y == area.wrapped_document.location_to_offset((row, 0)).y
        assert area.scroll_y > 0 and area.read_only
        assert view.query_one("#document-pages", OptionList).highlighted == 29
        # go to a page by number; a page that is not there is named, with the pages that are
        await pilot.press("ctrl+g")
        goto = view.query_one("#document-goto", Input)
        goto.value = "99"
        await pilot.press("enter")
        assert str(view.query_one("#document-error").render()) == "There is no page 99 here; type one of 1–40."
        assert view.shown_page == 30
        goto.value = "5"
        await pilot.press("enter")
        assert view.shown_page == 5 and area.selected_text == "[p. 5]" and area.has_focus
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is chat)
        # F6 opens the view again where it was left
        await pilot.press("f6")
        await until(pilot, lambda: isinstance(app.screen, DocumentScreen) and app.screen.shown_page == 5)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is chat)
        # a citation of a page the document does not have says so, and the view opens where it was
        said: list[str] = []
        chat.notify = lambda message, **kwargs: said.append(message)  # type: ignore[method-assign]
        chat.action_show_page(77)
        await until(pilot, lambda: isinstance(app.screen, DocumentScreen) and app.screen.shown_page == 5)
        assert said == ["The document has no page 77; that citation points nowhere."]
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is chat)


async def test_a_text_without_pages_is_shown_whole(model_path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nThe lighthouse keeper is Ada Venn.\n")
    app = create_app(Settings(n_ctx=8192, max_tokens=64), [notes], model_path, factory=FakeEngine,
                     sampler=FakeSampler(available=False), vram_refresh_s=0)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        await pilot.press("f6")
        await until(pilot, lambda: isinstance(app.screen, DocumentScreen))
        view = app.screen
        assert view.query_one(TextArea).text == app.document.text and not view.query("#document-pages")
        assert "no pages" in str(view.query_one("#document-title").render())
        await pilot.press("ctrl+g")  # nothing to go to: the text keeps the focus
        assert view.query_one(TextArea).has_focus
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.chat_screen)

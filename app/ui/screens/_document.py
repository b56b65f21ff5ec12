"""The document view: the text the model reads, with its ``[p. N]`` page markers, and a page list.

Opened with F6 or by clicking a page citation under an answer, which jumps to that page. The
text sits in a read-only TextArea, which renders only the lines on screen, so a document of
thousands of pages scrolls as quickly as a short one. This screen only reads the document.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option
from textual.widgets.text_area import Selection

from app.ingest import Document

PREVIEW_CHARS = 22  # of a page's first words, in the page list


def marker_rows(document: Document) -> dict[int, int]:
    """The row of each page's ``[p. N]`` marker in ``document.text``, as a TextArea splits lines."""
    if not document.paged:
        return {}
    rows: dict[int, int] = {}
    row = 0
    for number, page in zip(document.page_numbers, document.pages, strict=True):
        rows[number] = row
        # each chunk ends in a line break, so str.splitlines (what TextArea uses) counts it on its own
        row += len(f"[p. {number}]\n{page}\n\n".splitlines())
    return rows


class DocumentScreen(ModalScreen[int | None]):
    """The extracted text of the open document; ``page`` is where it opens. Returns the page last shown."""

    BINDINGS = [Binding("escape", "close", "Back to the chat"), Binding("ctrl+g", "go_to", "Go to page")]
    DEFAULT_CSS = """
    DocumentScreen { background: $background 60%; }
    DocumentScreen > Vertical { margin: 1 2; border: thick $primary; background: $surface; }
    DocumentScreen #document-title { text-style: bold; color: $accent; padding: 0 1; }
    DocumentScreen #document-pages { width: 38; height: 1fr; }
    DocumentScreen #document-text { width: 1fr; height: 1fr; }
    DocumentScreen #document-goto-row { height: auto; padding: 0 1; }
    DocumentScreen #document-goto-row Label { padding-top: 1; width: auto; }
    DocumentScreen #document-goto { width: 16; }
    DocumentScreen #document-error { color: $error; padding: 1 1 0 1; width: 1fr; }
    """

    def __init__(self, document: Document, page: int | None = None) -> None:
        super().__init__()
        self.document = document
        self.rows = marker_rows(document)
        self.start_page = page
        self.shown_page: int | None = None  # the page last jumped to

    def compose(self) -> ComposeResult:
        doc = self.document
        pages = f"{len(doc.pages):,} pages ({doc.page_numbers[0]}–{doc.page_numbers[-1]})" if doc.paged else "no pages"
        with Vertical():
            yield Label(Text(f"{doc.title} · {pages} · {len(doc.text):,} characters, as the model reads them"),
                        id="document-title")
            if doc.paged:
                with Horizontal(id="document-goto-row"):
                    yield Label("Go to page ")
                    yield Input(placeholder=str(doc.page_numbers[0]), type="integer", id="document-goto")
                    yield Static("", id="document-error")
            with Horizontal():
                if doc.paged:
                    yield OptionList(*(Option(Text(f"p. {n:<5} {_preview(page)}"), id=f"page-{n}")
                                       for n, page in zip(doc.page_numbers, doc.pages, strict=True)),
                                     id="document-pages")
                yield TextArea(doc.text, read_only=True, soft_wrap=True, show_line_numbers=False,
                               id="document-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()
        if self.start_page is not None:
            self.call_after_refresh(self.show_page, self.start_page)

    def show_page(self, number: int) -> bool:
        """Scroll so that page ``number``'s marker is the top line, and select the marker."""
        row = self.rows.get(number)
        if row is None:
            return False
        area = self.query_one(TextArea)
        marker = f"[p. {number}]"
        area.selection = Selection((row, 0), (row, len(marker)))
        area.scroll_to(y=area.wrapped_document.location_to_offset((row, 0)).y, animate=False)
        pages = self.query_one("#document-pages", OptionList)
        pages.highlighted = number - self.document.first_page
        self.shown_page = number
        return True

    def action_close(self) -> None:
        self.dismiss(self.shown_page)

    def action_go_to(self) -> None:
        if self.document.paged:
            self.query_one("#document-goto", Input).focus()

    @on(Input.Submitted, "#document-goto")
    def go_to(self, event: Input.Submitted) -> None:
        error = self.query_one("#document-error", Static)
        try:
            number = int(event.value)
        except ValueError:
            number = -1
        if not self.show_page(number):
            first, last = self.document.page_numbers[0], self.document.page_numbers[-1]
            error.update(Text(f"There is no page {event.value.strip() or '(empty)'} here; type one of {first}–{last}."))
            return
        error.update("")
        self.query_one(TextArea).focus()

    @on(OptionList.OptionSelected, "#document-pages")
    def page_chosen(self, event: OptionList.OptionSelected) -> None:
        self.show_page(int(str(event.option.id).removeprefix("page-")))


def _preview(page: str) -> str:
    words = " ".join(page.split())
    return words if len(words) <= PREVIEW_CHARS else words[: PREVIEW_CHARS - 1] + "…"

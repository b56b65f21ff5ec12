"""Modal dialogs: open a document, choose what to do with an oversized one, reopen a session."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from app.conversation import Fit
from app.errors import DocumentNotFoundError, FolderDroppedError
from app.ingest import Document
from app.paths import parse_dropped_paths, path_kind
from app.sessions import Session

DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 84; height: auto; max-height: 90%; border: thick $primary; background: $surface; padding: 1 2; }}
{name} .dialog-title {{ text-style: bold; color: $accent; margin-bottom: 1; }}
{name} .dialog-error {{ color: $error; height: auto; }}
{name} .dialog-buttons {{ height: auto; margin-top: 1; }}
{name} Button {{ margin-right: 1; }}
{name} .dialog-label {{ margin-top: 1; }}
"""


class OpenDialog(ModalScreen[list[Path] | None]):
    """Type, paste or drop a path (or several); in a browser, also pick one from a folder tree."""

    DEFAULT_CSS = DIALOG_CSS.format(name="OpenDialog") + "OpenDialog DirectoryTree { height: 14; }"
    BINDINGS = [("escape", "dismiss(None)", "Cancel")]
    AUTO_FOCUS = "#open-path"

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Open a document", classes="dialog-title")
            if self.app.is_web:  # the browser's own files arrive by dropping them on the page (an upload)
                yield Static("A PDF, Markdown or text file on the machine that runs fraqtl-chat: type its path "
                             "or pick it below; several paths are read as one document. A file dropped on the "
                             "page is uploaded to fraqtl-chat's cache folder and opened.")
                yield DirectoryTree(Path.home(), id="open-tree")
            else:
                yield Static("A PDF, Markdown or text file. Drop files onto the terminal or paste their paths; "
                             "several paths are read as one document.")
            yield Input(placeholder="/path/to/document.pdf", id="open-path")
            yield Static("", classes="dialog-error", id="open-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Open", variant="primary", id="open-ok")
                yield Button("Cancel", id="open-cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#open-ok")
    def submit(self) -> None:
        paths = parse_dropped_paths(self.query_one("#open-path", Input).value)
        kinds = [(p, path_kind(p)) for p in paths]
        folder = next((p for p, kind in kinds if kind == "folder"), None)
        missing = next((p for p, kind in kinds if kind == "missing"), None)
        if not paths:
            self.query_one("#open-error", Static).update("Type or drop the path of a file.")
        elif folder is not None:
            self.query_one("#open-error", Static).update(Text(str(FolderDroppedError(str(folder)))))
        elif missing is not None:
            self.query_one("#open-error", Static).update(Text(str(DocumentNotFoundError(str(missing)))))
        else:
            self.dismiss(paths)

    @on(DirectoryTree.FileSelected)
    def picked(self, event: DirectoryTree.FileSelected) -> None:
        field = self.query_one("#open-path", Input)
        field.value = shlex.quote(str(event.path))
        field.focus()

    @on(Button.Pressed, "#open-cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class OverflowDialog(ModalScreen[tuple[str, object] | None]):
    """The document does not fit: say by how much and offer a larger context or a page range."""

    DEFAULT_CSS = DIALOG_CSS.format(name="OverflowDialog")
    BINDINGS = [("escape", "dismiss(None)", "Cancel")]

    def __init__(self, fit: Fit, document: Document) -> None:
        super().__init__()
        self.fit = fit
        self.document = document

    def compose(self) -> ComposeResult:
        fit = self.fit
        with Vertical():
            yield Label("The document does not fit the context", classes="dialog-title")
            yield Static(
                f"It needs {fit.needed:,} tokens ({fit.tokens:,} for the document, {fit.reserve:,} for a "
                f"question and its answer) but the context holds {fit.n_ctx:,}. Nothing will be cut "
                "silently: choose what to do.", id="overflow-numbers")
            larger = fit.larger_context
            if larger is not None:
                yarn = " with YaRN" if larger > fit.n_ctx_train > 0 else ""
                yield Button(f"Use a {larger:,}-token context{yarn}", variant="primary", id="overflow-larger")
            else:
                yield Static(f"Even with YaRN this model reaches at most {fit.max_ctx_yarn:,} tokens "
                             f"(trained on {fit.n_ctx_train:,}).", id="overflow-limit")
            if self.document.paged:
                first, last = self.document.page_numbers[0], self.document.page_numbers[-1]
                yield Label(f"Or ask about some of its {len(self.document.pages)} pages ({first}–{last}):",
                            classes="dialog-label")
                yield Input(placeholder=f"{first}-{max(first, last // 2)}", id="overflow-range")
            else:
                yield Static("This text has no pages (no form feeds); split the file to ask about part of it.")
            yield Static("", classes="dialog-error", id="overflow-error")
            with Horizontal(classes="dialog-buttons"):
                if self.document.paged:
                    yield Button("Use these pages", id="overflow-use-range")
                yield Button("Cancel", id="overflow-cancel")

    @on(Button.Pressed, "#overflow-larger")
    def larger(self) -> None:
        self.dismiss(("context", self.fit.larger_context))

    @on(Input.Submitted, "#overflow-range")
    @on(Button.Pressed, "#overflow-use-range")
    def page_range(self) -> None:
        text = self.query_one("#overflow-range", Input).value
        try:
            self.document.parse_range(text)
        except Exception as exc:  # PageRangeError: one sentence
            self.query_one("#overflow-error", Static).update(Text(str(exc)))
            return
        self.dismiss(("range", text))

    @on(Button.Pressed, "#overflow-cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class SessionsDialog(ModalScreen[Session | None]):
    """Reopen a saved session (document + transcript)."""

    DEFAULT_CSS = DIALOG_CSS.format(name="SessionsDialog") + "SessionsDialog OptionList { height: auto; max-height: 20; }"
    BINDINGS = [("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        self.sessions = Session.list()
        with Vertical():
            yield Label("Reopen a session", classes="dialog-title")
            if not self.sessions:
                yield Static("No saved sessions yet: a session is saved after each answer.")
            options = [
                Option(Text(f"{s.document_title} · {sum(t.role == 'user' for t in s.turns)} question(s) · "
                            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(s.updated))}"), id=s.id)
                for s in self.sessions
            ]
            yield OptionList(*options, id="sessions-list")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="sessions-cancel")

    @on(OptionList.OptionSelected)
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(next(s for s in self.sessions if s.id == event.option.id))

    @on(Button.Pressed, "#sessions-cancel")
    def cancel(self) -> None:
        self.dismiss(None)

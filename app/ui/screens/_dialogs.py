"""Modal dialogs: open a document, choose what to do with an oversized one, the saved sessions,
and the small confirm and name dialogs they use."""

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
from app.sessions import Session, SessionNameError

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


class ConfirmDialog(ModalScreen[bool]):
    """Ask before something that cannot be undone; Esc and the default button keep things as they are."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmDialog")
    BINDINGS = [("escape", "dismiss(False)", "Keep")]

    def __init__(self, title: str, question: str, confirm: str) -> None:
        super().__init__()
        self.title_text, self.question, self.confirm = title, question, confirm

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="dialog-title")
            yield Static(Text(self.question), id="confirm-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Keep it", variant="primary", id="confirm-keep")
                yield Button(self.confirm, variant="error", id="confirm-yes")

    def on_mount(self) -> None:
        self.query_one("#confirm-keep", Button).focus()

    @on(Button.Pressed, "#confirm-yes")
    def yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-keep")
    def keep(self) -> None:
        self.dismiss(False)


class NameDialog(ModalScreen[str | None]):
    """Type a new name for something; empty restores its default name."""

    DEFAULT_CSS = DIALOG_CSS.format(name="NameDialog")
    BINDINGS = [("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, current: str, placeholder: str) -> None:
        super().__init__()
        self.title_text, self.current, self.placeholder = title, current, placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.current, placeholder=self.placeholder, id="name-input")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Rename", variant="primary", id="name-ok")
                yield Button("Cancel", id="name-cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#name-ok")
    def submit(self) -> None:
        self.dismiss(self.query_one("#name-input", Input).value)

    @on(Button.Pressed, "#name-cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class SessionsDialog(ModalScreen[Session | None]):
    """The saved sessions: reopen one (Enter), rename it (R) or delete it (Delete, after asking)."""

    DEFAULT_CSS = DIALOG_CSS.format(name="SessionsDialog") + """
    SessionsDialog OptionList { height: auto; max-height: 20; }
    SessionsDialog .dialog-hint { color: $text-muted; margin-top: 1; }
    """
    BINDINGS = [("escape", "dismiss(None)", "Cancel"), ("r", "rename", "Rename"), ("delete", "delete", "Delete")]

    def __init__(self, open_session: Session | None = None) -> None:
        super().__init__()
        self.open_session = open_session  # the chat's: renamed along with its file; deleting it is refused
        self.open_id = open_session.id if open_session is not None else None
        self.sessions = Session.list()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Sessions", classes="dialog-title")
            yield Static("No saved sessions yet: a session is saved after each answer.", id="sessions-empty")
            yield OptionList(*(Option(self.label(s), id=s.id) for s in self.sessions), id="sessions-list")
            yield Static("Enter opens · R renames · Delete removes (it asks first)", classes="dialog-hint")
            yield Static("", classes="dialog-error", id="sessions-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Open", variant="primary", id="sessions-open")
                yield Button("Rename", id="sessions-rename")
                yield Button("Delete", variant="error", id="sessions-delete")
                yield Button("Cancel", id="sessions-cancel")

    def on_mount(self) -> None:
        self.show_empty()

    def label(self, session: Session) -> Text:
        now = " · open now" if session.id == self.open_id else ""
        return Text(f"{session.title} · {session.questions} question(s) · "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(session.updated))}{now}")

    def show_empty(self) -> None:
        self.query_one("#sessions-empty").display = not self.sessions
        for button in ("#sessions-open", "#sessions-rename", "#sessions-delete"):
            self.query_one(button, Button).disabled = not self.sessions

    def highlighted(self) -> Session | None:
        option = self.query_one("#sessions-list", OptionList).highlighted_option
        return next((s for s in self.sessions if option is not None and s.id == option.id), None)

    def say(self, text: str) -> None:
        self.query_one("#sessions-error", Static).update(Text(text))

    @on(OptionList.OptionSelected)
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(next(s for s in self.sessions if s.id == event.option.id))

    @on(Button.Pressed, "#sessions-open")
    def open_highlighted(self) -> None:
        session = self.highlighted()
        if session is not None:
            self.dismiss(session)

    @on(Button.Pressed, "#sessions-rename")
    def action_rename(self) -> None:
        session = self.highlighted()
        if session is None:
            return

        def named(name: str | None) -> None:
            if name is None:
                return
            try:
                session.rename(name)
            except (SessionNameError, OSError) as exc:
                self.say(str(exc) if isinstance(exc, SessionNameError) else
                         f"The session could not be saved ({exc.strerror or exc}); its old name is kept.")
                return
            self.query_one("#sessions-list", OptionList).replace_option_prompt(session.id, self.label(session))
            if self.open_session is not None and self.open_session.id == session.id:
                self.open_session.name = session.name  # the chat's next save keeps the new name
            self.say("")

        self.app.push_screen(NameDialog("Rename the session", session.name, session.document_title), named)

    @on(Button.Pressed, "#sessions-delete")
    def action_delete(self) -> None:
        session = self.highlighted()
        if session is None:
            return
        if session.id == self.open_id:
            self.say("This session is open now; open another document or session first, then delete it.")
            return

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                session.delete()
            except OSError as exc:
                self.say(f"{session.path} could not be deleted ({exc.strerror or exc}).")
                return
            self.sessions.remove(session)
            self.query_one("#sessions-list", OptionList).remove_option(session.id)
            self.say("")
            self.show_empty()

        self.app.push_screen(ConfirmDialog(
            "Delete this session?",
            f"“{session.title}”: {session.questions} question(s) and their answers will be gone for good "
            f"({session.path}). The document itself and any exported transcript are kept.", "Delete"), confirmed)

    @on(Button.Pressed, "#sessions-cancel")
    def cancel(self) -> None:
        self.dismiss(None)

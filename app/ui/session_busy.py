"""What a second browser tab sees while another tab holds the served app's one session.

It loads no model and starts no engine: it only says why this tab has no session and how to
get one (``python -m app.ui.session_busy`` is what :mod:`app.serve` runs for such a tab).
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Static

BUSY_TEXT = ("fraqtl-chat is already open in another browser tab or window. It serves one session at a "
             "time, so that only one copy of the model sits on the GPU. Close the other tab (or press "
             "Ctrl+Q in it), then reload this page.")


class SessionBusyApp(App[None]):
    TITLE = "fraqtl-chat"
    CSS = """
    Screen { align: center middle; }
    Vertical { width: 72; height: auto; border: thick $warning; padding: 1 2; }
    #busy-title { text-style: bold; color: $warning; margin-bottom: 1; }
    """
    BINDINGS = [("ctrl+q", "quit", "Quit")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("One session at a time", id="busy-title")
            yield Static(BUSY_TEXT, id="busy-text")


if __name__ == "__main__":
    SessionBusyApp().run()

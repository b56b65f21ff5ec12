"""The bar above the chat: document title, its tokens against the context, and progress."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar


class DocumentBar(Vertical):
    DEFAULT_CSS = """
    DocumentBar { height: auto; padding: 0 1; border-bottom: solid $primary-darken-2; }
    DocumentBar #doc-line { height: 1; }
    DocumentBar #doc-title { width: 1fr; text-style: bold; }
    DocumentBar #doc-tokens { width: auto; }
    DocumentBar #progress-line { height: auto; }
    DocumentBar #doc-status { width: 1fr; height: auto; color: $text-muted; }
    DocumentBar ProgressBar { width: 28; }
    DocumentBar Bar { width: 20; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="doc-line"):
            yield Label("No document — press ctrl+o or drop a file here", id="doc-title")
            yield Label("", id="doc-tokens")
        with Horizontal(id="progress-line"):
            yield Label("", id="doc-status")
            yield ProgressBar(total=100, show_eta=False, id="doc-progress")

    def set_document(self, title: str, pages: int, paged: bool) -> None:
        suffix = f" · {pages} page{'s' if pages != 1 else ''}" if paged else ""
        self.query_one("#doc-title", Label).update(Text(f"{title}{suffix}"))  # a file name is never markup

    def set_tokens(self, tokens: int, n_ctx: int, arm: str) -> None:
        style = "green" if tokens <= n_ctx else "bold red"
        self.query_one("#doc-tokens", Label).update(
            f"[{style}]{tokens:,}[/] / {n_ctx:,} tokens · {arm}")

    def set_status(self, text: str) -> None:
        self.query_one("#doc-status", Label).update(Text(text))  # statuses carry paths and errors: never markup

    def set_progress(self, done: float, total: float) -> None:
        bar = self.query_one("#doc-progress", ProgressBar)
        bar.update(total=max(total, 1), progress=done)

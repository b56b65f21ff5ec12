"""The transcript: questions, and answers rendered as Markdown while they stream."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from app.citations import Citation
from engine.events import AnswerDone


class QuestionView(Static):
    DEFAULT_CSS = """
    QuestionView { margin: 1 0 0 8; padding: 0 1; background: $primary 15%; border-left: thick $primary; }
    """


class AnswerView(Vertical):
    """One answer: Markdown fed through a stream (which batches re-renders), then its stats."""

    DEFAULT_CSS = """
    AnswerView { height: auto; margin: 1 8 0 0; border-left: thick $success; padding: 0 1; }
    AnswerView Markdown { margin: 0; padding: 0; }
    AnswerView .answer-meta { color: $text-muted; }
    AnswerView.failed { border-left: thick $error; }
    """

    def __init__(self, text: str = "", meta: str = "") -> None:
        super().__init__()
        self._initial = text
        self._meta = meta
        self.text = text
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Markdown(self._initial)
        yield Static(Text(self._meta), classes="answer-meta")

    async def append(self, fragment: str) -> None:
        self.text += fragment
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one(Markdown))
        await self._stream.write(fragment)

    async def finish(self, done: AnswerDone | None, citations: list[Citation], note: str = "") -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if done is not None and done.text.strip() != self.text.strip():
            self.text = done.text
            await self.query_one(Markdown).update(done.text)
        parts = []
        if done is not None:
            reused = done.n_prompt - done.n_evaluated
            parts.append(f"{done.n_generated} tokens · {done.decode_tok_s:,.1f} tok/s · evaluated "
                         f"{done.n_evaluated:,} of {done.n_prompt:,} prompt tokens ({reused:,} reused)")
            if done.finish == "cancelled":
                parts.append("stopped")
            elif done.finish == "length":
                parts.append("cut at the answer limit")
        pieces: list[Content] = [Content(part) for part in parts]
        if citations:  # each page links to the document view at that page
            links = [Content.from_markup(f"[@click=screen.show_page({c.page:d})]$label[/]", label=c.label)
                     for c in citations]
            pieces.append(Content.assemble("citations: ", Content(", ").join(links)))
        if note:
            pieces.append(Content(note))
        meta = Content(" · ").join(pieces)
        self.query_one(".answer-meta", Static).update(meta)


class ChatLog(VerticalScroll):
    DEFAULT_CSS = """
    ChatLog { height: 1fr; padding: 0 1; }
    ChatLog #chat-hint { color: $text-muted; margin: 1 0; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Ask a question about the document below. Esc stops an answer; "
                     "ctrl+p lists every action.", id="chat-hint")

    async def add_question(self, text: str) -> QuestionView:
        view = QuestionView(Text(text))  # what a person typed is never markup
        await self.mount(view)
        self.scroll_end(animate=False)
        return view

    async def add_answer(self, text: str = "", meta: str = "") -> AnswerView:
        view = AnswerView(text, meta)
        await self.mount(view)
        self.scroll_end(animate=False)
        return view

    async def clear_transcript(self) -> None:
        await self.query("QuestionView, AnswerView").remove()

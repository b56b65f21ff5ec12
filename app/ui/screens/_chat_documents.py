"""The chat screen's part that opens documents: paths typed, pasted or dropped, reading them in a worker,
and reopening a saved session on them (its transcript, page range and context).

A mixin of :class:`~app.ui.screens._chat.ChatScreen`, which owns the state it changes; it never
touches the engine (the engine part starts it on the document read).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from textual import events, work
from textual.message import Message

from app.conversation import Conversation
from app.errors import PageRangeError
from app.ingest import IngestLimits
from app.paths import route_input
from app.sessions import Session
from app.ui.chat_state import Event
from app.ui.messages import (
    ContextChosen,
    DocumentFailed,
    DocumentLoaded,
    IngestProgressed,
    PathsDropped,
    PathsRefused,
)
from app.ui.screens._chat_workers import read_documents
from app.ui.widgets import ChatLog, DocumentBar

if TYPE_CHECKING:
    from app.ui.screens._chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object


class ChatDocuments(_Base):
    def open_paths(self, paths: list[Path], session: Session | None = None) -> None:
        """Read ``paths`` as one document; ``session`` is the saved transcript to reopen with it."""
        if self.refused_while_comparing(Event.OPENING, "open a document"):
            return
        self.pending_session = session
        if self.chat.busy and self.conversation is not None:
            self.conversation.stop()
        self.ingest_stop.set()  # a document still being read is abandoned
        self.ingest_stop = threading.Event()
        self.advance(Event.OPENING, f"Reading {', '.join(p.name for p in paths)}… Esc stops.")
        self.ingest(paths, self.ingest_stop)

    @work(thread=True, group="ingest")
    def ingest(self, paths: list[Path], stop: threading.Event) -> None:
        settings = self.fraqtl.settings
        limits = IngestLimits(settings.max_document_bytes, settings.max_pages, float(settings.ingest_timeout_s),
                              should_stop=stop.is_set)

        def post(message: Message) -> None:
            # a reading abandoned for another document says nothing; one stopped by Esc says so
            if stop is self.ingest_stop and (not stop.is_set() or isinstance(message, DocumentFailed)):
                self.post_message(message)

        def warn(text: str) -> None:
            self.app.call_from_thread(self.notify, text, title="Document", severity="warning", timeout=15,
                                      markup=False)

        read_documents(paths, limits, self.fraqtl.model_path, post, warn)

    def on_ingest_progressed(self, message: IngestProgressed) -> None:
        if not self.advance(Event.INGEST_PROGRESSED):
            return
        self.query_one(DocumentBar).set_progress(message.done, message.total)
        self.query_one(DocumentBar).set_status(
            f"Extracting text: page {message.done:,} of {message.total:,} · Esc stops")

    def on_document_failed(self, message: DocumentFailed) -> None:
        if not self.advance(Event.READ_FAILED, message.message):  # the open document stays usable
            return
        self.notify(message.message, title="Could not open the document", severity="error", timeout=10, markup=False)

    async def on_document_loaded(self, message: DocumentLoaded) -> None:
        if self.chat.after(Event.DOCUMENT_READ) is None:
            self.log.warning(f"chat: ignored a document read in phase {self.chat.phase}")
            return
        document = message.document
        previous = self.conversation  # closed by the engine worker, never here: closing can take seconds
        session, self.pending_session = self.pending_session, None
        notes: list[str] = []
        if session is not None and session.document_sha256 != document.sha256:
            # the file changed since the session was saved: keep the transcript, and say so
            notes.append(f"{document.title} changed since this session was saved; its transcript is kept, and new "
                         "answers read the new text.")
            session.document_sha256, session.document_title = document.sha256, document.title
        if session is not None and session.page_range:
            try:
                document = document.parse_range(session.page_range)
            except PageRangeError as exc:
                notes.append(f"{exc} The whole document is used.")
                session.page_range = ""
        n_ctx: int | None = None
        if session is not None and session.n_ctx > self.fraqtl.settings.n_ctx:
            n_ctx = session.n_ctx  # for this run, as if chosen again in the overflow dialog
            self.app.post_message(ContextChosen(n_ctx))
        self.document_page = None
        conversation = Conversation(document, self.fraqtl.settings, self.fraqtl.model_path, self.fraqtl.factory,
                                    session=session)
        self.advance(Event.DOCUMENT_READ)
        self.hold(document, conversation)
        bar = self.query_one(DocumentBar)
        bar.set_document(document.title, len(document.pages), document.paged)
        log = self.query_one(ChatLog)
        await log.clear_transcript()
        if session is not None:
            for turn in session.turns:
                if turn.role == "user":
                    await log.add_question(turn.content)
                else:
                    what = " · ".join(part for part in (turn.arm, turn.describe()) if part)
                    answer = await log.add_answer(turn.content, f"{what} · restored from the saved session")
                    answer.set_class(turn.unfinished, "failed")
        self.sub_title = document.title
        self.start_engine(n_ctx=n_ctx, previous=previous)
        for note in notes:
            self.notify(note, title="Session", severity="warning", timeout=15, markup=False)
        self.session_notes = notes

    def reopen(self, session: Session) -> None:
        self.open_paths([Path(source) for source in session.sources], session=session)

    def on_paths_dropped(self, message: PathsDropped) -> None:
        self.open_paths(message.paths)

    def on_paste(self, event: events.Paste) -> None:
        """Files pasted or dropped while the question box is not focused open too (served uploads arrive so)."""
        route = route_input(event.text)
        if route.kind == "open":
            self.open_paths(list(route.files))
        elif route.kind == "refuse":
            self.on_paths_refused(PathsRefused(route.problem))

    def on_paths_refused(self, message: PathsRefused) -> None:
        self.query_one(DocumentBar).set_status(message.message)
        self.notify(message.message, title="Could not open", severity="error", timeout=10, markup=False)

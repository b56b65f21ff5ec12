"""The main screen: the document bar, the transcript, the question box and the VRAM panel.

This screen is the one owner of the chat's :class:`~app.ui.chat_state.ChatState` (the document, the
conversation and the phase): only its own message handlers change it, through
:meth:`ChatScreen.advance`; other screens and the app read it and post messages
(:mod:`app.ui.messages`), they never assign it. Every engine call runs in a thread worker and reports
back with messages; the event loop never waits on the model.

The screen's handlers live in one module per concept, as mixins of this class: opening documents
(:mod:`._chat_documents`), the engine (:mod:`._chat_engine`), questions and answers
(:mod:`._chat_answers`), and the actions of its keys (:mod:`._chat_actions`). This module holds the
state, the layout, and what routes messages to them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header

from app.conversation import Conversation
from app.ingest import Document
from app.sessions import Session
from app.ui.chat_state import ChatState, Event, Phase
from app.ui.messages import ChatCommandChosen
from app.ui.screens._chat_actions import ChatActions
from app.ui.screens._chat_answers import ChatAnswers
from app.ui.screens._chat_documents import ChatDocuments
from app.ui.screens._chat_engine import ChatEngine
from app.ui.widgets import AnswerView, ChatLog, DocumentBar, QuestionInput, VramPanel
from engine.events import AnswerDone

if TYPE_CHECKING:
    from app.ui.app import FraqtlApp


class ChatScreen(ChatDocuments, ChatEngine, ChatAnswers, ChatActions, Screen[None]):
    BINDINGS = [
        Binding("ctrl+o", "open", "Open"),
        Binding("escape", "stop", "Stop"),
        Binding("f2", "compare", "Compare arms"),
        Binding("f3", "sessions", "Sessions"),
        Binding("f4", "settings", "Settings"),
        Binding("f5", "restart_engine", "Restart engine"),
        Binding("f6", "document", "Document"),
        Binding("f7", "models", "Models"),
        Binding("f9", "toggle_vram", "VRAM panel"),
        Binding("ctrl+s", "export", "Export"),
    ]
    DEFAULT_CSS = """
    ChatScreen #chat-column { width: 1fr; }
    ChatScreen QuestionInput { margin: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._chat = ChatState()  # replaced only by advance() and hold()
        self.current_answer: AnswerView | None = None
        self.last_done: AnswerDone | None = None
        self.last_question = ""
        self.pending_question: str | None = None
        # settings saved mid-answer: the conversation they restart, and the model, once the answer is over
        self.restart_after_answer: tuple[Conversation, Path | None] | None = None
        self.pending_session: Session | None = None
        self.ingest_stop = threading.Event()  # set by Esc, or by opening another document meanwhile
        self.session_notes: list[str] = []  # what reopening the last session had to tell the person
        self.exported_to: Path | None = None
        self.document_page: int | None = None  # where the document view was left
        self.engine_epoch = 0  # bumped when the engine is (re)started or given up on as hung
        self.last_engine_news = time.monotonic()  # when a worker last reported on the engine

    @property
    def fraqtl(self) -> FraqtlApp:
        return self.app  # type: ignore[return-value]

    @property
    def chat(self) -> ChatState:
        """The chat's state; read-only outside this screen (post it a message to change it)."""
        return self._chat

    @property
    def state(self) -> Phase:
        return self.chat.phase

    @property
    def conversation(self) -> Conversation | None:
        return self.chat.conversation

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="chat-column"):
                yield DocumentBar()
                yield ChatLog()
                yield QuestionInput(placeholder="Ask about the document, or drop a file to open it",
                                    id="question")
            yield VramPanel(self.fraqtl.sampler, refresh_s=self.fraqtl.vram_refresh_s, id="vram")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1.0, self.check_engine_hung)
        self.query_one(QuestionInput).focus()
        if self.fraqtl.initial_session is not None:
            self.reopen(self.fraqtl.initial_session)
        elif self.fraqtl.initial_paths:
            self.open_paths(self.fraqtl.initial_paths)

    # -------------------------------------------------------------- the state, and what reaches it

    def advance(self, event: Event, status: str | None = None) -> bool:
        """Move to the state ``event`` leads to and show ``status``; False (and nothing changes) when the
        present phase cannot take the event: a late or stray report is logged, never obeyed."""
        after = self.chat.after(event)
        if after is None:
            self.log.warning(f"chat: ignored {event.name} in phase {self.chat.phase}")
            return False
        self._chat = after
        if status is not None:
            self.query_one(DocumentBar).set_status(status)
        return True

    def hold(self, document: Document, conversation: Conversation) -> None:
        """The chat now holds ``document`` and the conversation about it (after Event.DOCUMENT_READ)."""
        self._chat = self._chat.holding(document, conversation)

    def post_for(self, conversation: Conversation, message: Message, epoch: int | None = None) -> None:
        """Post a worker's message unless its conversation or engine was replaced meanwhile."""
        if conversation is self.conversation and (epoch is None or epoch == self.engine_epoch):
            self.last_engine_news = time.monotonic()
            self.post_message(message)

    async def on_chat_command_chosen(self, message: ChatCommandChosen) -> None:
        """A command palette choice: the chat's own action runs it (and refuses what its phase cannot take)."""
        if not hasattr(self, f"action_{message.action}"):  # a plain name of this screen's actions, nothing else
            self.log.warning(f"chat: no action {message.action!r}")
            return
        await self.run_action(message.action)

"""The main screen: the document bar, the transcript, the question box and the VRAM panel.

Every engine call runs in a thread worker, one at a time, and reports back with messages
from :mod:`app.ui.messages`; the event loop never waits on the model. This screen is the one
owner of the chat's :class:`~app.ui.chat_state.ChatState` (the document, the conversation and
the phase): only its message handlers replace it, through :meth:`ChatScreen.advance`. Other
screens and the app read it and post messages; they never assign it.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.message_pump import MessagePump
from textual.screen import Screen
from textual.widgets import Footer, Header

from app.conversation import Conversation
from app.errors import EngineHungError, PageRangeError
from app.ingest import IngestLimits
from app.paths import route_input
from app.sessions import Session
from app.ui.chat_state import ChatState, Event, Phase
from app.ui.messages import (
    AnswerCompleted,
    AnswerStreamed,
    ChatCommandChosen,
    ContextChosen,
    DocumentFailed,
    DocumentLoaded,
    DocumentReady,
    EngineFailedMessage,
    EngineReleased,
    EngineReleaseRefused,
    EngineReleaseRequested,
    EngineRestartRequested,
    EngineStarted,
    FitMeasured,
    IngestProgressed,
    PathsDropped,
    PathsRefused,
    PrefillProgressed,
)
from app.ui.screens._chat_workers import read_documents, start_and_prefill, stream_answer
from app.ui.screens._dialogs import OpenDialog, OverflowDialog, SessionsDialog
from app.ui.screens._document import DocumentScreen
from app.ui.widgets import AnswerView, ChatLog, DocumentBar, QuestionInput, VramPanel
from engine.events import AnswerDone
from engine.sampling import GREEDY

if TYPE_CHECKING:
    from app.ui.app import FraqtlApp


class ChatScreen(Screen[None]):
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
        self._chat = ChatState()  # replaced only by advance() and document_loaded()
        self.current_answer: AnswerView | None = None
        self.last_done: AnswerDone | None = None
        self.last_question = ""
        self.pending_question: str | None = None
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

    # -------------------------------------------------------------- helpers

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

    # -------------------------------------------------------------- opening documents

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

    @on(IngestProgressed)
    def ingest_progressed(self, message: IngestProgressed) -> None:
        if not self.advance(Event.INGEST_PROGRESSED):
            return
        self.query_one(DocumentBar).set_progress(message.done, message.total)
        self.query_one(DocumentBar).set_status(
            f"Extracting text: page {message.done:,} of {message.total:,} · Esc stops")

    @on(DocumentFailed)
    def document_failed(self, message: DocumentFailed) -> None:
        if not self.advance(Event.READ_FAILED, message.message):  # the open document stays usable
            return
        self.notify(message.message, title="Could not open the document", severity="error", timeout=10, markup=False)

    @on(DocumentLoaded)
    async def document_loaded(self, message: DocumentLoaded) -> None:
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
        self._chat = self._chat.holding(document, conversation)
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

    # -------------------------------------------------------------- the engine

    def start_engine(self, n_ctx: int | None = None, previous: Conversation | None = None,
                     event: Event = Event.ENGINE_STARTING) -> None:
        assert self.conversation is not None
        arm = self.fraqtl.settings.arm
        if not self.advance(event, f"Loading the model with the {arm} cache…"):
            self.notify(f"The engine cannot restart while the chat is {self.chat.phase}; wait for it, or press "
                        "Esc first.", severity="warning", markup=False)
            return
        self.engine_epoch += 1  # whatever an earlier engine still reports is dropped
        self.query_one(DocumentBar).set_progress(0, 1)
        self.run_engine_start(self.conversation, n_ctx, previous if previous is not self.conversation else None,
                              self.engine_epoch)

    def post_for(self, conversation: Conversation, message: Message, epoch: int | None = None) -> None:
        """Post a worker's message unless its conversation or engine was replaced meanwhile."""
        if conversation is self.conversation and (epoch is None or epoch == self.engine_epoch):
            self.last_engine_news = time.monotonic()
            self.post_message(message)

    @work(thread=True, exclusive=True, group="engine")
    def run_engine_start(self, conversation: Conversation, n_ctx: int | None,
                         previous: Conversation | None, epoch: int) -> None:
        start_and_prefill(conversation, n_ctx, previous, lambda: conversation is self.conversation,
                          partial(self.post_for, conversation, epoch=epoch))

    @on(EngineRestartRequested)
    def engine_restart_requested(self, message: EngineRestartRequested) -> None:
        if self.conversation is None:
            return  # the next document starts the engine with the new settings or model
        if self.chat.phase is Phase.ANSWERING:
            self.notify("An answer is streaming; press Esc to stop it, then restart the engine (F5).",
                        severity="warning", markup=False)
            return
        if message.model_path is not None:
            self.conversation.use_model(message.model_path)
        if self.chat.phase is not Phase.COMPARING:  # else it starts with them after the comparison
            self.start_engine()

    # -------------------------------------------------------------- the arm comparison borrows the memory

    @on(EngineReleaseRequested)
    def engine_release_requested(self, message: EngineReleaseRequested) -> None:
        """Close the engine for the comparison (its memory would count in every arm's peak)."""
        if self.chat.phase is Phase.COMPARING:
            message.requester.post_message(EngineReleased())
            return
        conversation = self.conversation
        if conversation is None or not self.advance(
                Event.ENGINE_RELEASED, "The engine is closed while the arms are compared; it restarts after."):
            message.requester.post_message(EngineReleaseRefused(
                f"The chat is {self.chat.phase}; wait for it, or stop it with Esc in the chat, then run again."))
            return
        self.engine_epoch += 1  # whatever the closed engine still reports is dropped
        self.close_engine(conversation, message.requester)

    @work(thread=True, group="engine")
    def close_engine(self, conversation: Conversation, requester: MessagePump) -> None:
        conversation.close()  # here, in a thread: a busy engine process takes seconds to end
        requester.post_message(EngineReleased())

    def on_screen_resume(self) -> None:
        """Back from the comparison: the engine it closed starts again (with any settings changed meanwhile)."""
        if self.chat.phase is Phase.COMPARING:
            self.start_engine(event=Event.ENGINE_RECLAIMED)

    def refused_while_comparing(self, event: Event, what: str) -> bool:
        """True (and the person is told) when ``event`` would start an engine beside the comparison's."""
        if self.chat.phase is not Phase.COMPARING or self.chat.after(event) is not None:
            return False
        self.notify(f"The arms are being compared with the chat's engine closed; go back to the chat (Esc) "
                    f"to {what}.", severity="warning", markup=False)
        return True

    @on(ChatCommandChosen)
    async def chat_command_chosen(self, message: ChatCommandChosen) -> None:
        """A command palette choice: the chat's own action runs it (and refuses what its phase cannot take)."""
        await self.run_action(message.action)

    @on(EngineStarted)
    def engine_started(self, message: EngineStarted) -> None:
        self.advance(Event.ENGINE_STARTED, f"Model loaded ({message.loaded.arm}, {message.loaded.n_ctx:,}-token context); "
                                  "counting tokens…")

    @on(FitMeasured)
    def fit_measured(self, message: FitMeasured) -> None:
        fit = message.fit
        if not self.advance(Event.FITS if fit.fits else Event.OVERFLOWS):
            return
        assert self.conversation is not None  # LOADING holds one
        bar = self.query_one(DocumentBar)
        bar.set_tokens(fit.tokens, fit.n_ctx, self.conversation.spec().arm)
        self.query_one(VramPanel).set_context(self.conversation.info, fit.n_ctx, fit.tokens,
                                              self.fraqtl.settings.arm)
        if fit.fits:
            bar.set_status(f"Prefilling {fit.tokens:,} tokens…")
            return
        bar.set_status(f"Refused: {fit.error()}")
        self.app.push_screen(OverflowDialog(fit, self.conversation.document), self.overflow_chosen)

    def overflow_chosen(self, choice: tuple[str, object] | None) -> None:
        if choice is None or self.conversation is None:
            self.notify("The document was not loaded into the model; open another or pick a page range "
                        "with ctrl+o.", severity="warning", markup=False)
            return
        kind, value = choice
        if kind == "context":
            self.app.post_message(ContextChosen(int(value)))  # type: ignore[call-overload]
            self.conversation.session.n_ctx = int(value)  # type: ignore[call-overload]  # reopening uses it again
            self.start_engine(n_ctx=int(value))  # type: ignore[call-overload]
        elif kind == "range":
            document = self.conversation.document.parse_range(str(value))
            self.conversation.session.page_range = str(value)
            self.pending_session = self.conversation.session  # the session remembers the range
            self.post_message(DocumentLoaded(document))

    @on(PrefillProgressed)
    def prefill_progressed(self, message: PrefillProgressed) -> None:
        if not self.advance(Event.PREFILL_PROGRESSED):
            return
        p = message.progress
        bar = self.query_one(DocumentBar)
        bar.set_progress(p.done, p.total)
        what = "the document" if message.purpose == "document" else "the question"
        reused = f" ({p.reused:,} reused)" if p.reused else ""
        # before the first batch there is no rate: "0 tok/s · ETA 0 s" would promise an instant finish
        rate = f"{p.tok_s:,.0f} tok/s · ETA {p.eta_s:,.0f} s" if p.tok_s > 0 else "measuring the rate…"
        bar.set_status(f"Prefilling {what}: {p.done:,} / {p.total:,} tokens{reused} · "
                       f"{rate} · Esc cancels")

    @on(DocumentReady)
    def document_ready(self, message: DocumentReady) -> None:
        done = message.done
        if done is not None and done.finish == "cancelled":
            self.advance(Event.PREFILL_CANCELLED, "Prefill cancelled; press F5 to prefill again.")
            return
        rate = f" at {done.prefill_tok_s:,.0f} tok/s" if done and done.n_evaluated else ""
        if not self.advance(Event.PREFILLED, f"Ready: prefilled{rate}; ask a question."):
            return
        if self.pending_question:
            question, self.pending_question = self.pending_question, None
            self.run_question(question)

    # -------------------------------------------------------------- questions

    @on(PathsDropped)
    def paths_dropped(self, message: PathsDropped) -> None:
        self.open_paths(message.paths)

    def on_paste(self, event: events.Paste) -> None:
        """Files pasted or dropped while the question box is not focused open too (served uploads arrive so)."""
        route = route_input(event.text)
        if route.kind == "open":
            self.open_paths(list(route.files))
        elif route.kind == "refuse":
            self.paths_refused(PathsRefused(route.problem))

    @on(QuestionInput.Submitted, "#question")
    def question_submitted(self, event: QuestionInput.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        route = route_input(text)
        if route.kind == "refuse":  # a folder or a missing path is never sent to the model
            self.paths_refused(PathsRefused(route.problem))
            return
        event.input.value = ""
        if route.files:
            self.open_paths(list(route.files))
            return
        self.ask(route.question)

    @on(PathsRefused)
    def paths_refused(self, message: PathsRefused) -> None:
        self.query_one(DocumentBar).set_status(message.message)
        self.notify(message.message, title="Could not open", severity="error", timeout=10, markup=False)

    def ask(self, question: str) -> None:
        if self.conversation is None:
            self.notify("Open a document first (ctrl+o, or drop a file here).", severity="warning", markup=False)
            return
        phase = self.chat.phase
        if phase in (Phase.LOADING, Phase.PREFILLING, Phase.INGESTING):
            self.pending_question = question
            self.notify("The document is still being prepared; your question will be asked when it is ready.",
                        markup=False)
            return
        if phase is Phase.ANSWERING:
            self.notify("An answer is still streaming; press Esc to stop it first.", severity="warning", markup=False)
            return
        if phase is Phase.COMPARING:
            self.refused_while_comparing(Event.ASKED, "ask it")
            return
        if phase in (Phase.FAILED, Phase.REFUSED):
            self.notify("The engine is not ready: press F5 to restart it, or F4 to change the arm or context.",
                        severity="warning", markup=False)
            return
        self.run_question(question)

    def run_question(self, question: str) -> None:
        self.call_later(self._begin_answer, question)

    async def _begin_answer(self, question: str) -> None:
        if self.conversation is None or self.chat.after(Event.ASKED) is None:
            self.notify(f"The question was not asked: the chat is {self.chat.phase} now. Ask it again when it "
                        "is ready.", severity="warning", markup=False)
            return
        log = self.query_one(ChatLog)
        await log.add_question(question)
        answer = await log.add_answer()
        if not self.advance(Event.ASKED, "Answering… Esc stops."):  # the phase moved while the views mounted
            await answer.finish(None, [], note="not asked: the engine was busy; ask again")
            return
        self.current_answer = answer
        self.last_question = question
        self.last_engine_news = time.monotonic()
        self.answer_worker(self.conversation, question, self.engine_epoch)

    @work(thread=True, exclusive=True, group="answer")
    def answer_worker(self, conversation: Conversation, question: str, epoch: int) -> None:
        def warn(text: str) -> None:
            self.app.call_from_thread(self.notify, text, severity="warning", markup=False)

        stream_answer(conversation, question, partial(self.post_for, conversation, epoch=epoch), warn)

    @on(AnswerStreamed)
    async def answer_streamed(self, message: AnswerStreamed) -> None:
        if self.advance(Event.ANSWER_STREAMED) and self.current_answer is not None:
            if not self.current_answer.text:  # the question's prefill is over: its 100% bar would linger
                self.query_one(DocumentBar).set_status("Answering… Esc stops.")
            await self.current_answer.append(message.text)
            self.query_one(ChatLog).scroll_end(animate=False)

    @on(AnswerCompleted)
    async def answer_completed(self, message: AnswerCompleted) -> None:
        stopped = " (stopped)" if message.done.finish == "cancelled" else ""
        sampling = self.fraqtl.settings.sampling()
        how = "" if sampling == GREEDY else f" ({sampling.describe()})"
        if not self.advance(Event.ANSWERED, f"Answered{stopped}{how}: evaluated {message.done.n_evaluated:,} new "
                                            f"prompt tokens, reused {message.done.n_prompt - message.done.n_evaluated:,}."):
            return
        self.last_done = message.done
        if self.current_answer is not None:
            await self.current_answer.finish(message.done, message.citations)
        self.current_answer = None
        self.query_one(ChatLog).scroll_end(animate=False)

    @on(EngineFailedMessage)
    async def engine_failed(self, message: EngineFailedMessage) -> None:
        crashed = message.kind in ("EngineCrashedError", "EngineHungError")
        overflow = message.kind == "ContextOverflowError"
        if overflow and self.conversation is not None and self.conversation.engine is not None:
            accepted = self.advance(Event.QUESTION_REFUSED, message.message)
        else:
            accepted = self.advance(Event.ENGINE_FAILED,
                                    message.message + (" Press F5 to restart the engine." if crashed else ""))
        if not accepted:
            return
        if self.current_answer is not None:
            self.current_answer.add_class("failed")
            await self.current_answer.finish(None, [], note=message.message)
            self.current_answer = None
        if self.conversation is not None and self.conversation.abandon_answer("failed", message.message):
            self.save_session()  # a hung engine's answer: its worker never reports, so it is kept here
        self.restore_pending_question()
        self.notify(message.message, title="Engine", severity="error", timeout=10, markup=False)

    def save_session(self) -> None:
        assert self.conversation is not None
        try:
            self.conversation.session.save()
        except OSError as exc:
            self.notify(f"The session could not be saved ({exc}); free some disk space, then ask again to save it.",
                        severity="error", timeout=15, markup=False)

    def on_unmount(self) -> None:
        """Quitting mid-answer keeps the question and the text so far in the session, marked interrupted."""
        if self.conversation is not None and self.conversation.abandon_answer("interrupted",
                                                                                "the app was closed mid-answer"):
            self.save_session()

    def restore_pending_question(self) -> None:
        """A question waiting for the prefill goes back into an empty question box, not lost with the engine."""
        question, self.pending_question = self.pending_question, None
        box = self.query_one(QuestionInput)
        if question and not box.value.strip():
            box.value = question
            box.cursor_position = len(question)

    async def check_engine_hung(self) -> None:
        """An engine that reports nothing for ``answer_timeout_s`` is given up on (F5 starts a new one)."""
        limit = self.fraqtl.settings.answer_timeout_s
        if self.chat.phase not in (Phase.PREFILLING, Phase.ANSWERING) or time.monotonic() - self.last_engine_news < limit:
            return
        self.engine_epoch += 1  # the hung worker's late news is dropped
        if self.conversation is not None:
            self.conversation.stop()
        error = EngineHungError(limit)
        await self.engine_failed(EngineFailedMessage(str(error), type(error).__name__))

    # -------------------------------------------------------------- actions

    def action_stop(self) -> None:
        if self.chat.phase is Phase.INGESTING:
            self.ingest_stop.set()
            self.query_one(DocumentBar).set_status("Stopping…")
            return
        if self.conversation is not None and self.chat.phase in (Phase.ANSWERING, Phase.PREFILLING):
            self.conversation.stop()
            self.query_one(DocumentBar).set_status("Stopping…")

    def action_open(self) -> None:
        if self.refused_while_comparing(Event.OPENING, "open a document"):
            return

        def opened(paths: list[Path] | None) -> None:
            if paths:
                self.open_paths(paths)

        self.app.push_screen(OpenDialog(), opened)

    def action_sessions(self) -> None:
        if self.refused_while_comparing(Event.OPENING, "reopen a session"):
            return

        def chosen(session: Session | None) -> None:
            if session is not None:
                self.reopen(session)

        self.app.push_screen(SessionsDialog(self.conversation.session if self.conversation else None), chosen)

    def action_restart_engine(self) -> None:
        if self.conversation is None:
            self.notify("Open a document first.", severity="warning", markup=False)
            return
        if self.refused_while_comparing(Event.ENGINE_STARTING, "restart the engine"):
            return
        if self.chat.phase is Phase.ANSWERING:
            self.notify("An answer is streaming; press Esc to stop it, then restart.", severity="warning", markup=False)
            return
        self.start_engine()

    def action_compare(self) -> None:
        self.fraqtl.action_compare()

    def action_settings(self) -> None:
        self.fraqtl.action_settings()

    def action_models(self) -> None:
        self.fraqtl.action_models()

    def action_export(self) -> None:
        if self.conversation is None or not self.conversation.session.turns:
            self.notify("Ask a question first: there is no transcript to export yet.", severity="warning", markup=False)
            return
        try:
            path = self.conversation.session.export(self.fraqtl.model_path.name)
        except OSError as exc:
            self.notify(f"The transcript could not be written ({exc.strerror}); free some disk space and try again.",
                        severity="error", timeout=10, markup=False)
            return
        self.exported_to = path
        self.notify(f"Exported the transcript to {path}.", markup=False)

    def action_document(self) -> None:
        self.action_show_page(None)

    def action_show_page(self, page: int | None) -> None:
        """The document view, at ``page`` (a citation's) or where it was last left."""
        if self.conversation is None:
            self.notify("Open a document first (ctrl+o).", severity="warning", markup=False)
            return
        document = self.conversation.document
        if page is not None and document.page(page) is None:
            self.notify(f"The document has no page {page}; that citation points nowhere.", severity="warning",
                        markup=False)
            page = None

        def left(shown: int | None) -> None:
            if shown is not None:
                self.document_page = shown

        self.app.push_screen(DocumentScreen(document, page if page is not None else self.document_page), left)

    def action_toggle_vram(self) -> None:
        panel = self.query_one(VramPanel)
        panel.display = not panel.display

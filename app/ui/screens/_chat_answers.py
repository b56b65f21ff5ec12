"""The chat screen's part that answers questions: the question box, asking, streaming the answer into
the transcript, and what becomes of an answer that fails, hangs or is cut by quitting (it is kept in
the session, marked, with its text so far).

A mixin of :class:`~app.ui.screens._chat.ChatScreen`, which owns the state it changes.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from textual import work

from app.conversation import Conversation
from app.paths import route_input
from app.ui.chat_state import Event, Phase
from app.ui.messages import AnswerCompleted, AnswerStreamed, EngineFailedMessage, PathsRefused
from app.ui.screens._chat_workers import stream_answer
from app.ui.widgets import ChatLog, DocumentBar, QuestionInput
from engine.sampling import GREEDY

if TYPE_CHECKING:
    from app.ui.screens._chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object


class ChatAnswers(_Base):
    def on_input_submitted(self, event: QuestionInput.Submitted) -> None:
        if event.input.id != "question":
            return
        text = event.value.strip()
        if not text:
            return
        route = route_input(text)
        if route.kind == "refuse":  # a folder or a missing path is never sent to the model
            self.on_paths_refused(PathsRefused(route.problem))
            return
        event.input.value = ""
        if route.files:
            self.open_paths(list(route.files))
            return
        self.ask(route.question)

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

    async def on_answer_streamed(self, message: AnswerStreamed) -> None:
        if self.advance(Event.ANSWER_STREAMED) and self.current_answer is not None:
            if not self.current_answer.text:  # the question's prefill is over: its 100% bar would linger
                self.query_one(DocumentBar).set_status("Answering… Esc stops.")
            await self.current_answer.append(message.text)
            self.query_one(ChatLog).scroll_end(animate=False)

    async def on_answer_completed(self, message: AnswerCompleted) -> None:
        stopped = " (stopped)" if message.done.finish == "cancelled" else ""
        sampling = self.fraqtl.settings.sampling()
        how = "" if sampling == GREEDY else f" ({sampling.describe()})"
        done = message.done
        if not self.advance(Event.ANSWERED, f"Answered{stopped}{how}: evaluated {done.n_evaluated:,} new prompt "
                                            f"tokens, reused {done.n_prompt - done.n_evaluated:,}."):
            return
        self.last_done = message.done
        if self.current_answer is not None:
            await self.current_answer.finish(message.done, message.citations)
        self.current_answer = None
        self.query_one(ChatLog).scroll_end(animate=False)
        self.restart_for_saved_settings()

    async def on_engine_failed_message(self, message: EngineFailedMessage) -> None:
        crashed = message.kind in ("EngineCrashedError", "EngineHungError")
        overflow = message.kind == "ContextOverflowError"
        refused = overflow and self.conversation is not None and self.conversation.engine is not None
        if refused:
            message = EngineFailedMessage(message.message + " Your question is back in the question box to shorten.",
                                          message.kind)
            accepted = self.advance(Event.QUESTION_REFUSED, message.message)
        else:
            # settings saved during the answer restart the engine now (restart_for_saved_settings below)
            hint = (" The engine restarts now with the settings saved during the answer." if self.restart_pending()
                    else " Press F5 to restart the engine.")
            accepted = self.advance(Event.ENGINE_FAILED, message.message + (hint if crashed else ""))
        if not accepted:
            return
        if self.current_answer is not None:
            self.current_answer.add_class("failed")
            await self.current_answer.finish(None, [], note=message.message)
            self.current_answer = None
            self.query_one(ChatLog).scroll_end(animate=False)  # the note says why; it was below the view
        if self.conversation is not None and self.conversation.abandon_answer("failed", message.message):
            self.save_session()  # a hung engine's answer: its worker never reports, so it is kept here
        if refused:  # never asked, so not in the transcript: the text typed goes back where it was typed
            self.restore_question(self.last_question)
        self.restore_pending_question()
        self.notify(message.message, title="Engine", severity="error", timeout=10, markup=False)
        self.restart_for_saved_settings()

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
        self.restore_question(question)

    def restore_question(self, question: str | None) -> None:
        """Put ``question`` back into the question box, unless something new has been typed there since."""
        box = self.query_one(QuestionInput)
        if question and not box.value.strip():
            box.value = question
            box.cursor_position = len(question)

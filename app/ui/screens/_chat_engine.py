"""The chat screen's part that runs the engine: starting it on the document, the fit check and the
overflow dialog, the document's prefill, restarts (F5, new settings or model), closing it for the arm
comparison and starting it again after, and giving up on an engine that hangs.

A mixin of :class:`~app.ui.screens._chat.ChatScreen`, which owns the state it changes. Every engine
call runs in a thread worker (:mod:`app.ui.screens._chat_workers`); nothing here waits on the model.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from textual import work
from textual.message_pump import MessagePump

from app.conversation import Conversation
from app.errors import EngineHungError
from app.ui.chat_state import Event, Phase
from app.ui.messages import (
    ContextChosen,
    DocumentLoaded,
    DocumentReady,
    EngineFailedMessage,
    EngineReleased,
    EngineReleaseRefused,
    EngineReleaseRequested,
    EngineRestartRequested,
    EngineStarted,
    FitMeasured,
    PrefillProgressed,
)
from app.ui.screens._chat_workers import start_and_prefill
from app.ui.screens._dialogs import OverflowDialog
from app.ui.widgets import DocumentBar, VramPanel

if TYPE_CHECKING:
    from app.ui.screens._chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object


class ChatEngine(_Base):
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

    @work(thread=True, exclusive=True, group="engine")
    def run_engine_start(self, conversation: Conversation, n_ctx: int | None,
                         previous: Conversation | None, epoch: int) -> None:
        start_and_prefill(conversation, n_ctx, previous, lambda: conversation is self.conversation,
                          partial(self.post_for, conversation, epoch=epoch))

    def on_engine_restart_requested(self, message: EngineRestartRequested) -> None:
        if self.conversation is None:
            return  # the next document starts the engine with the new settings or model
        if self.chat.phase is Phase.ANSWERING:
            if message.after_answer:  # saved settings: the app's notice said it restarts when the answer ends
                self.restart_after_answer = (self.conversation, message.model_path)
                return
            self.notify("An answer is streaming; press Esc to stop it, then restart the engine (F5).",
                        severity="warning", markup=False)
            return
        self.restart_after_answer = None  # this restart takes the settings saved meanwhile too
        if message.model_path is not None:
            self.conversation.use_model(message.model_path)
        if self.chat.phase is not Phase.COMPARING:  # else it starts with them after the comparison
            self.start_engine()

    def restart_pending(self) -> bool:
        """Settings saved during this conversation's answer wait for it to end to restart the engine."""
        return self.restart_after_answer is not None and self.restart_after_answer[0] is self.conversation

    def restart_for_saved_settings(self) -> None:
        """The answer is over (answered, stopped, refused or failed): restart the engine with the settings
        saved while it streamed. Another document opened meanwhile started its own engine with them."""
        pending = self.restart_after_answer if self.restart_pending() else None
        self.restart_after_answer = None
        if pending is not None:
            self.on_engine_restart_requested(EngineRestartRequested(pending[1]))

    # -------------------------------------------------------------- the arm comparison borrows the memory

    def on_engine_release_requested(self, message: EngineReleaseRequested) -> None:
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

    def on_engine_started(self, message: EngineStarted) -> None:
        loaded = message.loaded
        self.advance(Event.ENGINE_STARTED, f"Model loaded ({loaded.arm}, {loaded.n_ctx:,}-token context); counting "
                                           "tokens…")

    def on_fit_measured(self, message: FitMeasured) -> None:
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
            # the session remembers the range (the dialog checked it), and reading the document applies it
            self.conversation.session.page_range = str(value)
            self.pending_session = self.conversation.session
            self.post_message(DocumentLoaded(self.conversation.document))

    def on_prefill_progressed(self, message: PrefillProgressed) -> None:
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

    def on_document_ready(self, message: DocumentReady) -> None:
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

    async def check_engine_hung(self) -> None:
        """An engine that reports nothing for ``answer_timeout_s`` is given up on (F5 starts a new one)."""
        limit = self.fraqtl.settings.answer_timeout_s
        waiting = self.chat.phase in (Phase.PREFILLING, Phase.ANSWERING)
        if not waiting or time.monotonic() - self.last_engine_news < limit:
            return
        self.engine_epoch += 1  # the hung worker's late news is dropped
        if self.conversation is not None:
            self.conversation.stop()
        error = EngineHungError(limit)
        await self.on_engine_failed_message(EngineFailedMessage(str(error), type(error).__name__))

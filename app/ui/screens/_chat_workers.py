"""What the chat screen's thread workers do: read documents, start and prefill the engine, stream an answer.

Each runs off the event loop and reports only by ``post``-ing messages from :mod:`app.ui.messages`
(the screen drops those of a replaced document or engine); none touches a widget or the chat's state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.message import Message

from app.citations import check_citations
from app.conversation import Conversation
from app.errors import DocumentError
from app.ingest import Document, IngestLimits, load_document
from app.model_library import model_info
from app.ui.messages import (
    AnswerCompleted,
    AnswerStreamed,
    DocumentFailed,
    DocumentLoaded,
    DocumentReady,
    EngineFailedMessage,
    EngineStarted,
    FitMeasured,
    IngestProgressed,
    PrefillProgressed,
)
from engine.errors import EngineError
from engine.events import AnswerDone, EngineFailed, PrefillProgress, Token

STREAM_BATCH_S = 0.05  # answer text is posted at most this often (Markdown re-renders are costly)

Post = Callable[[Message], None]


def read_documents(paths: list[Path], limits: IngestLimits, model_path: Path, post: Post,
                   warn: Callable[[str], None]) -> None:
    """Read ``paths`` as one document; a reader's failure, of any kind, costs the document, never the app."""
    try:
        docs = [load_document(p, lambda d, t: post(IngestProgressed(d, t)), limits=limits, on_warning=warn)
                for p in paths]
    except DocumentError as exc:
        post(DocumentFailed(str(exc)))
        return
    except Exception as exc:  # a reader bug must cost the document, never the app
        post(DocumentFailed(f"Reading {', '.join(p.name for p in paths)} failed ({type(exc).__name__}: "
                            f"{exc}); please report it, and try another copy of the file."))
        return
    try:
        model_info(model_path)  # parsed here, so that the event loop finds it cached
    except EngineError:
        pass  # the engine's start says what is wrong with the model
    post(DocumentLoaded(Document.join(docs)))


def start_and_prefill(conversation: Conversation, n_ctx: int | None, previous: Conversation | None,
                      still_current: Callable[[], bool], post: Post) -> None:
    """Close ``previous``, start the engine, count the document against the context, prefill it if it fits."""
    if previous is not None:
        previous.close()  # here, in a thread: a busy engine process takes seconds to end
    try:
        loaded = conversation.start_engine(n_ctx=n_ctx)
        if not still_current():  # another document took over while this engine loaded
            conversation.close()
            return
        post(EngineStarted(loaded))
        fit = conversation.measure()
    except EngineError as exc:
        post(EngineFailedMessage(str(exc), type(exc).__name__))
        return
    post(FitMeasured(fit))
    if not fit.fits:
        return
    done: AnswerDone | None = None
    try:
        for event in conversation.prefill():
            if isinstance(event, PrefillProgress):
                post(PrefillProgressed(event, "document"))
            elif isinstance(event, AnswerDone):
                done = event
            elif isinstance(event, EngineFailed):
                post(EngineFailedMessage(event.message, event.kind))
                return
    except EngineError as exc:  # raised rather than reported (e.g. the engine's pipe closed under it)
        post(EngineFailedMessage(str(exc), type(exc).__name__))
        return
    post(DocumentReady(done))


def stream_answer(conversation: Conversation, question: str, post: Post, warn: Callable[[str], None]) -> None:
    """Answer ``question``, posting its text in batches, then check the citations; the session is saved
    whatever the outcome (a failed answer is kept in it with its partial text)."""
    buffer = ""
    last_post = time.monotonic()

    def save() -> None:
        try:
            conversation.session.save()
        except OSError as exc:
            warn(f"The session could not be saved ({exc}).")

    try:
        for event in conversation.ask(question):
            if isinstance(event, Token):
                buffer += event.text
                if time.monotonic() - last_post >= STREAM_BATCH_S:
                    post(AnswerStreamed(buffer))
                    buffer, last_post = "", time.monotonic()
            elif isinstance(event, PrefillProgress):
                post(PrefillProgressed(event, "answer"))
            elif isinstance(event, AnswerDone):
                if buffer:
                    post(AnswerStreamed(buffer))
                    buffer = ""
                citations = check_citations(event.text, conversation.document)
                save()
                post(AnswerCompleted(event, citations))
            elif isinstance(event, EngineFailed):
                if buffer:  # shown as it was saved
                    post(AnswerStreamed(buffer))
                save()
                post(EngineFailedMessage(event.message, event.kind))
    except EngineError as exc:
        if buffer:
            post(AnswerStreamed(buffer))
        if conversation.session.turns and conversation.session.turns[-1].unfinished:
            save()  # (a question refused for its length was never asked: nothing new to save)
        post(EngineFailedMessage(str(exc), type(exc).__name__))

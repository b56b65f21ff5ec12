"""A conversation about one document with one engine: prompts, the fit check, the transcript.

The document goes into the system message, so that every question — a follow-up or a new
one — shares the same prefix and the engine evaluates only the new turn. Before any
prefill the exact prompt is counted with the model's own tokenizer and refused with the
numbers (:class:`~engine.errors.ContextOverflowError`) if it does not fit; nothing is ever
truncated. This module runs the engine but never touches the UI; the UI calls it from
worker threads.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from app.ingest import Document
from app.sessions import Session, Turn
from app.settings import Settings, max_context
from engine.errors import ContextOverflowError, EngineError
from engine.events import AnswerDone, EngineFailed, Event, Token
from app.model_library import model_info
from engine.gguf import GgufInfo
from engine.rpc import parse_endpoints
from engine.sampling import GREEDY, Sampling
from engine.worker import EngineLoaded, EngineSpec, EngineWorker

SYSTEM_PROMPT = (
    "You answer questions about the document below, using only what it says. Answer in one or "
    "two sentences. When the document has page markers like [p. 2], cite the page you used in "
    "the same form."
)
QUESTION_ROOM = 128  # tokens kept free for a question and the chat template around it


class Engine(Protocol):
    """What the app needs of an engine: :class:`EngineWorker` or a fake in tests."""

    spec: EngineSpec

    def start(self) -> EngineLoaded: ...
    @property
    def pid(self) -> int | None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def count_chat_tokens(self, messages: Sequence[dict[str, str]]) -> int: ...
    def answer(self, messages: Sequence[dict[str, str]], max_tokens: int = 256,
               sampling: Sampling = GREEDY) -> Iterator[Event]: ...


EngineFactory = Callable[[EngineSpec], Engine]


@dataclasses.dataclass(frozen=True)
class Fit:
    """The document prompt's exact token count against the context."""

    tokens: int  # the system message with the document, in the chat template
    n_ctx: int
    reserve: int  # room kept for a question and the answer
    n_ctx_train: int
    max_ctx_yarn: int  # the largest context the model allows with YaRN (≤ 128K)

    @property
    def needed(self) -> int:
        return self.tokens + self.reserve

    @property
    def fits(self) -> bool:
        return self.needed <= self.n_ctx

    @property
    def larger_context(self) -> int | None:
        """The smallest power-of-two context that fits, if the model allows it (YaRN above training)."""
        size = 1024
        while size < self.needed:
            size *= 2
        return size if size <= self.max_ctx_yarn else None

    def error(self) -> ContextOverflowError:
        return ContextOverflowError(self.needed, self.n_ctx)


@dataclasses.dataclass
class _Asking:
    """The question being answered and the answer's text so far."""

    question: str
    text: str = ""


def system_message(document: Document) -> dict[str, str]:
    return {"role": "system", "content": f"{SYSTEM_PROMPT}\n\nDocument: {document.title}\n\n{document.text}"}


class Conversation:
    """One document, one engine process, and the questions and answers so far."""

    def __init__(self, document: Document, settings: Settings, model_path: Path,
                 factory: EngineFactory = EngineWorker, session: Session | None = None) -> None:
        self.document = document
        self.settings = settings
        self.model_path = model_path
        self.factory = factory
        self.info: GgufInfo = model_info(model_path)
        self.session = session or Session(document.source, document.title, document.sha256,
                                          document_sources=document.sources if len(document.sources) > 1 else [])
        self.engine: Engine | None = None
        self.loaded: EngineLoaded | None = None
        self.fit: Fit | None = None
        self._asking: _Asking | None = None  # settled once: by its answer, its failure, or abandon_answer()
        self._asking_lock = threading.Lock()

    # -------------------------------------------------------------- engine

    def use_model(self, model_path: Path) -> None:
        """Answer with another model from the next engine start (the transcript stays)."""
        self.info = model_info(model_path)
        self.model_path = model_path

    def spec(self, arm: str | None = None, n_ctx: int | None = None) -> EngineSpec:
        n_ctx = n_ctx or self.settings.n_ctx
        return EngineSpec(str(self.model_path), arm or self.settings.arm, n_ctx=n_ctx,
                          yarn=self.settings.yarn or n_ctx > self.info.n_ctx_train > 0,
                          n_threads=self.settings.n_threads or None, sidecar=self.settings.sidecar,
                          rpc_servers=parse_endpoints(self.settings.rpc_servers))

    def start_engine(self, arm: str | None = None, n_ctx: int | None = None) -> EngineLoaded:
        """(Re)start the engine process; the transcript stays."""
        self.close()
        engine = self.factory(self.spec(arm, n_ctx))
        self.loaded = engine.start()
        self.engine = engine
        return self.loaded

    def close(self) -> None:
        engine, self.engine = self.engine, None  # taken first: a second close (another thread) finds none
        if engine is not None:
            engine.close()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    # -------------------------------------------------------------- prompts

    def history(self) -> list[dict[str, str]]:
        """The turns the model sees again: a failed or interrupted exchange stays in the transcript only."""
        kept: list[dict[str, str]] = []
        for turn in self.session.turns:
            if turn.unfinished:
                if kept and kept[-1]["role"] == "user":
                    kept.pop()  # its question goes with it
                continue
            if turn.content:
                kept.append({"role": turn.role, "content": turn.content})
        return kept

    def messages_for(self, question: str) -> list[dict[str, str]]:
        return [system_message(self.document), *self.history(), {"role": "user", "content": question}]

    def measure(self) -> Fit:
        """Count the document prompt exactly with the model's tokenizer (no prefill)."""
        assert self.engine is not None, "start the engine first"
        tokens = self.engine.count_chat_tokens([system_message(self.document)])
        n_ctx = self.engine.spec.n_ctx
        self.fit = Fit(tokens, n_ctx, self.settings.max_tokens + QUESTION_ROOM, self.info.n_ctx_train,
                       max_context(self.info.n_ctx_train, yarn=True))
        return self.fit

    def prefill(self) -> Iterator[Event]:
        """Evaluate the document once (a zero-length answer), so the first question is quick."""
        assert self.engine is not None, "start the engine first"
        yield from self.engine.answer([system_message(self.document)], max_tokens=0)

    def ask(self, question: str) -> Iterator[Event]:
        """Answer ``question``; the turn is added to the transcript when the answer completes, or fails
        (with the text it had and the engine's message: what the person asked is never lost)."""
        assert self.engine is not None, "start the engine first"
        messages = self.messages_for(question)
        n_ctx = self.engine.spec.n_ctx
        tokens = self.engine.count_chat_tokens(messages)
        if tokens + self.settings.max_tokens > n_ctx:
            raise ContextOverflowError(tokens + self.settings.max_tokens, n_ctx)
        asking = _Asking(question)
        arm = self.engine.spec.arm
        with self._asking_lock:
            self._asking = asking
        try:
            for event in self.engine.answer(messages, self.settings.max_tokens, self.settings.sampling()):
                if isinstance(event, Token):
                    asking.text += event.text
                elif isinstance(event, AnswerDone):
                    self._settle(asking, Turn("assistant", event.text.strip(), arm, event.n_evaluated, event.finish))
                elif isinstance(event, EngineFailed):
                    self._settle(asking, Turn("assistant", asking.text.strip(), arm, finish="failed",
                                              note=event.message))
                yield event
        except EngineError as exc:
            self._settle(asking, Turn("assistant", asking.text.strip(), arm, finish="failed", note=str(exc)))
            raise

    def abandon_answer(self, finish: str, note: str) -> bool:
        """Record the answer in progress as cut (``finish`` "failed" or "interrupted"), with the text it has
        so far; True if there was one. For an answer whose engine hung, or the app quitting mid-answer."""
        asking = self._asking
        if asking is None:
            return False
        arm = self.engine.spec.arm if self.engine is not None else self.settings.arm
        return self._settle(asking, Turn("assistant", asking.text.strip(), arm, finish=finish, note=note))

    def _settle(self, asking: _Asking, answer: Turn) -> bool:
        """Add ``asking``'s question and ``answer`` to the transcript, once: later reports of it are ignored."""
        with self._asking_lock:
            if self._asking is not asking:
                return False
            self._asking = None
            self.session.turns += [Turn("user", asking.question), answer]
            return True

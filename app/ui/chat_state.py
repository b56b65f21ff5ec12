"""The chat's state: the phase it is in, the document and conversation it holds, and what each event does.

The chat screen is the one owner of a :class:`ChatState`; everything else posts it a message and
may read the state, never assign it. Phases are an enum and transitions a table, so a misspelt
phase fails where it is written instead of leaving the chat in a state nothing leaves, and an
event a phase cannot take (a late answer, a second prefill) is refused rather than obeyed.
This module never imports Textual: the transitions are tested without a terminal.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, StrEnum, auto
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.conversation import Conversation
    from app.ingest import Document


class Phase(StrEnum):
    EMPTY = "empty"  # no document yet
    INGESTING = "ingesting"  # a document's text is being read (Esc stops; the open document stays)
    LOADING = "loading"  # the engine process starts and counts the document's tokens
    PREFILLING = "prefilling"  # the document is evaluated once, so questions evaluate only themselves
    READY = "ready"
    ANSWERING = "answering"
    REFUSED = "refused"  # the document does not fit the context: the overflow dialog offers ways out
    FAILED = "failed"  # the engine failed, crashed or hung, or its prefill was cancelled: F5 starts it again
    COMPARING = "comparing"  # the engine is closed while the arm comparison runs its own; restarts in the chat


class Event(Enum):
    OPENING = auto()  # a document is being read
    INGEST_PROGRESSED = auto()
    READ_FAILED = auto()  # reading failed or was stopped: back to what was there before
    DOCUMENT_READ = auto()  # the text is in (or a page range of it was chosen): a conversation starts on it
    ENGINE_STARTING = auto()  # the engine (re)starts: a new document, F5, new settings or model
    ENGINE_STARTED = auto()
    FITS = auto()
    OVERFLOWS = auto()
    PREFILL_PROGRESSED = auto()
    PREFILLED = auto()
    PREFILL_CANCELLED = auto()
    ASKED = auto()
    ANSWER_STREAMED = auto()
    ANSWERED = auto()
    QUESTION_REFUSED = auto()  # the question did not fit the context; the engine lives on
    ENGINE_FAILED = auto()  # raised, crashed, or hung
    ENGINE_RELEASED = auto()  # closed for the arm comparison: nothing starts it again but ENGINE_RECLAIMED
    ENGINE_RECLAIMED = auto()  # the chat is shown again after the comparison: its engine restarts


P, E = Phase, Event
_ENGINE_RUNNING = (P.LOADING, P.PREFILLING, P.ANSWERING)
_HAS_CONVERSATION = (P.LOADING, P.PREFILLING, P.READY, P.REFUSED, P.FAILED)

# (phase, event) -> the phase after it; a pair not listed is an event the phase cannot take
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (P.INGESTING, E.INGEST_PROGRESSED): P.INGESTING,
    (P.INGESTING, E.DOCUMENT_READ): P.LOADING,
    (P.REFUSED, E.DOCUMENT_READ): P.LOADING,  # a page range chosen in the overflow dialog
    **{(phase, E.ENGINE_STARTING): P.LOADING for phase in _HAS_CONVERSATION},
    (P.LOADING, E.ENGINE_STARTED): P.LOADING,
    (P.LOADING, E.FITS): P.PREFILLING,
    (P.LOADING, E.OVERFLOWS): P.REFUSED,
    (P.PREFILLING, E.PREFILL_PROGRESSED): P.PREFILLING,
    (P.ANSWERING, E.PREFILL_PROGRESSED): P.ANSWERING,  # the question's own prefill
    (P.PREFILLING, E.PREFILLED): P.READY,
    (P.PREFILLING, E.PREFILL_CANCELLED): P.FAILED,
    (P.READY, E.ASKED): P.ANSWERING,
    (P.ANSWERING, E.ANSWER_STREAMED): P.ANSWERING,
    (P.ANSWERING, E.ANSWERED): P.READY,
    **{(phase, E.QUESTION_REFUSED): P.READY for phase in _ENGINE_RUNNING},
    **{(phase, E.ENGINE_FAILED): P.FAILED for phase in _ENGINE_RUNNING},
    **{(phase, E.ENGINE_RELEASED): P.COMPARING for phase in (P.READY, P.REFUSED, P.FAILED)},
    (P.COMPARING, E.ENGINE_RECLAIMED): P.LOADING,
}
# what the engine reports while another document is being read moves the phase that reading returns to
_READING_EVENTS = (E.OPENING, E.INGEST_PROGRESSED, E.READ_FAILED, E.DOCUMENT_READ)


@dataclasses.dataclass(frozen=True)
class ChatState:
    phase: Phase = Phase.EMPTY
    resume: Phase = Phase.EMPTY  # while INGESTING: the phase a failed or stopped reading returns to
    document: Document | None = None
    conversation: Conversation | None = None

    def __post_init__(self) -> None:
        for name in ("phase", "resume"):
            value = getattr(self, name)
            if not isinstance(value, Phase):  # a plain string would compare equal and hide a typo
                raise TypeError(f"ChatState.{name} must be a Phase, not {value!r}")

    @property
    def busy(self) -> bool:
        """Reading, loading, prefilling or answering: the engine or the reader is at work."""
        return self.phase in (P.INGESTING, *_ENGINE_RUNNING)

    def after(self, event: Event) -> ChatState | None:
        """The state ``event`` leads to, or None when this phase cannot take it (the event is ignored)."""
        if not isinstance(event, Event):
            raise TypeError(f"not a chat Event: {event!r}")
        if (event is E.OPENING and self.phase is P.COMPARING) or (event is E.ENGINE_RELEASED and self.busy):
            return None  # a new document would start an engine beside the arms'; a busy chat keeps its engine
        if event is E.OPENING:  # opening another document abandons a reading already under way
            resume = self.resume if self.phase is P.INGESTING else self.phase
            return dataclasses.replace(self, phase=P.INGESTING, resume=resume)
        if self.phase is P.INGESTING and event is E.READ_FAILED:
            return dataclasses.replace(self, phase=self.resume, resume=P.EMPTY)
        if self.phase is P.INGESTING and event not in _READING_EVENTS:
            resumed = dataclasses.replace(self, phase=self.resume).after(event)
            return None if resumed is None else dataclasses.replace(self, resume=resumed.phase)
        target = TRANSITIONS.get((self.phase, event))
        return None if target is None else dataclasses.replace(self, phase=target)

    def holding(self, document: Document, conversation: Conversation) -> ChatState:
        """This state with the document just read and the conversation about it."""
        return dataclasses.replace(self, document=document, conversation=conversation)

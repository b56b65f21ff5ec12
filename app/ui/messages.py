"""The UI's messages: what its workers report, named in the past tense for what happened, and what one
part of the UI asks of the owner of the state it would change (``...Requested``, ``...Chosen``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message
from textual.message_pump import MessagePump

from app.citations import Citation
from app.compare import ArmResult
from app.conversation import Fit
from app.ingest import Document
from app.model_library import SidecarStatus
from engine.calibrate.run import CalibrationProgress
from engine.calibrate.worker import CalibrationDone, CalibrationFailed
from engine.events import AnswerDone, PrefillProgress
from engine.worker import EngineLoaded


@dataclass
class PathsDropped(Message):
    """A path (or several) was pasted or dropped onto the question box."""

    paths: list[Path]


@dataclass
class PathsRefused(Message):
    """What was pasted or typed names paths the app cannot open (a folder, a missing file)."""

    message: str


@dataclass
class IngestProgressed(Message):
    done: int
    total: int


@dataclass
class DocumentLoaded(Message):
    document: Document


@dataclass
class DocumentFailed(Message):
    message: str


@dataclass
class EngineStarted(Message):
    loaded: EngineLoaded


@dataclass
class FitMeasured(Message):
    fit: Fit


@dataclass
class PrefillProgressed(Message):
    progress: PrefillProgress
    purpose: str  # "document" (the prefill on open) or "answer"


@dataclass
class DocumentReady(Message):
    """The document was prefilled; questions now evaluate only themselves."""

    done: AnswerDone | None


@dataclass
class AnswerStreamed(Message):
    """A batch of answer text arrived (batched so the Markdown is not re-rendered per token)."""

    text: str


@dataclass
class AnswerCompleted(Message):
    done: AnswerDone
    citations: list[Citation]


@dataclass
class EngineFailedMessage(Message):
    """The engine raised or its process died; the transcript stays and the user may retry."""

    message: str
    kind: str


@dataclass
class ArmUpdated(Message):
    result: ArmResult


@dataclass
class ComparisonCompleted(Message):
    results: list[ArmResult]


@dataclass
class SidecarsChecked(Message):
    """Whether D2 sidecars exist for a model (found by hashing it in a worker)."""

    path: Path
    status: SidecarStatus


@dataclass
class CalibrationProgressed(Message):
    progress: CalibrationProgress


@dataclass
class CalibrationEnded(Message):
    """The calibration finished (sidecars written) or stopped (its finished sequences kept)."""

    path: Path
    outcome: CalibrationDone | CalibrationFailed


@dataclass
class EngineRestartRequested(Message):
    """Start the chat's engine again: the settings or the model changed, or the arm comparison closed it.

    Posted to the chat screen, which owns the conversation; ``model_path`` is the model to load from now on.
    ``after_answer``: an answer streaming meanwhile finishes first and the engine restarts then (saved
    settings); otherwise the request is refused while an answer streams.
    """

    model_path: Path | None = None
    after_answer: bool = False


@dataclass
class ContextChosen(Message):
    """The person chose a larger context for this run (the overflow dialog, or a reopened session's).

    Posted to the app, which owns the settings; the settings file is not changed.
    """

    n_ctx: int


@dataclass
class EngineReleaseRequested(Message):
    """The arm comparison asks the chat to close its engine, so that each arm's peak VRAM is its own.

    Posted to the chat screen, which owns the engine: it closes it (in a worker) and answers the
    ``requester`` with :class:`EngineReleased`, or :class:`EngineReleaseRefused` while it is busy. The chat
    starts its engine again itself when it is shown again.
    """

    requester: MessagePump


@dataclass
class EngineReleased(Message):
    """The chat's engine is closed (posted to the screen that asked for it)."""


@dataclass
class EngineReleaseRefused(Message):
    """The chat could not close its engine now; ``reason`` says why, in a sentence."""

    reason: str


@dataclass
class ChatCommandChosen(Message):
    """The person chose one of the chat's commands in the command palette (``action``: its action name).

    Posted to the chat screen, which runs it or says why not (while the arms are compared, nothing
    that starts the chat's engine runs).
    """

    action: str

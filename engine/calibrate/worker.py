"""A calibration in its own process: progress streamed back, a stop that keeps the work done.

:class:`CalibrationWorker` starts :func:`engine.calibrate.run.calibrate` in a *spawn* child
(llama.cpp's capture must not share a process with a UI) and yields its
:class:`~engine.calibrate.run.CalibrationProgress` events, then one :class:`CalibrationDone`
or :class:`CalibrationFailed`. :meth:`CalibrationWorker.stop` asks the run to stop at its
next batch; the moments of every finished sequence are already saved, so starting the same
calibration again resumes. This module must never import the app, nor any UI toolkit.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.calibrate.run import (
    CalibrationConfig,
    CalibrationInterrupted,
    CalibrationProgress,
    CalibrationResult,
    calibrate,
)
from engine.errors import EngineError
from engine.worker import _error_payload, _exit_detail, _real_std_streams

_POLL_S = 0.1


@dataclasses.dataclass(frozen=True)
class CalibrationDone:
    k_path: Path
    v_path: Path
    manifest_path: Path
    tokens: int
    seconds: float
    resumed_tokens: int
    # the held-out recipe choice (None when it was skipped): the manifest's recommended recipe,
    # its mean KLD vs the f16 cache, and the manifest's one-line reason (also when none was chosen)
    recommended: str | None = None
    score: float | None = None
    why: str = ""

    @classmethod
    def of(cls, result: CalibrationResult) -> CalibrationDone:
        recipe = result.manifest.get("recipe", {})
        best = recipe.get("recommended")
        score = (recipe.get("candidates") or {}).get(best) if best else None
        return cls(result.k_path, result.v_path, result.manifest_path, result.tokens, result.seconds,
                   result.resumed_tokens, best, score, str(recipe.get("recommended_why", "")))


@dataclasses.dataclass(frozen=True)
class CalibrationFailed:
    """The run stopped without sidecars: stopped on request (``stopped``), or an error."""

    message: str  # one sentence that says what to do next
    kind: str  # the error class name
    stopped: bool = False


CalibrationEvent = CalibrationProgress | CalibrationDone | CalibrationFailed


def _child_main(config: CalibrationConfig, conn: Connection, stop_flag: Any) -> None:
    try:
        result = calibrate(config, on_progress=lambda p: conn.send(p), should_stop=stop_flag.is_set)
        conn.send(CalibrationDone.of(result))
    except CalibrationInterrupted as exc:
        conn.send(CalibrationFailed(str(exc), type(exc).__name__, stopped=True))
    except EngineError as exc:
        conn.send(CalibrationFailed(str(exc), _error_payload(exc)[0]))
    except BaseException as exc:  # noqa: BLE001 - e.g. a full disk while saving the state
        conn.send(CalibrationFailed(f"Calibration failed ({type(exc).__name__}: {exc}); the moments of finished "
                                    "sequences are kept, so starting it again resumes.", type(exc).__name__))


class CalibrationWorker:
    """One calibration run in a child process; iterate :meth:`events` from a worker thread."""

    def __init__(self, config: CalibrationConfig) -> None:
        self.config = config
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=False)
        with _real_std_streams():
            self._stop = ctx.Event()
        self._process = ctx.Process(target=_child_main, args=(config, child_conn, self._stop),
                                    name="fraqtl-calibrate", daemon=True)
        self._child_conn = child_conn

    def events(self) -> Iterator[CalibrationEvent]:
        """Start the child and yield its events; the last is CalibrationDone or CalibrationFailed."""
        with _real_std_streams():
            self._process.start()
        self._child_conn.close()
        try:
            while True:
                if not self._conn.poll(_POLL_S):
                    if not self._process.is_alive() and not self._conn.poll(0):
                        yield CalibrationFailed(f"The calibration process stopped ({_exit_detail(self._process.exitcode)}"
                                                "); start it again to resume from the last finished sequence.",
                                                "CalibrationCrashed")
                        return
                    continue
                try:
                    event = self._conn.recv()
                except (EOFError, OSError):
                    continue  # the child is gone: the next poll says how
                yield event
                if isinstance(event, (CalibrationDone, CalibrationFailed)):
                    return
        finally:
            self.close()

    def stop(self) -> None:
        """Stop at the next batch; finished sequences stay saved for a resume."""
        self._stop.set()

    def close(self, timeout_s: float = 10.0) -> None:
        if self._process.is_alive():
            self._stop.set()
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout_s)
        self._conn.close()

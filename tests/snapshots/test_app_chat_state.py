"""The chat screen as the one owner of the chat's state: stray reports are ignored, requests come as messages."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.conversation import Fit
from app.samples import DEFAULT_SAMPLE
from app.settings import Settings
from app.ui import create_app
from app.ui.chat_state import Phase
from app.ui.messages import (
    AnswerCompleted,
    AnswerStreamed,
    DocumentReady,
    EngineFailedMessage,
    EngineRestartRequested,
    FitMeasured,
    PrefillProgressed,
)
from app.ui.widgets import AnswerView
from app_fakes import FakeEngine, FakeSampler
from engine.events import AnswerDone, Event, PrefillProgress
from engine.sampling import GREEDY, Sampling


def make_app(model_path: Path, paths=(DEFAULT_SAMPLE,), factory=FakeEngine):
    return create_app(Settings(n_ctx=8192, max_tokens=64), list(paths), model_path, factory=factory,
                      sampler=FakeSampler(available=False), vram_refresh_s=0)


async def until(pilot, condition, steps: int = 250) -> None:
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError("the app did not get there")


def status(screen) -> str:
    return str(screen.query_one("#doc-status").render())


async def test_engine_reports_in_a_chat_with_no_document_are_ignored(model_path) -> None:
    done = AnswerDone("Marta Quell.", 40, 17, 3, 812.0, 96.5, "stop")
    app = make_app(model_path, paths=())
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        before = status(screen)
        for message in (AnswerStreamed("Marta"), AnswerCompleted(done, []), DocumentReady(done),
                        PrefillProgressed(PrefillProgress(1, 2, 0, 1.0, 1.0), "answer"),
                        FitMeasured(Fit(10, 1024, 64, 2048, 8192)),
                        EngineFailedMessage("the engine process stopped", "EngineCrashedError")):
            screen.post_message(message)
        await pilot.pause(0.3)
        # the old screen obeyed AnswerCompleted here and said "ready" with nothing open
        assert screen.state is Phase.EMPTY and app.document is None and app.conversation is None
        assert not screen.query(AnswerView) and status(screen) == before
        assert app.is_running


class SlowEngine(FakeEngine):
    """Answers a word every 50 ms, so that a test can act while the answer streams."""

    def answer(self, messages: Sequence[dict[str, str]], max_tokens: int = 256,
               sampling: Sampling = GREEDY) -> Iterator[Event]:
        for event in super().answer(messages, max_tokens, sampling):
            if max_tokens:
                time.sleep(0.05)
            yield event


async def test_a_restart_requested_while_an_answer_streams_is_refused_and_the_answer_completes(model_path) -> None:
    app = make_app(model_path, factory=SlowEngine)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state is Phase.READY)
        engine = app.conversation.engine
        notes: list[str] = []
        notify = app.notify
        app.notify = lambda message, **kwargs: (notes.append(message), notify(message, **kwargs))[1]
        screen.query_one("#question").value = "Who designed the railway?"
        await pilot.press("enter")
        await until(pilot, lambda: screen.state is Phase.ANSWERING)
        screen.post_message(EngineRestartRequested())
        await until(pilot, lambda: any("An answer is streaming" in n for n in notes))
        await until(pilot, lambda: screen.state is Phase.READY and screen.last_done is not None)
        assert app.conversation.engine is engine and "Marta Quell" in screen.last_done.text
        screen.post_message(EngineRestartRequested())  # now it restarts, and prefills again
        await until(pilot, lambda: app.conversation.engine is not engine and screen.state is Phase.READY)

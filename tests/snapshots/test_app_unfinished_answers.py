"""Nothing the person asked is lost: an answer that failed, hung or was cut by quitting stays in the session.

The session file keeps the question, the answer's text so far and why it was cut; reopening the session
shows it marked, and the model is not given the cut exchange again. (The same with the real engine:
tests/functional/test_app_real_engine_faults.py.)
"""

from __future__ import annotations

import json
import threading
import time

from app.errors import EngineHungError
from app.samples import DEFAULT_SAMPLE
from app.sessions import Session
from app.settings import Settings
from app.ui import create_app
from app.ui.widgets import AnswerView, QuestionView
from app_fakes import FakeEngine, FakeSampler
from engine.events import EngineFailed, PrefillProgress, Token
from engine.sampling import GREEDY
from test_app_ui import until

QUESTION = "Who designed the railway?"


class CutEngine(FakeEngine):
    """Streams "Marta Quell was" and then crashes, hangs until closed, or streams slowly (``mode``)."""

    mode = "crash"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.closed = threading.Event()

    def answer(self, messages, max_tokens=256, sampling=GREEDY):
        if not max_tokens:
            yield from super().answer(messages, max_tokens, sampling)
            return
        yield PrefillProgress(17, 17, 0, 800.0, 0.0)
        for i, word in enumerate(["Marta", " Quell", " was"]):
            yield Token(word, i)
        if CutEngine.mode == "crash":
            yield EngineFailed("The engine process stopped (killed by SIGKILL).", "EngineCrashedError")
        elif CutEngine.mode == "hang":
            self.closed.wait(60)
        else:  # slow: a word every 50 ms until closed
            while not self.closed.wait(0.05):
                yield Token(" more", 9)
            yield EngineFailed("The engine was closed.", "EngineCrashedError")

    def close(self) -> None:
        self.closed.set()


def make(model_path, mode: str, session: Session | None = None, **settings):
    CutEngine.mode = mode
    return create_app(Settings(n_ctx=8192, max_tokens=64, **settings), [] if session else [DEFAULT_SAMPLE],
                      model_path, factory=CutEngine if mode else FakeEngine, sampler=FakeSampler(available=False),
                      vram_refresh_s=0, session=session)


def saved_turns(app) -> list[dict]:
    return json.loads(app.conversation.session.path.read_text())["turns"]


async def ask_and_cut(pilot, app) -> None:
    screen = app.chat_screen
    await until(pilot, lambda: screen.state == "ready")
    screen.query_one("#question").value = QUESTION
    await pilot.press("enter")
    await until(pilot, lambda: screen.state != "ready")


async def reopened(model_path, session_id: str) -> tuple[list[str], list[AnswerView], list[str], list[dict]]:
    """Reopen the saved session with a working engine: the questions, the answer views and their stats lines,
    and what the model is given with the next question."""
    app = make(model_path, "", session=Session.load(session_id))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        questions = [str(q.render()) for q in screen.query(QuestionView)]
        answers = list(screen.query(AnswerView))
        meta = [str(a.query_one(".answer-meta").render()) for a in answers]
        return questions, answers, meta, app.conversation.messages_for("And when?")


async def test_an_answer_the_engine_crashed_in_is_saved_with_its_text_and_reopens_marked(model_path) -> None:
    app = make(model_path, "crash")
    async with app.run_test(size=(120, 36)) as pilot:
        await ask_and_cut(pilot, app)
        await until(pilot, lambda: app.chat_screen.state == "failed")
        session_id = app.conversation.session.id
        turns = saved_turns(app)
    assert [(t["role"], t["content"], t["finish"]) for t in turns] == [
        ("user", QUESTION, ""), ("assistant", "Marta Quell was", "failed")]
    assert turns[1]["note"] == "The engine process stopped (killed by SIGKILL)."
    questions, answers, meta, messages = await reopened(model_path, session_id)
    assert questions == [QUESTION] and [a.text for a in answers] == ["Marta Quell was"]
    assert answers[0].has_class("failed")
    assert "failed: The engine process stopped (killed by SIGKILL). · restored from the saved session" in meta[0]
    assert [m["role"] for m in messages] == ["system", "user"]  # the cut exchange is not given to the model


async def test_an_answer_given_up_on_as_hung_is_saved(model_path) -> None:
    app = make(model_path, "hang", answer_timeout_s=1)
    async with app.run_test(size=(120, 36)) as pilot:
        await ask_and_cut(pilot, app)
        await until(pilot, lambda: app.chat_screen.state == "failed", steps=300)
        turns = saved_turns(app)
    assert [(t["role"], t["content"], t["finish"]) for t in turns] == [
        ("user", QUESTION, ""), ("assistant", "Marta Quell was", "failed")]
    assert turns[1]["note"] == str(EngineHungError(1))


async def test_quitting_mid_answer_keeps_the_question_and_the_text_so_far(model_path) -> None:
    app = make(model_path, "slow")
    async with app.run_test(size=(120, 36)) as pilot:
        await ask_and_cut(pilot, app)
        screen = app.chat_screen
        await until(pilot, lambda: screen.current_answer is not None and "Quell" in screen.current_answer.text)
        session = app.conversation.session
        await pilot.press("ctrl+q")
    time.sleep(0.3)  # the answer's worker, ended by the engine's close, must not overwrite the record
    turns = json.loads(session.path.read_text())["turns"]
    assert [(t["role"], t["finish"]) for t in turns] == [("user", ""), ("assistant", "interrupted")]
    assert turns[0]["content"] == QUESTION and turns[1]["content"].startswith("Marta Quell was")
    assert turns[1]["note"] == "the app was closed mid-answer"
    questions, answers, meta, _ = await reopened(model_path, session.id)
    assert questions == [QUESTION] and answers[0].has_class("failed")
    assert "interrupted: the app was closed mid-answer · restored from the saved session" in meta[0]

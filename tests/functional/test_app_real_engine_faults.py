"""Engine faults with the real model in its own process, driven through the app with Pilot.

Each fault must leave the app standing: the status line says what happened, the transcript
stays, and F5 starts a fresh engine that answers. (A SIGKILL mid-answer is in
test_app_chat.py; a hung engine with fakes, and the UI's timing, in
tests/snapshots/test_app_engine_faults.py.)
"""

from __future__ import annotations

import json
import os
import signal
import time

from engine_faults import INJECTED_ASSERT, AbortingWorker
from test_app_chat import ask, small_settings

from app.errors import EngineHungError
from app.sessions import Session
from app.ui import create_app
from app.ui.widgets import AnswerView, QuestionView
from app_pilot import wait_for
from engine.worker import EngineWorker

IMPOSSIBLE_CTX = 2**32 - 256  # ~94,000 GiB of f16 cache for SmolLM2: no machine has it
SLOW = 180  # s for an answer where the test runs several: shared CI cores (load 8 on 2 cores) took over 60


def recording_factory(first=EngineWorker):
    """An engine factory that keeps every worker it starts (the first of class ``first``)."""
    started: list[EngineWorker] = []

    def factory(spec):
        started.append((first if not started else EngineWorker)(spec))
        return started[-1]

    return started, factory


def status_of(screen) -> str:
    return str(screen.query_one("#doc-status").render())


async def answer_again(pilot, screen, question: str, fact: str, timeout: float = 60) -> None:
    await ask(pilot, screen, question)
    await wait_for(pilot, lambda: screen.state == "ready", timeout, "the fresh engine's answer")
    assert screen.last_done is not None and fact in screen.last_done.text


async def ask_until_streaming(pilot, screen, question: str) -> None:
    """Ask, and wait until the answer's first words are on screen."""
    await ask(pilot, screen, question)
    streaming = lambda: screen.current_answer is not None and screen.current_answer.text.strip()  # noqa: E731
    await wait_for(pilot, lambda: streaming() or screen.state != "answering", SLOW, "the answer to stream")
    assert streaming(), f"{screen.state}: {status_of(screen)}"


def saved_turns(session: Session) -> list[tuple[str, str, str]]:
    return [(t["role"], t["content"], t["finish"]) for t in json.loads(session.path.read_text())["turns"]]


async def reopen_shows_it_cut(model_path, session: Session, question: str, marker: str) -> None:
    """Reopen the saved session in a new app: the cut answer is shown, marked, after its question, and the
    model is not given that exchange again."""
    app = create_app(small_settings(), [], model_path, session=Session.load(session.id))
    async with app.run_test(size=(160, 36)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the reopened session to be prefilled")
        questions = [str(view.render()) for view in screen.query(QuestionView)]
        answer = screen.query(AnswerView)[questions.index(question)]  # one answer view after each question
        meta = str(answer.query_one(".answer-meta").render())
        assert answer.has_class("failed") and marker in meta and "restored from the saved session" in meta
        assert question not in [m["content"] for m in app.conversation.messages_for("And then?")]


async def test_an_impossible_context_is_refused_with_numbers_and_f5_starts_a_fresh_engine(
        model_path, app_dirs, short_document):
    app = create_app(small_settings(), [short_document], model_path)
    async with app.run_test(size=(160, 36)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
        await ask(pilot, screen, "Who is the harbour master?")
        await wait_for(pilot, lambda: screen.state == "ready", 60, "the first answer")
        # what the overflow dialog's "larger context" choice does, with a context no machine holds
        screen.start_engine(n_ctx=IMPOSSIBLE_CTX)
        await wait_for(pilot, lambda: screen.state == "failed", 60, "the context to be refused")
        status = status_of(screen)
        assert f"A {IMPOSSIBLE_CTX:,}-token context with the f16 cache needs about" in status
        assert "GiB available; choose a smaller context" in status
        assert len(screen.query(QuestionView)) == 1 and len(app.conversation.session.turns) == 2
        await pilot.press("f5")  # the settings' context, which fits
        await wait_for(pilot, lambda: screen.state == "ready", 120, "a fresh engine")
        assert app.conversation.engine.spec.n_ctx == 1024
        await answer_again(pilot, screen, "Who built the lighthouse of Velmora?", "Ardel")
        assert len(screen.query(QuestionView)) == 2


async def test_a_llama_cpp_abort_mid_answer_is_named_and_f5_starts_a_fresh_engine(
        model_path, app_dirs, short_document):
    started, factory = recording_factory(first=AbortingWorker)

    app = create_app(small_settings(max_tokens=200), [short_document], model_path, factory=factory)
    async with app.run_test(size=(160, 36)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
        await ask(pilot, screen, "Tell me everything about the harbour in great detail.")
        await wait_for(pilot, lambda: screen.state == "failed", 60, "the abort to be reported")
        status = status_of(screen)
        assert "engine process stopped (llama.cpp aborted (SIGABRT)" in status
        assert f"GGML_ASSERT({INJECTED_ASSERT}) failed" in status and "Press F5" in status
        log = started[0].log_path
        assert log is not None and f"{log}" in status and INJECTED_ASSERT in log.read_text()
        assert len(screen.query(QuestionView)) == 1  # the transcript stays
        assert screen.query(AnswerView).last().has_class("failed")
        session = app.conversation.session
        # the question and the text it had are in the session file, marked failed
        [(_, asked, _), (_, partial, finish)] = saved_turns(session)
        assert asked == "Tell me everything about the harbour in great detail." and finish == "failed"
        assert partial == screen.query(AnswerView).last().text.strip()
        await pilot.press("f5")
        await wait_for(pilot, lambda: screen.state == "ready", 120, "a fresh engine")
        assert len(started) == 2 and started[1].alive
        await answer_again(pilot, screen, "Who built the lighthouse of Velmora?", "Ardel")
    await reopen_shows_it_cut(model_path, session, "Tell me everything about the harbour in great detail.",
                              "failed: The f16 engine process stopped (llama.cpp aborted (SIGABRT)")


async def test_a_real_engine_stopped_mid_answer_is_hung_and_f5_kills_it_and_starts_a_fresh_one(
        model_path, app_dirs, short_document):
    """SIGSTOP freezes the real engine process mid-answer, as a deadlocked llama.cpp or a driver would."""
    started, factory = recording_factory()

    app = create_app(small_settings(max_tokens=200), [short_document], model_path, factory=factory)
    try:
        async with app.run_test(size=(160, 36)) as pilot:
            screen = app.chat_screen
            await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
            await answer_again(pilot, screen, "Who built the lighthouse of Velmora?", "Ardel", SLOW)
            before = [(t.role, t.content) for t in app.conversation.session.turns]
            await ask_until_streaming(pilot, screen, "Tell me everything about the harbour in great detail.")
            app.settings.answer_timeout_s = 3  # short from here on (a prompt on busy shared cores can take longer)
            hung = started[0]
            os.kill(hung.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            await wait_for(pilot, lambda: screen.state == "failed", 60, "the hung engine to be given up on")
            assert 3 <= time.monotonic() - stopped_at < 30  # the check runs each second; shared cores may lag
            assert status_of(screen) == f"{EngineHungError(3)} Press F5 to restart the engine."
            assert len(screen.query(QuestionView)) == 2 and screen.query(AnswerView).last().has_class("failed")
            # the transcript stays, with the cut answer's question and text marked failed, in the file too
            turns = app.conversation.session.turns
            assert [(t.role, t.content) for t in turns[:len(before)]] == before
            assert turns[len(before)].content == "Tell me everything about the harbour in great detail."
            assert turns[-1].finish == "failed" and turns[-1].note == str(EngineHungError(3))
            # what was shown, and any words still batched for the screen when the engine stopped
            assert turns[-1].content.startswith(screen.query(AnswerView).last().text.strip())
            assert saved_turns(app.conversation.session)[-1] == ("assistant", turns[-1].content, "failed")
            cut = len(turns)
            assert hung.alive  # stopped, not dead: only the app gave up on it
            await pilot.press("f5")  # closes the stopped engine (it cannot answer "close": killed) in a thread
            app.settings.answer_timeout_s = 120  # the fresh engine's first prefill may be slow on busy cores
            await wait_for(pilot, lambda: screen.state == "ready", 120, "a fresh engine")
            assert len(started) == 2 and started[1].alive and started[1].pid != hung.pid
            assert not hung.alive  # F5 killed the stopped process
            await answer_again(pilot, screen, "Who built the lighthouse of Velmora?", "Ardel", SLOW)
            assert len(screen.query(QuestionView)) == 3
            turns = [(t.role, t.content) for t in app.conversation.session.turns]
            assert turns[:len(before)] == before and len(turns) == cut + 2 and "Ardel" in turns[-1][1]
            await pilot.pause(0.5)
            assert screen.state == "ready"  # the killed engine's late failure is not reported over the new one
    finally:
        for worker in started:
            if worker.alive:
                os.kill(worker.pid, signal.SIGKILL)


async def test_quitting_mid_answer_keeps_the_question_and_its_text_in_the_session(model_path, app_dirs,
                                                                                 short_document):
    question = "Tell me everything about the harbour in great detail."
    started, factory = recording_factory()

    app = create_app(small_settings(max_tokens=200), [short_document], model_path, factory=factory)
    try:
        async with app.run_test(size=(160, 36)) as pilot:
            screen = app.chat_screen
            await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
            await ask_until_streaming(pilot, screen, question)
            shown = screen.current_answer.text.strip()
            session = app.conversation.session
            await pilot.press("ctrl+q")
        [(_, asked, _), (_, partial, finish)] = saved_turns(session)
        assert asked == question and finish == "interrupted" and partial.startswith(shown)
    finally:
        for worker in started:
            if worker.alive:
                os.kill(worker.pid, signal.SIGKILL)
    await reopen_shows_it_cut(model_path, session, question, "interrupted: the app was closed mid-answer")

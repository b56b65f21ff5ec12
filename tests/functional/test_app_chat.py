"""Pilot tests of the chat screen with the real SmolLM2 model in its own engine process."""

from __future__ import annotations

import os
import signal

from textual import events

from app.settings import Settings
from app.ui import create_app
from app.ui.screens import OverflowDialog
from app.ui.widgets import AnswerView, QuestionView
from app_pilot import wait_for


def small_settings(**changes) -> Settings:
    values = dict(n_ctx=1024, max_tokens=24, n_threads=2)
    values.update(changes)
    return Settings(**values)


async def ask(pilot, screen, question: str) -> None:
    """Submit a question and wait until its answer has started (or already finished)."""
    before = screen.last_done
    screen.query_one("#question").value = question
    await pilot.press("enter")
    await wait_for(pilot, lambda: screen.current_answer is not None or screen.last_done is not before,
                   30, "the answer to start")


async def test_pasted_path_opens_document_and_answer_streams_a_fact(model_path, app_dirs, short_document):
    app = create_app(small_settings(), [], model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        assert screen.state == "empty"
        # a terminal pastes a dropped file as a quoted path
        screen.query_one("#question").post_message(events.Paste(f"'{short_document}'"))
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
        assert app.document is not None and app.document.title == "velmora harbour.md"
        assert screen.query_one("#question").value == ""  # the path was not typed in

        await ask(pilot, screen, "Who built the lighthouse of Velmora?")
        await wait_for(pilot, lambda: screen.state == "ready", 60, "the answer")
        first = screen.last_done
        assert first is not None and first.finish in ("stop", "length")
        assert "Ardel" in first.text
        answer = screen.query(AnswerView).last()
        assert "Ardel" in answer.text  # it streamed into the transcript
        # the document was prefilled once on open: the question evaluates only itself
        assert first.n_evaluated < 60 < first.n_prompt

        await ask(pilot, screen, "Who is the harbour master?")
        await wait_for(pilot, lambda: screen.state == "ready", 60, "the follow-up answer")
        follow = screen.last_done
        assert follow is not None and follow is not first
        assert follow.n_prompt > first.n_prompt  # the transcript is part of the prompt
        assert follow.n_evaluated < 80, "a follow-up must not prefill the document again"
        assert "Varga" in follow.text
        assert len(screen.query(QuestionView)) == 2
        # the session was saved atomically after each answer
        saved = list((app_dirs / "data" / "sessions").glob("*.json"))
        assert len(saved) == 1 and "Varga" in saved[0].read_text()


async def test_stop_ends_a_streaming_answer(model_path, app_dirs, short_document):
    app = create_app(small_settings(max_tokens=400, n_ctx=2048), [short_document], model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
        await ask(pilot, screen, "Write a long story about the harbour, its boats and its people.")
        await wait_for(pilot, lambda: screen.current_answer is not None and screen.current_answer.text != "",
                       60, "the first streamed words")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.state == "ready", 30, "the answer to stop")
        assert screen.last_done is not None
        assert screen.last_done.finish == "cancelled"
        assert screen.last_done.n_generated < 400


async def test_overflow_is_refused_with_numbers_then_a_page_range_fits(model_path, app_dirs, tmp_path):
    pages = [f"Page {n} of the ledger. " + " ".join(f"Entry {n}-{i}: the cargo was {i} barrels of oil."
                                                     for i in range(12)) for n in range(1, 4)]
    ledger = tmp_path / "ledger.txt"
    ledger.write_text("\f".join(pages), encoding="utf-8")  # form feeds: three pages
    app = create_app(small_settings(n_ctx=512, max_tokens=16), [ledger], model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: isinstance(app.screen, OverflowDialog)
                       and bool(app.screen.query("#overflow-numbers")), 60, "the overflow dialog")
        dialog = app.screen
        fit = dialog.fit
        assert fit.tokens > 512 and fit.n_ctx == 512
        numbers = str(dialog.query_one("#overflow-numbers").render())
        assert f"{fit.needed:,} tokens" in numbers and "holds 512" in numbers
        assert dialog.query_one("#overflow-larger")  # SmolLM2 allows a larger context
        assert screen.state == "refused"
        assert "Refused" in str(screen.query_one("#doc-status").render())
        # choose page 2 only
        range_input = dialog.query_one("#overflow-range")
        range_input.value = "2"
        range_input.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.state == "ready", 120, "page 2 to be prefilled")
        assert app.document is not None and app.document.pages == (app.document.page(2),)
        assert "Page 2 of the ledger" in app.document.text and "[p. 2]" in app.document.text
        # the range is named once (it was applied twice and read "ledger.txt (pp. 2–2) (pp. 2–2)")
        assert app.document.title == screen.sub_title == "ledger.txt (p. 2)"


async def test_engine_crash_keeps_the_transcript_and_restarts(model_path, app_dirs, short_document):
    app = create_app(small_settings(max_tokens=400), [short_document], model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
        await ask(pilot, screen, "Tell me everything about the harbour in great detail.")
        await wait_for(pilot, lambda: screen.current_answer is not None and screen.current_answer.text != "",
                       60, "the first streamed words")
        os.kill(app.conversation.engine.pid, signal.SIGKILL)  # a crash inside llama.cpp
        await wait_for(pilot, lambda: screen.state == "failed", 30, "the crash to be reported")
        status = str(screen.query_one("#doc-status").render())
        assert "engine process stopped" in status and "F5" in status
        assert len(screen.query(QuestionView)) == 1  # the transcript survived
        await pilot.press("f5")
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the engine to restart")


async def test_a_289_character_question_is_answered_and_a_folder_is_not_asked(model_path, app_dirs,
                                                                             short_document, tmp_path):
    question = ("I am reading the notes about the harbour of Velmora and its lighthouse, its fleet and its "
                "regatta, and I would like to know one thing above all of the others, so please answer it as "
                "briefly as you can, and using only the document: who was the engineer that built the "
                "lighthouse of Velmora?")
    assert len(question) == 289  # the length that closed the app in the new-user report
    app = create_app(small_settings(), [short_document], model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
        await ask(pilot, screen, question)
        await wait_for(pilot, lambda: screen.state == "ready", 60, "the answer")
        assert screen.last_done is not None and screen.last_done.n_generated > 0
        assert [q.render().plain for q in screen.query(QuestionView)] == [question]
        screen.query_one("#question").value = str(tmp_path)  # a folder, typed or dropped
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert "is a folder; drop or type the PDF" in str(screen.query_one("#doc-status").render())
        assert len(screen.query(QuestionView)) == 1 and screen.state == "ready"

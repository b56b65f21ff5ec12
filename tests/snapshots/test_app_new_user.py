"""A new user's whole session in one Pilot run: a PDF that does not fit → YaRN → a question → a
follow-up that reuses the prefilled document → the arms compared → the report saved → the app
closed and the session reopened from F3 with its transcript and its context.

The engine is the fake (token counts of 4/3 per word, instant answers): a real 135M model on two
CPU cores needs minutes for each of the five prefills of a document beyond its 8,192-token
training length. The real model's prefill reuse, overflow and arm comparison are proved at
smaller sizes in tests/functional (test_app_chat, test_app_compare)."""

from __future__ import annotations

import json
from pathlib import Path

from textual import events
from textual.widgets import Button

from app.sessions import Session
from app.settings import Settings
from app.ui import create_app
from app.ui.screens import CompareScreen, OverflowDialog, SessionsDialog
from app.ui.widgets import AnswerView, QuestionView
from app_fakes import FakeEngine, FakeSampler
from test_app_ui import status
from test_app_ui import until as until_soon


async def until(pilot, condition, steps: int = 1500) -> None:
    await until_soon(pilot, condition, steps)  # 30 s: two busy cores slow even the fake down

MASTER = "The harbour master of Velmora is Ilse Varga, who took the post in 1998."


def make(model_path: Path):
    return create_app(Settings(n_ctx=8192, max_tokens=64), [], model_path, factory=FakeEngine,
                      sampler=FakeSampler(available=False), vram_refresh_s=0)


async def ask(pilot, chat, question: str):
    before = chat.last_done
    chat.query_one("#question").value = question
    await pilot.press("enter")
    await until(pilot, lambda: chat.state == "ready" and chat.last_done is not before)
    return chat.last_done


async def test_a_new_users_whole_session(model_path, app_dirs: Path) -> None:
    from bench.ui_lag import long_pdf

    log = long_pdf(app_dirs / "ferry log.pdf", 18, {(3, 11): MASTER})
    app = make(model_path)
    async with app.run_test(size=(140, 40)) as pilot:
        chat = app.chat_screen
        # the PDF is dropped onto the terminal (pasted as a quoted path); it does not fit 8,192 tokens
        chat.query_one("#question").post_message(events.Paste(f"'{log}'"))
        await until(pilot, lambda: isinstance(app.screen, OverflowDialog) and bool(app.screen.query("#overflow-larger")))
        dialog = app.screen
        assert 8192 == dialog.fit.n_ctx_train < dialog.fit.needed <= 16384
        assert f"It needs {dialog.fit.needed:,} tokens" in str(dialog.query_one("#overflow-numbers").render())
        assert str(dialog.query_one("#overflow-larger").label) == "Use a 16,384-token context with YaRN"
        dialog.query_one("#overflow-larger", Button).press()  # as a click, without waiting for layout
        await until(pilot, lambda: chat.state == "ready")
        spec = app.conversation.engine.spec
        assert (spec.n_ctx, spec.yarn) == (16384, True)
        assert app.document.title == "ferry log.pdf" and len(app.document.pages) == 18
        assert MASTER in app.document.page(3)

        first = await ask(pilot, chat, "Who is the harbour master of Velmora?")
        assert first.n_prompt > 8192
        follow = await ask(pilot, chat, "When did she take the post?")
        reused = follow.n_prompt - follow.n_evaluated
        assert reused > 8192 and f"reused {reused:,}." in status(chat)  # the document was not evaluated again
        assert len(chat.query(QuestionView)) == 2

        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        compare = app.screen
        assert compare.query_one("#compare-question").value == "When did she take the post?"
        compare.query_one("#compare-run", Button).press()
        await until(pilot, lambda: bool(compare.results))
        assert [(r.arm, r.status) for r in compare.results] == [("f16", "done"), ("q8_0", "done"),
                                                                ("d2", "unavailable")]  # the fake has no D2
        await pilot.press("ctrl+s")
        report = compare.report_path.read_text()
        assert "When did she take the post?" in report and "| f16 | done" in report
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is chat and chat.state == "ready")
        assert app.conversation.engine.spec.n_ctx == 16384  # the chat's engine came back with YaRN
        session_id = app.conversation.session.id
    saved = json.loads((app_dirs / "data" / "sessions" / f"{session_id}.json").read_text())
    assert saved["n_ctx"] == 16384 and [t["role"] for t in saved["turns"]] == ["user", "assistant"] * 2

    # the next day the app starts with the settings' 8,192 tokens; F3 reopens the session
    again = make(model_path)
    async with again.run_test(size=(140, 40)) as pilot:
        chat = again.chat_screen
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(again.screen, SessionsDialog))
        await pilot.press("enter")
        await until(pilot, lambda: chat.state == "ready")
        assert again.conversation.engine.spec.n_ctx == 16384  # its context again, with no dialog this time
        assert [q.render().plain for q in chat.query(QuestionView)] == [
            "Who is the harbour master of Velmora?", "When did she take the post?"]
        assert len(chat.query(AnswerView)) == 2 and again.conversation.session.id == session_id
        third = await ask(pilot, chat, "And which ferry runs to Orrin?")
        assert third.n_prompt > follow.n_prompt  # the transcript is part of the prompt again
    assert len(Session.load(session_id).turns) == 6

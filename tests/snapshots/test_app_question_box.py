"""The question box takes any text: long questions, path-like text, control characters, folders."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from textual import events

from app.errors import DocumentNotFoundError, FolderDroppedError
from app.samples import DEFAULT_SAMPLE
from app.settings import Settings
from app.ui import create_app
from app.ui.widgets import ChatLog, QuestionView
from app_fakes import FakeEngine, FakeSampler
from test_app_ui import make_app, status, until

LONG_QUESTION = ("In the section about the railway, the document mentions its engineer, its stations and the "
                 "year it opened; could you please explain, in as much detail as the text allows, who designed "
                 "it, when it opened, how long the line is, and which stations it serves along the coast? "
                 "Thank you.")


async def test_a_long_question_is_asked_and_a_folder_or_missing_path_is_not(model_path, tmp_path: Path) -> None:
    assert len(LONG_QUESTION) >= 256
    folder = tmp_path / "papers"
    folder.mkdir()
    app = make_app(model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        box = screen.query_one("#question")
        box.value = LONG_QUESTION
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready" and screen.last_done is not None)
        assert [q.render().plain for q in screen.query(QuestionView)] == [LONG_QUESTION]
        # a folder and a missing file, typed or pasted, get a sentence and never reach the model
        for text, error in ((str(folder), FolderDroppedError(str(folder))),
                            (f"'{tmp_path / 'gone.pdf'}'", DocumentNotFoundError(str(tmp_path / "gone.pdf")))):
            box.value = text
            await pilot.press("enter")
            await pilot.pause(0.05)
            assert status(screen) == str(error)
            assert box.value == text  # kept, so that it can be corrected
            box.value = ""
            box.post_message(events.Paste(text))
            await pilot.pause(0.05)
            assert status(screen) == str(error) and box.value == ""
        assert len(screen.query(QuestionView)) == 1
        assert screen.state == "ready" and app.document.title == DEFAULT_SAMPLE.name


texts = st.one_of(
    st.text(min_size=1, max_size=400),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=256, max_size=3000),
    st.builds(lambda p, q: f"{q}{p}{q}", st.text(min_size=1, max_size=600).map(lambda t: "/" + t),
              st.sampled_from(["", "'", '"'])),
    st.sampled_from(["~", "~nobody/x.pdf", "file://[", "'", "\x00", "/", ".", "..", "\n\n", "C:\\x.pdf"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=texts, paste=st.booleans())
@example(text="/tr[a=b", paste=False)  # the MarkupError this test found in a refused path
@example(text="[bold]why[/] [/]", paste=True)
@example(text="x" * 289, paste=False)
def test_no_text_crashes_the_question_box(model_path, text: str, paste: bool) -> None:
    async def run() -> None:
        app = make_app(model_path)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.chat_screen
            await until(pilot, lambda: screen.state == "ready")
            box = screen.query_one("#question")
            if paste:
                box.post_message(events.Paste(text))
                await pilot.pause(0.05)
                box.value = box.value or ""
            else:
                box.value = text
            await pilot.press("enter")
            await until(pilot, lambda: screen.state in ("ready", "answering", "ingesting", "loading",
                                                        "prefilling"))
            await pilot.pause(0.05)
            assert app.is_running
        assert app.return_code in (None, 0)

    asyncio.run(run())


async def test_markup_in_names_questions_and_paths_is_shown_as_typed(model_path, tmp_path: Path) -> None:
    # found by the property test above: a refused path with "[x=" in it closed the app (MarkupError)
    doc = tmp_path / "report [draft=1] [b].md"
    doc.write_text("The railway was designed by Marta Quell.")
    app = make_app(model_path, paths=(doc,))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        assert "report [draft=1] [b].md" in str(screen.query_one("#doc-title").render())
        box = screen.query_one("#question")
        for question in ("[bold]Who[/] designed it? [/]", "[link=x]", "[@click=app.quit]quit[/]"):
            box.value = question
            await pilot.press("enter")
            await until(pilot, lambda: screen.state == "ready" and screen.current_answer is None)
        assert [q.render().plain for q in screen.query(QuestionView)][-1] == "[@click=app.quit]quit[/]"
        box.value = f"'{tmp_path / '[a=b'}'"
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert status(screen).startswith(f"There is no file at {tmp_path / '[a=b'}")
        assert app.is_running


async def test_a_path_pasted_while_the_question_box_is_not_focused_opens_the_file(model_path, tmp_path: Path) -> None:
    """How a file dropped on the served page arrives: a bracketed paste, wherever the focus is."""
    dropped = tmp_path / "lamp room.md"
    dropped.write_text("# Lamps\n\nThe lamp room has 12 brass lamps.\n")
    app = make_app(model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        screen.set_focus(None)
        screen.post_message(events.Paste(f"'{dropped}'"))
        await until(pilot, lambda: screen.state == "ready" and app.document.title == "lamp room.md")
        screen.post_message(events.Paste(str(tmp_path)))
        await pilot.pause(0.05)
        assert status(screen) == str(FolderDroppedError(str(tmp_path)))
        screen.post_message(events.Paste("just words, not a path"))
        await pilot.pause(0.05)
        assert app.document.title == "lamp room.md" and len(screen.query(QuestionView)) == 0


class SlowCountEngine(FakeEngine):
    """Counts a long prompt as slowly as the real tokenizer does, so the refusal comes after the log has scrolled."""

    def count_chat_tokens(self, messages):
        if sum(len(m["content"]) for m in messages) > 20_000:
            time.sleep(0.5)
        return super().count_chat_tokens(messages)


async def test_a_question_too_long_for_the_context_stays_in_the_question_box(model_path) -> None:
    app = create_app(Settings(n_ctx=8192, max_tokens=64), [DEFAULT_SAMPLE], model_path, factory=SlowCountEngine,
                     sampler=FakeSampler(available=False), vram_refresh_s=0)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        turns = list(screen.conversation.session.turns)
        question = "Why " + "is the harbour wall built of granite and " * 800 + "not of brick?"  # ~12K tokens
        box = screen.query_one("#question")
        box.value = question
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready" and screen.current_answer is None
                    and "context holds 8,192" in status(screen))
        assert box.value == question  # what was typed is not lost: it can be shortened and asked again
        assert "question box" in status(screen)
        await pilot.pause(0.2)
        # the whole sentence is on screen: the status wraps (it was cut at "raise"), the log shows the refusal
        sentence, line = screen.query_one("#doc-status"), screen.query_one("#progress-line")
        assert sentence.size.height > 1 and line.size.height >= sentence.size.height
        log = screen.query_one(ChatLog)
        assert log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y
        assert screen.conversation.session.turns == turns  # never asked, so not in the transcript
        box.value = "Who designed the railway?"  # a short one is answered as usual
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready" and screen.last_done is not None)

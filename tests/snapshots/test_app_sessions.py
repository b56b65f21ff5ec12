"""Sessions of several documents reopen; a session whose document changed keeps its transcript."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from app.ingest import load_document
from app.sessions import Session, Turn
from app.ui.widgets import AnswerView, QuestionView
from test_app_ui import make_app, until


async def test_a_session_of_several_documents_reopens(model_path, tmp_path: Path) -> None:
    first, second = tmp_path / "harbour notes.md", tmp_path / "fleet.txt"
    first.write_text("The lighthouse was built in 1847 by Tomas Ardel.")
    second.write_text("The fishing fleet has 23 boats.")
    app = make_app(model_path, paths=(first, second))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        screen.query_one("#question").value = "How many boats?"
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready" and screen.last_done is not None)
        session_id = app.conversation.session.id
    record = json.loads((tmp_path / "data" / "sessions" / f"{session_id}.json").read_text())
    assert record["document_sources"] == [str(first), str(second)]

    again = make_app(model_path, paths=(), session=Session.load(session_id))
    async with again.run_test(size=(120, 36)) as pilot:
        screen = again.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        assert again.document.title == "harbour notes.md + fleet.txt"
        assert [q.render().plain for q in screen.query(QuestionView)] == ["How many boats?"]
        assert screen.conversation.session.id == session_id


async def test_a_session_saved_by_0_1_with_newline_joined_paths_reopens(model_path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text("Alpha is the first letter.")
    second.write_text("Beta is the second letter.")
    session = Session(f"{first}\n{second}", "a.md + b.md", "0" * 64, turns=[Turn("user", "Which is first?"),
                                                                         Turn("assistant", "Alpha.", "f16")])
    session.save()
    app = make_app(model_path, paths=(), session=Session.load(session.id))
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        assert app.document.title == "a.md + b.md"
        assert [a.text for a in app.chat_screen.query(AnswerView)] == ["Alpha."]


async def test_a_changed_document_keeps_the_transcript_and_says_so(model_path, tmp_path: Path) -> None:
    doc = tmp_path / "notes.md"
    doc.write_text("The harbour master is Ilse Varga.")
    original = load_document(doc)
    session = Session(str(doc), doc.name, original.sha256, page_range="1",
                      turns=[Turn("user", "Who is the harbour master?"), Turn("assistant", "Ilse Varga.", "f16")])
    session.save()
    doc.write_text("The harbour master is Piet Oder.")  # edited since
    app = make_app(model_path, paths=(), session=Session.load(session.id))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        assert [q.render().plain for q in screen.query(QuestionView)] == ["Who is the harbour master?"]
        assert [a.text for a in screen.query(AnswerView)] == ["Ilse Varga."]
        assert screen.session_notes == ["notes.md changed since this session was saved; its transcript is kept, "
                                        "and new answers read the new text."]
        assert "Piet Oder" in app.document.text
        assert screen.conversation.session.id == session.id  # the same session goes on
        assert len(screen.conversation.history()) == 2


async def test_ctrl_s_exports_the_transcript_as_markdown(model_path, tmp_path: Path) -> None:
    app = make_app(model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        await pilot.press("ctrl+s")
        assert screen.exported_to is None  # nothing to export yet
        screen.query_one("#question").value = "Who designed the railway?"
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready" and screen.last_done is not None)
        await pilot.press("ctrl+s")
        assert screen.exported_to == tmp_path / "data" / "transcripts" / f"{app.conversation.session.id}.md"
        text = screen.exported_to.read_text()
        assert "> Who designed the railway?" in text and "Marta Quell" in text


async def test_f3_lists_sessions_whose_titles_look_like_markup(model_path, tmp_path: Path) -> None:
    from app.ui.screens._dialogs import SessionsDialog

    doc = tmp_path / "notes [x=1].md"
    doc.write_text("The harbour master is Ilse Varga.")
    saved = Session(str(doc), doc.name, load_document(doc).sha256,
                    turns=[Turn("user", "Who?"), Turn("assistant", "Ilse Varga.", "f16")])
    saved.save()
    app = make_app(model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, SessionsDialog))
        options = app.screen.query_one("#sessions-list")
        await pilot.pause(0.05)
        shown = html.unescape(re.sub(r"<[^>]+>", "", app.export_screenshot())).replace("\xa0", " ")
        assert "notes [x=1].md · 1 question(s)" in shown  # not "notes .md"
        options.focus()
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready" and app.document.title == doc.name)
        assert [a.text for a in screen.query(AnswerView)] == ["Ilse Varga."]


async def test_sessions_are_renamed_and_deleted_only_after_asking(model_path, tmp_path: Path) -> None:
    from textual.widgets import Input, OptionList

    from app.ui.screens import ConfirmDialog, NameDialog, SessionsDialog

    old = Session("/docs/old.pdf", "old.pdf", "1" * 64, turns=[Turn("user", "Q?"), Turn("assistant", "A.", "f16")],
                  updated=1.0)
    old.save()
    app = make_app(model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        chat = app.chat_screen
        await until(pilot, lambda: chat.state == "ready")
        chat.ask("Who designed the railway?")
        await until(pilot, lambda: chat.state == "ready" and chat.last_done is not None)
        current = app.conversation.session
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, SessionsDialog))
        dialog = app.screen
        listed = dialog.query_one("#sessions-list", OptionList)
        assert [o.id for o in listed.options] == [current.id, old.id]  # newest first
        assert str(listed.get_option_at_index(0).prompt).endswith("· open now")
        # the open session cannot be deleted from under the chat
        listed.highlighted = 0
        await pilot.press("delete")
        await pilot.pause(0.05)
        assert isinstance(app.screen, SessionsDialog) and current.path.exists()
        assert "open now; open another document or session first" in str(dialog.query_one("#sessions-error").render())
        # renaming the open session renames the chat's copy too, so its next save keeps the name
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, NameDialog))
        app.screen.query_one("#name-input", Input).value = "  Railway   questions "
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is dialog)
        assert current.name == "Railway questions" and Session.load(current.id).name == "Railway questions"
        assert str(listed.get_option_at_index(0).prompt).startswith("Railway questions · 1 question(s)")
        # Esc in the confirmation keeps the session; only the Delete button deletes
        listed.highlighted = 1
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert "“old.pdf”: 1 question(s) and their answers will be gone" in str(
            app.screen.query_one("#confirm-question").render())
        assert app.screen.focused.id == "confirm-keep"  # Enter alone does not delete
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is dialog)
        assert old.path.exists() and len(listed.options) == 2
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.click("#confirm-yes")
        await until(pilot, lambda: app.screen is dialog)
        assert not old.path.exists() and [o.id for o in listed.options] == [current.id]
        await pilot.press("escape")
        chat.ask("When did it open?")
        await until(pilot, lambda: chat.state == "ready" and len(current.turns) == 4)
        assert json.loads(current.path.read_text())["name"] == "Railway questions"


def test_session_names_are_tidied_limited_and_checked(tmp_path: Path) -> None:
    import pytest

    from app.sessions import SessionFileError, SessionNameError

    session = Session("/d.pdf", "d.pdf", "2" * 64)
    session.rename("\tBudget\n review ")
    assert Session.load(session.id).title == "Budget review"
    session.rename("")
    assert Session.load(session.id).title == "d.pdf"  # empty: the document's title again
    with pytest.raises(SessionNameError, match="at most 120 characters, not 121; shorten it"):
        session.rename("x" * 121)
    assert Session.load(session.id).name == ""  # a refused name is not saved
    record = json.loads(session.path.read_text())
    session.path.write_text(json.dumps({**record, "name": 7}))
    with pytest.raises(SessionFileError, match="name is int"):
        Session.load(session.id)

"""Typed settings with FRAQTL_* overrides, atomic sessions, and the context limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.sessions import Session, Turn
from app.settings import MAX_CONTEXT, Settings, SettingsError, max_context


@pytest.fixture(autouse=True)
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CACHE", "DATA", "CONFIG"):
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(tmp_path / name.lower()))
    return tmp_path


def test_saved_settings_round_trip_and_env_overrides(dirs: Path) -> None:
    Settings(arm="q8_0", n_ctx=4096, yarn=True).save()
    saved = json.loads((dirs / "config" / "settings.json").read_text())
    assert saved["arm"] == "q8_0" and saved["n_ctx"] == 4096
    loaded = Settings.load(env={})
    assert (loaded.arm, loaded.n_ctx, loaded.yarn) == ("q8_0", 4096, True)
    env = {"FRAQTL_ARM": "d2:k16v32", "FRAQTL_N_CTX": "16_384", "FRAQTL_YARN": "0",
           "FRAQTL_MODEL": "", "FRAQTL_MAX_TOKENS": "64", "FRAQTL_COMPARE_Q4_0": "yes"}
    over = Settings.load(env=env)
    assert (over.arm, over.n_ctx, over.yarn, over.model, over.max_tokens, over.compare_q4_0) == (
        "d2:k16v32", 16384, False, None, 64, True)
    assert json.loads((dirs / "config" / "settings.json").read_text())["arm"] == "q8_0"  # never written back


def test_bad_values_are_named(dirs: Path) -> None:
    with pytest.raises(SettingsError, match="FRAQTL_N_CTX='lots' is not a whole number"):
        Settings.load(env={"FRAQTL_N_CTX": "lots"})
    with pytest.raises(SettingsError, match="FRAQTL_YARN='maybe' is not a yes/no value"):
        Settings.load(env={"FRAQTL_YARN": "maybe"})
    with pytest.raises(SettingsError, match="not an arm"):
        Settings(arm="f32").validate()
    with pytest.raises(SettingsError, match="between 256 and 131,072 tokens, not 200,000"):
        Settings(n_ctx=200_000).validate()
    with pytest.raises(SettingsError, match="no model file at /nowhere.gguf"):
        Settings(model="/nowhere.gguf").validate()
    (dirs / "config").mkdir(parents=True, exist_ok=True)
    (dirs / "config" / "settings.json").write_text("{not json")
    assert Settings.load(env={}) == Settings()  # an unreadable file falls back to defaults


def test_max_context_with_yarn() -> None:
    assert max_context(8192, yarn=False) == 8192
    assert max_context(8192, yarn=True) == 32768
    assert max_context(32768, yarn=True) == MAX_CONTEXT
    assert max_context(0, yarn=False) == MAX_CONTEXT


def test_sessions_saved_atomically_and_listed(dirs: Path) -> None:
    session = Session("/docs/a.pdf", "a.pdf", "ab" * 32)
    session.turns += [Turn("user", "Who?"), Turn("assistant", "Ada [p. 1].", "f16", 12, "stop")]
    path = session.save()
    assert path.parent == dirs / "data" / "sessions"
    assert not list(path.parent.glob(".*.tmp"))
    again = Session.load(session.id)
    assert again == session
    (path.parent / "broken.json").write_text("{")
    assert [s.id for s in Session.list()] == [session.id]


# ---------------------------------------------------------------------------- hostile settings and session files

from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from app.sessions import SessionFileError


def _write(dirs: Path, text: str) -> Path:
    path = dirs / "config" / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_settings_of_the_wrong_shape_or_type_fall_back_and_the_file_is_kept(dirs: Path) -> None:
    for text in ("[1, 2]", '"f16"', "42", "null"):
        path = _write(dirs, text)
        settings, notes = Settings.load_with_notes(env={})
        assert settings == Settings() and "not an object of settings" in notes[0]
        assert path.read_text() == text and (dirs / "config" / "settings.json.bak").read_text() == text
    text = json.dumps({"n_ctx": "big", "yarn": "yes", "arm": "q8_0", "max_tokens": True, "model": 5,
                       "max_pages": 0, "arm_of_the_future": 1})
    path = _write(dirs, text)
    settings, notes = Settings.load_with_notes(env={})
    assert (settings.arm, settings.n_ctx, settings.yarn, settings.max_tokens, settings.model, settings.max_pages) == (
        "q8_0", 8192, False, 256, None, 2000)
    assert 'The saved n_ctx "big" is not a whole number; using 8192.' in notes
    assert "The saved yarn \"yes\" is not true or false; using False." in notes
    assert any(n.startswith("The saved max_pages is not usable (The page limit must be between 1") for n in notes)
    assert notes[-1] == f"Your file was kept as {path}.bak."
    assert len(notes) == 6  # n_ctx, yarn, max_tokens, model, max_pages, the backup; the unknown key is no error
    settings.validate()
    assert path.read_text() == text  # untouched until the person saves settings


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["arm", "n_ctx", "yarn", "model", "max_tokens", "sidecar", "x"]), inner,
                        max_size=5), max_leaves=12))
def test_no_json_value_in_the_settings_file_stops_start_up(dirs: Path, value: object) -> None:
    _write(dirs, json.dumps(value))
    settings, notes = Settings.load_with_notes(env={})
    settings.validate()  # whatever was kept is usable
    assert all(n.endswith(".") for n in notes)


def test_a_session_from_another_version_opens_and_keeps_its_fields(dirs: Path) -> None:
    session = Session("/docs/a.pdf", "a.pdf", "ab" * 32, turns=[Turn("user", "Who?")])
    path = session.save()
    record = json.loads(path.read_text())
    record["pinned"] = True
    record["turns"][0]["rating"] = 5
    path.write_text(json.dumps(record))
    again = Session.load(session.id)
    assert again.turns == session.turns and again.unknown == {"pinned": True}
    again.save()
    assert json.loads(path.read_text())["pinned"] is True  # written back, not lost


def test_an_unusable_session_file_is_a_named_error_and_left_alone(dirs: Path) -> None:
    folder = dirs / "data" / "sessions"
    folder.mkdir(parents=True)
    base = {"document_source": "/a.pdf", "document_title": "a", "document_sha256": "ab"}
    cases = {
        "list": ("[]", "it holds a JSON list, not an object"),
        "missing": (json.dumps({"document_title": "a"}), "document_sha256, document_source missing"),
        "turns": (json.dumps({**base, "turns": {"role": "user"}}), "turns is dict"),
        "turn": (json.dumps({**base, "turns": [{"role": "user"}]}), "turn 1 has no role and content"),
        "id": (json.dumps({**base, "id": "../../escape"}), "its id is not a plain file name"),
        "updated": (json.dumps({**base, "updated": "yesterday"}), "updated is str"),
        "broken": ("{", "JSONDecodeError"),
    }
    for name, (text, reason) in cases.items():
        path = folder / f"{name}.json"
        path.write_text(text)
        with pytest.raises(SessionFileError, match="cannot be opened") as info:
            Session.load(name)
        assert reason in str(info.value), name
        assert path.read_text() == text
    with pytest.raises(SessionFileError, match=r"\(there is no such file\); F3 lists the saved sessions"):
        Session.load("nowhere")
    assert Session.list() == []


def test_transcript_exports_as_markdown(dirs: Path) -> None:
    session = Session("/docs/a.pdf", "a.pdf", "ab" * 32, page_range="2-3", document_sources=["/docs/a.pdf", "/b.md"],
                      turns=[Turn("user", "Who ran it?\nAnd when?"), Turn("assistant", "Ada Brill [p. 2].", "d2", 9, "stop"),
                             Turn("user", "More?"), Turn("assistant", "It opened", "f16", 5, "length")])
    path = session.export("SmolLM2.gguf")
    assert path == dirs / "data" / "transcripts" / f"{session.id}.md"
    text = path.read_text()
    assert text.startswith("# a.pdf\n\n- Document: /docs/a.pdf, /b.md (pages 2-3)\n- Model: SmolLM2.gguf\n")
    assert "## Question 1\n\n> Who ran it?\n> And when?\n\nAda Brill [p. 2].\n\n_d2_\n" in text
    assert "## Question 2\n\n> More?\n\nIt opened\n\n_f16 · cut at the answer limit_\n" in text


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                        max_size=5), max_leaves=15)
session_like = st.fixed_dictionaries(
    {"document_source": st.one_of(st.text(max_size=30), json_values),
     "document_title": st.one_of(st.text(max_size=30), json_values),
     "document_sha256": st.one_of(st.text(max_size=64), json_values)},
    optional={"turns": st.one_of(json_values, st.lists(st.fixed_dictionaries(
                  {"role": st.sampled_from(["user", "assistant", 3]), "content": st.one_of(st.text(), json_values)},
                  optional={"arm": json_values, "n_evaluated": json_values, "extra": json_values}), max_size=3)),
              "id": st.one_of(st.text(max_size=20), json_values), "page_range": json_values, "updated": json_values,
              "document_sources": json_values, "unknown": json_values, "future_field": json_values})


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(json_values, session_like))
def test_no_json_in_a_session_file_escapes_as_anything_but_a_session_file_error(dirs: Path, value: object) -> None:
    folder = dirs / "data" / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fuzz.json"
    text = json.dumps(value)
    path.write_text(text)
    try:
        session = Session.load("fuzz")
    except SessionFileError as exc:
        assert str(exc).endswith("it was left as it is.")
        assert path.read_text() == text
        return
    assert isinstance(session.turns, list) and all(isinstance(t.content, str) for t in session.turns)
    assert session.sources and all(isinstance(s, str) for s in session.sources)
    session.save()  # whatever loaded can be saved again, to its own folder
    assert session.path.parent == folder


def test_saving_keeps_settings_of_another_version(dirs: Path) -> None:
    path = _write(dirs, json.dumps({"arm": "q8_0", "theme": "dark", "recent_models": ["/m.gguf"]}))
    settings, notes = Settings.load_with_notes(env={})
    assert notes == [] and settings.arm == "q8_0"
    settings.n_ctx = 4096
    settings.save()
    saved = json.loads(path.read_text())
    assert saved["theme"] == "dark" and saved["recent_models"] == ["/m.gguf"] and saved["n_ctx"] == 4096


def test_rpc_servers_come_from_the_file_or_the_environment_and_a_bad_one_is_named(dirs: Path) -> None:
    from app.conversation import Conversation

    assert Settings.load(env={"FRAQTL_RPC_SERVERS": "10.0.0.2:50052,gpu-box:50052"}).validate().rpc_servers == (
        "10.0.0.2:50052,gpu-box:50052")
    with pytest.raises(SettingsError, match="'10.0.0.2' is not an RPC server address; write host:port"):
        Settings(rpc_servers="10.0.0.2").validate()
    # the engine process is started with them, as endpoints
    from types import SimpleNamespace

    holder = SimpleNamespace(settings=Settings(rpc_servers=" 10.0.0.2:50052 ,gpu-box:7000"),
                             model_path=Path("m.gguf"), info=SimpleNamespace(n_ctx_train=8192))
    assert Conversation.spec(holder).rpc_servers == ("10.0.0.2:50052", "gpu-box:7000")  # type: ignore[arg-type]
    assert Conversation.spec(SimpleNamespace(settings=Settings(), model_path=Path("m.gguf"),  # type: ignore[arg-type]
                                             info=holder.info)).rpc_servers == ()


def test_an_unfinished_answer_round_trips_exports_and_is_not_sent_to_the_model(dirs: Path) -> None:
    session = Session("/docs/a.md", "a", "0" * 64, turns=[
        Turn("user", "Who?"), Turn("assistant", "Marta.", "f16", 12, "stop"),
        Turn("user", "When?"), Turn("assistant", "In 18", "f16", finish="failed", note="The engine stopped."),
        Turn("user", "Why?"), Turn("assistant", "", "d2", finish="interrupted", note="the app was closed mid-answer")])
    session.save()
    loaded = Session.load(session.id)
    assert loaded.turns == session.turns
    assert [t.unfinished for t in loaded.turns] == [False, False, False, True, False, True]
    text = loaded.to_markdown()
    assert "_f16 · failed: The engine stopped._" in text
    assert "_d2 · interrupted: the app was closed mid-answer_" in text
    assert "> When?" in text and "In 18" in text
    raw = json.loads(session.path.read_text())
    raw["turns"][3]["note"] = 3
    session.path.write_text(json.dumps(raw))
    with pytest.raises(SessionFileError, match="turn 4's note is int"):
        Session.load(session.id)


def test_the_model_is_not_given_a_cut_exchange_again() -> None:
    from app.conversation import Conversation

    conversation = Conversation.__new__(Conversation)  # only the transcript is used: no model, no engine
    conversation.session = Session("/docs/a.md", "a", "0" * 64, turns=[
        Turn("user", "Who?"), Turn("assistant", "Marta.", "f16", finish="stop"),
        Turn("user", "When?"), Turn("assistant", "In 18", "f16", finish="failed"),
        Turn("user", "Where?"), Turn("assistant", "Velmora.", "f16", finish="cancelled")])
    assert conversation.history() == [
        {"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Marta."},
        {"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Velmora."}]


def test_every_setting_says_when_a_change_takes_effect() -> None:
    # the notice after saving the settings names each change with when it applies; a new field must say
    from app.settings import TAKES_EFFECT

    assert set(TAKES_EFFECT) == set(Settings._fields())
    assert {when for _, when in TAKES_EFFECT.values()} <= {"engine", "question", "comparison", "document", "now"}
    before = Settings()
    after = Settings(arm="q8_0", temperature=0.7)
    assert after.changed_from(before) == ["arm", "temperature"] and before.changed_from(Settings()) == []

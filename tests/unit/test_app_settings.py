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

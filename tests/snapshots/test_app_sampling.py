"""Sampling settings: entered in the settings screen, refused with a sentence when unusable,
used by the chat's answers without restarting the engine, and never by the arm comparison."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Input

from app.samples import DEFAULT_SAMPLE
from app.settings import Settings
from app.ui import create_app
from app.ui.screens import CompareScreen, SettingsScreen
from app_fakes import FakeEngine, FakeSampler
from engine.sampling import GREEDY, Sampling
from test_app_ui import until


class RecordingEngine(FakeEngine):
    """Remembers the sampling of every answer any engine gave, with the engine's arm."""

    asked: list[tuple[str, int, Sampling]] = []

    def answer(self, messages, max_tokens=256, sampling=GREEDY):
        RecordingEngine.asked.append((self.spec.arm, max_tokens, sampling))
        yield from super().answer(messages, max_tokens, sampling)


def error(app) -> str:
    return str(app.screen.query_one("#settings-error").render())


async def test_sampling_is_set_checked_and_used_by_the_chat_only(model_path, app_dirs: Path) -> None:
    RecordingEngine.asked = []
    app = create_app(Settings(n_ctx=8192, max_tokens=64), [DEFAULT_SAMPLE], model_path, factory=RecordingEngine,
                     sampler=FakeSampler(available=False), vram_refresh_s=0)
    async with app.run_test(size=(120, 40)) as pilot:
        chat = app.chat_screen
        await until(pilot, lambda: chat.state == "ready")
        engine = app.conversation.engine
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        fields = {name: app.screen.query_one(f"#set-{name}", Input)
                  for name in ("temperature", "top-p", "repeat-penalty")}
        assert [f.value for f in fields.values()] == ["0", "1", "1"]  # greedy, as shipped
        for name, value, message in (
                ("temperature", "warm", "The temperature must be a number, e.g. 0.7, not 'warm'."),
                ("temperature", "9", "The temperature must be between 0 (greedy) and 5, not 9.0."),
                ("top-p", "0", "The top-p must be above 0 and at most 1 (1 keeps every token), not 0.0."),
                ("repeat-penalty", "0.5", "The repetition penalty must be between 1 (off) and 5, not 0.5.")):
            fields[name].value = value
            await pilot.press("ctrl+s")
            await pilot.pause(0.05)
            assert error(app) == message and isinstance(app.screen, SettingsScreen)
            fields[name].value = {"temperature": "0", "top-p": "1", "repeat-penalty": "1"}[name]
        assert not (app_dirs / "config" / "settings.json").exists()  # nothing unusable was saved
        fields["temperature"].value, fields["top-p"].value, fields["repeat-penalty"].value = "0.7", "0.9", "1.2"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        saved = json.loads((app_dirs / "config" / "settings.json").read_text())
        assert (saved["temperature"], saved["top_p"], saved["repeat_penalty"]) == (0.7, 0.9, 1.2)
        assert app.conversation.engine is engine and chat.state == "ready"  # no restart, no new prefill
        chat.ask("Who designed the railway?")
        await until(pilot, lambda: chat.state == "ready" and len(app.conversation.session.turns) == 2)
        assert RecordingEngine.asked[-1] == ("f16", 64, Sampling(0.7, 0.9, 1.2))
        assert "T 0.7 · top-p 0.9 · repeat ×1.2" in str(chat.query_one("#doc-status").render())
        # the comparison answers greedily whatever the chat uses
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        compare = app.screen
        compare.query_one("#compare-question").value = "Who designed the railway?"
        before = len(RecordingEngine.asked)
        await pilot.click("#compare-run")
        await until(pilot, lambda: bool(compare.results), steps=500)
        arms = [(arm, sampling) for arm, tokens, sampling in RecordingEngine.asked[before:] if tokens]
        assert arms == [("f16", GREEDY), ("q8_0", GREEDY)]


def test_sampling_settings_round_trip_and_env(app_dirs: Path) -> None:
    Settings(temperature=0.8, top_p=0.95, repeat_penalty=1.1).save()
    assert Settings.load(env={}).sampling() == Sampling(0.8, 0.95, 1.1)
    over = Settings.load(env={"FRAQTL_TEMPERATURE": "0", "FRAQTL_REPEAT_PENALTY": "1.3"})
    assert over.sampling() == Sampling(0.0, 0.95, 1.3) and over.sampling().greedy
    config = app_dirs / "config" / "settings.json"
    config.write_text(json.dumps({"temperature": 2, "top_p": "high", "repeat_penalty": 0.2}))
    loaded, notes = Settings.load_with_notes(env={})
    assert loaded.sampling() == Sampling(2.0, 1.0, 1.0)  # a whole number is a number; the rest fall back
    assert notes[0] == 'The saved top_p "high" is not a number; using 1.0.'
    assert notes[1].startswith("The saved repeat_penalty is not usable (The repetition penalty must be between 1")

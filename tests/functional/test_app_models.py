"""The models screen with the real model: what a GGUF is, opening one, using it, and a real
calibration in a worker process (one that finishes, one stopped with the Stop button)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from textual.widgets import Button, Input, OptionList

from app.settings import Settings
from app.ui import create_app
from app.ui.screens import GgufFileDialog, ModelsScreen
from engine.sidecar import MANIFEST_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "snapshots"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from app_fakes import FakeEngine, FakeSampler  # noqa: E402
from test_app_ui import until  # noqa: E402
from test_model_library import tiny_gguf  # noqa: E402


def text(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


async def test_models_are_described_opened_used_and_calibrated(model_path: Path, app_dirs: Path,
                                                               short_document: Path) -> None:
    tiny = tiny_gguf(app_dirs / "tiny base.gguf")
    app = create_app(Settings(n_ctx=2048, max_tokens=16), [short_document], model_path, factory=FakeEngine,
                     sampler=FakeSampler(available=False), vram_refresh_s=0)
    async with app.run_test(size=(150, 44)) as pilot:
        chat = app.chat_screen
        await until(pilot, lambda: chat.state == "ready")
        await pilot.press("f7")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen))
        models = app.screen
        listed = models.query_one("#models-list", OptionList)
        assert str(listed.get_option_at_index(0).prompt) == "Smollm2 135M 8k Lc100K Mix1 Ep2 · in use"  # general.name
        facts = text(models, "#models-facts")
        assert "architecture              llama" in facts and "trained context           8,192 tokens" in facts
        assert "head size                 64" in facts and "parameters                134.5M" in facts
        await until(pilot, lambda: models.checks == 0)
        assert "D2 sidecars found" in text(models, "#models-sidecars")  # the shipped ones, by sha256
        # open a GGUF: a file that is not one is named; a real one is listed, described and remembered
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, GgufFileDialog))
        dialog = app.screen
        (app_dirs / "notes.gguf").write_text("hello")
        dialog.query_one("#gguf-path", Input).value = str(app_dirs / "notes.gguf")
        await pilot.press("enter")
        assert "is not a usable GGUF model (no GGUF magic at the start)" in text(dialog, "#gguf-error")
        dialog.query_one("#gguf-path", Input).value = f"'{tiny}'"
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is models and len(listed.options) == 2)
        assert str(listed.highlighted_option.prompt) == "Tiny test model"
        assert "none: a base model" in text(models, "#models-facts")
        await until(pilot, lambda: models.checks == 0)
        assert "No D2 sidecars yet: calibrate it" in text(models, "#models-sidecars")
        assert json.loads((app_dirs / "config" / "recent-models.json").read_text()) == [str(tiny.resolve())]
        # use it: saved in the settings, and the engine restarts with it
        await pilot.click("#models-use")
        await until(pilot, lambda: app.screen is chat and chat.state == "ready")
        assert app.conversation.engine.spec.model_path == str(tiny) and app.conversation.info.n_ctx_train == 2048
        assert json.loads((app_dirs / "config" / "settings.json").read_text())["model"] == str(tiny)
        assert json.loads((app_dirs / "config" / "recent-models.json").read_text()) == [
            str(tiny.resolve()), str(model_path.resolve())]  # the model left is one choice away

        # calibrate the real model from the app: an unusable token count is refused, Stop stops
        await pilot.press("f7")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen))
        models = app.screen
        listed = models.query_one("#models-list", OptionList)
        listed.highlighted = next(i for i, p in enumerate(models.models) if p == model_path)
        tokens = models.query_one("#calibrate-tokens", Input)
        tokens.value = "12"
        await pilot.click("#models-calibrate")
        assert text(models, "#models-error").startswith("The calibration tokens must be a whole number between 256")
        tokens.value = "8192"
        await pilot.pause(0.5)  # two quick clicks on one spot are a double click
        await pilot.click("#models-calibrate")
        assert models.query_one("#models-calibrate", Button).disabled and models.calibrating == model_path
        await pilot.click("#models-stop")  # before its first batch: deterministic
        await until(pilot, lambda: models.calibrating is None, steps=1500)
        assert text(models, "#calibrate-status").startswith("Calibration stopped after 0 of 8,192 tokens; no sequence")
        assert not models.query_one("#models-calibrate", Button).disabled
        assert not (app_dirs / "data" / "sidecars" / "smollm2-135m-instruct-q4_1" / MANIFEST_NAME).exists()
        tokens.value = "256"
        holdout = models.query_one("#calibrate-holdout", Input)
        assert holdout.value == "2048"  # the held-out recipe choice runs unless asked not to
        holdout.value = "10"
        await pilot.pause(0.5)
        await pilot.click("#models-calibrate")
        assert text(models, "#models-error").startswith("The held-out tokens must be 0 (no recipe choice) or a whole")
        assert models.calibrating is None
        holdout.value = "256"
        await pilot.pause(0.5)
        await pilot.click("#models-calibrate")
        await until(pilot, lambda: models.calibrating is None, steps=15000)
        status = text(models, "#calibrate-status")
        assert status.startswith("Calibrated from 256 tokens")
        assert models.query_one("#calibrate-bar").progress == 256
        out = app_dirs / "data" / "sidecars" / "smollm2-135m-instruct-q4_1"
        assert (out / MANIFEST_NAME).exists()
        # the held-out choice ran in the worker and the dialog shows what it chose, with its score
        recipe = json.loads((out / MANIFEST_NAME).read_text())["recipe"]
        best = recipe["recommended"]
        assert f"Recommended recipe (what plain d2 uses): {best} (mean KLD vs f16 " in status
        assert f"{recipe['candidates'][best]:.5f}" in status and len(recipe["candidates"]) >= 2
        await until(pilot, lambda: models.checks == 0)
        assert "in the user data dir" in text(models, "#models-sidecars")  # the app's own, found first
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is chat)

"""Pilot test of the models screen's calibration dialog with a fake worker: it asks for the held-out
recipe choice and shows the recipe chosen and its score (the real run is in
tests/functional/test_app_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from app.ui.screens import ModelsScreen
from engine.calibrate.choose import DEFAULT_HOLDOUT
from engine.calibrate.run import CalibrationConfig, CalibrationProgress
from engine.calibrate.worker import CalibrationDone
from test_app_ui import make_app, until


class FakeCalibration:
    """Stands in for CalibrationWorker: records its config and replays a finished run."""

    configs: list[CalibrationConfig] = []
    done: CalibrationDone

    def __init__(self, config: CalibrationConfig) -> None:
        self.config = config
        FakeCalibration.configs.append(config)

    def events(self):
        yield CalibrationProgress(256, 256, 1, 1, 100.0, 0.0)
        yield CalibrationProgress(256, 256, 1, 1, 0.0, 0.0, choosing_recipe=True,
                                  holdout_tokens=self.config.holdout)
        yield FakeCalibration.done

    def stop(self) -> None:
        pass


def text(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


@pytest.mark.parametrize("holdout, recommended, score, why, shown", [
    (str(DEFAULT_HOLDOUT), "kautov16", 0.00412, "lowest mean KLD",
     "Recommended recipe (what plain d2 uses): kautov16 (mean KLD vs f16 0.00412 on the held-out tokens)."),
    ("0", None, None, "", "No recipe chosen (the held-out choice was skipped (0 tokens)); plain d2 uses the locked"),
])
async def test_calibration_runs_the_held_out_choice_and_shows_it(model_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 holdout, recommended, score, why, shown) -> None:
    monkeypatch.setattr("app.ui.screens._models.CalibrationWorker", FakeCalibration)
    FakeCalibration.configs = []
    FakeCalibration.done = CalibrationDone(Path("/s/k.bin"), Path("/s/v.bin"), Path("/s/m.json"), 256, 3.0, 0,
                                           recommended, score, why)
    app = make_app(model_path)
    async with app.run_test(size=(150, 44)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        await pilot.press("f7")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen))
        models = app.screen
        models.query_one("#calibrate-tokens", Input).value = "256"
        models.query_one("#calibrate-holdout", Input).value = holdout
        await pilot.click("#models-calibrate")
        await until(pilot, lambda: FakeCalibration.configs and models.calibrating is None)
        assert FakeCalibration.configs[0].holdout == int(holdout)  # the worker is asked for the choice
        status = text(models, "#calibrate-status")
        assert status.startswith("Calibrated from 256 tokens in 3 s") and shown in status

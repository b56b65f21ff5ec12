"""Arm names: upstream caches, D2 recipes, the CPU reference and named calibrations."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine import sidecar as sc
from engine.arms import LOCKED, ArmConfig, Recipe
from engine.errors import EngineError

SHIPPED = Path(__file__).resolve().parents[2] / "sidecars" / "smollm2-135m-instruct-q4_1"
SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.mark.parametrize("text, label", [
    ("d2#mine", "d2#mine"),
    ("d2:k32v16#query-2026@cpu", "d2:k32v16#query-2026@cpu"),
    ("D2#Mine", "d2#mine"),
])
def test_a_calibration_name_round_trips(text: str, label: str) -> None:
    arm = ArmConfig.parse(text)
    assert arm.label == label and ArmConfig.parse(arm.label) == arm
    assert arm.calibration == label.split("#")[1].removesuffix("@cpu")


def test_plain_arms_have_no_calibration() -> None:
    assert ArmConfig.parse("d2") == ArmConfig("d2", LOCKED, model_default=True)
    assert ArmConfig.parse("d2:k32v16").recipe == Recipe(32, 16)
    assert ArmConfig.parse("d2").calibration is None


@pytest.mark.parametrize("text", ["q8_0#mine", "d2#", "d2#../etc", "d2#.hidden", "f16#x@cpu"])
def test_bad_calibration_names_are_clear_errors(text: str) -> None:
    with pytest.raises(EngineError, match="d2#my-calibration"):
        ArmConfig.parse(text)


def test_find_sidecars_by_calibration_name(tmp_path: Path) -> None:
    for name in ("first", "second"):
        shutil.copytree(SHIPPED, tmp_path / name)
    assert sc.find_sidecars(SMOL_SHA, [tmp_path])[0].parent.name == "first"
    assert sc.find_sidecars(SMOL_SHA, [tmp_path], name="second")[0].parent.name == "second"
    assert sc.find_sidecars(SMOL_SHA, [tmp_path], name="third") is None
    assert sc.calibration_names(SMOL_SHA, [tmp_path]) == ["first", "second"]


def test_an_unknown_calibration_names_the_ones_there() -> None:
    from engine import models
    from engine.d2 import settings_for
    from engine.errors import ArmUnavailableError
    from engine.gguf import read_gguf

    info = read_gguf(models.resolve(None))
    with pytest.raises(ArmUnavailableError, match="no calibration named 'nope'") as err:
        settings_for(info, ArmConfig.parse("d2#nope"), SMOL_SHA)
    assert "smollm2-135m-instruct-q4_1" in str(err.value)
    found = settings_for(info, ArmConfig.parse("d2:k16v32#smollm2-135m-instruct-q4_1"), SMOL_SHA)
    assert found.k_sidecar is not None and found.k_sidecar.parent == SHIPPED

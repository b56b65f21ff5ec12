"""Arm names: upstream caches, D2 recipes, the CPU reference and named calibrations."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import sidecar as sc
from engine.arms import LOCKED, ArmConfig, Recipe, kauto_protect
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


@pytest.mark.parametrize("text, label, k_bits, v_bits", [
    ("d2:k16v32b2", "d2:k16v32b2", 2, 2),            # one "b" after V: both, as before
    ("d2:k16b3v16b2", "d2:k16b3v16b2", 3, 2),
    ("d2:k16b2v16", "d2:k16b2v16b3", 2, 3),
    ("d2:k16b3v32b3s8w1024", "d2:k16v32", 3, 3),
    ("d2:k32v16i8s8w256", "d2:k32v16i8s8w256", 3, 3),
])
def test_tail_bits_per_k_and_v_round_trip(text: str, label: str, k_bits: int, v_bits: int) -> None:
    arm = ArmConfig.parse(text)
    assert arm.recipe is not None and (arm.recipe.k_bits, arm.recipe.v_bits) == (k_bits, v_bits)
    assert arm.label == label and ArmConfig.parse(arm.label).recipe == arm.recipe


@pytest.mark.parametrize("text", ["d2:k16v32b4", "d2:k16b1v32", "d2:k16v32b8"])
def test_unsupported_tail_bits_are_clear_errors(text: str) -> None:
    with pytest.raises(EngineError, match="use 2 or 3"):
        ArmConfig.parse(text)


def test_int8_protected_coefficients_come_with_3_bit_tails_only() -> None:
    assert ArmConfig.parse("d2:k32v16i8").recipe == Recipe(32, 16, protect_bits=8)
    with pytest.raises(EngineError, match="3-bit tails only"):
        ArmConfig.parse("d2:k32v16b2i8")


def test_d2_lite_fits_q4_0s_budget_counting_scales_and_protected_halves() -> None:
    lite = ArmConfig.parse("d2:lite")
    assert lite.label == "d2:lite" and ArmConfig.parse(lite.label) == lite
    assert ArmConfig.parse("d2:lite@cpu").label == "d2:lite@cpu"
    assert lite.recipe is not None and lite.recipe.label == "k32v16i8"
    for hd in (64, 128, 256):
        blocks = hd // 64
        k = blocks * (4 + 16 + 48 * 3 // 8)   # d2_p16i8: 38 B per block
        v = blocks * (4 + 8 + 56 * 3 // 8)    # d2_p8i8: 33 B per block
        assert lite.kv_bytes_per_token(1, 1, hd, hd) == k + v
        assert lite.bits_per_element(hd, hd) == pytest.approx(4.4375)
        assert lite.bits_per_element(hd, hd) <= ArmConfig.parse("q4_0").bits_per_element(hd, hd)
    # the 2-bit-V alternative measured beside it costs the same
    assert ArmConfig.parse("d2:k16b3v16b2").bits_per_element(64, 64) == pytest.approx(4.4375)


def test_kauto_recipe_parses_and_round_trips() -> None:
    recipe = Recipe.parse("kautov16")
    assert recipe.k_auto and recipe.label == "kautov16" and not recipe.k_layers
    arm = ArmConfig.parse("d2:kautob3v16b2s4w256")
    assert arm.label == "d2:kautob3v16b2s4w256" and ArmConfig.parse(arm.label) == arm
    assert ArmConfig.parse("d2:kautov32i8").recipe.protect_bits == 8


@pytest.mark.parametrize("rank, head_dim, protect", [
    (8, 64, 8), (9, 64, 16), (16, 64, 16), (24, 64, 32), (32, 64, 32), (40, 64, 64), (64, 64, 64),
    (16, 128, 16), (24, 128, 32), (40, 128, 64), (64, 128, 64), (72, 128, 128),
])
def test_kauto_takes_the_smallest_block_type_covering_the_layers_largest_rank(rank, head_dim, protect) -> None:
    # the same rule as llama_fraqtl_k_protect_layers: 8, 16 or 32 per 64-block, else the whole head f16
    assert kauto_protect(rank, head_dim) == protect


def test_kauto_memory_is_per_layer_and_needs_the_ranks() -> None:
    recipe = Recipe.parse("kautov16")
    with pytest.raises(EngineError, match="depends on the K sidecar's ranks"):
        ArmConfig("d2", recipe).kv_bytes_per_token(2, 3, 64, 64)
    # layer 0: heads 8, 24, 16 -> d2_p32 (78 B); layer 1: 40 -> the whole head in f16 (128 B, no scale)
    resolved = recipe.with_k_ranks([[8, 24, 16], [40, 8, 8]], 64)
    assert resolved.k_layers == (32, 64)
    v = LOCKED.block_bytes(64, 8, "v")  # v16 at head_dim 64: d2_p8, 39 B
    assert ArmConfig("d2", resolved).kv_bytes_per_token(2, 3, 64, 64) == 3 * (78 + 128 + 2 * v)
    # at head_dim 128 a layer's rank 24 takes 16 per block (d2_p16 x 2)
    assert recipe.with_k_ranks([[24, 8]], 128).k_layers == (32,)
    assert Recipe(k_rank=128).block_bytes(128, 128, "k") == 256  # an f16 tensor has no block scales


def test_kauto_without_sidecar_files_is_a_clear_error(tmp_path: Path) -> None:
    from engine.d2 import D2Settings, resolve_k_layers
    from engine.errors import ArmUnavailableError
    from engine.gguf import GgufInfo

    info = GgufInfo(Path("m.gguf"), 3, {"general.architecture": "llama"}, (), 0)
    with pytest.raises(ArmUnavailableError, match="needs|K sidecar"):
        D2Settings(recipe=Recipe.parse("kautov16"), basis="identity").c_params(info)
    with pytest.raises(ArmUnavailableError, match="K sidecar's ranks"):
        resolve_k_layers(Recipe.parse("kautov16"), info, None)


def test_plain_d2_takes_a_recommended_kauto_only_when_it_costs_no_more(tmp_path: Path) -> None:
    from engine.d2 import recipe_for
    from engine.gguf import GgufInfo

    info = GgufInfo(Path("m.gguf"), 3, {"general.architecture": "llama", "llama.block_count": 2,
                                         "llama.attention.head_count": 3, "llama.attention.head_count_kv": 3,
                                         "llama.embedding_length": 192}, (), 0)
    manifest = {"recipe": {"recommended": "kautov16"}}
    plain = ArmConfig.parse("d2")
    for ranks, expected in (([[16, 8, 8], [8, 8, 8]], (16, 8)), ([[24, 8, 8], [16, 8, 8]], None)):
        k = sc.control_sidecar("k", 2, 3, 64, 8)
        k = sc.SidecarFile("k", k.basis, ranks=np.array(ranks, dtype=np.int32))
        path = sc.write_sidecar(k, tmp_path / f"{ranks[0][0]}.fraqtl-k-eigenbasis.bin")
        recipe = recipe_for(info, plain, manifest, path)
        if expected is None:  # d2_p32 + d2_p16 K: 26 B a token and head over the locked recipe
            assert recipe == LOCKED
        else:
            assert recipe.k_auto and recipe.k_layers == expected and recipe.window == LOCKED.window


def test_kauto_protect_value_matches_the_c_header() -> None:
    from engine.d2 import PROTECT_AUTO

    header = (Path(__file__).resolve().parents[2] / "engine" / "llama.cpp-fraqtl" / "src" / "llama"
              / "llama-fraqtl.h").read_text()
    assert f"#define LLAMA_FRAQTL_PROTECT_AUTO ({PROTECT_AUTO})" in header


def test_plain_d2_estimates_never_hash_a_model_on_the_ui_thread(tmp_path: Path, monkeypatch) -> None:
    from engine import d2, models
    from engine.gguf import GgufInfo

    def no_hashing(path: Path) -> str:
        raise AssertionError("hashed the model")

    monkeypatch.setattr(models, "model_sha256", no_hashing)
    gguf = tmp_path / "big.gguf"
    gguf.write_bytes(b"GGUF")
    info = GgufInfo(gguf, 3, {"general.architecture": "llama"}, (), 0)
    plain = ArmConfig.parse("d2")
    assert d2.memory_arm(info, plain) is plain  # unknown sha: the locked recipe, an upper bound

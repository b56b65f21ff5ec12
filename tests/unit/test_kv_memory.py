"""The KV memory report: llama.cpp's bytes, and the cache types of every layer (kauto's differ)."""

from __future__ import annotations

import ctypes

import pytest

from engine import build, ggml_types
from engine.arms import TYPE_NAMES, Recipe, d2_cache_type
from engine.d2 import LlamaFraqtlMemory, kv_memory


class FakeLib:
    """libllama's llama_fraqtl_get_memory as it reports a kauto cache: its last layer's K type only."""

    _fraqtl_bound = True

    def __init__(self, type_k: int, type_v: int) -> None:
        self.type_k, self.type_v = type_k, type_v

    def llama_fraqtl_get_memory(self, ctx: object, ref: object) -> bool:
        out = ctypes.cast(ref, ctypes.POINTER(LlamaFraqtlMemory)).contents
        out.k_bytes, out.v_bytes, out.exact_bytes, out.basis_bytes = 1000, 2000, 300, 40
        out.type_k, out.type_v, out.d2 = self.type_k, self.type_v, 1
        return True


class FakeLlamaCpp:
    def __init__(self, lib: FakeLib) -> None:
        self.llama_cpp = type("Module", (), {"_lib": lib})


def test_type_names_are_the_patch_ids() -> None:
    patch_ids = ggml_types.our_ids_in_patch("".join(p.read_text(encoding="utf-8") for p in build.patch_files()))
    assert {TYPE_NAMES[v]: v for v in patch_ids.values()} == {
        name.removeprefix("GGML_TYPE_").lower(): v for name, v in patch_ids.items()}


@pytest.mark.parametrize("protect, head_dim, bits, pbits, name", [
    (8, 64, 3, 16, "d2_p8"), (16, 128, 3, 16, "d2_p8"), (32, 64, 3, 16, "d2_p32"), (64, 64, 3, 16, "f16"),
    (16, 64, 2, 16, "d2_p16b2"), (16, 64, 3, 8, "d2_p16i8"), (64, 128, 3, 8, "d2_p32i8"),
])
def test_d2_cache_type_mirrors_libllama(protect: int, head_dim: int, bits: int, pbits: int, name: str) -> None:
    assert TYPE_NAMES[d2_cache_type(protect, head_dim, bits, pbits)] == name


def test_a_kauto_cache_reports_every_layers_k_type_not_the_last_ones() -> None:
    recipe = Recipe.parse("kautov16").with_k_ranks([[8, 8], [16, 8], [8, 24], [40, 8], [8, 16]], 64)
    k_types = recipe.k_layer_types(64)
    assert k_types == (43, 44, 45, 1, 44)
    mem = kv_memory(FakeLlamaCpp(FakeLib(type_k=44, type_v=43)), None, k_types)
    assert mem is not None and mem.type_k is None and mem.k_types == k_types
    assert mem.k_type_name == "per layer: 1 × f16, 1 × d2_p8, 2 × d2_p16, 1 × d2_p32"
    assert mem.describe() == "K per layer: 1 × f16, 1 × d2_p8, 2 × d2_p16, 1 × d2_p32; V d2_p8"
    assert (mem.k_bytes, mem.kv_bytes, mem.exact_bytes, mem.basis_bytes, mem.d2) == (1000, 3000, 300, 40, True)


def test_one_k_type_in_every_layer_is_reported_as_one() -> None:
    uniform = Recipe.parse("kautov16").with_k_ranks([[16, 8]] * 3, 64).k_layer_types(64)
    mem = kv_memory(FakeLlamaCpp(FakeLib(type_k=44, type_v=43)), None, uniform)
    assert mem is not None and (mem.type_k, mem.k_types, mem.describe()) == (44, (), "K d2_p16; V d2_p8")
    fixed = kv_memory(FakeLlamaCpp(FakeLib(type_k=43, type_v=44)), None, Recipe().k_layer_types(64))
    assert fixed is not None and (fixed.type_k, fixed.k_types, fixed.describe()) == (43, (), "K d2_p8; V d2_p16")

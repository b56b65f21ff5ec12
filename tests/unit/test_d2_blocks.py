"""The ggml D2 block types: bit-exact packing, round trips and error bounds.

The C quantizer in libggml-base (our ggml-fraqtl.c) is checked against an independent
numpy model of the documented layout: fp16 scale | P fp16 protected values | 64-P codes of
3 bits (q+4), eight codes in three little-endian bytes.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

SIZES = {8: 39, 16: 52, 32: 78}


@pytest.fixture(scope="module")
def ggml_base() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    for p in SIZES:
        for name in (f"quantize_row_d2_p{p}_ref",):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
        fn = getattr(lib, f"dequantize_row_d2_p{p}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
        fn = getattr(lib, f"ggml_vec_dot_d2_p{p}_f32")
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                       ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = None
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    return lib


def quantize(lib: ctypes.CDLL, p: int, x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = ctypes.create_string_buffer(SIZES[p] * (x.size // 64))
    getattr(lib, f"quantize_row_d2_p{p}_ref")(x.ctypes.data, out, x.size)
    return out.raw


def dequantize(lib: ctypes.CDLL, p: int, data: bytes, n: int) -> np.ndarray:
    y = np.zeros(n, dtype=np.float32)
    buf = ctypes.create_string_buffer(data, len(data))
    getattr(lib, f"dequantize_row_d2_p{p}")(buf, y.ctypes.data, n)
    return y


def model_decode(p: int, block: bytes) -> np.ndarray:
    """Independent decoder of one block, from the documented layout."""
    scale = np.frombuffer(block[:2], dtype=np.float16)[0].astype(np.float32)
    protected = np.frombuffer(block[2 : 2 + 2 * p], dtype=np.float16).astype(np.float32)
    codes = []
    raw = block[2 + 2 * p :]
    for g in range(len(raw) // 3):
        bits = raw[3 * g] | raw[3 * g + 1] << 8 | raw[3 * g + 2] << 16
        codes += [(bits >> (3 * j)) & 7 for j in range(8)]
    tail = (np.array(codes, dtype=np.float32) - 4) * scale
    return np.concatenate([protected, tail])


def test_type_traits_match_the_layout(ggml_base: ctypes.CDLL) -> None:
    for type_id, p in ((43, 8), (44, 16), (45, 32)):
        assert ggml_base.ggml_blck_size(type_id) == 64
        assert ggml_base.ggml_type_size(type_id) == SIZES[p] == 2 + 2 * p + (64 - p) * 3 // 8


@pytest.mark.parametrize("p", [8, 16, 32])
def test_packing_is_bit_exact_with_the_documented_layout(ggml_base: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(p)
    x = (rng.standard_normal(64 * 16) * np.linspace(4, 0.1, 64 * 16)).astype(np.float32)
    data = quantize(ggml_base, p, x)
    assert len(data) == 16 * SIZES[p]
    y = dequantize(ggml_base, p, data, x.size)
    for b in range(16):
        block = data[b * SIZES[p] : (b + 1) * SIZES[p]]
        np.testing.assert_array_equal(model_decode(p, block), y[b * 64 : (b + 1) * 64])


@pytest.mark.parametrize("p", [8, 16, 32])
def test_round_trip_error_bounds(ggml_base: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(100 + p)
    x = rng.standard_normal(64 * 64).astype(np.float32) * 3.0
    y = dequantize(ggml_base, p, quantize(ggml_base, p, x), x.size)
    xb, yb = x.reshape(-1, 64), y.reshape(-1, 64)
    # protected coefficients are fp16: relative error <= 2^-11
    np.testing.assert_allclose(yb[:, :p], xb[:, :p].astype(np.float16).astype(np.float32), rtol=0, atol=0)
    # tail: codes are clamp(round(x/s), -4, 3) with the block's stored fp16 scale s, and s
    # lies between 0.7x and 1x of the no-clipping scale (the quantizer's small search)
    data = quantize(ggml_base, p, x)
    scales = np.array([np.frombuffer(data[b * SIZES[p] : b * SIZES[p] + 2], dtype=np.float16)[0]
                       for b in range(xb.shape[0])], dtype=np.float32)
    tail_x, tail_y = xb[:, p:], yb[:, p:]
    inv = (np.float32(1.0) / scales)[:, None]
    codes = np.clip(np.round(tail_x * inv), -4, 3)
    np.testing.assert_allclose(tail_y, codes * scales[:, None], rtol=0, atol=1e-6)
    no_clip = np.maximum(tail_x.max(axis=1) / 3, -tail_x.min(axis=1) / 4)
    assert np.all(scales <= no_clip * 1.001) and np.all(scales >= no_clip * 0.69)
    in_range = (tail_x * inv >= -4.5) & (tail_x * inv <= 3.5)
    err = np.abs(tail_x - tail_y)
    assert np.all(err[in_range] <= (scales[:, None] / 2 * 1.0001 + 1e-6).repeat(tail_x.shape[1], 1)[in_range])
    # and the tail keeps most of its energy: relative MSE of a 3-bit Gaussian tail < 5 %
    assert np.mean(err**2) / np.mean(tail_x**2) < 0.05


@pytest.mark.parametrize("p", [8, 16, 32])
def test_all_eight_levels_are_used(ggml_base: ctypes.CDLL, p: int) -> None:
    x = np.zeros(64, dtype=np.float32)
    x[p:] = np.linspace(-4.0, 3.0, 64 - p)
    y = dequantize(ggml_base, p, quantize(ggml_base, p, x), 64)
    scale = np.frombuffer(quantize(ggml_base, p, x)[:2], dtype=np.float16)[0]
    levels = set(np.round(y[p:] / float(scale)).astype(int))
    assert levels == set(range(-4, 4))


@pytest.mark.parametrize("p", [8, 16, 32])
def test_a_nan_gets_the_documented_code(ggml_base: ctypes.CDLL, p: int) -> None:
    # casting NaN to int was undefined behaviour (code 4 on x86 by luck); the quantizer now
    # clamps with fmaxf/fminf, which maps a NaN to level -4 exactly as the CUDA kernel does
    rng = np.random.default_rng(3)
    x = rng.normal(size=64).astype(np.float32)
    clean = quantize(ggml_base, p, x)
    x[p + 5] = np.nan
    block = quantize(ggml_base, p, x)
    raw = block[2 + 2 * p :]
    codes = [(raw[3 * g] | raw[3 * g + 1] << 8 | raw[3 * g + 2] << 16) >> (3 * j) & 7
             for g in range(len(raw) // 3) for j in range(8)]
    assert codes[5] == 0
    assert np.isfinite(np.frombuffer(block[:2], dtype=np.float16)[0])
    assert block[2 : 2 + 2 * p] == clean[2 : 2 + 2 * p]


def test_zero_block_is_exact(ggml_base: ctypes.CDLL) -> None:
    x = np.zeros(128, dtype=np.float32)
    for p in SIZES:
        assert np.all(dequantize(ggml_base, p, quantize(ggml_base, p, x), 128) == 0)


@pytest.mark.parametrize("p", [8, 16, 32])
def test_vec_dot_equals_dot_of_dequantized(ggml_base: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(7 + p)
    x = rng.standard_normal(256).astype(np.float32)
    y = rng.standard_normal(256).astype(np.float32)
    data = quantize(ggml_base, p, x)
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.c_float()
    getattr(ggml_base, f"ggml_vec_dot_d2_p{p}_f32")(256, ctypes.byref(out), 0, buf, 0, y.ctypes.data, 0, 1)
    expected = float(np.dot(dequantize(ggml_base, p, data, 256).astype(np.float64), y))
    assert out.value == pytest.approx(expected, rel=1e-4, abs=1e-4)


_BOTH_FORMS = """
import ctypes, sys, numpy as np
from pathlib import Path
import llama_cpp
lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
name, n = sys.argv[1], int(sys.argv[2])
data = sys.stdin.buffer.read()
y = np.frombuffer(data[: 4 * n], dtype=np.float32).copy()
blocks = ctypes.create_string_buffer(data[4 * n :], len(data) - 4 * n)
deq = np.zeros(n, dtype=np.float32)
getattr(lib, f"dequantize_row_{name}")(blocks, deq.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n))
out = ctypes.c_float()
dot = getattr(lib, f"ggml_vec_dot_{name}_f32")
dot.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
dot(n, ctypes.byref(out), 0, blocks, 0, y.ctypes.data, 0, 1)
sys.stdout.buffer.write(deq.tobytes() + np.float32(out.value).tobytes())
"""


def simd_and_scalar(type_name: str, data: bytes, y: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Dequantized row and dot product with y of the same bytes, in a process with the AVX2
    forms allowed and in one with FRAQTL_D2_NO_SIMD=1 (the form is chosen once per process)."""
    import os
    import subprocess
    import sys

    n = y.size
    results = []
    for off in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _BOTH_FORMS, type_name, str(n)], input=y.tobytes() + data,
                             capture_output=True, check=True, env=dict(os.environ, FRAQTL_D2_NO_SIMD=off))
        results.append((np.frombuffer(out.stdout[: 4 * n], dtype=np.float32),
                        float(np.frombuffer(out.stdout[4 * n :], np.float32)[0])))
    return results


def simd_inputs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients spanning three magnitudes (peaked tails, large protected values) and a query."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 40.0], n)).astype(np.float32)
    return x, rng.standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("p", [8, 16, 32])
def test_the_simd_and_scalar_forms_agree(ggml_base: ctypes.CDLL, p: int) -> None:
    # on an AVX2 machine the library decodes eight codes at once; FRAQTL_D2_NO_SIMD=1 keeps the
    # scalar loop (both are what some user's CPU runs): same dequantized values, same dot product
    n = 1024
    x, y = simd_inputs(30 + p, n)
    data = quantize(ggml_base, p, x)
    (simd_deq, simd_dot), (scalar_deq, scalar_dot) = simd_and_scalar(f"d2_p{p}", data, y)
    assert np.array_equal(simd_deq, scalar_deq)
    assert np.array_equal(simd_deq, dequantize(ggml_base, p, data, n))
    assert simd_dot == pytest.approx(scalar_dot, rel=1e-5, abs=1e-4)
    assert scalar_dot == pytest.approx(float(np.dot(scalar_deq.astype(np.float64), y)), rel=1e-4, abs=1e-3)


# ---------------------------------------------------------------------------------------
# D2-lite: 2-bit tails. Layout: fp16 scale d | P fp16 protected | 64-P codes c of 2 bits, four
# to a byte (code j of a byte at bits 2j..2j+1); a tail value is (2c - 3)*d.

SIZES_B2 = {8: 32, 16: 46, 32: 74}
IDS_B2 = {8: 46, 16: 47, 32: 48}


@pytest.fixture(scope="module")
def ggml_b2(ggml_base: ctypes.CDLL) -> ctypes.CDLL:
    for p in SIZES_B2:
        for name in (f"quantize_row_d2_p{p}b2_ref", f"dequantize_row_d2_p{p}b2"):
            fn = getattr(ggml_base, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
        fn = getattr(ggml_base, f"ggml_vec_dot_d2_p{p}b2_f32")
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                       ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = None
    ggml_base.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    ggml_base.ggml_validate_row_data.restype = ctypes.c_bool
    return ggml_base


def quantize_b2(lib: ctypes.CDLL, p: int, x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = ctypes.create_string_buffer(SIZES_B2[p] * (x.size // 64))
    getattr(lib, f"quantize_row_d2_p{p}b2_ref")(x.ctypes.data, out, x.size)
    return out.raw


def dequantize_b2(lib: ctypes.CDLL, p: int, data: bytes, n: int) -> np.ndarray:
    y = np.zeros(n, dtype=np.float32)
    buf = ctypes.create_string_buffer(data, len(data))
    getattr(lib, f"dequantize_row_d2_p{p}b2")(buf, y.ctypes.data, n)
    return y


def codes_b2(p: int, block: bytes) -> np.ndarray:
    raw = np.frombuffer(block[2 + 2 * p :], dtype=np.uint8)
    return np.array([(b >> (2 * j)) & 3 for b in raw for j in range(4)], dtype=np.int64)


def model_decode_b2(p: int, block: bytes) -> np.ndarray:
    """Independent decoder of one 2-bit-tail block, from the documented layout."""
    d = np.frombuffer(block[:2], dtype=np.float16)[0].astype(np.float32)
    protected = np.frombuffer(block[2 : 2 + 2 * p], dtype=np.float16).astype(np.float32)
    tail = (2 * codes_b2(p, block) - 3).astype(np.float32) * d
    return np.concatenate([protected, tail])


def test_b2_type_traits_match_the_layout(ggml_b2: ctypes.CDLL) -> None:
    for p, type_id in IDS_B2.items():
        assert ggml_b2.ggml_blck_size(type_id) == 64
        assert ggml_b2.ggml_type_size(type_id) == SIZES_B2[p] == 2 + 2 * p + (64 - p) // 4


@pytest.mark.parametrize("p", [8, 16, 32])
def test_b2_packing_is_bit_exact_with_the_documented_layout(ggml_b2: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(50 + p)
    x = (rng.standard_normal(64 * 16) * np.linspace(4, 0.1, 64 * 16)).astype(np.float32)
    data = quantize_b2(ggml_b2, p, x)
    assert len(data) == 16 * SIZES_B2[p]
    y = dequantize_b2(ggml_b2, p, data, x.size)
    for b in range(16):
        block = data[b * SIZES_B2[p] : (b + 1) * SIZES_B2[p]]
        np.testing.assert_array_equal(model_decode_b2(p, block), y[b * 64 : (b + 1) * 64])


def best_grid_error(t: np.ndarray) -> float:
    """The smallest squared error of a 4-level symmetric quantizer over a fine grid of fp16 scales."""
    d0 = np.abs(t).max() / 3
    best = np.inf
    for f in np.linspace(0.3, 1.0, 141):
        d = np.float32(np.float16(d0 * f))
        c = np.clip(np.round((t / d + 3) / 2), 0, 3)
        best = min(best, float(((t - (2 * c - 3) * d) ** 2).sum()))
    return best


@pytest.mark.parametrize("p", [8, 16, 32])
def test_b2_round_trip_uses_nearest_levels_and_a_searched_scale(ggml_b2: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(200 + p)
    x = rng.standard_normal(64 * 64).astype(np.float32) * 3.0
    data = quantize_b2(ggml_b2, p, x)
    y = dequantize_b2(ggml_b2, p, data, x.size)
    xb, yb = x.reshape(-1, 64), y.reshape(-1, 64)
    np.testing.assert_array_equal(yb[:, :p], xb[:, :p].astype(np.float16).astype(np.float32))
    scales = np.array([np.frombuffer(data[b * SIZES_B2[p] : b * SIZES_B2[p] + 2], dtype=np.float16)[0]
                       for b in range(xb.shape[0])], dtype=np.float32)
    tail_x, tail_y = xb[:, p:], yb[:, p:]
    # every code is the nearest level to x/d
    levels = (2 * np.arange(4) - 3)[None, None, :] * scales[:, None, None]
    nearest = np.abs(tail_x[:, :, None] - levels).min(axis=2)
    np.testing.assert_allclose(np.abs(tail_x - tail_y), nearest, rtol=0, atol=1e-5)
    # the search clips: no Gaussian block keeps the no-clipping scale (largest |x| at level 3)
    no_clip = np.abs(tail_x).max(axis=1) / 3
    assert np.all(scales <= no_clip * 1.001) and np.mean(scales < no_clip * 0.9) > 0.9
    # and it finds (within 2 %) the error of the best scale on a fine grid
    for b in range(xb.shape[0]):
        err = float(((tail_x[b] - tail_y[b]) ** 2).sum())
        assert err <= best_grid_error(tail_x[b]) * 1.02
    # a 4-level Gaussian quantizer keeps ~88 % of the energy (Lloyd-Max: relative MSE 0.1175)
    assert np.mean((tail_x - tail_y) ** 2) / np.mean(tail_x**2) < 0.14


@pytest.mark.parametrize("p", [8, 16, 32])
def test_b2_all_four_levels_are_used(ggml_b2: ctypes.CDLL, p: int) -> None:
    x = np.zeros(64, dtype=np.float32)
    x[p:] = np.linspace(-3.0, 3.0, 64 - p)
    block = quantize_b2(ggml_b2, p, x)
    assert set(codes_b2(p, block)) == {0, 1, 2, 3}


@pytest.mark.parametrize("p", [8, 16, 32])
def test_b2_a_nan_gets_code_0_and_leaves_the_rest_finite(ggml_b2: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=64).astype(np.float32)
    clean = quantize_b2(ggml_b2, p, x)
    x[p + 5] = np.nan
    block = quantize_b2(ggml_b2, p, x)
    assert codes_b2(p, block)[5] == 0
    d = np.frombuffer(block[:2], dtype=np.float16)[0]
    assert np.isfinite(d) and d > 0
    assert block[2 : 2 + 2 * p] == clean[2 : 2 + 2 * p]
    assert np.all(np.isfinite(dequantize_b2(ggml_b2, p, block, 64)))
    # an all-NaN tail quantizes to a zero scale, not to NaN
    x[p:] = np.nan
    block = quantize_b2(ggml_b2, p, x)
    assert np.frombuffer(block[:2], dtype=np.float16)[0] == 0
    assert ggml_b2.ggml_validate_row_data(IDS_B2[p], block, len(block))


def test_b2_validate_row_refuses_a_nan_scale_or_protected_value(ggml_b2: ctypes.CDLL) -> None:
    rng = np.random.default_rng(9)
    block = bytearray(quantize_b2(ggml_b2, 16, rng.normal(size=64).astype(np.float32)))
    assert ggml_b2.ggml_validate_row_data(IDS_B2[16], bytes(block), len(block))
    bad = bytearray(block)
    bad[0:2] = np.float16(np.nan).tobytes()
    assert not ggml_b2.ggml_validate_row_data(IDS_B2[16], bytes(bad), len(bad))
    bad = bytearray(block)
    bad[2 + 2 * 15 : 2 + 2 * 16] = np.float16(np.inf).tobytes()
    assert not ggml_b2.ggml_validate_row_data(IDS_B2[16], bytes(bad), len(bad))
    assert not ggml_b2.ggml_validate_row_data(IDS_B2[16], bytes(block[:-1]), len(block) - 1)


def test_b2_zero_block_is_exact(ggml_b2: ctypes.CDLL) -> None:
    x = np.zeros(128, dtype=np.float32)
    for p in SIZES_B2:
        data = quantize_b2(ggml_b2, p, x)
        assert np.all(dequantize_b2(ggml_b2, p, data, 128) == 0)


@pytest.mark.parametrize("p", [8, 16, 32])
def test_b2_vec_dot_equals_dot_of_dequantized(ggml_b2: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(17 + p)
    x = rng.standard_normal(256).astype(np.float32)
    y = rng.standard_normal(256).astype(np.float32)
    data = quantize_b2(ggml_b2, p, x)
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.c_float()
    getattr(ggml_b2, f"ggml_vec_dot_d2_p{p}b2_f32")(256, ctypes.byref(out), 0, buf, 0, y.ctypes.data, 0, 1)
    expected = float(np.dot(dequantize_b2(ggml_b2, p, data, 256).astype(np.float64), y))
    assert out.value == pytest.approx(expected, rel=1e-4, abs=1e-4)


# ---------------------------------------------------------------------------------------
# D2-lite: int8 protected coefficients. Layout: fp16 tail scale d | fp16 protected scale dp |
# P int8 codes q (value q*dp, dp = max |protected| / 127) | 64-P 3-bit tail codes as in d2_p*.

SIZES_I8 = {8: 33, 16: 38, 32: 48}
IDS_I8 = {8: 49, 16: 50, 32: 51}


@pytest.fixture(scope="module")
def ggml_i8(ggml_b2: ctypes.CDLL) -> ctypes.CDLL:
    for p in SIZES_I8:
        for name in (f"quantize_row_d2_p{p}i8_ref", f"dequantize_row_d2_p{p}i8"):
            fn = getattr(ggml_b2, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
        fn = getattr(ggml_b2, f"ggml_vec_dot_d2_p{p}i8_f32")
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                       ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = None
    return ggml_b2


def quantize_i8(lib: ctypes.CDLL, p: int, x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = ctypes.create_string_buffer(SIZES_I8[p] * (x.size // 64))
    getattr(lib, f"quantize_row_d2_p{p}i8_ref")(x.ctypes.data, out, x.size)
    return out.raw


def dequantize_i8(lib: ctypes.CDLL, p: int, data: bytes, n: int) -> np.ndarray:
    y = np.zeros(n, dtype=np.float32)
    buf = ctypes.create_string_buffer(data, len(data))
    getattr(lib, f"dequantize_row_d2_p{p}i8")(buf, y.ctypes.data, n)
    return y


def model_decode_i8(p: int, block: bytes) -> np.ndarray:
    """Independent decoder of one int8-protected block, from the documented layout."""
    d, dp = np.frombuffer(block[:4], dtype=np.float16).astype(np.float32)
    protected = np.frombuffer(block[4 : 4 + p], dtype=np.int8).astype(np.float32) * dp
    codes = []
    raw = block[4 + p :]
    for g in range(len(raw) // 3):
        bits = raw[3 * g] | raw[3 * g + 1] << 8 | raw[3 * g + 2] << 16
        codes += [(bits >> (3 * j)) & 7 for j in range(8)]
    return np.concatenate([protected, (np.array(codes, dtype=np.float32) - 4) * d])


def test_i8_type_traits_match_the_layout(ggml_i8: ctypes.CDLL) -> None:
    for p, type_id in IDS_I8.items():
        assert ggml_i8.ggml_blck_size(type_id) == 64
        assert ggml_i8.ggml_type_size(type_id) == SIZES_I8[p] == 4 + p + (64 - p) * 3 // 8


@pytest.mark.parametrize("p", [8, 16, 32])
def test_i8_packing_is_bit_exact_with_the_documented_layout(ggml_i8: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(70 + p)
    x = (rng.standard_normal(64 * 16) * np.linspace(4, 0.1, 64 * 16)).astype(np.float32)
    data = quantize_i8(ggml_i8, p, x)
    assert len(data) == 16 * SIZES_I8[p]
    y = dequantize_i8(ggml_i8, p, data, x.size)
    for b in range(16):
        block = data[b * SIZES_I8[p] : (b + 1) * SIZES_I8[p]]
        np.testing.assert_array_equal(model_decode_i8(p, block), y[b * 64 : (b + 1) * 64])


@pytest.mark.parametrize("p", [8, 16, 32])
def test_i8_round_trip_keeps_the_3bit_tail_and_rounds_protected_to_int8(ggml_base: ctypes.CDLL, ggml_i8: ctypes.CDLL,
                                                                         p: int) -> None:
    rng = np.random.default_rng(300 + p)
    x = (rng.standard_normal(64 * 64) * 3.0).astype(np.float32)
    xb = x.reshape(-1, 64)
    xb[:, :p] *= 4.0  # protected directions carry the variance
    data = quantize_i8(ggml_i8, p, x)
    yb = dequantize_i8(ggml_i8, p, data, x.size).reshape(-1, 64)
    # the tail is d2_p*'s tail, bit for bit (same scale search, same codes)
    fp16_tail = dequantize(ggml_base, p, quantize(ggml_base, p, x), x.size).reshape(-1, 64)[:, p:]
    np.testing.assert_array_equal(yb[:, p:], fp16_tail)
    # protected: round to the nearest of 255 levels of max |x| / 127 (in fp16)
    dp = np.array([np.frombuffer(data[b * SIZES_I8[p] + 2 : b * SIZES_I8[p] + 4], dtype=np.float16)[0]
                   for b in range(xb.shape[0])], dtype=np.float32)
    np.testing.assert_allclose(dp, np.abs(xb[:, :p]).max(axis=1) / 127, rtol=1e-3)
    assert np.all(np.abs(yb[:, :p] - xb[:, :p]) <= dp[:, None] * 0.5001 + 1e-6)


@pytest.mark.parametrize("p", [8, 16, 32])
def test_i8_a_nan_gets_the_documented_codes(ggml_i8: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=64).astype(np.float32)
    clean = quantize_i8(ggml_i8, p, x)
    x[2] = np.nan       # protected: code -127, the other codes and the scale untouched
    x[p + 5] = np.nan   # tail: level -4, as in d2_p*
    block = quantize_i8(ggml_i8, p, x)
    assert np.frombuffer(block[4 : 4 + p], dtype=np.int8)[2] == -127
    assert block[2:4] == clean[2:4]
    assert block[4:6] + block[7 : 4 + p] == clean[4:6] + clean[7 : 4 + p]
    raw = block[4 + p :]
    codes = [(raw[3 * g] | raw[3 * g + 1] << 8 | raw[3 * g + 2] << 16) >> (3 * j) & 7
             for g in range(len(raw) // 3) for j in range(8)]
    assert codes[5] == 0
    assert np.all(np.isfinite(np.frombuffer(block[:4], dtype=np.float16)))
    assert np.all(np.isfinite(dequantize_i8(ggml_i8, p, block, 64)))
    assert ggml_i8.ggml_validate_row_data(IDS_I8[p], block, len(block))


def test_i8_validate_row_refuses_a_nan_scale(ggml_i8: ctypes.CDLL) -> None:
    rng = np.random.default_rng(10)
    block = quantize_i8(ggml_i8, 16, rng.normal(size=64).astype(np.float32))
    for offset in (0, 2):
        bad = bytearray(block)
        bad[offset : offset + 2] = np.float16(np.nan).tobytes()
        assert not ggml_i8.ggml_validate_row_data(IDS_I8[16], bytes(bad), len(bad))
    assert not ggml_i8.ggml_validate_row_data(IDS_I8[16], block[:-1], len(block) - 1)


def test_i8_zero_block_is_exact(ggml_i8: ctypes.CDLL) -> None:
    x = np.zeros(128, dtype=np.float32)
    for p in SIZES_I8:
        assert np.all(dequantize_i8(ggml_i8, p, quantize_i8(ggml_i8, p, x), 128) == 0)


@pytest.mark.parametrize("p", [8, 16, 32])
def test_i8_vec_dot_equals_dot_of_dequantized(ggml_i8: ctypes.CDLL, p: int) -> None:
    rng = np.random.default_rng(27 + p)
    x = rng.standard_normal(256).astype(np.float32)
    y = rng.standard_normal(256).astype(np.float32)
    data = quantize_i8(ggml_i8, p, x)
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.c_float()
    getattr(ggml_i8, f"ggml_vec_dot_d2_p{p}i8_f32")(256, ctypes.byref(out), 0, buf, 0, y.ctypes.data, 0, 1)
    expected = float(np.dot(dequantize_i8(ggml_i8, p, data, 256).astype(np.float64), y))
    assert out.value == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("p", [8, 16, 32])
def test_i8_simd_and_scalar_forms_agree(ggml_i8: ctypes.CDLL, p: int) -> None:
    # d2:lite's blocks: the AVX2 form widens eight int8 codes at once and decodes the 3-bit tail
    # as d2_p* does; the scalar loop (FRAQTL_D2_NO_SIMD=1) must give the same values and dot
    n = 1024
    x, y = simd_inputs(50 + p, n)
    data = quantize_i8(ggml_i8, p, x)
    (simd_deq, simd_dot), (scalar_deq, scalar_dot) = simd_and_scalar(f"d2_p{p}i8", data, y)
    model = np.concatenate([model_decode_i8(p, data[b * SIZES_I8[p] : (b + 1) * SIZES_I8[p]]) for b in range(n // 64)])
    np.testing.assert_array_equal(simd_deq, model)
    np.testing.assert_array_equal(scalar_deq, model)
    assert simd_dot == pytest.approx(scalar_dot, rel=1e-5, abs=1e-4)
    assert simd_dot == pytest.approx(float(np.dot(model.astype(np.float64), y)), rel=1e-4, abs=1e-3)

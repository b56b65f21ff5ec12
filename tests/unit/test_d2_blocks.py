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

"""Fuzzing (issue 13): arbitrary bytes into the Python sidecar reader and the GGUF metadata reader.

Every input ends in a result or a named error (SidecarFormatError / SidecarMismatchError,
ModelFormatError), never another exception, and never allocates more than the file implies.
Short runs here (CI); raise FRAQTL_FUZZ_EXAMPLES for a longer campaign.
"""

from __future__ import annotations

import os
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import sidecar as sc
from engine.errors import ModelFormatError, SidecarFormatError, SidecarMismatchError
from engine.gguf import read_gguf
from tests.unit.test_sidecar import fake_model

EXAMPLES = int(os.environ.get("FRAQTL_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
#: no input of at most a few KiB may make a reader allocate more than this
ALLOC_LIMIT = 8 << 20

_DIR = Path(tempfile.mkdtemp(prefix="fraqtl-fuzz-"))


def _file(data: bytes, name: str) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def _bounded(call) -> None:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < ALLOC_LIMIT, f"{peak / 2**20:.1f} MiB allocated"


def _read_sidecar(data: bytes, **kwargs) -> None:  # type: ignore[no-untyped-def]
    path = _file(data, "s.bin")

    def call() -> None:
        try:
            sc.read_sidecar(path, **kwargs)
        except (SidecarFormatError, SidecarMismatchError):
            pass

    _bounded(call)


def _header(magic: int, version: int, n_l: int, n_h: int, d: int, f5: int) -> bytes:
    return struct.pack("<8i", magic, version, n_l, n_h, d, f5, 0, 0)


@FUZZ
@given(st.binary(max_size=2048))
def test_sidecar_arbitrary_bytes(data: bytes) -> None:
    _read_sidecar(data)


int32 = st.integers(-(2**31), 2**31 - 1)
small = st.one_of(st.integers(-2, 6), int32)


@FUZZ
@given(st.sampled_from([sc.K_MAGIC, sc.V_MAGIC]), st.sampled_from([1, 1, 1, 0, 2]), small, small,
       st.one_of(st.sampled_from([1, 2, 4, 8]), small), int32, st.binary(max_size=4096),
       st.booleans())
def test_sidecar_plausible_headers(magic: int, version: int, n_l: int, n_h: int, d: int, f5: int, payload: bytes,
                                   with_model: bool) -> None:
    # a believable header steers the reader past the magic into the size, rank and value checks
    _read_sidecar(_header(magic, version, n_l, n_h, d, f5) + payload,
                  model=fake_model(2, 2, 4) if with_model else None)


@FUZZ
@given(st.sampled_from(["k", "v"]), st.integers(1, 3), st.integers(1, 3), st.sampled_from([4, 8]),
       st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=64), st.integers(0, 2**31 - 1))
def test_sidecar_right_size_random_values(kind: str, n_l: int, n_h: int, d: int, halves: list[int], seed: int) -> None:
    # exactly the size the header implies, arbitrary fp16 bit patterns (NaN, inf, denormals) and ranks
    rng = np.random.default_rng(seed)
    n = n_l * n_h * d * d
    values = np.resize(np.asarray(halves, dtype="<u2"), n)
    rng.shuffle(values)
    if kind == "k":
        ranks = rng.integers(-3, d + 3, size=n_l * n_h).astype("<i4")
        data = _header(sc.K_MAGIC, 1, n_l, n_h, d, 0) + ranks.tobytes() + values.tobytes()
    else:
        data = _header(sc.V_MAGIC, 1, n_l, n_h, d, 8) + values.tobytes()
    _read_sidecar(data)


def _read_gguf(data: bytes) -> None:
    path = _file(data, "m.gguf")

    def call() -> None:
        try:
            read_gguf(path)
        except ModelFormatError:
            pass

    _bounded(call)


@FUZZ
@given(st.binary(max_size=2048))
def test_gguf_arbitrary_bytes(data: bytes) -> None:
    _read_gguf(data)


u64 = st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1))


@st.composite
def gguf_value(draw, depth: int = 0) -> bytes:  # type: ignore[no-untyped-def]
    vtype = draw(st.integers(0, 13))
    if vtype == 8:  # string
        return struct.pack("<Q", draw(u64)) + draw(st.binary(max_size=16))
    if vtype == 9:  # array: item type, count, then items (arrays may nest)
        itype = draw(st.integers(0, 13))
        items = b"".join(draw(st.lists(gguf_value(depth + 1) if depth < 3 else st.binary(max_size=8), max_size=3)))
        return struct.pack("<IQ", itype, draw(u64)) + items
    return draw(st.binary(max_size=8))


@FUZZ
@given(st.sampled_from([2, 3, 3, 1]), u64, u64,
       st.lists(st.tuples(st.binary(max_size=12), st.integers(0, 14), gguf_value()), max_size=6),
       st.binary(max_size=256))
def test_gguf_plausible_headers(version: int, n_tensors: int, n_kv: int, kvs: list[tuple[bytes, int, bytes]],
                                tail: bytes) -> None:
    body = b"".join(struct.pack("<Q", len(k)) + k + struct.pack("<I", t) + v for k, t, v in kvs)
    _read_gguf(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body + tail)


def test_gguf_deeply_nested_arrays_are_a_named_error() -> None:
    # 10,000 arrays of one array each: the old reader recursed until RecursionError
    nested = struct.pack("<IQ", 9, 1) * 10_000
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9) + nested
    with pytest.raises(ModelFormatError, match="nested"):
        read_gguf(_file(data, "nested.gguf"))


def test_gguf_huge_array_count_is_a_named_error() -> None:
    # 2^61 uint64 values: the old reader seeked 16 EiB ahead instead of saying the array runs past the end
    data = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
            + struct.pack("<IQ", 10, 2**61))
    with pytest.raises(ModelFormatError, match="end of the file"):
        read_gguf(_file(data, "huge.gguf"))

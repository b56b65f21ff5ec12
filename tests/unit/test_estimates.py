"""Estimates against what llama.cpp itself allocated (H200 receipt of the Mistral-7B shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.arms import ArmConfig
from engine.estimates import MIB, compute_bytes, kv_bytes
from engine.gguf import GgufInfo

RECEIPTS = Path(__file__).resolve().parents[2] / "bench/receipts"
RECEIPT = RECEIPTS / "2026-11-29-memory-mistral-7b-instruct-v0.3-h200/receipt.json"
# D2 on the GPU beside the upstream arms, same build (random-control bases: memory is what counts)
D2_RECEIPTS = [RECEIPTS / "2026-11-29-memory-mistral-shape-d2-cuda-h200/receipt.json",
               RECEIPTS / "2026-11-29-memory-mistral-shape-d2-cuda-h200-128k/receipt.json"]
ROWS = [row for path in [RECEIPT, *D2_RECEIPTS] for row in json.loads(path.read_text())["results"]]


def mistral_shape() -> GgufInfo:
    meta = {
        "general.architecture": "llama", "llama.block_count": 32, "llama.embedding_length": 4096,
        "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
        "llama.feed_forward_length": 14336, "llama.vocab_size": 32768, "llama.context_length": 32768,
    }
    return GgufInfo(Path("mistral-shape.gguf"), 3, meta, (), 0)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['arm']}-{r['n_ctx']}")
def test_estimate_matches_llama_cpp_buffers_within_one_percent(row: dict) -> None:
    info = mistral_shape()
    arm = ArmConfig.parse(row["arm"])
    buffers = row["buffers_mib"]
    assert kv_bytes(info, arm, row["n_ctx"]) / MIB == buffers["CUDA0 KV"]
    compute = compute_bytes(info, row["n_ctx"], 2048, arm) / MIB
    assert compute == pytest.approx(buffers["CUDA0 compute"], abs=0.5)
    # weights as the GGUF states them (device copy + the CPU-mapped token embedding)
    weights = buffers["CUDA0 model"] + buffers["CPU_Mapped model"]
    allocated = weights + buffers["CUDA0 KV"] + buffers["CUDA0 compute"]
    estimated = weights + kv_bytes(info, arm, row["n_ctx"]) / MIB + compute
    assert estimated == pytest.approx(allocated, rel=0.01)


def test_estimates_assume_the_ubatch_the_engine_uses() -> None:
    import inspect

    from engine.estimates import N_UBATCH, estimate
    from engine.worker import EngineSpec

    assert EngineSpec("m.gguf").n_batch == N_UBATCH
    for function in (estimate, compute_bytes):
        assert inspect.signature(function).parameters["n_ubatch"].default == EngineSpec("m.gguf").n_batch


def test_d2_estimate_counts_its_fixed_device_buffers() -> None:
    # the Mistral-7B shape: exact copies of 8 + 1024 tokens and one scratch row, and the bases
    # (tests/functional/test_d2_cache.py checks both against what the engine allocates)
    from engine.estimates import estimate

    est = estimate(mistral_shape(), ArmConfig.parse("d2"), 32768)
    assert est.basis_bytes / MIB == 48.0
    assert est.exact_copy_bytes / MIB == 129.125
    assert est.total_bytes == (est.weights_bytes + est.kv_bytes + est.exact_copy_bytes + est.compute_bytes
                               + est.basis_bytes)
    assert estimate(mistral_shape(), ArmConfig.parse("q8_0"), 32768).basis_bytes == 0


def test_host_available_bytes_reads_memavailable_plus_free_swap(tmp_path: Path) -> None:
    from engine.estimates import host_available_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    2000000 kB\nSwapFree:          1000 kB\n")
    assert host_available_bytes(str(meminfo)) == (2_000_000 + 1000) * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")  # an old kernel without MemAvailable
    assert host_available_bytes(str(meminfo)) is None
    assert host_available_bytes(str(tmp_path / "absent")) is None

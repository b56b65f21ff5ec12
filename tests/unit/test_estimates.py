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
               RECEIPTS / "2026-11-29-memory-mistral-shape-d2-cuda-h200-128k/receipt.json",
               # a prompt's KV heads converted four at a time (d2 and d2:lite)
               RECEIPTS / "2026-11-30-memory-mistral-shape-d2-nocublas-h200/receipt.json",
               RECEIPTS / "2026-11-30-memory-mistral-shape-d2-nocublas-h200-128k/receipt.json",
               # V's inverse rotation by the transpose of its rotation (bases 48 -> 32 MiB)
               RECEIPTS / "2026-11-30-memory-mistral-shape-d2-h200/receipt.json",
               RECEIPTS / "2026-11-30-memory-mistral-shape-d2-h200-128k/receipt.json"]
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
    assert est.basis_bytes / MIB == 32.0  # K's and V's, 32 layers x 8 KV heads x 128 x 128 f32
    assert est.exact_copy_bytes / MIB == 129.125
    assert est.total_bytes == (est.weights_bytes + est.kv_bytes + est.exact_copy_bytes + est.compute_bytes
                               + est.basis_bytes)
    assert estimate(mistral_shape(), ArmConfig.parse("q8_0"), 32768).basis_bytes == 0


def test_d2_fixed_cost_and_break_even_against_f16_and_q8_0() -> None:
    # what D2 holds at any context (the exact copies of 8 + 1024 tokens and a scratch row, and the
    # bases), and the first 256-cell step from which its estimate is below the upstream arm's: the
    # bisection agrees with a step-by-step scan, and d2 stays below from there on
    from engine.estimates import KV_PAD, break_even_tokens, d2_fixed_bytes, estimate

    info, d2 = mistral_shape(), ArmConfig.parse("d2")
    assert d2_fixed_bytes(info, d2) / MIB == 129.125 + 32.0
    assert d2_fixed_bytes(info, ArmConfig.parse("f16")) == 0
    for versus in (ArmConfig.parse("f16"), ArmConfig.parse("q8_0")):
        below = [estimate(info, d2, n).total_bytes < estimate(info, versus, n).total_bytes
                 for n in range(KV_PAD, 32768 + 1, KV_PAD)]
        even = break_even_tokens(info, d2, versus, 32768)
        assert even == (below.index(True) + 1) * KV_PAD and all(below[below.index(True):])
        assert even > d2.recipe.sinks + d2.recipe.window  # never inside the window: its rows are kept twice
        assert break_even_tokens(info, d2, versus, even - KV_PAD) is None


def test_host_available_bytes_reads_memavailable_plus_free_swap(tmp_path: Path) -> None:
    from engine.estimates import host_available_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    2000000 kB\nSwapFree:          1000 kB\n")
    assert host_available_bytes(str(meminfo)) == (2_000_000 + 1000) * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")  # an old kernel without MemAvailable
    assert host_available_bytes(str(meminfo)) is None
    assert host_available_bytes(str(tmp_path / "absent")) is None


# --------------------------------------------------------------------------- split over devices


def _with_tensors(info: GgufInfo, tied: bool = False) -> GgufInfo:
    """The shape's tensor table (Q4_0-sized blocks: 18 bytes per 32 weights), optionally with a tied head."""
    from engine.gguf import TensorInfo

    n_embd, ffn, vocab = 4096, 14336, 32768
    tensors = [TensorInfo("token_embd.weight", (n_embd, vocab), 2, 0)]
    for il in range(info.n_layer):
        for name, shape in (("attn_q", (n_embd, n_embd)), ("attn_k", (n_embd, 1024)), ("attn_v", (n_embd, 1024)),
                            ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_embd, ffn)),
                            ("ffn_up", (n_embd, ffn)), ("ffn_down", (ffn, n_embd))):
            tensors.append(TensorInfo(f"blk.{il}.{name}.weight", shape, 2, 0))
        tensors.append(TensorInfo(f"blk.{il}.attn_norm.weight", (n_embd,), 0, 0))
    tensors.append(TensorInfo("output_norm.weight", (n_embd,), 0, 0))
    if not tied:
        tensors.append(TensorInfo("output.weight", (n_embd, vocab), 2, 0))
    return GgufInfo(info.path, info.version, info.metadata, tuple(tensors), 0)


def test_layers_go_where_llama_cpp_puts_them() -> None:
    from engine.estimates import layer_devices

    # equal shares, 32 layers + output over 2 devices: layer il goes to GPU 0 while il/33 < 0.5
    assert layer_devices(32, [1, 1]) == (0,) * 17 + (1,) * 16
    assert layer_devices(32, [3, 1]) == (0,) * 25 + (1,) * 8
    assert layer_devices(32, [1]) == (0,) * 33
    assert layer_devices(32, []) == (-1,) * 33  # no device: everything on the CPU
    # n_gpu_layers 3 of 4 + output: the first two layers stay on the CPU, the output layer is offloaded
    assert layer_devices(4, [1, 1], n_gpu_layers=3) == (-1, -1, 0, 0, 1)
    # free memory as shares (the default): an H200 with 1 GiB more free takes no extra layer here
    assert layer_devices(32, [140 * 2**30, 139 * 2**30]).count(0) == 17


def test_split_points_are_float32_like_llama_cpp() -> None:
    from engine.estimates import layer_devices

    # 0.1/(0.1+0.7) is 0.125 exactly in float32 (0.12500000000000003 in float64): layer 4 of 31 + output
    # sits on the boundary 4/32 and goes to the second device, as llama.cpp's upper_bound on floats does
    assert layer_devices(31, [0.1, 0.7]).count(0) == 4


def test_split_estimate_puts_each_layers_memory_on_its_device() -> None:
    from engine.estimates import estimate, split_estimate

    info = _with_tensors(mistral_shape())
    for arm_name in ("f16", "q8_0", "d2"):
        arm = ArmConfig.parse(arm_name)
        one = estimate(info, arm, 131072, n_ubatch=2048)
        gpu0, gpu1 = split_estimate(info, arm, 131072, [1, 1], n_ubatch=2048)
        assert (gpu0.layers, gpu1.layers) == (tuple(range(17)), tuple(range(17, 32)))
        assert (gpu0.has_output, gpu1.has_output) == (False, True)
        # the cache, D2's exact copies and bases split 17:15 by layer and add up to the one-device figure
        assert gpu0.kv_bytes + gpu1.kv_bytes == one.kv_bytes
        assert gpu0.kv_bytes == one.kv_bytes * 17 // 32
        assert gpu0.exact_copy_bytes + gpu1.exact_copy_bytes == one.exact_copy_bytes
        assert gpu0.basis_bytes + gpu1.basis_bytes == one.basis_bytes
        # weights: every layer's tensors on its device, the head on the output device, the embeddings on the CPU
        layer = sum(t.n_bytes for t in info.tensors if t.name.startswith("blk.0."))
        head = sum(t.n_bytes for t in info.tensors if t.name.startswith("output"))
        assert gpu0.weights_bytes == 17 * layer
        assert gpu1.weights_bytes == 15 * layer + head
        embd = next(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
        assert gpu0.weights_bytes + gpu1.weights_bytes == one.weights_bytes - embd


def test_split_compute_is_the_one_device_buffer_plus_pipeline_copies_on_every_device() -> None:
    from engine.estimates import SCHED_MAX_COPIES, compute_bytes, split_estimate

    info = _with_tensors(mistral_shape())
    arm = ArmConfig.parse("f16")
    gpu0, gpu1 = split_estimate(info, arm, 32768, [1, 1], n_ubatch=512)
    inputs = 32768 * 512 * 2 + 512 * 4096 * 4 + 512 * 20  # mask, hidden state, positions and row indices
    pipelined = compute_bytes(info, 32768, 512, arm) + (SCHED_MAX_COPIES - 1) * inputs + 512 * 4096 * 4
    # measured on two H200s: both devices' compute buffers equal, the logits' share included
    assert gpu0.compute_bytes == gpu1.compute_bytes == pipelined
    # one device: no pipelining, the single-device estimate exactly
    (only,) = split_estimate(info, arm, 32768, [1], n_ubatch=512)
    assert only.compute_bytes == compute_bytes(info, 32768, 512, arm)
    # layers partly on the CPU: no pipelining, the logits only where the head is
    gpu0, gpu1 = split_estimate(info, arm, 32768, [1, 1], n_ubatch=512, n_gpu_layers=20)
    assert gpu0.compute_bytes == compute_bytes(info, 32768, 512, arm, with_output=False)


def test_split_estimate_matches_the_two_h200_receipt() -> None:
    # bench/receipts/2026-11-29-split-mistral-shape-2xh200: llama.cpp's CUDA<i> compute buffers
    from engine.estimates import split_estimate

    info = _with_tensors(mistral_shape())
    measured = {"f16": (2608.16, 2608.19), "q8_0": (2816.47, 2816.5), "d2": (2610.22, 2610.25)}
    for arm_name, buffers in measured.items():
        devices = split_estimate(info, ArmConfig.parse(arm_name), 131072, [1, 1], n_ubatch=2048)
        for device, mib in zip(devices, buffers):
            assert device.compute_bytes / 2**20 == pytest.approx(mib, abs=20), (arm_name, device.device)


def test_a_tied_head_is_copied_to_the_output_device() -> None:
    from engine.estimates import split_estimate

    info = _with_tensors(mistral_shape(), tied=True)
    embd = next(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
    layer = sum(t.n_bytes for t in info.tensors if t.name.startswith("blk.0."))
    _, gpu1 = split_estimate(info, ArmConfig.parse("f16"), 4096, [1, 1])
    assert gpu1.weights_bytes == 15 * layer + 4096 * 4 + embd

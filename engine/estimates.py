"""Memory estimates for an arm at n tokens: weights + KV cache + compute buffers.

KV bytes come from GGUF metadata (n_layer, n_head_kv, key/value length) and the arm's
bytes per element (for a kauto recipe, each layer's K type from the K sidecar's ranks, the only
file read here); llama.cpp pads the cache size to 256 cells, and so do we. Compute
buffers are an approximation of llama.cpp's graph allocation for one ubatch. This module
never loads a model and never imports the app.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.arms import ArmConfig
from engine.d2 import memory_arm
from engine.gguf import GgufInfo

KV_PAD = 256
N_UBATCH = 256  # the engine's ubatch (EngineSpec.n_batch); estimates assume the same unless told
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class KvEstimate:
    arm: str
    n_ctx: int
    weights_bytes: int
    kv_bytes: int
    exact_copy_bytes: int  # D2's sink + window copies (0 for upstream arms)
    compute_bytes: int
    basis_bytes: int = 0  # D2's per-(layer, KV head) rotations, f32 (0 for upstream arms)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.exact_copy_bytes + self.compute_bytes + self.basis_bytes

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MIB


def padded_ctx(n_ctx: int) -> int:
    return (n_ctx + KV_PAD - 1) // KV_PAD * KV_PAD


def kv_bytes(info: GgufInfo, arm: ArmConfig, n_ctx: int) -> int:
    """K and V cache tensors; a kauto arm (and plain d2 recommending one) reads its sidecar's ranks."""
    arm = memory_arm(info, arm)
    per_token = arm.kv_bytes_per_token(info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v)
    return int(round(per_token * padded_ctx(n_ctx)))


def _exact_rows(arm: ArmConfig, n_ctx: int) -> int:
    """Rows of D2's exact copies: the sinks and the window, and a scratch row."""
    return min(arm.recipe.sinks + arm.recipe.window, padded_ctx(n_ctx)) + 1 if arm.recipe else 0


def exact_copy_bytes(info: GgufInfo, arm: ArmConfig, n_ctx: int) -> int:
    return _exact_rows(arm, n_ctx) * info.n_layer * info.n_head_kv * (info.head_dim_k + info.head_dim_v) * 2


def _row_map_bytes(arm: ArmConfig, n_ctx: int) -> int:
    """D2's exact-row map, an input of every ubatch: an int32 per cell, then one per exact row."""
    return (padded_ctx(n_ctx) + _exact_rows(arm, n_ctx)) * 4 if arm.recipe else 0


def basis_bytes(info: GgufInfo, arm: ArmConfig) -> int:
    """D2's rotations on the device: K's basis and V's, f32, per layer and KV head (V's transpose undoes it)."""
    if arm.recipe is None:
        return 0
    return info.n_layer * info.n_head_kv * (info.head_dim_k**2 + info.head_dim_v**2) * 4


def _n_vocab(info: GgufInfo) -> int:
    n_vocab = int(info.metadata.get(f"{info.arch}.vocab_size", 0) or 0)
    if not n_vocab:
        tokens = info.metadata.get("tokenizer.ggml.tokens")
        n_vocab = int(tokens.get("array_len", 32000)) if isinstance(tokens, dict) else 32000
    return n_vocab


def compute_bytes(info: GgufInfo, n_ctx: int, n_ubatch: int = N_UBATCH, arm: ArmConfig | None = None,
                  with_output: bool = True) -> int:
    """llama.cpp's GPU compute buffer for one ubatch with flash attention.

    The graph allocator's peak is the larger of two phases: the output/FFN phase (logits,
    FFN activations and two residual rows, f32, plus the f16 mask) and, for quantized caches,
    the attention phase, where the kernels see K and V converted to f16. Fitted to, and equal
    within 0.1 MiB to, the buffers llama.cpp reported for the Mistral-7B shape at 32K/64K/128K
    with n_ubatch 2048 (bench/receipts/2026-11-29-memory-mistral-7b-instruct-v0.3-h200).
    ``with_output=False`` is a device of a layer split that runs no output layer: no logits.
    """
    n_kv = padded_ctx(n_ctx)
    ffn = int(info.metadata.get(f"{info.arch}.feed_forward_length", 4 * info.n_embd) or 0)
    mask = n_kv * n_ubatch * 2
    output_phase = n_ubatch * 4 * ((_n_vocab(info) if with_output else 0) + ffn + 2 * info.n_embd) + mask
    if arm is None or arm.name == "f16":
        return output_phase
    if arm.recipe is not None:
        # D2: the decode kernel reads D2 blocks directly; a prompt converts a group of KV heads at
        # a time to f16 (the most whose f16 K and V fit in half the mask: d2_fattn_group), and every
        # ubatch adds the exact-row map
        one_head_f16 = n_kv * (info.head_dim_k + info.head_dim_v) * 2
        group = max(g for g in range(1, info.n_head_kv + 1)
                    if info.n_head_kv % g == 0 and (g == 1 or g * one_head_f16 <= mask // 2))
        return max(output_phase, mask + group * one_head_f16 + n_ubatch * info.n_embd * 4 * 4) + _row_map_bytes(arm, n_ctx)
    kv_f16 = n_kv * info.n_head_kv * (info.head_dim_k + info.head_dim_v) * 2
    attention_phase = mask + kv_f16 + n_ubatch * info.n_embd * 4 * 4
    return max(output_phase, attention_phase)
def context_bytes(info: GgufInfo, arm: ArmConfig, n_ctx: int, n_ubatch: int = N_UBATCH) -> int:
    """What a context allocates besides the (memory-mapped) weights: KV cache, exact copies, compute."""
    return kv_bytes(info, arm, n_ctx) + exact_copy_bytes(info, arm, n_ctx) + compute_bytes(info, n_ctx, n_ubatch, arm)


def host_available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """Memory a new allocation can still get (MemAvailable + SwapFree); None where /proc is absent."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + fields.get("SwapFree", 0)


def estimate(info: GgufInfo, arm: ArmConfig, n_ctx: int, n_ubatch: int = N_UBATCH) -> KvEstimate:
    return KvEstimate(
        arm=arm.label,
        n_ctx=n_ctx,
        weights_bytes=info.weights_bytes,
        kv_bytes=kv_bytes(info, arm, n_ctx),
        exact_copy_bytes=exact_copy_bytes(info, arm, n_ctx),
        compute_bytes=compute_bytes(info, n_ctx, n_ubatch, arm),
        basis_bytes=basis_bytes(info, arm),
    )


def d2_fixed_bytes(info: GgufInfo, arm: ArmConfig) -> int:
    """What a D2 arm holds whatever the context: the exact fp16 copies of its sinks and full window
    (and the scratch row), and its bases. 0 for upstream arms."""
    if arm.recipe is None:
        return 0
    return exact_copy_bytes(info, arm, arm.recipe.sinks + arm.recipe.window) + basis_bytes(info, arm)


def break_even_tokens(info: GgufInfo, arm: ArmConfig, versus: ArmConfig, limit: int,
                      n_ubatch: int = N_UBATCH) -> int | None:
    """The fewest tokens, on llama.cpp's 256-cell grid, from which ``arm``'s :func:`estimate` is below
    ``versus``'s; None when it is not below at ``limit``.

    A bisection: it takes the difference to shrink as the context grows, as it does for D2 against
    an upstream arm (past the window each cell costs f16 or q8_0 more than D2's compressed cell and
    its share of the compute buffer), and reads ~20 estimates instead of one per 256 tokens (a
    plain d2 estimate reads the model's sidecar).
    """

    def below(cells: int) -> bool:
        n = cells * KV_PAD
        return estimate(info, arm, n, n_ubatch).total_bytes < estimate(info, versus, n, n_ubatch).total_bytes

    cells = range(1, padded_ctx(max(limit, 1)) // KV_PAD + 1)
    if not below(cells[-1]):
        return None
    return cells[bisect.bisect_left(cells, True, key=below)] * KV_PAD


# --------------------------------------------------------------------------- several devices

#: ggml-backend.cpp: the scheduler keeps this many copies of each split's inputs when it
#: pipelines ubatches across devices
SCHED_MAX_COPIES = 4


@dataclasses.dataclass(frozen=True)
class DeviceEstimate:
    """What one device of a layer split holds: its layers' weights, cache, D2 extras and compute."""

    device: int  # index in llama.cpp's device list (local GPUs in order, RPC servers first)
    layers: tuple[int, ...]  # the repeating layers placed on it
    has_output: bool  # the output layer (norm + lm head) is on it
    weights_bytes: int
    kv_bytes: int
    exact_copy_bytes: int
    basis_bytes: int
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.exact_copy_bytes + self.basis_bytes + self.compute_bytes

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MIB


def layer_devices(n_layer: int, shares: Sequence[float], n_gpu_layers: int = -1) -> tuple[int, ...]:
    """The device of each repeating layer and, last, of the output layer (-1: the CPU).

    llama.cpp's rule for split_mode=layer, ``llama_model_base::load_tensors`` in src/llama-model.cpp
    (``get_layer_buft_list``): the shares (``tensor_split``, or each device's free memory when
    none is given) become cumulative split points in float32; offloaded layer ``il`` goes to the
    first device whose split point exceeds ``(il - i_gpu_start) / act_gpu_layers``. The output
    layer counts as layer ``n_layer``; the input embeddings always stay on the CPU.
    """
    n_gpu = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    i_gpu_start = max(n_layer + 1 - n_gpu, 0)
    act = min(n_gpu, n_layer + 1) if shares else 0
    points: list[np.float32] = []
    total = np.float32(0)
    for share in shares:
        total = np.float32(total + np.float32(share))
        points.append(total)
    if shares and total <= 0:
        raise ValueError(f"the device shares {list(shares)} must have a positive sum")
    split = np.array([p / total for p in points], dtype=np.float32) if shares else np.array([], dtype=np.float32)
    placed = []
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            placed.append(-1)
            continue
        frac = np.float32(il - i_gpu_start) / np.float32(act)
        placed.append(min(int(np.searchsorted(split, frac, side="right")), len(shares) - 1))
    return tuple(placed)


def _layer_of(tensor_name: str) -> int | None:
    if tensor_name.startswith("blk."):
        index = tensor_name.split(".")[1]
        return int(index) if index.isdigit() else None
    return None


def split_estimate(info: GgufInfo, arm: ArmConfig, n_ctx: int, shares: Sequence[float],
                   n_ubatch: int = N_UBATCH, n_gpu_layers: int = -1) -> tuple[DeviceEstimate, ...]:
    """Per-device memory of a layer split over ``len(shares)`` devices (see :func:`layer_devices`).

    Each layer's weights, KV cache, and D2 bases and exact copies sit on its layer's device
    (llama-kv-cache.cpp puts a layer's cache on ``model.dev_layer(il)``; our D2 extras follow
    the cache's buffer type). The output norm and head sit on the output layer's device, a tied
    head as a copy of the token embeddings. Compute: with two or more devices and every layer
    offloaded llama.cpp pipelines ubatches: every device's buffer is the single-device one (the
    logits included, on the devices without the head too) plus ``SCHED_MAX_COPIES - 1`` more copies
    of its inputs (the hidden state from the previous device, the mask, positions and row
    indices, D2's slots and exact-row map) and one more hidden state. Checked on two H200s
    (receipt 2026-11-29-split-mistral-shape-2xh200: the Mistral shape at 128K, f16 / q8_0 / d2,
    both devices' compute buffers within 16 MiB of this). Without pipelining (some layers on the
    CPU) the devices without the head are taken to leave the logits out.
    """
    placed = layer_devices(info.n_layer, shares, n_gpu_layers)
    n_dev = len(shares)
    weights = [0] * n_dev
    names = {t.name for t in info.tensors}
    output_dev = placed[-1]
    for t in info.tensors:
        layer = _layer_of(t.name)
        dev = placed[layer] if layer is not None and layer < info.n_layer else (
            output_dev if t.name.startswith("output") else -1)
        if dev >= 0:
            weights[dev] += t.n_bytes
        if t.name == "token_embd.weight" and "output.weight" not in names and output_dev >= 0:
            weights[output_dev] += t.n_bytes  # tied head: llama.cpp duplicates it on the output device
    kv_all, exact_all, basis_all = kv_bytes(info, arm, n_ctx), exact_copy_bytes(info, arm, n_ctx), basis_bytes(info, arm)
    n_kv = padded_ctx(n_ctx)
    pipelined = n_dev > 1 and all(d >= 0 for d in placed)
    # a split's inputs (GGML_SCHED_DEBUG lists them): the hidden state, the mask, positions and the
    # cache's row indices, and for D2 its slot indices and exact-row map
    inputs = (n_ubatch * info.n_embd * 4 + n_kv * n_ubatch * 2 + n_ubatch * (4 + 8 + 8)
              + ((n_ubatch * 8 + _row_map_bytes(arm, n_ctx)) if arm.recipe is not None else 0))
    out = []
    for dev in range(n_dev):
        layers = tuple(il for il in range(info.n_layer) if placed[il] == dev)
        share = len(layers) / info.n_layer if info.n_layer else 0.0
        has_output = output_dev == dev
        compute = compute_bytes(info, n_ctx, n_ubatch, arm, with_output=has_output or pipelined) if (layers or has_output) else 0
        if pipelined and compute:
            compute += (SCHED_MAX_COPIES - 1) * inputs + n_ubatch * info.n_embd * 4
        out.append(DeviceEstimate(dev, layers, has_output, weights[dev], round(kv_all * share),
                                  round(exact_all * share), round(basis_all * share), compute))
    return tuple(out)

"""Memory estimates for an arm at n tokens: weights + KV cache + compute buffers.

KV bytes come from GGUF metadata (n_layer, n_head_kv, key/value length) and the arm's
bytes per element; llama.cpp pads the cache size to 256 cells, and so do we. Compute
buffers are an approximation of llama.cpp's graph allocation for one ubatch. This module
never loads a model and never imports the app.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.arms import ArmConfig
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
    per_token = arm.kv_bytes_per_token(info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v)
    return int(round(per_token * padded_ctx(n_ctx)))


def exact_copy_bytes(info: GgufInfo, arm: ArmConfig, n_ctx: int) -> int:
    if arm.recipe is None:
        return 0
    rows = min(arm.recipe.sinks + arm.recipe.window, padded_ctx(n_ctx)) + 1  # + the scratch row
    return rows * info.n_layer * info.n_head_kv * (info.head_dim_k + info.head_dim_v) * 2


def basis_bytes(info: GgufInfo, arm: ArmConfig) -> int:
    """D2's rotations on the device: K's basis, V's basis and its inverse, f32, per layer and KV head."""
    if arm.recipe is None:
        return 0
    return info.n_layer * info.n_head_kv * (info.head_dim_k**2 + 2 * info.head_dim_v**2) * 4


def _n_vocab(info: GgufInfo) -> int:
    n_vocab = int(info.metadata.get(f"{info.arch}.vocab_size", 0) or 0)
    if not n_vocab:
        tokens = info.metadata.get("tokenizer.ggml.tokens")
        n_vocab = int(tokens.get("array_len", 32000)) if isinstance(tokens, dict) else 32000
    return n_vocab


def compute_bytes(info: GgufInfo, n_ctx: int, n_ubatch: int = N_UBATCH, arm: ArmConfig | None = None) -> int:
    """llama.cpp's GPU compute buffer for one ubatch with flash attention.

    The graph allocator's peak is the larger of two phases: the output/FFN phase (logits,
    FFN activations and two residual rows, f32, plus the f16 mask) and, for quantized caches,
    the attention phase, where the kernels see K and V converted to f16. Fitted to, and equal
    within 0.1 MiB to, the buffers llama.cpp reported for the Mistral-7B shape at 32K/64K/128K
    with n_ubatch 2048 (bench/receipts/2026-11-29-memory-mistral-7b-instruct-v0.3-h200).
    """
    n_kv = padded_ctx(n_ctx)
    ffn = int(info.metadata.get(f"{info.arch}.feed_forward_length", 4 * info.n_embd) or 0)
    mask = n_kv * n_ubatch * 2
    output_phase = n_ubatch * 4 * (_n_vocab(info) + ffn + 2 * info.n_embd) + mask
    if arm is None or arm.name == "f16":
        return output_phase
    if arm.recipe is not None:
        # D2: the decode kernel reads D2 blocks directly; a prompt converts one KV head at a time
        # to f16, and every ubatch adds the exact-row map (one int32 per cell)
        one_head_f16 = n_kv * (info.head_dim_k + info.head_dim_v) * 2
        return max(output_phase, mask + one_head_f16 + n_ubatch * info.n_embd * 4 * 4) + n_kv * 4
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

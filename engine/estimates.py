"""Memory estimates for an arm at n tokens: weights + KV cache + compute buffers.

KV bytes come from GGUF metadata (n_layer, n_head_kv, key/value length) and the arm's
bytes per element; llama.cpp pads the cache size to 256 cells, and so do we. Compute
buffers are an approximation of llama.cpp's graph allocation for one ubatch. This module
never loads a model and never imports the app.
"""

from __future__ import annotations

import dataclasses

from engine.arms import ArmConfig
from engine.gguf import GgufInfo

KV_PAD = 256
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class KvEstimate:
    arm: str
    n_ctx: int
    weights_bytes: int
    kv_bytes: int
    exact_copy_bytes: int  # D2's sink + window copies (0 for upstream arms)
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.exact_copy_bytes + self.compute_bytes

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
    rows = min(arm.recipe.sinks + arm.recipe.window, padded_ctx(n_ctx))
    return rows * info.n_layer * info.n_head_kv * (info.head_dim_k + info.head_dim_v) * 2


def compute_bytes(info: GgufInfo, n_ctx: int, n_ubatch: int = 512) -> int:
    """Approximate graph buffer: logits plus attention scratch for one ubatch."""
    n_vocab = int(info.metadata.get(f"{info.arch}.vocab_size", 0) or 0)
    if not n_vocab:
        tokens = info.metadata.get("tokenizer.ggml.tokens")
        n_vocab = int(tokens.get("array_len", 32000)) if isinstance(tokens, dict) else 32000
    ffn = int(info.metadata.get(f"{info.arch}.feed_forward_length", 4 * info.n_embd) or 0)
    activations = n_ubatch * (4 * info.n_embd + 2 * ffn) * 4
    attention = n_ubatch * padded_ctx(n_ctx) * 4 // 4  # flash attention tiles, masks (f16 mask)
    return n_vocab * n_ubatch * 4 + activations + attention


def estimate(info: GgufInfo, arm: ArmConfig, n_ctx: int, n_ubatch: int = 512) -> KvEstimate:
    return KvEstimate(
        arm=arm.label,
        n_ctx=n_ctx,
        weights_bytes=info.weights_bytes,
        kv_bytes=kv_bytes(info, arm, n_ctx),
        exact_copy_bytes=exact_copy_bytes(info, arm, n_ctx),
        compute_bytes=compute_bytes(info, n_ctx, n_ubatch),
    )

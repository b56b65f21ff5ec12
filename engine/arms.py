"""Arms: the KV-cache configurations of one model that the app and the benchmarks compare.

An arm is ``f16``, ``q8_0``, ``q4_0`` (upstream caches; quantized ones with upstream's
Hadamard rotation) or ``d2`` with a :class:`Recipe` (``d2`` alone is the locked recipe,
``d2:k16v32`` or ``d2:k16v32b3s8w1024`` spell one out, ``d2:k16b3v16b2`` gives K and V their
own tail bits, ``d2:lite`` is the recipe at q4_0's budget). This module only describes arms and
their memory; it never loads a model and never imports the app.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from engine.errors import EngineError

# ggml type ids (ggml.h)
GGML_TYPE_F16 = 1
GGML_TYPE_Q4_0 = 2
GGML_TYPE_Q8_0 = 8
#: D2's block types (patch 0002's ids, which engine/ggml_types.py checks at build time) by (tail bits,
#: protected bits), for 8, 16 and 32 protected of every 64 coefficients
_D2_TYPES = {(3, 16): (43, 44, 45), (2, 16): (46, 47, 48), (3, 8): (49, 50, 51)}
#: a cache type's name, as ggml_type_name() gives it
TYPE_NAMES = {GGML_TYPE_F16: "f16", GGML_TYPE_Q4_0: "q4_0", GGML_TYPE_Q8_0: "q8_0",
              43: "d2_p8", 44: "d2_p16", 45: "d2_p32", 46: "d2_p8b2", 47: "d2_p16b2", 48: "d2_p32b2",
              49: "d2_p8i8", 50: "d2_p16i8", 51: "d2_p32i8"}

#: bytes per block and block size of the upstream cache types
_UPSTREAM = {"f16": (2, 1, GGML_TYPE_F16), "q8_0": (34, 32, GGML_TYPE_Q8_0), "q4_0": (18, 32, GGML_TYPE_Q4_0)}
UPSTREAM_ARMS = tuple(_UPSTREAM)
LOCKED_K_RANK = 16
ALL_ARMS = ("f16", "q8_0", "q4_0", "d2", "d2:lite")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The D2 recipe, expressed at head_dim 128 and scaled to the model's head_dim.

    ``k_rank``/``v_rank`` are the protected (fp16) directions per head at head_dim 128;
    the rest of each head is stored with ``k_bits``/``v_bits``-bit codes (3: ``d2_p*``,
    2: ``d2_p*b2``) and one fp16 scale per 64-coefficient block. ``sinks`` first tokens and
    the last ``window`` tokens are exact.
    """

    k_rank: int = 16
    v_rank: int = 32
    k_bits: int = 3
    v_bits: int = 3
    sinks: int = 8
    window: int = 1024
    protect_bits: int = 16
    # "kauto": every layer's K takes the smallest block type covering the K sidecar's ranks of its
    # heads (k_rank is then unused); ``k_layers`` holds those protected directions per layer at the
    # model's head_dim once read from the sidecar (:func:`engine.d2.resolve_k_layers`)
    k_auto: bool = False
    k_layers: tuple[int, ...] = ()

    # a "b" after the V rank sets V's tail bits, and K's too unless K has its own (k16v32b2: both 2);
    # "i8" stores the protected coefficients as int8 (d2_p*i8) instead of fp16
    _PATTERN = re.compile(r"^k(\d+|auto)(?:b(\d))?v(\d+)(?:b(\d))?(i8)?(?:s(\d+))?(?:w(\d+))?$")

    @classmethod
    def parse(cls, text: str) -> Recipe:
        match = cls._PATTERN.match(text.strip().lower())
        if not match:
            raise EngineError(
                f"'{text}' is not a D2 recipe; write it like k16v32 (ranks at head_dim 128; kauto: K per layer "
                "from the K sidecar's ranks), "
                "optionally followed by b3 (tail bits; k16b3v16b2 gives K and V their own), i8 (int8 "
                "protected coefficients), s8 (sinks), "
                "w1024 (window); or use the arm d2:lite."
            )
        k, kb, v, vb, i8, s, w = match.groups()
        auto = k == "auto"
        recipe = cls(LOCKED_K_RANK if auto else int(k), int(v), int(kb or vb or 3), int(vb or 3),
                     int(s if s is not None else 8), int(w if w is not None else 1024), 8 if i8 else 16, k_auto=auto)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        for name, rank in (("K rank", self.k_rank), ("V rank", self.v_rank)):
            if not 8 <= rank <= 128 or rank % 8:
                raise EngineError(f"{name} {rank} must be a multiple of 8 between 8 and 128.")
        for name, bits in (("K", self.k_bits), ("V", self.v_bits)):
            if bits not in (2, 3):
                raise EngineError(f"{name} tail bits {bits} are not supported; use 2 or 3.")
        if self.protect_bits not in (8, 16):
            raise EngineError(f"protected coefficients of {self.protect_bits} bits are not supported; use 16 or 8 (i8).")
        if self.protect_bits == 8 and (self.k_bits, self.v_bits) != (3, 3):
            raise EngineError("int8 protected coefficients (i8) come with 3-bit tails only; drop the b2.")

    @property
    def label(self) -> str:
        k = "auto" if self.k_auto else self.k_rank
        if self.k_bits == self.v_bits:
            base = f"k{k}v{self.v_rank}" + (f"b{self.v_bits}" if self.v_bits != 3 else "")
        else:
            base = f"k{k}b{self.k_bits}v{self.v_rank}b{self.v_bits}"
        if self.protect_bits == 8:
            base += "i8"
        if (self.sinks, self.window) != (8, 1024):
            base += f"s{self.sinks}w{self.window}"
        return base

    def protected(self, head_dim: int, which: str) -> int:
        """Protected directions per head at this head_dim (at least 8 per 64-block share)."""
        if which == "k" and self.k_auto:
            raise EngineError("kauto has no single K rank: each layer's comes from the K sidecar (k_layers).")
        rank = self.k_rank if which == "k" else self.v_rank
        blocks = max(head_dim // 64, 1)
        per_block = max(8, (rank * head_dim // 128) // blocks // 8 * 8)
        return min(per_block * blocks, head_dim)

    def head_bytes(self, head_dim: int, which: str) -> float:
        """Compressed bytes per token per KV head: fp16 protected + packed tail + fp16 scales.

        For kauto's K, the mean over layers of each layer's block type (exact times the layer count).
        """
        if which == "k" and self.k_auto:
            if not self.k_layers:
                raise EngineError("kauto's memory depends on the K sidecar's ranks: resolve the recipe with "
                                  "engine.d2.resolve_k_layers (or pick the model's sidecars) first.")
            return sum(self.block_bytes(head_dim, r, "k") for r in self.k_layers) / len(self.k_layers)
        return self.block_bytes(head_dim, self.protected(head_dim, which), which)

    def block_bytes(self, head_dim: int, protect: int, which: str) -> float:
        """Bytes per token of one KV head stored with ``protect`` protected directions."""
        if protect >= head_dim:
            return head_dim * 2  # the whole head in f16: an f16 tensor, no scales
        blocks = max(head_dim // 64, 1)
        bits = self.k_bits if which == "k" else self.v_bits
        # int8 protected coefficients carry a second fp16 scale per block
        scales = 2 * blocks * (2 if self.protect_bits == 8 else 1)
        return protect * self.protect_bits / 8 + (head_dim - protect) * bits / 8 + scales

    def k_layer_types(self, head_dim: int) -> tuple[int, ...]:
        """Each layer's K cache type of a resolved kauto recipe (empty for one K type in every layer)."""
        return tuple(d2_cache_type(p, head_dim, self.k_bits, self.protect_bits) for p in self.k_layers)

    def with_k_ranks(self, ranks: Sequence[Sequence[int]], head_dim: int) -> Recipe:
        """This kauto recipe with each layer's K protection read from the K sidecar's ranks [layer][head]."""
        return dataclasses.replace(self, k_layers=tuple(kauto_protect(max(layer), head_dim) for layer in ranks))


def kauto_protect(rank: int, head_dim: int) -> int:
    """Protected K directions of a kauto layer whose largest head rank is ``rank``.

    One K tensor per layer in llama.cpp means one block type per layer, so every head of a layer
    is stored with the layer's largest rank, rounded up to a block type's share (8, 16 or 32 per
    64 coefficients), or the whole head in f16 above that. Mirrors
    ``llama_fraqtl_k_protect_layers`` (llama-fraqtl-kv.cpp).
    """
    blocks = max(head_dim // 64, 1)
    for per_block in (8, 16, 32):
        if per_block * blocks >= rank:
            return per_block * blocks
    return head_dim


def d2_cache_type(protect: int, head_dim: int, tail_bits: int, protect_bits: int) -> int:
    """The ggml type of a D2 cache with ``protect`` protected directions per head (the whole head: f16).

    Mirrors ``fraqtl_type_for`` (llama-fraqtl-kv.cpp) for the recipes :meth:`Recipe.validate` accepts.
    """
    if protect >= head_dim:
        return GGML_TYPE_F16
    share = protect // max(head_dim // 64, 1)
    return _D2_TYPES[(tail_bits, protect_bits)][(8, 16, 32).index(share)]


LOCKED = Recipe(k_rank=LOCKED_K_RANK)
#: D2-lite, at most q4_0's 4.5 bits per element: SmolLM2's recommended ranks (K 32, V 16 at
#: head_dim 128) with int8 protected coefficients and 3-bit tails, K d2_p16i8 + V d2_p8i8 blocks:
#: (38 + 33) B per 128 elements = 4.44 bits (scales included)
LITE = Recipe(k_rank=32, v_rank=16, protect_bits=8)


@dataclasses.dataclass(frozen=True)
class ArmConfig:
    """One KV-cache configuration: its name, cache types and (for d2) the recipe."""

    name: str
    recipe: Recipe | None = None
    # plain "d2": the recipe the model's sidecar manifest recommends at the locked recipe's
    # memory, else the locked recipe itself
    model_default: bool = False
    # "<arm>@cpu": every layer and the cache on the CPU, the reference the GPU path must match
    on_cpu: bool = False
    # "d2#<name>": the sidecars of the calibration folder <name> (default: the first found), so
    # two calibrations of one model can be compared side by side
    calibration: str | None = None
    # "d2:lite": the LITE recipe under its own name
    lite: bool = False

    @classmethod
    def parse(cls, text: str) -> ArmConfig:
        text = text.strip().lower()
        if text.endswith("@cpu"):
            return dataclasses.replace(cls.parse(text[: -len("@cpu")]), on_cpu=True)
        if "#" in text:
            base, _, name = text.partition("#")
            arm = cls.parse(base)
            if arm.recipe is None or not name or "/" in name or name.startswith("."):
                raise EngineError(
                    f"'{text}': a calibration is named after a D2 arm, like d2#my-calibration (a folder name "
                    "under the sidecar folders)."
                )
            return dataclasses.replace(arm, calibration=name)
        if text in _UPSTREAM:
            return cls(text)
        if text == "d2":
            return cls("d2", LOCKED, model_default=True)
        if text == "d2:lite":
            return cls("d2", LITE, lite=True)
        if text.startswith("d2:"):
            return cls("d2", Recipe.parse(text[3:]))
        raise EngineError(f"'{text}' is not an arm; choose one of f16, q8_0, q4_0, d2, d2:lite or d2:<recipe>.")

    @property
    def label(self) -> str:
        if self.recipe is None:
            base = self.name
        elif self.model_default:
            base = "d2"
        else:
            base = "d2:lite" if self.lite else f"d2:{self.recipe.label}"
        return base + (f"#{self.calibration}" if self.calibration else "") + ("@cpu" if self.on_cpu else "")

    @property
    def is_d2(self) -> bool:
        return self.recipe is not None

    @property
    def ggml_type(self) -> int:
        """Cache tensor type for upstream arms (d2 types are chosen by the engine)."""
        if self.name in _UPSTREAM:
            return _UPSTREAM[self.name][2]
        return GGML_TYPE_F16

    def kv_bytes_per_token(self, n_layer: int, n_head_kv: int, head_dim_k: int, head_dim_v: int) -> float:
        """Bytes of K plus V per token over all layers (excluding D2's fixed exact copies)."""
        if self.recipe is None:
            size, block, _ = _UPSTREAM[self.name]
            per_head = (head_dim_k + head_dim_v) * size / block
        else:
            per_head = self.recipe.head_bytes(head_dim_k, "k") + self.recipe.head_bytes(head_dim_v, "v")
        return n_layer * n_head_kv * per_head

    def bits_per_element(self, head_dim_k: int, head_dim_v: int) -> float:
        per_head = self.kv_bytes_per_token(1, 1, head_dim_k, head_dim_v)
        return per_head * 8 / (head_dim_k + head_dim_v)

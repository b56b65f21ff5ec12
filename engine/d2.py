"""The D2 arm's link to libllama: settings, the C parameter struct, memory figures.

:class:`D2Settings` says which bases (calibrated sidecars, identity, or seeded random for
control experiments) and which recipe a D2 context uses; :func:`settings_for` picks the
calibrated sidecars of a model by its sha256. The C side (``llama-fraqtl.h``) validates
everything again and reports errors through ``llama_fraqtl_last_error``. This module never
imports the app.
"""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path
from typing import Any

from engine.arms import ArmConfig, Recipe
from engine.errors import ArmUnavailableError
from engine.gguf import GgufInfo

BASIS_SIDECAR = 0
BASIS_RANDOM = 1


class LlamaFraqtlParams(ctypes.Structure):
    """``struct llama_fraqtl_params`` (llama-fraqtl.h)."""

    _fields_ = [
        ("k_sidecar", ctypes.c_char_p),
        ("v_sidecar", ctypes.c_char_p),
        ("k_protect", ctypes.c_int32),
        ("v_protect", ctypes.c_int32),
        ("k_tail_bits", ctypes.c_int32),
        ("v_tail_bits", ctypes.c_int32),
        ("n_sink", ctypes.c_int32),
        ("n_window", ctypes.c_int32),
        ("basis", ctypes.c_int32),
        ("seed", ctypes.c_uint32),
        ("protect_bits", ctypes.c_int32),
    ]


class LlamaFraqtlMemory(ctypes.Structure):
    """``struct llama_fraqtl_memory`` (llama-fraqtl.h)."""

    _fields_ = [
        ("k_bytes", ctypes.c_uint64),
        ("v_bytes", ctypes.c_uint64),
        ("exact_bytes", ctypes.c_uint64),
        ("basis_bytes", ctypes.c_uint64),
        ("type_k", ctypes.c_int32),
        ("type_v", ctypes.c_int32),
        ("d2", ctypes.c_int32),
    ]


@dataclasses.dataclass(frozen=True)
class KvMemory:
    """What llama.cpp allocated for a context's KV cache, in bytes."""

    k_bytes: int
    v_bytes: int
    exact_bytes: int
    basis_bytes: int
    type_k: int
    type_v: int
    d2: bool

    @property
    def kv_bytes(self) -> int:
        return self.k_bytes + self.v_bytes


@dataclasses.dataclass(frozen=True)
class D2Settings:
    """Bases and recipe of a D2 context.

    ``basis`` is "sidecar" (the given files; a missing one means identity), "identity" or
    "random" (seeded random orthonormal). ``k_protect``/``v_protect`` override the recipe's
    protected directions per head at the model's head size (``head_dim`` = all fp16).
    """

    recipe: Recipe = Recipe()
    k_sidecar: Path | None = None
    v_sidecar: Path | None = None
    basis: str = "sidecar"
    seed: int = 0
    k_protect: int | None = None
    v_protect: int | None = None

    def check_files(self, info: GgufInfo) -> None:
        """Read and validate the sidecar files (size, dims, finite, ranks, orthonormal) before llama.cpp does.

        Raises SidecarFormatError (SidecarNotOrthonormalError names the layer and head) or
        SidecarMismatchError; a control basis has no files to check.
        """
        if self.basis != "sidecar":
            return
        from engine.sidecar import read_sidecar

        for path, kind in ((self.k_sidecar, "k"), (self.v_sidecar, "v")):
            if path:
                read_sidecar(path, kind, info)  # type: ignore[arg-type]

    def c_params(self, info: GgufInfo) -> LlamaFraqtlParams:
        if self.basis not in ("sidecar", "identity", "random"):
            raise ArmUnavailableError("d2", f"unknown basis '{self.basis}' (sidecar, identity or random)")
        sidecar = self.basis == "sidecar"
        return LlamaFraqtlParams(
            k_sidecar=str(self.k_sidecar).encode() if sidecar and self.k_sidecar else None,
            v_sidecar=str(self.v_sidecar).encode() if sidecar and self.v_sidecar else None,
            k_protect=self.k_protect or self.recipe.protected(info.head_dim_k, "k"),
            v_protect=self.v_protect or self.recipe.protected(info.head_dim_v, "v"),
            k_tail_bits=self.recipe.k_bits,
            v_tail_bits=self.recipe.v_bits,
            protect_bits=self.recipe.protect_bits,
            n_sink=self.recipe.sinks,
            n_window=self.recipe.window,
            basis=BASIS_RANDOM if self.basis == "random" else BASIS_SIDECAR,
            seed=self.seed,
        )


def settings_for(info: GgufInfo, arm: ArmConfig, model_sha256: str | None = None) -> D2Settings:
    """The calibrated sidecars for this model (found by sha256), with the arm's recipe."""
    assert arm.recipe is not None
    if info.sliding_window:
        raise ArmUnavailableError(arm.label, f"{info.name} has sliding-window layers, which D2 does not support yet.")
    if info.head_dim_k % 64 or info.head_dim_v % 64:
        raise ArmUnavailableError(arm.label, f"head size {info.head_dim_k} is not a multiple of 64.")
    try:
        from engine import sidecar
    except ImportError as exc:  # pragma: no cover - shipped with the engine
        raise ArmUnavailableError(arm.label, f"the sidecar reader is missing ({exc}).") from exc
    from engine.models import model_sha256 as sha_of

    sha = model_sha256 or sha_of(info.path)
    found = sidecar.find_sidecars(sha, name=arm.calibration)
    if not found and arm.calibration:
        known = ", ".join(sidecar.calibration_names(sha)) or "none"
        raise ArmUnavailableError(
            arm.label,
            f"no calibration named '{arm.calibration}' for {info.name} in {', '.join(map(str, sidecar.sidecar_dirs()))} "
            f"(found: {known}).",
        )
    if not found:
        raise ArmUnavailableError(
            arm.label,
            f"no calibrated sidecar for {info.name}; run `fraqtl-calibrate {info.path}` or choose sidecar files in Settings.",
        )
    k_path, v_path, manifest = found
    return D2Settings(recipe=recipe_for(info, arm, manifest.data), k_sidecar=Path(k_path), v_sidecar=Path(v_path))


def recipe_for(info: GgufInfo, arm: ArmConfig, manifest: dict[str, Any]) -> Recipe:
    """The arm's recipe; for plain "d2", the manifest's recommended one when it costs the same."""
    assert arm.recipe is not None
    text = (manifest.get("recipe") or {}).get("recommended") if arm.model_default else None
    if not text:
        return arm.recipe
    try:
        rec = Recipe.parse(str(text))
    except Exception:
        return arm.recipe  # a manifest we cannot read keeps the locked recipe
    rec = dataclasses.replace(rec, sinks=arm.recipe.sinks, window=arm.recipe.window, k_bits=arm.recipe.k_bits,
                              v_bits=arm.recipe.v_bits)
    same_memory = arm.kv_bytes_per_token(1, 1, info.head_dim_k, info.head_dim_v) == ArmConfig(
        "d2", rec).kv_bytes_per_token(1, 1, info.head_dim_k, info.head_dim_v)
    return rec if same_memory else arm.recipe


def bind(llama_cpp: Any) -> Any:
    """Declare the fraqtl C functions on llama_cpp's library handle (idempotent)."""
    lib = llama_cpp.llama_cpp._lib
    if not getattr(lib, "_fraqtl_bound", False):
        lib.llama_fraqtl_last_error.argtypes = []
        lib.llama_fraqtl_last_error.restype = ctypes.c_char_p
        lib.llama_fraqtl_get_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(LlamaFraqtlMemory)]
        lib.llama_fraqtl_get_memory.restype = ctypes.c_bool
        lib._fraqtl_bound = True
    return lib


def last_error(llama_cpp: Any) -> str:
    msg = bind(llama_cpp).llama_fraqtl_last_error()
    return msg.decode(errors="replace") if msg else ""


def kv_memory(llama_cpp: Any, ctx: Any) -> KvMemory | None:
    out = LlamaFraqtlMemory()
    if not bind(llama_cpp).llama_fraqtl_get_memory(ctx, ctypes.byref(out)):
        return None
    return KvMemory(out.k_bytes, out.v_bytes, out.exact_bytes, out.basis_bytes, out.type_k, out.type_v, bool(out.d2))

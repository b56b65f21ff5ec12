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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.arms import TYPE_NAMES, ArmConfig, Recipe
from engine.errors import ArmUnavailableError
from engine.gguf import GgufInfo

BASIS_SIDECAR = 0
BASIS_RANDOM = 1
#: k_protect for kauto: libllama gives each layer's K the type its sidecar ranks need
PROTECT_AUTO = -1


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
    """What llama.cpp allocated for a context's KV cache, in bytes, and the cache's ggml types."""

    k_bytes: int
    v_bytes: int
    exact_bytes: int
    basis_bytes: int
    type_k: int | None  # None when the layers' K types differ (kauto): k_types has each layer's
    type_v: int
    d2: bool
    k_types: tuple[int, ...] = ()  # each layer's K type for a kauto cache; empty when every layer has type_k

    @property
    def kv_bytes(self) -> int:
        return self.k_bytes + self.v_bytes

    @property
    def k_type_name(self) -> str:
        """"d2_p8", or for a kauto cache whose layers differ "per layer: 12 × d2_p8, 18 × d2_p16"."""
        if self.type_k is not None:
            return type_name(self.type_k)
        mix = Counter(self.k_types)
        return "per layer: " + ", ".join(f"{mix[t]} × {type_name(t)}" for t in sorted(mix))

    def describe(self) -> str:
        return f"K {self.k_type_name}; V {type_name(self.type_v)}"


def type_name(ggml_type: int) -> str:
    return TYPE_NAMES.get(ggml_type, f"ggml type {ggml_type}")


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
        if self.recipe.k_auto and not self.k_protect and not (sidecar and self.k_sidecar):
            raise ArmUnavailableError(f"d2:{self.recipe.label}", "kauto takes each layer's K type from the K sidecar's "
                                      "ranks; choose a K sidecar file (or a fixed K rank like k16).")
        k_protect = self.k_protect or (PROTECT_AUTO if self.recipe.k_auto else self.recipe.protected(info.head_dim_k, "k"))
        return LlamaFraqtlParams(
            k_sidecar=str(self.k_sidecar).encode() if sidecar and self.k_sidecar else None,
            v_sidecar=str(self.v_sidecar).encode() if sidecar and self.v_sidecar else None,
            k_protect=k_protect,
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
    sha = model_sha256 or _sha_of(info.path)
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
    return D2Settings(recipe=recipe_for(info, arm, manifest.data, Path(k_path)), k_sidecar=Path(k_path),
                      v_sidecar=Path(v_path))


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha_of(path: Path) -> str:
    """The model's sha256, hashed once per (path, size, mtime): estimates ask for it often."""
    from engine.models import model_sha256

    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = model_sha256(Path(path))
    return _SHA_CACHE[key]


def _known_sha(path: Path) -> str | None:
    """The model's sha256 when it costs nothing: a packaged model's, or one hashed before."""
    from engine.models import REGISTRY, packaged_path

    try:
        for packaged in REGISTRY.values():
            if Path(path).resolve() == packaged_path(packaged).resolve():
                return packaged.sha256
        st = Path(path).stat()
    except OSError:
        return None
    return _SHA_CACHE.get((str(path), st.st_size, st.st_mtime_ns))


def recipe_for(info: GgufInfo, arm: ArmConfig, manifest: dict[str, Any], k_sidecar: Path | None = None) -> Recipe:
    """The arm's recipe; for plain "d2", the manifest's recommended one when it costs no more.

    A kauto recipe comes back with each layer's K protection read from ``k_sidecar``'s ranks.
    """
    assert arm.recipe is not None
    text = (manifest.get("recipe") or {}).get("recommended") if arm.model_default else None
    if not text:
        return resolve_k_layers(arm.recipe, info, k_sidecar)
    try:
        rec = Recipe.parse(str(text))
        rec = dataclasses.replace(rec, sinks=arm.recipe.sinks, window=arm.recipe.window)
        if not rec.k_auto:
            rec = dataclasses.replace(rec, k_bits=arm.recipe.k_bits, v_bits=arm.recipe.v_bits)
        rec = resolve_k_layers(rec, info, k_sidecar)
    except Exception:
        return arm.recipe  # a manifest (or sidecar) we cannot read keeps the locked recipe
    def size(r: Recipe) -> float:
        return ArmConfig("d2", r).kv_bytes_per_token(info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v)
    # a fixed recipe must cost exactly the locked recipe's bytes; kauto's depend on the ranks: no more
    fits = size(rec) <= size(arm.recipe) if rec.k_auto else size(rec) == size(arm.recipe)
    return rec if fits else arm.recipe


def resolve_k_layers(recipe: Recipe, info: GgufInfo, k_sidecar: Path | None) -> Recipe:
    """A kauto recipe with each layer's K protection from the K sidecar's ranks; others unchanged."""
    if not recipe.k_auto or recipe.k_layers:
        return recipe
    if k_sidecar is None:
        raise ArmUnavailableError(f"d2:{recipe.label}", "kauto takes each layer's K type from the K sidecar's ranks, "
                                  f"and {info.name} has no K sidecar; run `fraqtl-calibrate {info.path}`.")
    from engine.sidecar import read_sidecar

    ranks = read_sidecar(k_sidecar, "k", info).ranks
    assert ranks is not None
    return recipe.with_k_ranks(ranks.tolist(), info.head_dim_k)


def memory_arm(info: GgufInfo, arm: ArmConfig, model_sha256: str | None = None) -> ArmConfig:
    """The arm with the recipe its context will allocate: kauto's K per layer, plain d2's recommendation.

    Upstream arms and fixed recipes come back unchanged without touching a file; a kauto arm or a
    plain d2 arm reads the model's sidecars (found by sha256). Plain d2 without sidecars keeps the
    locked recipe (its context will not open, but its estimate stays what the recipe costs), and so
    does plain d2 on a model whose sha256 this process has not computed yet: hashing a large GGUF
    takes seconds (the VRAM panel estimates on the UI thread), and a recommendation is never larger
    than the locked recipe, so that estimate is an upper bound until the engine has hashed it.
    """
    if arm.recipe is None or (not arm.recipe.k_auto and not arm.model_default) or arm.recipe.k_layers:
        return arm
    if not arm.recipe.k_auto and model_sha256 is None:
        model_sha256 = _known_sha(info.path)
        if model_sha256 is None:
            return arm
    try:
        settings = settings_for(info, arm, model_sha256)
    except (ArmUnavailableError, OSError):
        if arm.recipe.k_auto:
            raise
        return arm
    return dataclasses.replace(arm, recipe=settings.recipe)


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


def kv_memory(llama_cpp: Any, ctx: Any, k_types: Sequence[int] = ()) -> KvMemory | None:
    """The context's KV memory; ``k_types``: each layer's K type of a kauto cache (``Recipe.k_layer_types``).

    llama.cpp reports one K type, its last layer's: for a cache whose layers differ, the report
    lists every layer's instead (``type_k`` None), so that it never names one layer's type for all.
    """
    out = LlamaFraqtlMemory()
    if not bind(llama_cpp).llama_fraqtl_get_memory(ctx, ctypes.byref(out)):
        return None
    layers = tuple(k_types)
    mixed = len(set(layers)) > 1
    type_k = None if mixed else layers[0] if layers else out.type_k
    return KvMemory(out.k_bytes, out.v_bytes, out.exact_bytes, out.basis_bytes, type_k, out.type_v, bool(out.d2),
                    layers if mixed else ())

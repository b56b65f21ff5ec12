"""The models the app offers: the bundled default, GGUFs in the data dir, and those opened lately.

A :class:`ModelCard` says what a GGUF is from its header alone (no weights are loaded);
:func:`sidecar_status` says whether D2 sidecars exist for it, which hashes the whole file, so
callers run it in a worker thread. The recent list is a small JSON file in the config dir; a
file that cannot be read is an empty list, never an error. This module never touches the UI.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from engine import locations
from engine.calibrate.run import model_stem
from engine.errors import EngineError, ModelNotFoundError
from engine.files import write_atomic
from engine.gguf import GgufInfo, read_gguf
from engine.models import DEFAULT_MODEL, REGISTRY, model_sha256, packaged_path
from engine.sidecar import find_sidecars, sidecar_origin

MAX_RECENT = 10
TEMPLATE_PREVIEW = 160  # characters of a chat template shown in the card


@functools.lru_cache(maxsize=8)
def _read_info(path: Path, size: int, mtime_ns: int) -> GgufInfo:
    return read_gguf(path)


def model_info(path: Path) -> GgufInfo:
    """The model's GGUF header, parsed once per file version: parsing takes 0.1–0.5 s, too long for
    the event loop, so the ingest worker calls this first and the UI thread finds it cached."""
    try:
        stat = Path(path).expanduser().stat()
    except OSError:
        raise ModelNotFoundError(str(path)) from None
    return _read_info(Path(path).expanduser(), stat.st_size, stat.st_mtime_ns)


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a GGUF is, read from its header."""

    path: Path
    name: str
    arch: str
    n_params: int
    n_ctx_train: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    chat_template: str | None
    size_bytes: int
    bundled: bool  # the default model the app ships with

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        """Raises :class:`~engine.errors.ModelNotFoundError` or ``ModelFormatError`` with a sentence."""
        info = model_info(path)
        return cls(info.path, info.name, info.arch, info.n_params, info.n_ctx_train, info.n_layer, info.n_head,
                   info.n_head_kv, info.head_dim_k, info.chat_template, info.file_size, is_bundled(info.path))

    def facts(self) -> list[tuple[str, str]]:
        """(label, value) rows for a person: what the model is and what it can do here."""
        template = "none: a base model (completion prompts only)"
        if self.chat_template:
            flat = " ".join(self.chat_template.split())
            template = flat if len(flat) <= TEMPLATE_PREVIEW else flat[: TEMPLATE_PREVIEW - 1] + "…"
        return [
            ("name", self.name + (" (bundled default)" if self.bundled else "")),
            ("file", str(self.path)),
            ("architecture", self.arch),
            ("parameters", human_count(self.n_params)),
            ("trained context", f"{self.n_ctx_train:,} tokens" if self.n_ctx_train else "not stated"),
            ("layers · heads · KV heads", f"{self.n_layer} · {self.n_head} · {self.n_head_kv}"),
            ("head size", str(self.head_dim)),
            ("size on disk", human_bytes(self.size_bytes)),
            ("chat template", template),
        ]


@dataclasses.dataclass(frozen=True)
class SidecarStatus:
    found: bool
    detail: str  # one sentence: where they are, or what to do


def sidecar_status(path: Path) -> SidecarStatus:
    """Whether D2 sidecars exist for the model at ``path`` (hashes the file: seconds for a large one)."""
    try:
        found = find_sidecars(model_sha256(path))
    except (EngineError, OSError) as exc:
        return SidecarStatus(False, f"The sidecars for it cannot be used: {exc}")
    if found is None:
        return SidecarStatus(False, "No D2 sidecars yet: calibrate it to use the d2 arm (f16, q8_0 and q4_0 "
                                    "work without).")
    k_path, _, manifest = found
    tokens = manifest.data.get("calibration", {}).get("tokens")
    source = f" from {tokens:,} calibration tokens" if isinstance(tokens, int) else ""
    return SidecarStatus(True, f"D2 sidecars found{source}, in the {sidecar_origin(k_path)}.")


def calibration_dir(path: Path) -> Path:
    """Where the app's calibration of a model writes (the same folder ``fraqtl-calibrate`` uses)."""
    return locations.data_dir() / "sidecars" / model_stem(path)


def is_bundled(path: Path) -> bool:
    try:
        return path.resolve() == packaged_path(REGISTRY[DEFAULT_MODEL]).resolve()
    except OSError:
        return False


def listed_models(recent: list[str], in_use: Path | None = None) -> list[Path]:
    """The model in use, the bundled one, GGUFs in the data dir, then recent ones: each once, if it exists."""
    found: list[Path] = [in_use] if in_use is not None else []
    found.append(packaged_path(REGISTRY[DEFAULT_MODEL]))
    found += sorted(locations.models_dir().glob("*.gguf"))
    found += [Path(p) for p in recent]
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in found:
        key = path.expanduser().resolve()
        if key not in seen and key.is_file():
            seen.add(key)
            unique.append(path.expanduser())
    return unique


class RecentModels:
    """Model files the person opened, newest first, kept in ``recent-models.json``."""

    @staticmethod
    def path() -> Path:
        return locations.config_dir() / "recent-models.json"

    @classmethod
    def load(cls) -> list[str]:
        try:
            record = json.loads(cls.path().read_text("utf-8"))
        except (OSError, ValueError, RecursionError):
            return []
        return [p for p in record if isinstance(p, str)][:MAX_RECENT] if isinstance(record, list) else []

    @classmethod
    def add(cls, path: Path) -> list[str]:
        """Put ``path`` first; a failed write keeps the list for this run only (returned either way)."""
        entry = str(path.expanduser().resolve())
        recent = [entry, *(p for p in cls.load() if p != entry)][:MAX_RECENT]
        try:
            write_atomic(cls.path(), json.dumps(recent, indent=2) + "\n")
        except OSError:
            pass  # the list is a convenience: a read-only config dir must not stop a model from opening
        return recent


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit} ({n:,})"
    return f"{n:,}"


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"

"""The app's settings: one typed object, saved as JSON in the config dir, overridable by env.

Each field ``name`` can be overridden with ``FRAQTL_<NAME>`` (e.g. ``FRAQTL_ARM=q8_0``,
``FRAQTL_N_CTX=16384``, ``FRAQTL_YARN=1``). Overrides apply to this run only and are never
written back. This module never touches the model or the UI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

from engine.files import write_atomic
from engine import locations
from engine.arms import ArmConfig
from app.paths import path_kind, user_path
from engine.errors import EngineError, SamplingError
from engine.rpc import parse_endpoints
from engine.sampling import Sampling

MAX_CONTEXT = 131072  # 128K: the most the app asks of any model, YaRN included
YARN_FACTOR = 4  # YaRN stretches a model's trained context at most this many times


# when a changed setting takes effect in a running app, and its name in the notice that says so:
# "engine" (the engine restarts with it), "question" (the next question), "comparison" (the next
# arm comparison), "document" (the next document read), "now" (the chat reads it as it goes)
TAKES_EFFECT: dict[str, tuple[str, str]] = {
    "model": ("model", "engine"),
    "arm": ("cache arm", "engine"),
    "n_ctx": ("context size", "engine"),
    "yarn": ("YaRN", "engine"),
    "sidecar": ("sidecar folder", "engine"),
    "rpc_servers": ("RPC servers", "engine"),
    "n_threads": ("thread count", "engine"),
    "max_tokens": ("answer limit", "question"),
    "temperature": ("temperature", "question"),
    "top_p": ("top-p", "question"),
    "repeat_penalty": ("repetition penalty", "question"),
    "compare_q4_0": ("comparing q4_0 too", "comparison"),
    "max_document_mb": ("document size limit", "document"),
    "max_pages": ("page limit", "document"),
    "ingest_timeout_s": ("reading time limit", "document"),
    "answer_timeout_s": ("answer time-out", "now"),
}


class SettingsError(ValueError):
    """A setting has a value the app cannot use; the message names it and says what fits."""


@dataclasses.dataclass
class Settings:
    model: str | None = None  # a GGUF path; None is the default model (SmolLM2-135M-Instruct)
    arm: str = "f16"  # f16, q8_0, q4_0, d2 or d2:<recipe>
    n_ctx: int = 8192
    yarn: bool = False  # allow contexts beyond the model's trained length (YaRN)
    sidecar: str | None = None  # D2 sidecar folder; None picks the one shipped for the model
    max_tokens: int = 256
    n_threads: int = 0  # 0: all cores
    compare_q4_0: bool = False  # add q4_0 to the arm comparison
    max_document_mb: int = 64
    max_pages: int = 2000  # documents with more pages are refused before any page is read
    ingest_timeout_s: int = 120  # reading one document stops after this long
    answer_timeout_s: int = 120  # an engine silent this long while answering is given up on (F5 restarts it)
    temperature: float = 0.0  # 0: greedy; the arm comparison is always greedy
    top_p: float = 1.0
    repeat_penalty: float = 1.0  # 1: off; 1.1–1.3 stops a small model repeating itself
    rpc_servers: str = ""  # host:port,... of rpc-servers that take layers (trusted network only); "": none

    def validate(self) -> Settings:
        try:
            ArmConfig.parse(self.arm)
        except EngineError as exc:
            raise SettingsError(str(exc)) from exc
        if not 256 <= self.n_ctx <= MAX_CONTEXT:
            raise SettingsError(f"The context must be between 256 and {MAX_CONTEXT:,} tokens, not {self.n_ctx:,}.")
        if not 1 <= self.max_pages <= 1_000_000:
            raise SettingsError(f"The page limit must be between 1 and 1,000,000, not {self.max_pages:,}.")
        if not 1 <= self.ingest_timeout_s <= 86_400:
            raise SettingsError(
                f"The reading time limit must be between 1 and 86,400 s, not {self.ingest_timeout_s:,}.")
        if not 1 <= self.answer_timeout_s <= 86_400:
            raise SettingsError(f"The answer time-out must be between 1 and 86,400 s, not {self.answer_timeout_s:,}.")
        if not 1 <= self.max_document_mb <= 65_536:
            raise SettingsError(
                f"The document size limit must be between 1 and 65,536 MiB, not {self.max_document_mb:,}.")
        if self.n_threads < 0:
            raise SettingsError(f"The thread count must be 0 (all cores) or more, not {self.n_threads}.")
        if not 1 <= self.max_tokens <= 8192:
            raise SettingsError(f"The answer length must be between 1 and 8,192 tokens, not {self.max_tokens:,}.")
        try:
            parse_endpoints(self.rpc_servers)
        except EngineError as exc:
            raise SettingsError(str(exc)) from exc
        try:
            self.sampling()
        except SamplingError as exc:
            raise SettingsError(str(exc)) from exc
        if self.model and path_kind(user_path(self.model)) != "file":
            raise SettingsError(f"There is no model file at {self.model}; leave it empty for the default model.")
        return self

    # -------------------------------------------------------------- persistence

    @staticmethod
    def path() -> Path:
        return locations.config_dir() / "settings.json"

    @classmethod
    def load(cls, env: typing.Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
        """Saved settings (defaults where absent or unreadable), then ``FRAQTL_*`` overrides."""
        return cls.load_with_notes(env, path)[0]

    @classmethod
    def load_with_notes(cls, env: typing.Mapping[str, str] | None = None,
                        path: Path | None = None) -> tuple[Settings, list[str]]:
        """Like :meth:`load`, with one sentence for each saved value that was not used.

        A file that is not JSON, not an object, or holds a value of the wrong type or out of
        range never stops the app: each bad value falls back to its default, and the file is
        copied to ``settings.json.bak`` before the app may write over it.
        """
        env = os.environ if env is None else env
        path = path or cls.path()
        values, notes = cls._read_file(path)
        settings = cls(**values)  # type: ignore[arg-type]
        if notes:
            notes.append(_keep_backup(path))
        settings.apply_env(env)
        return settings, notes

    @classmethod
    def _read_file(cls, path: Path) -> tuple[dict[str, object], list[str]]:
        try:
            if not path.is_file():
                return {}, []
            record = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            return {}, [f"{path} could not be read ({type(exc).__name__}); the default settings are used."]
        if not isinstance(record, dict):
            return {}, [f"{path} holds a JSON {type(record).__name__}, not an object of settings; the default "
                        "settings are used."]
        hints = typing.get_type_hints(cls)
        defaults = cls()
        values: dict[str, object] = {}
        notes: list[str] = []
        for name, value in record.items():
            if name not in hints:
                continue  # a setting of another version: ignored, and kept in the backup
            if not _has_type(value, hints[name]):
                notes.append(f"The saved {name} {json.dumps(value)[:60]} is not {_type_name(hints[name])}; "
                             f"using {getattr(defaults, name)!r}.")
                continue
            try:
                dataclasses.replace(defaults, **{name: value}).validate()
            except SettingsError as exc:
                notes.append(f"The saved {name} is not usable ({str(exc).rstrip('.')}); using "
                             f"{getattr(defaults, name)!r}.")
                continue
            values[name] = value
        return values, notes

    def apply_env(self, env: typing.Mapping[str, str]) -> None:
        hints = typing.get_type_hints(type(self))
        for name in self._fields():
            raw = env.get(f"FRAQTL_{name.upper()}")
            if raw is not None:
                setattr(self, name, _convert(name, raw, hints[name]))

    def save(self, path: Path | None = None) -> Path:
        """Write the settings; keys this version does not know (another version's) are kept."""
        path = path or self.path()
        try:
            existing = json.loads(path.read_text("utf-8")) if path.is_file() else {}
        except (OSError, ValueError, RecursionError):
            existing = {}
        others = {k: v for k, v in existing.items() if k not in self._fields()} if isinstance(existing, dict) else {}
        write_atomic(path, json.dumps({**others, **dataclasses.asdict(self)}, indent=2) + "\n")
        return path

    @classmethod
    def _fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def changed_from(self, before: Settings) -> list[str]:
        """The fields whose value differs from ``before``'s, in the order the class declares them."""
        return [name for name in self._fields() if getattr(self, name) != getattr(before, name)]

    @property
    def max_document_bytes(self) -> int:
        return self.max_document_mb * 2**20

    def sampling(self) -> Sampling:
        """How the chat picks tokens (raises :class:`~engine.errors.SamplingError` when out of range)."""
        return Sampling(float(self.temperature), float(self.top_p), float(self.repeat_penalty)).validate()


def _has_type(value: object, hint: object) -> bool:
    args = typing.get_args(hint)
    allowed = args if args else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind in (bool, str) and isinstance(value, kind):  # type: ignore[arg-type]
            return True
    return False


def _type_name(hint: object) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "null"}
    args = typing.get_args(hint) or (hint,)
    return " or ".join(names.get(a, str(a)) for a in args)  # type: ignore[call-overload]


def _keep_backup(path: Path) -> str:
    """Copy the user's settings file beside it before the app may write over it."""
    backup = path.with_name(path.name + ".bak")
    try:
        write_atomic(backup, path.read_bytes())
    except OSError as exc:
        return f"{path} could not be backed up ({exc.strerror}); save settings only once you have copied it."
    return f"Your file was kept as {backup}."


def _convert(name: str, raw: str, hint: object) -> object:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if optional and raw.strip() in ("", "none", "None"):
        return None
    if base is bool:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"FRAQTL_{name.upper()}={raw!r} is not a yes/no value; use 1 or 0.")
    if base is int:
        try:
            return int(raw.replace("_", "").replace(",", ""))
        except ValueError:
            raise SettingsError(f"FRAQTL_{name.upper()}={raw!r} is not a whole number.") from None
    if base is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise SettingsError(f"FRAQTL_{name.upper()}={raw!r} is not a number (e.g. 0.7).") from None
    return raw


def max_context(n_ctx_train: int, yarn: bool) -> int:
    """The largest context the app offers for a model: its trained length, ×4 with YaRN, ≤128K."""
    if n_ctx_train <= 0:
        return MAX_CONTEXT
    return min(n_ctx_train * (YARN_FACTOR if yarn else 1), MAX_CONTEXT)

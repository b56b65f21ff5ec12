"""Sessions: a document and its transcript, saved atomically as JSON and reopened later.

A session file written by another version (fields this one does not know) still opens, and
its unknown fields are written back unchanged; a file that cannot be used is a
:class:`SessionFileError` and is never written over.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from pathlib import Path

from engine.files import write_atomic
from engine import locations


MAX_NAME = 120


class SessionNameError(ValueError):
    """A name the session cannot take; the message says what fits."""


class SessionFileError(ValueError):
    """A session file that cannot be used; the message names it and says what is wrong."""

    def __init__(self, path: str, reason: str, advice: str = "it was left as it is") -> None:
        self.path, self.reason = path, reason
        super().__init__(f"The session {path} cannot be opened ({reason}); {advice}.")


def _check(record: dict[str, object], types: dict[str, type | tuple[type, ...]], what: str, path: Path) -> None:
    for name, kind in types.items():
        if name not in record:
            continue
        value = record[name]
        numeric_bool = isinstance(value, bool) and kind is not str  # JSON true is not a number here
        if numeric_bool or not isinstance(value, kind):
            raise SessionFileError(str(path), f"{what}{name} is {type(value).__name__}")


UNFINISHED = ("failed", "interrupted")  # an answer's finish when it never completed: kept, never sent to the model


@dataclasses.dataclass
class Turn:
    role: str  # "user" or "assistant"
    content: str  # for an unfinished answer: the text it had when it was cut
    arm: str = ""
    n_evaluated: int = 0
    finish: str = ""  # "stop", "length", "cancelled" (Esc), or one of UNFINISHED
    note: str = ""  # why an unfinished answer was cut (the engine's error, the app quit)

    @property
    def unfinished(self) -> bool:
        return self.role == "assistant" and self.finish in UNFINISHED

    def describe(self) -> str:
        """What became of an answer, in a few words ("" for one that simply finished)."""
        if self.finish == "cancelled":
            return "stopped"
        if self.finish == "length":
            return "cut at the answer limit"
        if self.finish == "failed":
            return f"failed: {self.note}" if self.note else "failed"
        if self.finish == "interrupted":
            return f"interrupted: {self.note}" if self.note else "interrupted"
        return ""


@dataclasses.dataclass
class Session:
    document_source: str
    document_title: str
    document_sha256: str
    id: str = dataclasses.field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    turns: list[Turn] = dataclasses.field(default_factory=list)
    page_range: str = ""  # e.g. "3-12" when only part of the document was used
    updated: float = dataclasses.field(default_factory=time.time)
    document_sources: list[str] = dataclasses.field(default_factory=list)  # every file, when there are several
    name: str = ""  # the person's name for the session; empty: the document's title
    n_ctx: int = 0  # the larger context chosen when the document did not fit; 0: the settings'
    unknown: dict[str, object] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def sources(self) -> list[str]:
        """The files of the document, one or several (0.1 joined several with newlines)."""
        if self.document_sources:
            return list(self.document_sources)
        return [line for line in self.document_source.split("\n") if line] or [self.document_source]

    @property
    def title(self) -> str:
        return self.name or self.document_title

    @property
    def questions(self) -> int:
        return sum(turn.role == "user" for turn in self.turns)

    @staticmethod
    def folder() -> Path:
        return locations.sessions_dir()

    def rename(self, name: str) -> Path:
        """Give the session a name (empty: the document's title again) and save it."""
        name = " ".join(name.split())
        if len(name) > MAX_NAME:
            raise SessionNameError(f"A session name has at most {MAX_NAME} characters, not {len(name)}; "
                                   "shorten it.")
        self.name = name
        return self.save()

    def delete(self) -> None:
        """Remove the saved file (the caller has asked the person); an exported transcript stays."""
        self.path.unlink(missing_ok=True)

    def to_markdown(self, model: str = "") -> str:
        """The transcript as Markdown: the document, then each question and its answer."""
        lines = [f"# {self.title}", ""]
        lines += [f"- Document: {', '.join(self.sources)}" + (f" (pages {self.page_range})" if self.page_range else "")]
        if model:
            lines.append(f"- Model: {model}")
        lines += [f"- Session: {self.id}, saved {time.strftime('%Y-%m-%d %H:%M', time.localtime(self.updated))}", ""]
        asked = 0
        for turn in self.turns:
            if turn.role == "user":
                asked += 1
                lines += [f"## Question {asked}", ""] + ["> " + line for line in turn.content.splitlines()] + [""]
            else:
                lines += [turn.content, ""]
                notes = [turn.arm] if turn.arm else []
                if turn.describe():
                    notes.append(turn.describe())
                if notes:
                    lines += [f"_{' · '.join(notes)}_", ""]
        return "\n".join(lines).rstrip() + "\n"

    def export(self, model: str = "") -> Path:
        """Write the transcript as Markdown beside the reports; returns where it went."""
        path = locations.data_dir() / "transcripts" / f"{self.id}.md"
        write_atomic(path, self.to_markdown(model))
        return path

    @property
    def path(self) -> Path:
        return self.folder() / f"{self.id}.json"

    def save(self) -> Path:
        self.updated = time.time()
        record = dataclasses.asdict(self)
        record = {**record.pop("unknown"), **record}  # another version's fields go back as they came
        write_atomic(self.path, json.dumps(record, indent=2) + "\n")
        return self.path

    @classmethod
    def load(cls, id_or_path: str | Path) -> Session:
        """A saved session; raises :class:`SessionFileError` (a ValueError) for any unusable file."""
        path = Path(id_or_path)
        if not path.suffix:
            path = cls.folder() / f"{id_or_path}.json"
        try:
            record = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise SessionFileError(str(path), "there is no such file", "F3 lists the saved sessions") from None
        except (OSError, ValueError, RecursionError) as exc:
            raise SessionFileError(str(path), f"{type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise SessionFileError(str(path), f"it holds a JSON {type(record).__name__}, not an object")
        fields = {f.name for f in dataclasses.fields(cls)} - {"unknown"}
        missing = {"document_source", "document_title", "document_sha256"} - record.keys()
        if missing:
            raise SessionFileError(str(path), f"{', '.join(sorted(missing))} missing")
        _check(record, {"document_source": str, "document_title": str, "document_sha256": str, "id": str,
                        "turns": list, "page_range": str, "updated": (int, float), "document_sources": list,
                        "name": str, "n_ctx": int}, "", path)
        turns: list[Turn] = []
        turn_fields = {f.name for f in dataclasses.fields(Turn)}
        for i, raw in enumerate(record.get("turns", [])):
            if not (isinstance(raw, dict) and isinstance(raw.get("role"), str) and isinstance(raw.get("content"), str)):
                raise SessionFileError(str(path), f"turn {i + 1} has no role and content")
            _check(raw, {"arm": str, "n_evaluated": int, "finish": str, "note": str}, f"turn {i + 1}'s ", path)
            turns.append(Turn(**{k: v for k, v in raw.items() if k in turn_fields}))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", str(record.get("id", "x"))):
            raise SessionFileError(str(path), "its id is not a plain file name")  # it names the file saves go to
        if not all(isinstance(s, str) for s in record.get("document_sources", [])):
            raise SessionFileError(str(path), "document_sources holds something other than paths")
        known = {k: v for k, v in record.items() if k in fields and k != "turns"}
        unknown = {k: v for k, v in record.items() if k not in fields}
        return cls(turns=turns, unknown=unknown, **known)

    @classmethod
    def list(cls) -> list[Session]:
        """Saved sessions, newest first (unreadable files skipped)."""
        found: list[Session] = []
        for path in cls.folder().glob("*.json"):
            try:
                found.append(cls.load(path))
            except (ValueError, TypeError, KeyError, OSError):
                continue
        return sorted(found, key=lambda s: s.updated, reverse=True)

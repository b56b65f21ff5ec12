"""Sessions: a document and its transcript, saved atomically as JSON and reopened later."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

from engine.files import write_atomic
from engine import locations


@dataclasses.dataclass
class Turn:
    role: str  # "user" or "assistant"
    content: str
    arm: str = ""
    n_evaluated: int = 0
    finish: str = ""


@dataclasses.dataclass
class Session:
    document_source: str
    document_title: str
    document_sha256: str
    id: str = dataclasses.field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    turns: list[Turn] = dataclasses.field(default_factory=list)
    page_range: str = ""  # e.g. "3-12" when only part of the document was used
    updated: float = dataclasses.field(default_factory=time.time)

    @staticmethod
    def folder() -> Path:
        return locations.sessions_dir()

    @property
    def path(self) -> Path:
        return self.folder() / f"{self.id}.json"

    def save(self) -> Path:
        self.updated = time.time()
        write_atomic(self.path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return self.path

    @classmethod
    def load(cls, id_or_path: str | Path) -> Session:
        path = Path(id_or_path)
        if not path.suffix:
            path = cls.folder() / f"{id_or_path}.json"
        record = json.loads(path.read_text("utf-8"))
        turns = [Turn(**t) for t in record.pop("turns", [])]
        return cls(turns=turns, **record)

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

"""Turn what a terminal pastes when a file is dropped on it into file paths.

Terminals paste dropped files as quoted ('…', "…") or backslash-escaped paths, or as
``file://`` URIs, several separated by spaces or newlines. :func:`route_input` decides whether
text typed or pasted into the question box is a question, files to open, or paths the app
cannot open (a folder, a missing file). This module only parses text and asks the file
system what a path is; it never opens a file, and nothing in it raises on any text.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from urllib.parse import unquote, urlparse

from app.errors import DocumentNotFoundError, FolderDroppedError

PATH_MAX = 4096  # Linux's PATH_MAX: longer text is never one path (stat would raise ENAMETOOLONG)
_PATH_LIKE = re.compile(r"^(?:/|~|\.{1,2}/|file://|[A-Za-z]:[\\/]|\\\\)")


def _one(token: str) -> str:
    if token.startswith("file://"):
        try:
            parsed = urlparse(token)
        except ValueError:  # e.g. an unbalanced "[" in what looks like a host
            return token
        path = unquote(parsed.path)
        if parsed.netloc and parsed.netloc != "localhost":
            path = f"//{parsed.netloc}{path}"
        return path
    return token


def user_path(text: str) -> Path:
    path = Path(text)
    try:
        return path.expanduser()
    except (RuntimeError, ValueError):  # "~nobody/…" (no home directory), "~\x00…" (NUL byte)
        return path


def path_kind(path: Path) -> str:
    """"file", "folder" or "missing"; never raises (too long, NUL bytes, no permission: missing)."""
    try:
        if path.is_file():
            return "file"
        if path.is_dir():
            return "folder"
    except (OSError, ValueError):
        pass
    return "missing"


def parse_dropped_paths(text: str) -> list[Path]:
    """The paths in ``text``; the whole text when it is itself one existing unquoted path."""
    stripped = text.strip().strip("\x00").strip()
    if not stripped:
        return []
    if len(stripped) <= PATH_MAX and "\n" not in stripped and path_kind(user_path(stripped)) != "missing":
        return [user_path(stripped)]  # a path with spaces pasted without quotes
    try:
        tokens = shlex.split(stripped, posix=True)
    except ValueError:  # an unbalanced quote: take the text as one path
        tokens = [stripped.strip("'\"")]
    return [user_path(_one(token)) for token in tokens if token]


def existing_files(text: str) -> list[Path]:
    """Only the parsed paths that are files (so that a pasted question is not taken for a path)."""
    paths = parse_dropped_paths(text)
    return paths if paths and all(path_kind(p) == "file" for p in paths) else []


@dataclasses.dataclass(frozen=True)
class Route:
    """What the question box does with some text: ask it, open files, or say why it cannot."""

    question: str = ""
    files: tuple[Path, ...] = ()
    problem: str = ""  # one sentence, when the text is paths the app cannot open

    @property
    def kind(self) -> str:
        return "open" if self.files else "refuse" if self.problem else "ask" if self.question else "nothing"


def route_input(text: str) -> Route:
    """Files open, a folder or a missing path gets a sentence, anything else is a question."""
    stripped = text.strip()
    if not stripped:
        return Route()
    files = existing_files(stripped)
    if files:
        return Route(files=tuple(files))
    paths = parse_dropped_paths(stripped)
    raw = _raw_tokens(stripped)
    whole = len(paths) == 1 and path_kind(paths[0]) == "folder"
    if not whole and not (raw and all(_PATH_LIKE.match(t) for t in raw)):
        return Route(question=stripped)
    for path in paths:
        kind = path_kind(path)
        if kind == "folder":
            return Route(problem=str(FolderDroppedError(str(path))))
        if kind == "missing":
            return Route(problem=str(DocumentNotFoundError(str(path))))
    return Route(question=stripped)  # pragma: no cover - all files was handled above


def _raw_tokens(text: str) -> list[str]:
    try:
        return [t for t in shlex.split(text, posix=True) if t]
    except ValueError:
        return [text.strip("'\"")]

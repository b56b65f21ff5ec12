"""Turn what a terminal pastes when a file is dropped on it into file paths.

Terminals paste dropped files as quoted ('…', "…") or backslash-escaped paths, or as
``file://`` URIs, several separated by spaces or newlines. This module only parses text;
it never opens a file.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import unquote, urlparse


def _one(token: str) -> str:
    if token.startswith("file://"):
        parsed = urlparse(token)
        path = unquote(parsed.path)
        if parsed.netloc and parsed.netloc != "localhost":
            path = f"//{parsed.netloc}{path}"
        return path
    return token


def parse_dropped_paths(text: str) -> list[Path]:
    """The paths in ``text``; the whole text when it is itself one existing unquoted path."""
    stripped = text.strip().strip("\x00")
    if not stripped:
        return []
    if Path(stripped).expanduser().exists():  # a path with spaces pasted without quotes
        return [Path(stripped).expanduser()]
    try:
        tokens = shlex.split(stripped, posix=True)
    except ValueError:  # an unbalanced quote: take the text as one path
        tokens = [stripped.strip("'\"")]
    return [Path(_one(token)).expanduser() for token in tokens if token]


def existing_files(text: str) -> list[Path]:
    """Only the parsed paths that are files (so that a pasted question is not taken for a path)."""
    paths = parse_dropped_paths(text)
    return paths if paths and all(p.is_file() for p in paths) else []

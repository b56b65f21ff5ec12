"""Atomic file writes: a crash mid-write leaves the old file, never half of the new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(target: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``target``, fsync it, then rename it over."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

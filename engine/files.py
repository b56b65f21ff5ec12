"""Files the project writes and identifies: atomic writes and sha256 digests.

A crash mid-write leaves the old file, never half of the new one; a failed write (a full
disk) raises :class:`engine.errors.FileWriteError`, which says so in one sentence. A writer
killed mid-write leaves its temp file (named with the writer's process id); the next write of
the same file, or :func:`remove_stale_temp_files_in` at start-up, removes the temp files whose
writer is gone. Used by the
engine (sidecars, manifests, calibration state, the build), the bench (receipts) and the app
(settings, sessions, caches); it must never import the app.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path

from engine.errors import FileWriteError


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write ``data`` (text is UTF-8) to a temp file beside ``path``, fsync it, rename it over,
    then fsync the folder so that the rename itself survives a power cut.

    The file keeps mkstemp's private 0600 unless ``mode`` says otherwise. Any OSError (a full
    disk, a read-only folder) becomes FileWriteError; the old file is left as it was. Once the
    new file is in place, temp files of ``path`` left by writers that were killed are removed.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as exc:
        if isinstance(exc, FileWriteError):
            raise
        raise FileWriteError(str(path), exc.errno, exc.strerror or str(exc)) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    remove_stale_temp_files(path)


_TEMP_TAIL = r"(\d+)@([0-9a-f]{6})-[a-z0-9_]{8}\.tmp"


def _host_tag() -> str:
    """This machine, in six hex digits: a temp file another machine writes (a shared folder) is never swept here."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}@{_host_tag()}-"


def _temp_pattern(path: Path) -> re.Pattern[str]:
    # ".<name>.<pid>@<host>-<mkstemp's 8 characters>.tmp": a temp file of another target never matches
    return re.compile(re.escape(f".{path.name}.") + _TEMP_TAIL)


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists here; True where that cannot be told (Windows)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate it on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove the temp files of ``path`` whose writer process no longer exists; returns them.

    Only names :func:`write_atomic` makes for this very target are touched, never the target
    itself nor a temp file whose writer still runs (another process saving the same file).
    Errors are ignored: a temp file left over costs disk space, not data.
    """
    path = Path(path)
    return _remove_stale(path.parent, _temp_pattern(path))


def remove_stale_temp_files_in(folder: Path) -> list[Path]:
    """At start-up: remove every :func:`write_atomic` temp file in ``folder`` whose writer is gone
    (files saved rarely, such as an old session, would otherwise keep theirs until their next save)."""
    return _remove_stale(Path(folder), re.compile(r"\..+\." + _TEMP_TAIL))


def _remove_stale(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found is None or found.group(2) != _host_tag():
            continue
        pid = int(found.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def fsync_dir(folder: Path) -> None:
    """fsync a folder's entry list (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is still done
        pass
    finally:
        os.close(fd)


def write_figure(path: Path, figure: object, **savefig_kwargs: object) -> None:
    """Save a matplotlib figure atomically (rendered in memory, then :func:`write_atomic`)."""
    import io

    buffer = io.BytesIO()
    suffix = Path(path).suffix.lstrip(".") or "png"
    figure.savefig(buffer, format=suffix, **savefig_kwargs)  # type: ignore[attr-defined]
    write_atomic(path, buffer.getvalue(), mode=0o644)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models are gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

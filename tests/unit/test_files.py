"""engine.files: atomic writes fsync the folder too, and a full disk is a clear FileWriteError."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from engine import files
from engine.errors import EngineError, FileWriteError


def test_atomic_write_fsyncs_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    files.write_atomic(tmp_path / "a.json", "{}")
    assert synced == ["file", "dir"]
    assert (tmp_path / "a.json").read_text() == "{}"


def _full_disk(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Every temp file the writer opens is /dev/full: writes fail with ENOSPC."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # type: ignore[no-untyped-def]
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "settings.json"
    target.write_text("old")
    _full_disk(monkeypatch, tmp_path)
    with pytest.raises(FileWriteError) as info:
        files.write_atomic(target, "new" * 10_000)
    err = info.value
    assert isinstance(err, EngineError) and isinstance(err, OSError)  # old `except OSError` callers still work
    assert str(target) in str(err) and "Free some disk space" in str(err) and "unchanged" in str(err)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temp file left behind


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_receipt_write_on_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import receipt

    _full_disk(monkeypatch, tmp_path)
    with pytest.raises(FileWriteError, match="receipt.json"):
        receipt.write(tmp_path, {"kind": "kld"}, "# md")
    assert list(tmp_path.iterdir()) == []


def test_receipt_and_figure_writes_are_atomic_and_readable(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench import receipt

    receipt.write(tmp_path, {"kind": "kld"}, "# md")
    assert (tmp_path / "receipt.json").stat().st_mode & 0o777 == 0o644
    fig, _ = plt.subplots()
    files.write_figure(tmp_path / "x.png", fig, dpi=50)
    plt.close(fig)
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

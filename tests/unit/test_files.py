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


def _dead_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_next_write_removes_temp_files_of_killed_writers_only(tmp_path: Path) -> None:
    """A killed writer's temp file goes at the next write; a live writer's, another machine's, another
    file's and the target stay."""
    import subprocess

    here = files._host_tag()
    target = tmp_path / "settings.json"
    target.write_text("old")
    dead = tmp_path / f".settings.json.{_dead_pid()}@{here}-abcd_123.tmp"
    live_writer = subprocess.Popen(["sleep", "60"])
    try:
        live = tmp_path / f".settings.json.{live_writer.pid}@{here}-efgh4567.tmp"
        own = tmp_path / f".settings.json.{os.getpid()}@{here}-ijkl8901.tmp"  # another thread of this process
        other_host = "000000" if here != "000000" else "ffffff"
        remote = tmp_path / f".settings.json.{_dead_pid()}@{other_host}-abcdefgh.tmp"  # a shared folder
        other_target = tmp_path / f".settings.json.1.{_dead_pid()}@{here}-mnop2345.tmp"  # "settings.json.1"'s
        unknown = tmp_path / ".settings.json.qrstuvwx.tmp"  # no writer id: never guessed at
        for leftover in (dead, live, own, remote, other_target, unknown):
            leftover.write_text("half a save")
        files.write_atomic(target, "new")
        assert target.read_text() == "new"
        assert not dead.exists()
        assert all(p.exists() for p in (live, own, remote, other_target, unknown))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            p.name for p in (target, live, own, remote, other_target, unknown))
    finally:
        live_writer.kill()
        live_writer.wait()
    assert files.remove_stale_temp_files(target) == [live]  # its writer is gone now
    assert target.read_text() == "new"
    assert sorted(files.remove_stale_temp_files_in(tmp_path)) == [other_target]  # start-up: every target
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (target, own, remote, unknown))


def test_a_temp_file_name_carries_the_writers_process_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    files.write_atomic(tmp_path / "a.json", "{}")
    assert len(seen) == 1 and files._temp_pattern(tmp_path / "a.json").fullmatch(seen[0])
    assert seen[0].startswith(f".a.json.{os.getpid()}@{files._host_tag()}-")

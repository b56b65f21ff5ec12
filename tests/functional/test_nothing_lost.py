"""Nothing lost: a writer killed with SIGKILL in the middle of a save leaves the previous file whole.

For settings, sessions, calibrated sidecars and receipts, a spawned child saves a large new
version over and over through the repo's own save function; the parent SIGKILLs it as soon as
the save is under way (its temp file exists, or the target changed) and then reads the target
with the repo's own reader. The killed writer's temp file is left; the next save of the same
file removes it (and never the target). The plain in-place write the helpers replaced is the
control: the same kill tears it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

import killed_writers
from killed_writers import BIG


def kill_mid_write(kind: str, target: Path, timeout_s: float = 120.0) -> list[Path]:
    """Start the writer, SIGKILL it once a save is under way; returns the temp files it left."""
    before = target.stat()
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    child = ctx.Process(target=killed_writers.write_forever, args=(kind, str(target), started), daemon=True)
    child.start()
    try:
        assert started.wait(timeout_s), "the writer did not start"
        deadline = time.monotonic() + timeout_s
        while True:
            temps = list(target.parent.glob(f".{target.name}.*.tmp"))
            now = target.stat()
            if temps or (now.st_ino, now.st_size, now.st_mtime_ns) != (before.st_ino, before.st_size,
                                                                       before.st_mtime_ns):
                break
            assert child.is_alive(), f"the writer died on its own (exit code {child.exitcode})"
            assert time.monotonic() < deadline, "no save was seen under way"
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    return list(target.parent.glob(f".{target.name}.*.tmp"))


def next_save_removes_the_temp_files(kind: str, target: Path, temps: list[Path]) -> None:
    """The killed writer's temp files go at the next save of the same file, in this (other) process."""
    assert temps and all(t.exists() for t in temps)
    killed_writers.save(kind, target, 0)
    assert [t for t in temps if t.exists()] == []
    assert list(target.parent.glob(f".{target.name}.*.tmp")) == []
    assert target.exists()


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CACHE", "DATA", "CONFIG"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(tmp_path / name.lower()))  # the spawned child inherits it
    return tmp_path


def test_settings_survive_a_writer_killed_mid_save(folders: Path) -> None:
    from app.settings import Settings

    target = Settings(arm="q8_0", n_ctx=4096).save()
    previous = target.read_bytes()
    temps = kill_mid_write("settings", target)
    assert temps, "the kill did not land inside a save"
    settings, notes = Settings.load_with_notes(env={}, path=target)
    assert notes == []  # every saved value was read back: the file is whole
    if target.read_bytes() != previous:  # a save completed before the kill: that version, whole
        assert settings.sidecar is not None and len(settings.sidecar) == len("/sidecars/") + BIG + 9
    else:
        assert (settings.arm, settings.n_ctx, settings.sidecar) == ("q8_0", 4096, None)
    next_save_removes_the_temp_files("settings", target, temps)


def test_a_session_survives_a_writer_killed_mid_save(folders: Path) -> None:
    from app.sessions import Session, Turn

    session = Session("/docs/a.md", "a.md", "0" * 64, id="killed-writer",
                      turns=[Turn("user", "Who?"), Turn("assistant", "Ilse Varga.", "f16")])
    target = session.save()
    previous = target.read_bytes()
    temps = kill_mid_write("session", target)
    assert temps, "the kill did not land inside a save"
    loaded = Session.load(target)
    if target.read_bytes() == previous:
        assert [t.content for t in loaded.turns] == ["Who?", "Ilse Varga."]
    else:
        assert len(loaded.turns[1].content) == BIG + 9
    next_save_removes_the_temp_files("session", target, temps)


def test_a_calibrated_sidecar_survives_a_writer_killed_mid_save(folders: Path) -> None:
    from engine.sidecar import read_sidecar, sidecar_bytes, write_sidecar

    target = folders / "data" / "sidecar_real_u_test.bin"
    write_sidecar(killed_writers.sidecar_version(0), target)
    previous = target.read_bytes()
    temps = kill_mid_write("sidecar", target)
    assert temps, "the kill did not land inside a save"
    sidecar = read_sidecar(target, "v")  # checks the size against the header: a torn file is refused
    assert (sidecar.n_layers, sidecar.n_kv_heads, sidecar.head_dim) == killed_writers.SIDECAR_DIMS
    if target.read_bytes() == previous:
        assert previous == sidecar_bytes(killed_writers.sidecar_version(0))
    else:  # a save completed before the kill: one of the child's versions, whole
        flipped = [layer for layer in range(sidecar.n_layers) if sidecar.basis[layer, 0, 0, 0] < 0]
        assert len(flipped) == 1 and target.read_bytes() == sidecar_bytes(killed_writers.sidecar_version(flipped[0]))
    next_save_removes_the_temp_files("sidecar", target, temps)


def test_a_receipt_survives_a_writer_killed_mid_save(folders: Path) -> None:
    from bench.receipt import write

    directory = folders / "receipt"
    directory.mkdir()
    write(directory, {"kind": "kld", "version": 0, "rows": [{"arm": "f16", "kld": 0.0}]}, "# receipt 0\n")
    target = directory / "receipt.json"
    previous = target.read_bytes()
    temps = kill_mid_write("receipt", target)
    assert temps, "the kill did not land inside a save"
    receipt = json.loads(target.read_text())
    if target.read_bytes() == previous:
        assert receipt["version"] == 0 and receipt["rows"] == [{"arm": "f16", "kld": 0.0}]
    else:
        assert len(receipt["rows"][0]["prompt"]) == BIG
    assert (directory / "receipt.md").read_text().startswith("# receipt ")
    next_save_removes_the_temp_files("receipt", target, temps)


def test_the_same_kill_tears_a_plain_write_so_the_test_can_fail(folders: Path) -> None:
    target = folders / "plain.txt"
    target.write_text("the previous file")
    kill_mid_write("plain", target)
    text = target.read_text()
    assert text != "the previous file"  # the previous file is gone...
    assert len(text) != BIG + 9  # ...and what replaced it is torn

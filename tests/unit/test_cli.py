"""The ``fraqtl-chat`` command line (no UI started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.samples import DEFAULT_SAMPLE
from app.ingest import load_document


def test_help_runs_as_a_console_script() -> None:
    result = subprocess.run([sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "usage: fraqtl-chat" in result.stdout and "--serve" in result.stdout


def test_arguments() -> None:
    args = build_parser().parse_args(["a.pdf", "b.md", "--arm", "q8_0", "--ctx", "16384", "--yarn"])
    assert [p.name for p in args.files] == ["a.pdf", "b.md"] and args.arm == "q8_0" and args.ctx == 16384


def test_missing_file_is_refused_before_the_ui(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAQTL_CONFIG_DIR", str(tmp_path))
    assert main([str(tmp_path / "nowhere.pdf")]) == 2
    assert "There is no file at" in capsys.readouterr().err
    assert main(["--arm", "f32"]) == 2
    assert "not an arm" in capsys.readouterr().err


def test_bundled_sample_has_distinct_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAQTL_CACHE_DIR", str(tmp_path))
    doc = load_document(DEFAULT_SAMPLE)
    assert doc.paged and len(doc.pages) == 4
    assert "Marta Quell" in doc.page(1) and "Brannock Tunnel" in doc.page(2) and "Copper Wren" in doc.page(3)


def test_bad_settings_and_sessions_do_not_stop_start_up(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import app.ui
    from app.sessions import Session

    for name in ("CACHE", "DATA", "CONFIG"):
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(tmp_path / name.lower()))
    started: list[dict] = []

    class Stub:
        def run(self) -> None:
            pass

    def fake_create_app(settings, files, model_path, session=None, notes=()):
        started.append({"settings": settings, "files": files, "session": session, "notes": list(notes)})
        return Stub()

    monkeypatch.setattr(app.ui, "create_app", fake_create_app)
    settings_file = tmp_path / "config" / "settings.json"
    settings_file.parent.mkdir(parents=True)
    settings_file.write_text('["f16", 8192]')
    assert main([]) == 0
    assert "not an object of settings" in capsys.readouterr().err
    assert started[-1]["files"] == [DEFAULT_SAMPLE] and "not an object of settings" in started[-1]["notes"][0]
    assert settings_file.read_text() == '["f16", 8192]'

    settings_file.write_text(json.dumps({"n_ctx": "big"}))
    session = Session("/docs/a.pdf", "a.pdf", "ab" * 32)
    path = session.save()
    path.write_text(json.dumps({**json.loads(path.read_text()), "folder": "work"}))  # a newer version's field
    assert main(["--session", session.id]) == 0
    assert started[-1]["session"].id == session.id and started[-1]["files"] == []
    path.write_text("[]")
    assert main(["--session", session.id]) == 0  # falls back to the sample, and says why
    assert started[-1]["session"] is None and started[-1]["files"] == [DEFAULT_SAMPLE]
    assert any("cannot be opened (it holds a JSON list" in n for n in started[-1]["notes"])
    assert path.read_text() == "[]"


def test_rpc_flag_reaches_the_settings_and_the_served_sessions() -> None:
    from app.cli import session_args

    args = build_parser().parse_args(["--rpc", "10.0.0.2:50052", "--serve"])
    assert args.rpc == "10.0.0.2:50052"
    assert session_args(args)[-2:] == ["--rpc", "10.0.0.2:50052"]


def test_rpc_server_command_runs_the_engines_server_with_the_warning(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    import os

    from app import cli
    from engine import rpc

    binary = tmp_path / "ggml-rpc-server"
    ran: list[list[str]] = []
    monkeypatch.setattr(cli, "ensure_engine", lambda: True)
    monkeypatch.setattr(rpc, "server_binary", lambda llama_cpp=None: binary)
    monkeypatch.setattr(os, "execv", lambda path, argv: ran.append(argv))
    assert main(["rpc-server", "--host", "10.0.0.5", "--port", "50060", "--device", "CUDA0"]) == 0
    assert ran == [[str(binary), "--host", "10.0.0.5", "--port", "50060", "--device", "CUDA0"]]
    assert "no authentication" in capsys.readouterr().err
    monkeypatch.setattr(rpc, "server_binary", lambda llama_cpp=None: None)
    assert main(["rpc-server"]) == 1
    assert "has no ggml-rpc-server; rebuild it" in capsys.readouterr().err
def test_start_up_removes_temp_files_that_killed_writers_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session saved once and never again keeps its killed writer's temp file until the next start."""
    import app.ui
    from app.sessions import Session

    for name in ("CACHE", "DATA", "CONFIG"):
        monkeypatch.setenv(f"FRAQTL_{name}_DIR", str(tmp_path / name.lower()))

    class Stub:
        def run(self) -> None:
            pass

    monkeypatch.setattr(app.ui, "create_app", lambda *args, **kwargs: Stub())
    from engine.files import _host_tag

    here = _host_tag()
    session_file = Session("/docs/a.pdf", "a.pdf", "ab" * 32).save()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = [session_file.parent / f".{session_file.name}.{dead.pid}@{here}-abcdefgh.tmp",
                 tmp_path / "config" / f".settings.json.{dead.pid}@{here}-ijklmnop.tmp"]
        kept = [session_file.parent / f".{session_file.name}.{live.pid}@{here}-qrstuvwx.tmp",  # still being written
                session_file.parent / "notes.tmp"]  # not a temp file of ours
        stale[1].parent.mkdir(parents=True, exist_ok=True)
        for path in stale + kept:
            path.write_text("half a save")
        before = session_file.read_bytes()
        assert main([]) == 0
        assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
        assert session_file.read_bytes() == before
    finally:
        live.kill()
        live.wait()

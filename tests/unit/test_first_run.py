"""``fraqtl-chat setup`` without building anything: what it checks first, and its progress bar."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from app import first_run
from app.first_run import BuildProgress, SetupError, check_tools


def test_an_environment_without_pip_is_told_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    with pytest.raises(SetupError, match=r"uv tool install --with pip fraqtl-chat"):
        check_tools(needs_compiler=False)


def test_a_build_without_cmake_or_a_compiler_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(SetupError, match=r"needs cmake and c\+\+.*apt install cmake build-essential"):
        check_tools(needs_compiler=True)
    check_tools(needs_compiler=False)  # a cached engine wheel needs no compiler


def test_the_compile_is_a_progress_bar_that_gives_way_to_step_lines(capsys: pytest.CaptureFixture[str]) -> None:
    progress = BuildProgress()
    progress.compiled(3, 141)
    assert progress.bar is not None
    assert progress.bar.tasks[0].completed == 3 and progress.bar.tasks[0].total == 141
    progress.compiled(141, 141)
    assert progress.bar.tasks[0].completed == 141
    progress.step("installing the wheel")
    assert progress.bar is None
    assert "installing the wheel" in capsys.readouterr().err


def test_the_installed_engine_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(first_run.engine_build, "installed_key", lambda: None)
    monkeypatch.setattr(first_run.engine_build, "patched_build_works", lambda: False)
    assert not first_run.engine_installed()
    monkeypatch.setattr(first_run.engine_build, "installed_key", lambda: "abc")
    assert first_run.engine_installed()


def test_launchers_are_installed_for_this_user_and_start_this_installation(tmp_path, monkeypatch) -> None:
    import configparser
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    written = first_run.install_launchers()
    assert [p.name for p in written] == ["fraqtl-chat.desktop", "fraqtl-chat-window.desktop", "fraqtl-chat.svg"]
    script = Path(sys.prefix) / "bin" / "fraqtl-chat"
    entries = {}
    for path in written[:2]:
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # keys are case-sensitive
        parser.read(path)
        entries[path.name] = parser["Desktop Entry"]
    assert entries["fraqtl-chat.desktop"]["Exec"] == f"{script} %F"
    assert entries["fraqtl-chat.desktop"]["Terminal"] == "true"
    assert entries["fraqtl-chat-window.desktop"]["Exec"] == f"{script} --desktop %F"
    assert entries["fraqtl-chat-window.desktop"]["Terminal"] == "false"
    assert entries["fraqtl-chat-window.desktop"]["StartupWMClass"] == "fraqtl-chat"  # Chromium's --class
    assert written[2].read_text().startswith("<svg")
    validator = shutil.which("desktop-file-validate")
    if validator is None:
        pytest.skip("desktop-file-validate is absent: `apt-get install desktop-file-utils` (.ci/run installs it)")
    result = subprocess.run([validator, *map(str, written[:2])], capture_output=True, text=True)
    assert result.returncode == 0 and "error" not in result.stdout, result.stdout

"""Installing without the repository: the built wheel in a fresh virtual environment.

The first run of the installed ``fraqtl-chat`` finds no patched engine and sets it up; the
engine wheel comes from the build cache (keyed by the engine sources the wheel ships), so
nothing compiles. ``fraqtl-chat setup`` then answers with the D2 cache, which needs the
sidecars the wheel ships. Dependencies are installed from PyPI as a person's install would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine import build as engine_build
from engine import locations
from served_browser import ROOT, free_port

pytestmark = pytest.mark.slow


def test_wheel_installs_into_a_fresh_venv_and_its_first_run_reuses_the_cached_engine(tmp_path: Path) -> None:
    if engine_build.detect_backend("auto") != "cpu":
        pytest.skip("nvcc and a GPU are present: the first run would build a CUDA engine, not reuse the CPU one")
    cache, data = locations.cache_dir(), locations.data_dir()
    key = engine_build.build_key(engine_build.Pin.load(), engine_build.make_plan("cpu", ""),
                                 engine_build.series_hash())
    if not list((cache / "wheels" / key).glob("*.whl")):
        pytest.skip(f"no cached CPU engine wheel for key {key}: run `python -m engine.build` first")

    wheels = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=300)
    (wheel,) = wheels.glob("fraqtl_chat-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)

    home = tmp_path / "elsewhere"  # not the repository: nothing may come from the source tree
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAQTL_", "LLAMA_CPP_LIB", "PYTHON"))}
    env.update(FRAQTL_CACHE_DIR=str(cache), FRAQTL_DATA_DIR=str(data), FRAQTL_CONFIG_DIR=str(tmp_path / "config"),
               FRAQTL_N_THREADS="2")
    where = subprocess.run([bin_dir / "python", "-c", "import app, engine; print(app.__file__, engine.__file__)"],
                           cwd=home, env=env, capture_output=True, text=True, check=True)
    assert str(ROOT) not in where.stdout and str(venv) in where.stdout

    port = free_port()
    log = tmp_path / "first-run.log"
    server = subprocess.Popen([bin_dir / "fraqtl-chat", "--serve", "--no-browser", "--port", str(port)],
                              cwd=home, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "serving on" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "fraqtl-drop-note" in page
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    first_run = " ".join(log.read_text().split())  # rich wraps long lines
    assert "No patched llama.cpp engine is installed in this environment yet" in first_run
    assert "cached wheel" in first_run and key in first_run
    assert "compiling" not in first_run and "building wheel" not in first_run

    setup = subprocess.run([bin_dir / "fraqtl-chat", "setup"], cwd=home, env=env, capture_output=True, text=True,
                           timeout=300)
    assert setup.returncode == 0, setup.stderr
    launchers = subprocess.run([bin_dir / "fraqtl-chat", "setup", "--launchers"], cwd=home,
                               env={**env, "XDG_DATA_HOME": str(tmp_path / "share")}, capture_output=True, text=True,
                               check=True, timeout=60)
    window = tmp_path / "share" / "applications" / "fraqtl-chat-window.desktop"
    assert str(window) in launchers.stdout
    assert f"Exec={bin_dir / 'fraqtl-chat'} --desktop %F" in window.read_text()
    assert (tmp_path / "share" / "icons" / "hicolor" / "scalable" / "apps" / "fraqtl-chat.svg").is_file()
    said = " ".join(setup.stderr.split())
    assert "patched llama_cpp already installed" in said and "nothing to do" in said
    assert "check: the d2 cache answered" in said and "ready in" in said

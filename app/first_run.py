"""``fraqtl-chat setup``: make an installed package ready to answer, without the repository.

After ``pipx install`` or ``uv tool install`` the environment has the app but no patched
llama.cpp engine (no binary wheel of llama-cpp-python exists) and no model. Setup builds the
engine with a progress bar (CUDA where nvcc and a GPU are present, else CPU; a wheel cached
from an earlier build is reused in seconds), fetches the default model, and answers one short
question with the D2 cache to prove it all works. The first run of ``fraqtl-chat`` calls it
when no patched engine is installed.

This module never starts the UI; every failure is one sentence that says what to do.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine import build as engine_build
from engine import locations

console = Console(stderr=True)


class SetupError(RuntimeError):
    """Setup cannot go on; the message says what to install or run."""


class BuildProgress(engine_build.Progress):
    """engine.build's steps as lines, and the compile as a progress bar."""

    def __init__(self) -> None:
        super().__init__()
        self.bar: Progress | None = None
        self.task: int | None = None

    def compiled(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(TextColumn("compiling llama.cpp"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("compile", total=total)
        assert self.task is not None
        self.bar.update(self.task, completed=done, total=total)

    def step(self, text: str) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        super().step(text)


def engine_installed() -> bool:
    """Is a patched llama_cpp installed here (our marker, then a real import in a subprocess)?"""
    return engine_build.installed_key() is not None or engine_build.patched_build_works()


def cached_engine_wheel(backend: str = "auto", cuda_arch: str = "") -> Path | None:
    plan = engine_build.make_plan(engine_build.detect_backend(backend), cuda_arch)
    key = engine_build.build_key(engine_build.Pin.load(), plan, engine_build.series_hash())
    wheels = sorted((locations.cache_dir() / "wheels" / key).glob("*.whl"))
    return wheels[0] if wheels else None


def check_tools(needs_compiler: bool) -> None:
    """pip (setup installs wheels with it) and, for a build, CMake and a C++ compiler."""
    if importlib.util.find_spec("pip") is None:
        raise SetupError("This environment has no pip, which setup uses to install the engine it builds "
                         "(uv tool installs none): reinstall with `uv tool install --with pip fraqtl-chat`, "
                         "or use pipx.")
    if not needs_compiler:
        return
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise SetupError(f"Building the engine needs {' and '.join(missing)}, not found on PATH: install them "
                         "(Debian/Ubuntu: `sudo apt install cmake build-essential`) and run `fraqtl-chat setup` "
                         "again.")


def smoke_answer(model_path: Path) -> str:
    """One short answer with the D2 cache in an engine process: the build, model and sidecars work."""
    from engine.events import AnswerDone, EngineFailed
    from engine.worker import EngineSpec, EngineWorker

    messages = [{"role": "user", "content": "The capital of France is Paris. What is the capital of France?"}]
    with EngineWorker(EngineSpec(str(model_path), arm="d2", n_ctx=512, n_threads=2)) as worker:
        for event in worker.answer(messages, 12):
            if isinstance(event, EngineFailed):
                raise SetupError(f"The engine was installed but failed to answer: {event.message}")
            if isinstance(event, AnswerDone):
                return event.text.strip()
    raise SetupError("The engine was installed but ended without an answer; run `fraqtl-chat setup` again.")


LAUNCHERS = ("fraqtl-chat.desktop", "fraqtl-chat-window.desktop")
ICON = "fraqtl-chat.svg"


def launcher_sources() -> Path:
    """Where the launchers are: installed with the wheel, or the repository's packaging/ folder."""
    for folder in (Path(sys.prefix) / "share" / "fraqtl-chat" / "launchers", locations.REPO_ROOT / "packaging"):
        if all((folder / name).is_file() for name in (*LAUNCHERS, ICON)):
            return folder
    raise SetupError(f"The desktop launchers are not in {sys.prefix}/share/fraqtl-chat/launchers; reinstall "
                     "fraqtl-chat (they ship with the package).")


def install_launchers(share: Path | None = None) -> list[Path]:
    """The terminal and window launchers and the icon, for this user, starting this installation."""
    source = launcher_sources()
    share = share or locations.desktop_share_dir()
    script = Path(sys.prefix) / "bin" / "fraqtl-chat"
    command = str(script) if script.is_file() else shutil.which("fraqtl-chat")
    if command is None:
        raise SetupError("No fraqtl-chat command was found to start from the launchers; install the package "
                         "with pipx or uv tool, or put its bin folder on PATH.")
    written = []
    for name in LAUNCHERS:
        text = (source / name).read_text("utf-8")
        target = share / "applications" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("Exec=fraqtl-chat", f"Exec={shlex.quote(command)}"), "utf-8")
        written.append(target)
    icon = share / "icons" / "hicolor" / "scalable" / "apps" / ICON
    icon.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / ICON, icon)
    return [*written, icon]


def setup(backend: str = "auto", cuda_arch: str = "", check: bool = True) -> Path:
    """Build (or reuse) and install the engine, fetch the default model, prove it answers."""
    from engine.errors import EngineError
    from engine.models import resolve

    started = time.monotonic()
    cached = cached_engine_wheel(backend, cuda_arch)
    check_tools(needs_compiler=cached is None)
    if cached is None:
        console.print("[bold]Building the patched llama.cpp engine[/] (once; 3–20 minutes on a CPU, "
                      "depending on cores). CUDA is used when nvcc and a GPU are present.")
    try:
        engine_build.build(backend, cuda_arch, progress=BuildProgress())
    except (engine_build.BuildError, OSError) as exc:
        raise SetupError(f"The engine build failed: {exc}") from exc
    try:
        model_path = resolve(None)
    except EngineError as exc:
        raise SetupError(str(exc)) from exc
    console.print(f"model: {model_path}")
    if check:
        try:
            answer = smoke_answer(model_path)
        except EngineError as exc:
            raise SetupError(f"The engine was installed but could not answer: {exc}") from exc
        console.print(f"check: the d2 cache answered {answer[:60]!r}")
    console.print(f"[bold green]ready[/] in {time.monotonic() - started:.0f} s: run `fraqtl-chat`, "
                  "`fraqtl-chat --serve` or `fraqtl-chat --desktop`.")
    return model_path


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="fraqtl-chat setup",
        description="Build (or reuse) and install the patched llama.cpp engine, fetch the default model, and "
                    "check that it answers.")
    parser.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = CUDA when nvcc and a GPU are present")
    parser.add_argument("--cuda-arch", default="", help="CUDA architectures, e.g. 90 (default: this GPU's)")
    parser.add_argument("--no-check", action="store_true", help="skip the one-question check at the end")
    parser.add_argument("--launchers", action="store_true",
                        help="only install the desktop launchers (terminal and window) and the icon for this user")
    args = parser.parse_args(argv)
    try:
        if args.launchers:
            for path in install_launchers():
                print(path)
            return 0
        setup(args.backend, args.cuda_arch, check=not args.no_check)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

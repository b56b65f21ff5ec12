"""The engine is a library: it imports with Textual absent and never imports the app."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

ENGINE_DIR = Path(engine.__file__).parent
REPO = ENGINE_DIR.parent

BLOCKER = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('textual', 'app', 'textual_serve'):
            raise ImportError(f'{name} is blocked in this test')
        return None
sys.meta_path.insert(0, Blocker())
import importlib, pkgutil, engine
failed = []
for mod in pkgutil.iter_modules(engine.__path__):
    try:
        importlib.import_module(f'engine.{mod.name}')
    except ImportError as exc:
        failed.append(f'engine.{mod.name}: {exc}')
assert 'textual' not in sys.modules and 'app' not in sys.modules, sorted(sys.modules)
print('\\n'.join(failed) if failed else 'ok')
"""


def engine_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(ENGINE_DIR)]))


def test_every_engine_module_imports_without_textual_or_app() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCKER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok", result.stdout


def test_no_engine_module_imports_app_or_textual() -> None:
    offenders = []
    for path in ENGINE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("app", "textual", "bench"):
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []
    assert "worker" in engine_modules() and "runtime" in engine_modules()


def test_a_crashed_engine_names_the_abort_line_from_its_log(tmp_path) -> None:
    from engine.worker import _abort_line, _exit_detail

    log = tmp_path / "engine.log"
    log.write_text("llama_context: n_ctx = 512\n/src/ggml/src/ggml-cpu/ops.cpp:4211: GGML_ASSERT(ne00 % 64 == 0) "
                   "failed\n#0 0x00007f in ggml_abort ()\n[Inferior 1 (process 7) detached]\n")
    assert _abort_line(log) == "/src/ggml/src/ggml-cpu/ops.cpp:4211: GGML_ASSERT(ne00 % 64 == 0) failed"
    log.write_text("terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n")
    assert _abort_line(log).startswith("terminate called after throwing")
    log.write_text("nothing went wrong here\n")
    assert _abort_line(log) == ""
    assert _exit_detail(-6) == "llama.cpp aborted (SIGABRT)"
    assert _exit_detail(-9).startswith("killed by SIGKILL")


def test_a_new_engine_keeps_only_the_newest_crash_logs(tmp_path, monkeypatch) -> None:
    """Crash logs pile up under <cache>/logs; starting an engine deletes all but the newest KEEP_LOGS."""
    import os

    from engine.worker import KEEP_LOGS, EngineSpec, EngineWorker

    monkeypatch.setenv("FRAQTL_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "logs"
    folder.mkdir()
    old = []
    for i in range(KEEP_LOGS + 5):  # crash logs of earlier runs, oldest first
        log = folder / f"engine-f16-{i:03d}.log"
        log.write_text(f"crash {i}\n")
        os.utime(log, ns=(1_000_000_000 * (i + 1), 1_000_000_000 * (i + 1)))
        old.append(log)
    other = folder / "notes.txt"  # not an engine log: never touched
    other.write_text("mine")
    os.utime(other, ns=(1, 1))

    worker = EngineWorker(EngineSpec(str(tmp_path / "model.gguf"), "q8_0"))  # not started: only its log is made
    try:
        assert worker.log_path is not None and worker.log_path.exists()
        kept = sorted(p.name for p in folder.glob("engine-*.log"))
        assert len(kept) == KEEP_LOGS and worker.log_path.name in kept
        assert kept[:-1] == [p.name for p in old[-(KEEP_LOGS - 1):]]  # the newest earlier logs stay
        assert not any(p.exists() for p in old[:6]) and other.read_text() == "mine"
    finally:
        worker.close()

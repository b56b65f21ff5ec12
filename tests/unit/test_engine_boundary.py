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

"""Our CUDA sources compile for sm_90 with this machine's nvcc (no GPU, no cuBLAS needed).

CI never has a GPU; this catches a CUDA file that no longer builds against the pinned
llama.cpp before a GPU session is spent on it. cuBLAS's header is replaced by a stub of the
few declarations ggml-cuda's common header names (the object is never linked).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from engine import build, locations

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")

STUB = Path(__file__).resolve().parent / "cuda_stub"


def test_our_cuda_files_compile_for_sm90(tmp_path: Path) -> None:
    tree, _ = build.prepare_tree(build.Pin.load(), build.Progress())
    llama = tree / "vendor" / "llama.cpp"
    sources = sorted((locations.ENGINE_SOURCE_DIR / "src" / "ggml-cuda").glob("*.cu"))
    assert sources, "no CUDA sources of ours to check"
    for src in sources:
        obj = tmp_path / (src.stem + ".o")
        cmd = [
            "nvcc", "-std=c++17", "-arch=sm_90", "-use_fast_math", "-extended-lambda", "-O3", "-c", str(src),
            "-o", str(obj), f"-I{llama / 'ggml' / 'include'}", f"-I{llama / 'ggml' / 'src'}",
            f"-I{llama / 'ggml' / 'src' / 'ggml-cuda'}", f"-I{STUB}", "-Xptxas", "-warn-spills",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, out.stderr[-4000:]
        assert "d2_fattn_decode" in obj.read_bytes().decode("latin-1"), "the D2 attention kernel was not compiled"
        assert "spill" not in out.stderr, out.stderr[-2000:]

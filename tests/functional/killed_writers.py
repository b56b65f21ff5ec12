"""Writers that a test kills with SIGKILL mid-write: each saves a large new version of one of
the app's or engine's files, over and over, through the repo's own save functions (all of
which go through :func:`engine.files.write_atomic`), in a spawned child process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BIG = 32 * 2**20  # characters: a write of this size takes long enough to be caught in the middle
SIDECAR_DIMS = (32, 8, 128)  # n_layers, n_kv_heads, head_dim: an 8 MiB V basis (its reader checks every head)


def settings_version(i: int) -> Any:
    from app.settings import Settings

    return Settings(sidecar="/sidecars/" + "s" * BIG + f"-{i:08d}")


def session_version(i: int) -> Any:
    from app.sessions import Session, Turn

    return Session("/docs/a.md", "a.md", "0" * 64, id="killed-writer",
                   turns=[Turn("user", "Tell me everything."), Turn("assistant", "w" * BIG + f"-{i:08d}", "f16")])


def sidecar_version(i: int) -> Any:
    from engine.sidecar import SidecarFile

    n_layers, n_heads, head_dim = SIDECAR_DIMS
    basis = np.broadcast_to(np.eye(head_dim, dtype=np.float32), (n_layers, n_heads, head_dim, head_dim)).copy()
    basis[i % n_layers, 0, :, 0] *= -1  # still orthonormal; every version's bytes differ
    return SidecarFile("v", basis, protect=32)


def receipt_version(i: int) -> tuple[dict[str, Any], str]:
    rows = [{"arm": "f16", "kld": 0.0, "prompt": "r" * BIG}]
    return {"kind": "kld", "version": i, "rows": rows}, f"# receipt {i}\n" + "| f16 |\n" * (BIG // 8)


def save(kind: str, target: Path, i: int) -> None:
    if kind == "settings":
        settings_version(i).save(target)
    elif kind == "session":
        session_version(i).save()
    elif kind == "sidecar":
        from engine.sidecar import write_sidecar

        write_sidecar(sidecar_version(i), target)
    elif kind == "receipt":
        from bench.receipt import write

        write(target.parent, *receipt_version(i))
    elif kind == "plain":  # what the helpers replaced: a write in place (the negative control)
        target.write_text("p" * BIG + f"-{i:08d}")
    else:
        raise ValueError(kind)


def write_forever(kind: str, target: str, started: Any) -> None:
    started.set()
    i = 1
    while True:
        save(kind, Path(target), i)
        i += 1

"""Fixtures for the whole test session: private data and settings folders.

No test may read or rewrite the person's own ``~/.local/share/fraqtl-chat`` (sessions,
calibrated sidecars, reports) or ``~/.config/fraqtl-chat`` (settings): every test session
gets its own, holding the packaged models already fetched (hard links where the file system
allows, else copies: a symbolic link would resolve back into the person's folder), so that
nothing is downloaded again. The shipped sidecars stay where they are
(``engine.locations.SIDECARS_DIR``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import locations
from engine.models import REGISTRY, packaged_path


@pytest.fixture(scope="session", autouse=True)
def private_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FRAQTL_DATA_DIR and FRAQTL_CONFIG_DIR point into a temporary folder for the whole session."""
    fetched = [p for p in map(packaged_path, REGISTRY.values()) if p.is_file()]  # before the redirect
    root = tmp_path_factory.mktemp("user-dirs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRAQTL_DATA_DIR", str(root / "data"))
        mp.setenv("FRAQTL_CONFIG_DIR", str(root / "config"))
        models = locations.models_dir()
        for gguf in fetched:
            try:
                os.link(gguf, models / gguf.name)  # a fetch replaces the file, never writes into it
            except OSError:  # another file system
                shutil.copy2(gguf, models / gguf.name)
        yield root

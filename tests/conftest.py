"""Fixtures for the whole test session: private data and settings folders.

No test may read or rewrite the person's own ``~/.local/share/fraqtl-chat`` (sessions,
calibrated sidecars, reports) or ``~/.config/fraqtl-chat`` (settings): every test session
gets its own, holding only links to the models already fetched, so that nothing is downloaded
again. The shipped sidecars stay where they are (``engine.locations.SIDECARS_DIR``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import locations


@pytest.fixture(scope="session", autouse=True)
def private_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FRAQTL_DATA_DIR and FRAQTL_CONFIG_DIR point into a temporary folder for the whole session."""
    real_models = locations.models_dir()  # resolved before the redirect: where `make model` put them
    root = tmp_path_factory.mktemp("user-dirs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRAQTL_DATA_DIR", str(root / "data"))
        mp.setenv("FRAQTL_CONFIG_DIR", str(root / "config"))
        models = locations.models_dir()
        for gguf in sorted(real_models.glob("*.gguf")):
            (models / gguf.name).symlink_to(gguf)  # read-only use; a fetch would replace the link, not the file
        yield root

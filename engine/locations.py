"""Every platform path the project uses, in one place.

Paths come from platformdirs and may be overridden with ``FRAQTL_*`` environment variables
(CI and tests point them at temporary or persistent folders). This module never creates
anything on import; callers ask for a folder and get it created on demand.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "fraqtl-chat"

#: The repository root (the folder holding ``engine/``), used to find shipped sidecars.
REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE_SOURCE_DIR = Path(__file__).resolve().parent / "llama.cpp-fraqtl"
SIDECARS_DIR = REPO_ROOT / "sidecars"


def _dir(env: str, default: str) -> Path:
    path = Path(os.environ.get(env) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Build cache (sdists, patched trees, wheels), extracted document text."""
    return _dir("FRAQTL_CACHE_DIR", platformdirs.user_cache_dir(APP_NAME))


def data_dir() -> Path:
    """Models extracted from PyPI packages, sessions, calibration runs."""
    return _dir("FRAQTL_DATA_DIR", platformdirs.user_data_dir(APP_NAME))


def config_dir() -> Path:
    """Settings file."""
    return _dir("FRAQTL_CONFIG_DIR", platformdirs.user_config_dir(APP_NAME))


def uploads_dir() -> Path:
    """Documents uploaded from a browser page in served mode; nothing is written anywhere else."""
    path = cache_dir() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def desktop_share_dir() -> Path:
    """The user's XDG data folder (``~/.local/share``): desktop launchers and icons go below it."""
    return Path(platformdirs.user_data_dir())


def models_dir() -> Path:
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sessions_dir() -> Path:
    path = data_dir() / "sessions"
    path.mkdir(parents=True, exist_ok=True)
    return path

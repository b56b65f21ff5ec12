"""Sample documents shipped with the app (package data); the default document is the first."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
DEFAULT_SAMPLE = SAMPLES_DIR / "orrin-valley-railway.md"

"""``python -m engine.calibrate``: the same as ``fraqtl-calibrate``."""

from engine.calibrate.cli import main

raise SystemExit(main())

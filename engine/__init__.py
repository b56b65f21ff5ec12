"""fraqtl engine: models, arms, estimates, telemetry and the llama.cpp runtime with D2.

A library with a typed API usable from a script; the app (``app/``) and the benchmarks
(``bench/``) are its two clients. It must never import either of them, nor Textual.
"""

__version__ = "0.1.0"

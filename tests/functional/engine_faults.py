"""Faults injected into a real engine process: llama.cpp's own ggml_abort, called mid-answer.

The child is the real worker (``engine.worker._child_main``) on the real model; only its
``Runtime.answer`` is wrapped so that after the second streamed token it calls ``ggml_abort``
from the loaded libggml-base, exactly what a failed ``GGML_ASSERT`` inside llama.cpp does:
the message goes to stderr (the worker's log), then ``abort()`` raises SIGABRT.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from engine.worker import EngineWorker, _child_main

INJECTED_ASSERT = "injected_fault_in_decode"
ABORT_AFTER_TOKENS = 2


def _ggml_abort() -> None:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_abort(b"ggml-fraqtl-fault.c", 42, b"GGML_ASSERT(%s) failed", INJECTED_ASSERT.encode())


def aborting_child_main(spec: Any, conn: Any, stop_flag: Any, log_path: str | None = None) -> None:
    from engine.events import Token
    from engine.runtime import Runtime

    original = Runtime.answer

    def answer(self, messages, max_tokens=256, **kwargs):  # type: ignore[no-untyped-def]
        tokens = 0
        for event in original(self, messages, max_tokens, **kwargs):
            yield event
            tokens += isinstance(event, Token)
            if tokens == ABORT_AFTER_TOKENS:
                _ggml_abort()

    Runtime.answer = answer  # type: ignore[method-assign]
    _child_main(spec, conn, stop_flag, log_path)


class AbortingWorker(EngineWorker):
    """A real engine process whose llama.cpp aborts after the second token of an answer."""

    child_main = staticmethod(aborting_child_main)

"""Helpers for driving the app with Pilot while the model runs in another process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

SHORT_DOCUMENT = """# The Harbour of Velmora

The lighthouse of Velmora was built in 1847 by the engineer Tomas Ardel. Its lamp can be seen
31 kilometres out to sea.

The harbour master is Ilse Varga. The fishing fleet has 23 boats, and the main catch is blue mackerel.

Every August the town holds the Lantern Regatta, which was won last year by the boat Grey Heron.
"""


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    """Let the app run until ``condition()`` holds (the model runs in another process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.1)
    await asyncio.sleep(0)

"""``fraqtl-chat --desktop``: the served app in a window of its own, a Chromium ``--app`` window.

A native webview would need GTK or Qt bindings that pipx cannot install; every Linux desktop
that can show the browser mode has (or can ``apt install``) Chromium, whose ``--app`` window has
no tabs or address bar. The window gets a private profile folder, so its process is ours alone:
when the window closes, that process exits and the server stops.

This module only finds and starts the browser; it never binds an address itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "microsoft-edge",
            "brave-browser")


class NoBrowserError(RuntimeError):
    def __init__(self, asked: str | None) -> None:
        self.asked = asked
        where = f"{asked} is not an executable file" if asked else f"none of {', '.join(BROWSERS)} is on PATH"
        super().__init__(f"The desktop window needs Chromium (or Chrome/Edge/Brave) and {where}; install it "
                         "(`sudo apt install chromium`), pass --browser PATH, or use --serve and any browser.")


def find_browser(asked: str | None = None) -> str:
    if asked:
        found = shutil.which(asked)
        if found is None:
            raise NoBrowserError(asked)
        return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise NoBrowserError(None)


def window_command(browser: str, url: str, profile: Path) -> list[str]:
    command = [browser, f"--app={url}", f"--user-data-dir={profile}", "--no-first-run",
               "--no-default-browser-check", "--class=fraqtl-chat", "--window-size=1280,860"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
    return command


async def run_window(browser: str, url: str) -> int:
    """Open the window and wait until it is closed; the browser's exit status."""
    with tempfile.TemporaryDirectory(prefix="fraqtl-chat-window-") as profile:
        process = await asyncio.create_subprocess_exec(
            *window_command(browser, url, Path(profile)),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await process.wait()

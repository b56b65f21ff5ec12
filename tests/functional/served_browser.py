"""Drive ``fraqtl-chat --serve`` in headless Chromium (Playwright with the system browser).

The page draws the app with xterm.js on a canvas, so its text is not in the DOM. An init
script keeps a reference to the page's xterm ``Terminal`` when textual-serve's client stores
it, and :meth:`TerminalPage.text` reads the terminal's buffer: what the person sees, as text.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

_KEEP_TERMINAL = """
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  get() { return undefined; },
  set(value) {
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
    if (value && value.buffer) { window.__fraqtlTerminal = value; }
  },
});
"""
_READ_TERMINAL = """() => {
  const terminal = window.__fraqtlTerminal;
  if (!terminal) { return null; }
  const buffer = terminal.buffer.active, lines = [];
  for (let i = 0; i < buffer.length; i++) { lines.push(buffer.getLine(i).translateToString(true)); }
  return lines.join("\\n");
}"""


def chromium() -> str:
    """The system Chromium; the test is skipped (with how to install it) where there is none."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH: `apt-get install chromium` (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServedApp:
    """``fraqtl-chat --serve`` in a process of its own, on a free loopback port."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--serve", "--no-browser", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not listen within 60 s:\n{log.read_text()}")

    def descendants(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process below the server, from /proc."""
        children: dict[int, list[int]] = {}
        commands: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        found, stack = [], [self.process.pid]
        while stack:
            for child in children.get(stack.pop(), []):
                found.append((child, commands.get(child, "")))
                stack.append(child)
        return found

    def count(self, needle: str) -> int:
        """Processes whose command line holds ``needle`` (textual-serve's ``sh -c`` wrappers aside)."""
        return sum(needle in command and not command.startswith(("/bin/sh ", "sh "))
                   for _, command in self.descendants())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class TerminalPage:
    """One browser tab showing the served app."""

    def __init__(self, page, url: str) -> None:
        self.page = page
        page.add_init_script(_KEEP_TERMINAL)
        page.goto(url)

    def text(self) -> str:
        return self.page.evaluate(_READ_TERMINAL) or ""

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the page shows:\n{text}")
            time.sleep(0.1)

    def type(self, text: str) -> None:
        self.page.focus(".xterm-helper-textarea")
        self.page.keyboard.type(text)

    def press(self, key: str) -> None:
        self.page.focus(".xterm-helper-textarea")
        self.page.keyboard.press(key)


def plain(text: str) -> str:
    """The screen's words, with borders removed and line breaks as spaces (wrapped phrases match)."""
    return " ".join(re.sub(r"[█▀▄▊▎│▔▁─━]", " ", text).split())


def status_line(text: str) -> str:
    """The document bar's second line (Ready / Prefilling / Answered …)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[2] if len(lines) > 2 else ""


def answer_after(text: str, question: str) -> str:
    """The answer shown below ``question`` in the transcript, as plain text (left column only)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if question in line), None)
    if start is None:
        return ""
    words: list[str] = []
    for line in lines[start + 1:]:
        left = line.split("│", 1)[0].strip().lstrip("█▌▎").strip()
        if " tokens · " in left or "▔" in left:
            break
        words.append(left)
    return " ".join(w for w in words if w)

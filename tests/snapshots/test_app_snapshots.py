"""Snapshots of each main screen at fixed terminal sizes, with a fake engine and NVML sampler.

Update after a deliberate UI change with ``pytest tests/snapshots --snapshot-update``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from textual.widgets import Input

from app.samples import DEFAULT_SAMPLE
from app.settings import Settings
from app.ui import create_app
from app_fakes import FakeEngine, FakeSampler

SIZE = (130, 40)


def make_app(model_path: Path, gpu: bool = True, factory=FakeEngine, **settings):
    values = dict(n_ctx=8192, max_tokens=64)
    values.update(settings)
    return create_app(Settings(**values), [DEFAULT_SAMPLE], model_path, factory=factory,
                      sampler=FakeSampler(available=gpu), vram_refresh_s=0)


async def settle(pilot, condition, steps: int = 200) -> None:
    for _ in range(steps):
        if condition():
            break
        await pilot.pause(0.02)
    for input_ in pilot.app.screen.query(Input):
        input_.cursor_blink = False
    await pilot.pause()


async def ask_sample_question(pilot) -> None:
    screen = pilot.app.chat_screen
    await settle(pilot, lambda: screen.state == "ready")
    screen.query_one("#question").value = "Who designed the railway?"
    await pilot.press("enter")
    await settle(pilot, lambda: screen.state == "ready" and screen.last_done is not None)


def test_chat_screen_with_gpu_telemetry(snap_compare, model_path) -> None:
    assert snap_compare(make_app(model_path), terminal_size=SIZE, run_before=ask_sample_question)


def test_chat_screen_without_gpu(snap_compare, model_path) -> None:
    assert snap_compare(make_app(model_path, gpu=False), terminal_size=SIZE, run_before=ask_sample_question)


def test_overflow_dialog(snap_compare, model_path) -> None:
    async def refused(pilot) -> None:
        await settle(pilot, lambda: bool(pilot.app.screen.query("#overflow-numbers")))

    app = make_app(model_path, gpu=False, factory=lambda spec: FakeEngine(spec, tokens_per_word=40.0))
    assert snap_compare(app, terminal_size=SIZE, run_before=refused)


def test_compare_screen(snap_compare, model_path) -> None:
    async def compared(pilot) -> None:
        await ask_sample_question(pilot)
        await pilot.press("f2")
        await settle(pilot, lambda: bool(pilot.app.screen.query("#compare-run")))
        await pilot.click("#compare-run")
        await settle(pilot, lambda: bool(getattr(pilot.app.screen, "results", None)))
        pilot.app.clear_notifications()

    # with q4_0, whose fake answer departs from f16's at token 9: the departure is highlighted
    assert snap_compare(make_app(model_path, compare_q4_0=True), terminal_size=SIZE, run_before=compared)


def test_settings_screen(snap_compare, model_path, monkeypatch) -> None:
    # the screen shows the settings path: a fixed one, since the length of pytest's numbered
    # tmp_path (pytest-99, pytest-100) changed the hint's wrapping and so the snapshot
    config = Path(tempfile.gettempdir()) / "fraqtl-snapshot-config"
    shutil.rmtree(config, ignore_errors=True)
    monkeypatch.setenv("FRAQTL_CONFIG_DIR", str(config))

    async def settings(pilot) -> None:
        await settle(pilot, lambda: pilot.app.chat_screen.state == "ready")
        await pilot.press("f4")
        await settle(pilot, lambda: bool(pilot.app.screen.query("#settings-save")))

    assert snap_compare(make_app(model_path, gpu=False), terminal_size=SIZE, run_before=settings)


def test_chat_screen_with_two_gpus(snap_compare, model_path) -> None:
    from app_fakes import TwoGpuSampler

    app = create_app(Settings(n_ctx=8192, max_tokens=64), [DEFAULT_SAMPLE], model_path, factory=FakeEngine,
                     sampler=TwoGpuSampler(), vram_refresh_s=0)
    assert snap_compare(app, terminal_size=SIZE, run_before=ask_sample_question)

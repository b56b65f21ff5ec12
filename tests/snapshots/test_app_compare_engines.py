"""The comparison runs with the chat's engine closed, Esc stops the running arm, the chat comes back."""

from __future__ import annotations

import threading
import time

from app.samples import DEFAULT_SAMPLE
from app.settings import Settings
from app.ui import create_app
from app.ui.chat_state import Phase
from app.ui.screens import CompareScreen
from app.ui.widgets import ArmPanel
from app_fakes import FakeEngine, FakeSampler
from engine.events import AnswerDone, PrefillProgress, Token
from engine.sampling import GREEDY
from test_app_ui import until


class CountedEngine(FakeEngine):
    """Remembers how many engines were open when each one started; answers slowly, stops on request."""

    open_engines: set[int] = set()
    seen_at_start: list[tuple[str, int]] = []
    slow = False
    words = 400  # a slow answer's length: 20 ms a word

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.stopped = threading.Event()

    def start(self):
        loaded = super().start()
        CountedEngine.seen_at_start.append((self.spec.arm, len(CountedEngine.open_engines)))
        CountedEngine.open_engines.add(id(self))
        return loaded

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        CountedEngine.open_engines.discard(id(self))

    def answer(self, messages, max_tokens=256, sampling=GREEDY):
        if not (CountedEngine.slow and max_tokens):
            yield from super().answer(messages, max_tokens, sampling)
            return
        self.stopped.clear()
        yield PrefillProgress(17, 17, 0, 800.0, 0.0)
        for i in range(CountedEngine.words):
            if self.stopped.is_set():
                yield AnswerDone("word " * i, 17, 17, i, 800.0, 20.0, "cancelled", tuple(range(i)))
                return
            time.sleep(0.02)
            yield Token(" word", i)
        n = CountedEngine.words
        yield AnswerDone("word " * n, 17, 17, n, 800.0, 20.0, "length", tuple(range(n)))


def make(model_path):
    CountedEngine.open_engines, CountedEngine.seen_at_start, CountedEngine.slow = set(), [], False
    CountedEngine.words = 400
    return create_app(Settings(n_ctx=8192, max_tokens=400), [DEFAULT_SAMPLE], model_path, factory=CountedEngine,
                      sampler=FakeSampler(available=False), vram_refresh_s=0)


async def test_arms_run_without_the_chat_engine_and_it_restarts_after(model_path) -> None:
    app = make(model_path)
    async with app.run_test(size=(140, 40)) as pilot:
        chat = app.chat_screen
        await until(pilot, lambda: chat.state == "ready")
        assert CountedEngine.seen_at_start == [("f16", 0)]
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        compare = app.screen
        compare.query_one("#compare-question").value = "Who designed the railway?"
        await pilot.click("#compare-run")
        await until(pilot, lambda: bool(compare.results), steps=500)
        # every arm started alone: the chat's engine was closed, not counted in the arm's peak
        assert CountedEngine.seen_at_start[1:] == [("f16", 0), ("q8_0", 0)]  # d2 is unavailable in the fake
        panel = compare.query_one("#arm-q8_0", ArmPanel)
        assert "vs f16      identical (" in str(panel.query_one(".arm-stats").render())
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is chat and chat.state == "ready", steps=500)
        assert app.conversation.engine is not None and len(CountedEngine.open_engines) == 1


async def test_esc_stops_the_running_arm(model_path) -> None:
    app = make(model_path)
    async with app.run_test(size=(140, 40)) as pilot:
        compare = await start_slow_comparison(pilot, app, words=None)  # each arm would take 8 s
        started = time.monotonic()
        await pilot.press("escape")
        assert app.screen is compare  # Esc stops first; it does not leave a running comparison
        await until(pilot, lambda: bool(compare.results), steps=500)
        assert time.monotonic() - started < 3
        by_arm = {r.arm: r for r in compare.results}
        assert by_arm["f16"].status == "stopped" and by_arm["f16"].reason == "stopped with Esc"
        assert by_arm["q8_0"].status == "stopped" and by_arm["q8_0"].reason == "not run"
        assert "stopped" in str(compare.query_one("#arm-f16", ArmPanel).query_one(".arm-status").render())


async def test_a_full_disk_costs_the_report_not_the_app(model_path, monkeypatch) -> None:
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("app.ui.screens._compare.write_atomic", full)
    app = make(model_path)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        compare = app.screen
        compare.query_one("#compare-question").value = "Who designed the railway?"
        await pilot.click("#compare-run")
        await until(pilot, lambda: bool(compare.results), steps=500)
        said: list[str] = []
        monkeypatch.setattr(compare, "notify", lambda message, **kwargs: said.append(message))
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert compare.report_path is None and app.is_running
        assert said and "(No space left on device); free some disk space and press Ctrl+S again." in said[0]


async def palette(pilot, command: str) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause(0.2)
    await pilot.press(*command)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await pilot.pause(0.2)


async def start_slow_comparison(pilot, app, words: int | None = 6000):
    """The comparison running its first arm slowly (6,000 words: each arm would take 2 minutes)."""
    chat = app.chat_screen
    await until(pilot, lambda: chat.state == "ready")
    CountedEngine.slow = True
    if words is not None:
        CountedEngine.words = words
    await pilot.press("f2")
    await until(pilot, lambda: isinstance(app.screen, CompareScreen))
    compare = app.screen
    compare.query_one("#compare-question").value = "Tell me everything."
    await pilot.click("#compare-run")
    await until(pilot, lambda: compare.query_one("#arm-f16", ArmPanel).result.status == "answering", steps=500)
    return compare


async def test_the_chat_closes_its_own_engine_for_the_arms_and_nothing_restarts_it_meanwhile(model_path,
                                                                                           monkeypatch) -> None:
    app = make(model_path)
    async with app.run_test(size=(140, 40)) as pilot:
        chat = app.chat_screen
        compare = await start_slow_comparison(pilot, app)
        assert chat.state is Phase.COMPARING and app.conversation.engine is None
        said: list[str] = []
        monkeypatch.setattr(chat, "notify", lambda message, **kwargs: said.append(message))
        # the palette's "Restart engine" over the running arms (it used to start the chat's engine beside them)
        await palette(pilot, "restart engine")
        await pilot.pause(0.3)
        assert app.conversation.engine is None and chat.state is Phase.COMPARING
        assert said == ["The arms are being compared with the chat's engine closed; go back to the chat (Esc) to "
                        "restart the engine."]
        await palette(pilot, "open document")
        assert app.screen is compare and len(said) == 2  # no file dialog over the comparison
        await pilot.press("escape")  # stops the arms
        await until(pilot, lambda: bool(compare.results), steps=500)
        CountedEngine.slow = False
        await pilot.press("escape")  # back to the chat, which starts its engine again
        await until(pilot, lambda: app.screen is chat and chat.state == "ready", steps=500)
        assert app.conversation.engine is not None and len(CountedEngine.open_engines) == 1


async def test_stop_in_the_command_palette_stops_the_comparison_in_front(model_path) -> None:
    app = make(model_path)
    async with app.run_test(size=(140, 40)) as pilot:
        compare = await start_slow_comparison(pilot, app)
        await palette(pilot, "stop answer")  # it used to reach the chat's Stop, behind the comparison
        await until(pilot, lambda: bool(compare.results), steps=500)
        assert [(r.arm, r.status, r.reason) for r in compare.results] == [
            ("f16", "stopped", "stopped with Esc"), ("q8_0", "stopped", "not run"), ("d2", "stopped", "not run")]
        assert app.screen is compare

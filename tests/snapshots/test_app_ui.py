"""Pilot tests of the UI's paths that need no model: bad inputs, sessions, the palette, settings."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from textual.widgets import Input, Select, Switch

from app.errors import BinaryFileError, DocumentNotFoundError, EmptyDocumentError
from app.samples import DEFAULT_SAMPLE
from app.sessions import Session, Turn
from app.settings import Settings
from app.ui import create_app
from app.ui.screens._chat_workers import STREAM_BATCH_S
from app.ui.screens import CompareScreen, OpenDialog, SettingsScreen
from app.ui.widgets import AnswerView, QuestionView
from app_fakes import ANSWER, FakeEngine, FakeSampler
from engine.errors import EngineCrashedError
from engine.events import Token
from engine.sampling import GREEDY


def make_app(model_path: Path, paths=(DEFAULT_SAMPLE,), factory=FakeEngine, **kwargs):
    return create_app(Settings(n_ctx=8192, max_tokens=64), list(paths), model_path, factory=factory,
                      sampler=FakeSampler(available=False), vram_refresh_s=0, **kwargs)


async def until(pilot, condition, steps: int = 250) -> None:
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError("the app did not get there")


def status(screen) -> str:
    return str(screen.query_one("#doc-status").render())


async def test_bad_inputs_are_shown_in_one_sentence(model_path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    app = make_app(model_path, paths=())
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        for path, error in ((empty, EmptyDocumentError), (binary, BinaryFileError)):
            screen.open_paths([path])
            await until(pilot, lambda: screen.state == "empty")
            await pilot.pause(0.1)
            assert status(screen) == str(error(str(path)))
        # the Open dialog names a missing file and stays open
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, OpenDialog))
        app.screen.query_one("#open-path", Input).value = f"'{tmp_path / 'gone.pdf'}'"
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert str(app.screen.query_one("#open-error").render()) == str(DocumentNotFoundError(str(tmp_path / "gone.pdf")))
        app.screen.query_one("#open-path", Input).value = f"file://{DEFAULT_SAMPLE}"
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready")
        assert app.document is not None and app.document.title == DEFAULT_SAMPLE.name


async def test_a_saved_session_reopens_with_its_transcript(model_path) -> None:
    from app.ingest import load_document

    doc = load_document(DEFAULT_SAMPLE)
    session = Session(str(DEFAULT_SAMPLE), doc.title, doc.sha256,
                      turns=[Turn("user", "Who designed the railway?"), Turn("assistant", "Marta Quell.", "f16")])
    session.save()
    app = make_app(model_path, paths=(), session=Session.load(session.id))
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.chat_screen
        await until(pilot, lambda: screen.state == "ready")
        assert [q.render().plain for q in screen.query(QuestionView)] == ["Who designed the railway?"]
        assert [a.text for a in screen.query(AnswerView)] == ["Marta Quell."]
        # the next question carries the transcript and is saved into the same session file
        assert screen.conversation.messages_for("And when?")[1]["content"] == "Who designed the railway?"
        screen.query_one("#question").value = "When did it open?"
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready" and screen.last_done is not None)
        saved = json.loads(session.path.read_text())
        assert [t["content"] for t in saved["turns"]][-2] == "When did it open?"


async def test_command_palette_reaches_compare_and_settings(model_path, app_dirs: Path) -> None:
    app = make_app(model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"compare arms")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        await pilot.press("escape")
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#set-ctx", Input).value = "100"
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert "between 256 and 131,072 tokens, not 100" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#set-ctx", Input).value = "4096"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.settings.n_ctx == 4096
        assert json.loads((app_dirs / "config" / "settings.json").read_text())["n_ctx"] == 4096
        await until(pilot, lambda: app.chat_screen.state == "ready")  # the engine restarted
        assert app.conversation.engine.spec.n_ctx == 4096


async def test_rpc_servers_are_set_checked_and_restart_the_engine(model_path, app_dirs: Path) -> None:
    app = create_app(Settings(n_ctx=8192, max_tokens=64, rpc_servers="10.0.0.2:50052"), [DEFAULT_SAMPLE],
                     model_path, factory=FakeEngine, sampler=FakeSampler(available=False), vram_refresh_s=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        engine = app.conversation.engine
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        field = app.screen.query_one("#set-rpc", Input)
        assert field.value == "10.0.0.2:50052"  # what --rpc or FRAQTL_RPC_SERVERS set is shown
        for bad in ("gpu-box", "gpu-box:port", "10.0.0.2:50052;10.0.0.3:50052", "[::1]:50052", "h:70000"):
            field.value = bad
            await pilot.press("ctrl+s")
            await pilot.pause(0.05)
            message = str(app.screen.query_one("#settings-error").render())
            assert "is not an RPC server address; write host:port" in message and "separated by commas" in message
            assert isinstance(app.screen, SettingsScreen)
        assert not (app_dirs / "config" / "settings.json").exists()  # nothing unusable was saved
        field.value = " 10.0.0.2:50052 , gpu-b:50053,10.0.0.2:50052 "
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.settings.rpc_servers == "10.0.0.2:50052,gpu-b:50053"
        assert json.loads((app_dirs / "config" / "settings.json").read_text())["rpc_servers"] == app.settings.rpc_servers
        await until(pilot, lambda: app.conversation.engine is not engine and app.chat_screen.state == "ready")
        assert app.conversation.engine.spec.rpc_servers == ("10.0.0.2:50052", "gpu-b:50053")
        engine = app.conversation.engine
        await pilot.press("f4")  # emptied: every layer on this machine again
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#set-rpc", Input).value = ""
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.conversation.engine is not engine and app.chat_screen.state == "ready")
        assert app.settings.rpc_servers == "" and app.conversation.engine.spec.rpc_servers == ()


async def test_the_vram_panel_lists_each_gpu_with_its_estimate(model_path) -> None:
    # two fake GPUs behind the real NvmlSampler: each GPU's live figure, its share of the estimate, the total
    from app.ui.widgets._vram_panel import VramPanel
    from app_fakes import TwoGpuSampler

    sampler = TwoGpuSampler()
    app = create_app(Settings(n_ctx=8192, max_tokens=64), [DEFAULT_SAMPLE], model_path, factory=FakeEngine,
                     sampler=sampler, vram_refresh_s=0)
    async with app.run_test(size=(130, 40)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        panel = app.screen.query_one(VramPanel)
        panel.refresh_figures()
        live = str(panel.query_one("#vram-live").render())
        assert [track.peak_process for track in sampler.gpus] == [812 * 2**20, 690 * 2**20]
        assert "GPU 0 NVIDIA H200" in live and "GPU 1 NVIDIA H200" in live
        # the last samples (810 and 688 MiB per process), the total, and the device peak of both together
        assert "engine 810 MiB · est" in live and "engine 688 MiB · est" in live
        assert "all GPUs: engine 1.46 GiB" in live
        assert f"device peak {4 + (812 + 690) / 1024:.2f} GiB" in live


async def test_the_vram_panel_says_why_d2_stands_above_f16_for_a_short_document(model_path, monkeypatch) -> None:
    # the engine's own estimates (the fixture's fixed ones never put d2 above f16): the sample is under
    # D2's window, so d2's exact copies and bases cost more than its compressed cells save
    import engine.estimates as estimates
    from app.ui.widgets._vram_panel import VramPanel, human
    from engine.arms import ArmConfig

    monkeypatch.setattr("app.ui.widgets._vram_panel.estimate", estimates.estimate)
    app = make_app(model_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.chat_screen.state == "ready")
        panel = app.screen.query_one(VramPanel)
        info, doc = panel.info, panel.doc_tokens
        d2, f16 = ArmConfig.parse("d2"), ArmConfig.parse("f16")
        assert estimates.estimate(info, d2, doc).total_bytes > estimates.estimate(info, f16, doc).total_bytes
        even = estimates.break_even_tokens(info, d2, f16, max(info.n_ctx_train, panel.n_ctx))
        assert even is not None and doc < even <= panel.n_ctx
        shown = str(panel.query_one("#vram-estimates").render())
        assert (f"d2 keeps the last {d2.recipe.window:,} tokens and the first {d2.recipe.sinks} exact (fp16), with "
                f"its bases: a fixed {human(estimates.d2_fixed_bytes(info, d2))}; from about {even:,} tokens it is "
                "the smaller.") in shown
        # a document past the break-even point: d2 is the smaller everywhere, and nothing needs saying
        panel.set_context(info, panel.n_ctx, even, panel.arm)
        assert "d2 keeps" not in str(panel.query_one("#vram-estimates").render())


class GatedEngine(FakeEngine):
    """Streams its first word, then waits for the test to open the gate before the rest."""

    gate = threading.Event()

    def answer(self, messages, max_tokens=256, sampling=GREEDY):
        for event in super().answer(messages, max_tokens, sampling):
            if max_tokens and isinstance(event, Token) and event.token_id == 100:
                time.sleep(STREAM_BATCH_S)  # so that the word is posted, not held for the next batch
                yield event
                GatedEngine.gate.wait(30)
                continue
            yield event


class GatedCrashingEngine(GatedEngine):
    """Streams its first word, waits for the gate, then dies as a killed engine process does."""

    def answer(self, messages, max_tokens=256, sampling=GREEDY):
        for event in super().answer(messages, max_tokens, sampling):
            if max_tokens and GatedEngine.gate.is_set() and isinstance(event, Token) and event.token_id != 100:
                raise EngineCrashedError(self.spec.arm, "killed by SIGKILL")
            yield event


async def test_an_engine_that_dies_after_settings_were_saved_says_it_restarts_with_them(model_path,
                                                                                        app_dirs: Path) -> None:
    # the failure used to say "Press F5" while the settings saved during the answer already restarted it
    GatedEngine.gate.clear()
    app = make_app(model_path, factory=GatedCrashingEngine)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            chat = app.chat_screen
            statuses: list[str | None] = []
            advance = chat.advance
            chat.advance = lambda event, status=None: (statuses.append(status), advance(event, status))[1]
            await until(pilot, lambda: chat.state == "ready")
            engine = app.conversation.engine
            chat.query_one("#question").value = "Who designed the railway?"
            await pilot.press("enter")
            await until(pilot, lambda: chat.current_answer is not None and bool(chat.current_answer.text))
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#set-arm", Select).value = "q8_0"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
            GatedEngine.gate.set()
            await until(pilot, lambda: app.conversation.engine is not engine and chat.state == "ready")
            assert len([a for a in chat.query(AnswerView) if a.has_class("failed")]) == 1
            died = [status for status in statuses if status and "killed by SIGKILL" in status]
            assert len(died) == 1 and died[0].endswith(" The engine restarts now with the settings saved during the answer.")
            assert app.conversation.engine.spec.arm == "q8_0"
    finally:
        GatedEngine.gate.set()


async def test_settings_saved_while_an_answer_streams_say_when_each_applies(model_path, app_dirs: Path) -> None:
    # the old notice said only "Settings saved", and the new arm and context waited for an F5 nobody was
    # told to press; now the engine restarts with them when the answer ends, and nothing typed is lost
    GatedEngine.gate.clear()
    app = make_app(model_path, factory=GatedEngine)
    notes: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kwargs: (notes.append(message), notify(message, **kwargs))[1]
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            chat = app.chat_screen
            await until(pilot, lambda: chat.state == "ready")
            engine = app.conversation.engine
            chat.query_one("#question").value = "Who designed the railway?"
            await pilot.press("enter")
            await until(pilot, lambda: chat.current_answer is not None and bool(chat.current_answer.text))
            chat.query_one("#question").value = "And when did it open?"  # typed, not yet asked
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#set-arm", Select).value = "q8_0"
            app.screen.query_one("#set-ctx", Input).value = "4096"
            app.screen.query_one("#set-temperature", Input).value = "0.7"
            app.screen.query_one("#set-q4", Switch).value = True
            await pilot.press("ctrl+s")
            await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
            assert notes[-1] == (
                "Settings saved. Cache arm, context size: the engine restarts with the q8_0 cache when this "
                "answer ends (Esc ends it now); the transcript and the question box stay. Temperature: from the "
                "next question; this answer keeps the ones it started with. Comparing q4_0 too: from the next "
                "comparison.")
            await pilot.pause(0.2)
            assert chat.state == "answering" and app.conversation.engine is engine  # the answer goes on
            GatedEngine.gate.set()
            await until(pilot, lambda: app.conversation.engine is not engine and chat.state == "ready")
            assert (app.conversation.engine.spec.arm, app.conversation.engine.spec.n_ctx) == ("q8_0", 4096)
            assert [t.content for t in app.conversation.session.turns] == ["Who designed the railway?", ANSWER]
            assert [a.text for a in chat.query(AnswerView)] == [ANSWER]
            assert chat.query_one("#question").value == "And when did it open?"
            # not answering: the restart is now, and sampling from the next question
            engine = app.conversation.engine
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#set-arm", Select).value = "f16"
            app.screen.query_one("#set-temperature", Input).value = "0"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.conversation.engine is not engine and chat.state == "ready")
            assert notes[-1] == ("Settings saved. Cache arm: the engine restarts now with the f16 cache; the "
                                 "transcript stays. Temperature: from the next question.")
    finally:
        GatedEngine.gate.set()

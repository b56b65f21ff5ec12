"""The arm comparison view: one question, each arm in its own engine process, side by side.

The chat's engine would count in every arm's peak VRAM: this screen asks the chat, which owns it, to
close it (:class:`~app.ui.messages.EngineReleaseRequested`) and runs the arms once it is closed; the
chat starts it again when it is shown again. This screen never closes or starts the chat's engine.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Static

from engine.files import write_atomic
from app.compare import ArmResult, compare_arms, report_markdown, run_comparison
from app.ui.messages import (
    ArmUpdated,
    ComparisonCompleted,
    EngineReleased,
    EngineReleaseRefused,
    EngineReleaseRequested,
)
from app.ui.widgets import ArmPanel
from engine import locations

if TYPE_CHECKING:
    from app.ui.app import FraqtlApp


class CompareScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Stop / back to chat"),
        Binding("ctrl+r", "run", "Run"),
        Binding("ctrl+s", "save_report", "Save report"),
    ]
    DEFAULT_CSS = """
    CompareScreen #compare-bar { height: auto; padding: 0 1; }
    CompareScreen #compare-question { width: 1fr; }
    CompareScreen #compare-bar Button { margin-left: 1; }
    CompareScreen #arms { height: 1fr; }
    CompareScreen #compare-note { height: auto; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, question: str = "") -> None:
        super().__init__()
        self.question = question
        self.results: list[ArmResult] = []
        self.report_path = None
        self.running = False
        self._cancel = False
        self.chat_engine_released = False  # the chat closed its engine for the arms (it restarts it after)

    @property
    def fraqtl(self) -> FraqtlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare-bar"):
            yield Input(self.question, placeholder="The question every arm answers", id="compare-question")
            yield Button("Run", variant="primary", id="compare-run")
            yield Button("Save report", id="compare-save", disabled=True)
        self.arms = compare_arms(self.fraqtl.settings)
        with Horizontal(id="arms"):
            for arm in self.arms:
                yield ArmPanel(arm)
        note = self.fraqtl.sampler.unavailable_reason
        yield Static("Arms run one after another, each in its own engine process; the chat's engine is closed "
                     "meanwhile and restarts when you go back. Esc stops the running arm. " +
                     (f"Peak VRAM: {note}" if note else "Peak VRAM is measured with NVML."), id="compare-note")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Arm comparison"
        self.query_one("#compare-question", Input).focus()

    @on(Input.Submitted, "#compare-question")
    @on(Button.Pressed, "#compare-run")
    async def action_run(self) -> None:
        question = self.query_one("#compare-question", Input).value.strip()
        if not question:
            self.notify("Type the question every arm should answer.", severity="warning", markup=False)
            return
        if self.fraqtl.document is None:
            self.notify("Open a document first.", severity="warning", markup=False)
            return
        if self.running:
            self.notify("A comparison is already running.", severity="warning", markup=False)
            return
        if self.fraqtl.chat_state.busy:
            self.notify("The chat is still preparing or answering; wait for it, or stop it with Esc in the chat.",
                        severity="warning", markup=False)
            return
        self.running = True
        self._cancel = False
        self.question = question
        self.query_one("#compare-save", Button).disabled = True
        for panel in self.query(ArmPanel):
            await panel.show(ArmResult(panel.arm))
        if self.chat_engine_released:
            self.run_arms(question)
        else:  # the arms run when the chat has closed its engine (EngineReleased)
            self.fraqtl.chat_screen.post_message(EngineReleaseRequested(self))

    @on(EngineReleased)
    def engine_released(self) -> None:
        self.chat_engine_released = True
        if self.running:  # stopped meanwhile: the arms are reported as not run
            self.run_arms(self.question)

    @on(EngineReleaseRefused)
    def engine_release_refused(self, message: EngineReleaseRefused) -> None:
        self.running = False
        self.notify(message.reason, severity="warning", markup=False)

    @work(thread=True, exclusive=True, group="compare")
    def run_arms(self, question: str) -> None:
        app = self.fraqtl
        assert app.document is not None
        results = run_comparison(
            app.document, question, app.settings, app.model_path, self.arms, factory=app.factory,
            sampler=app.sampler if app.sampler.available else None,
            on_update=lambda r, e: self.post_message(ArmUpdated(dataclasses.replace(r))),
            should_stop=lambda: self._cancel,
        )
        self.post_message(ComparisonCompleted(results))

    @on(ArmUpdated)
    async def arm_updated(self, message: ArmUpdated) -> None:
        panel = self.query_one(f"#arm-{message.result.arm.replace(':', '-')}", ArmPanel)
        await panel.show(message.result)

    @on(ComparisonCompleted)
    async def comparison_completed(self, message: ComparisonCompleted) -> None:
        self.running = False
        for result in message.results:
            await self.arm_updated(ArmUpdated(result))
        self.results = message.results
        self.query_one("#compare-save", Button).disabled = False
        done = sum(r.ok for r in message.results)
        self.notify(f"Compared {len(message.results)} arms: {done} answered.", markup=False)

    @on(Button.Pressed, "#compare-save")
    def action_save_report(self) -> None:
        if not self.results:
            self.notify("Run the comparison first.", severity="warning", markup=False)
            return
        app = self.fraqtl
        assert app.document is not None
        text = report_markdown(app.document, self.question, self.results, app.model_path.name, app.settings,
                               app.sampler.unavailable_reason)
        path = locations.data_dir() / "reports" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.md"
        try:
            write_atomic(path, text)
        except OSError as exc:  # a full disk costs the report, never the comparison on screen
            self.notify(f"The report could not be written to {path.parent} ({exc.strerror}); free some disk "
                        "space and press Ctrl+S again.", severity="error", timeout=10, markup=False)
            return
        self.report_path = path
        self.notify(f"Saved the report to {path}.", markup=False)

    def stop_arms(self) -> bool:
        """Stop the arm that is running, and the ones after it; False when none runs."""
        if not self.running:
            return False
        self._cancel = True
        self.notify("Stopping the comparison…", markup=False)
        return True

    def action_stop(self) -> None:
        if not self.stop_arms():
            self.notify("No comparison is running.", markup=False)

    def action_back(self) -> None:
        if not self.stop_arms():  # Esc first stops a running comparison, then leaves
            self.app.pop_screen()  # the chat restarts the engine it closed for the arms

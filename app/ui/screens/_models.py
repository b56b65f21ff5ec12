"""The models screen (F7): the GGUFs the app knows, what each is, its D2 sidecars, and calibration.

Listed: the model in use, the bundled default, every ``*.gguf`` in the data dir's ``models/`` folder, and the
files opened lately (``Open a GGUF…`` adds one through a file dialog). Choosing "Use this
model" dismisses with the model's path; the app saves the setting and restarts the engine.
A calibration runs ``fraqtl-calibrate``'s code in its own process with a progress bar, then
(unless its held-out tokens are 0) scores the recipes on text it did not calibrate on and shows
the recipe it recommends and its score; Stop (or leaving the screen) keeps every finished
sequence, so Calibrate resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from app.model_library import ModelCard, RecentModels, calibration_dir, listed_models, sidecar_status
from app.ui.messages import CalibrationEnded, CalibrationProgressed, SidecarsChecked
from app.ui.screens._dialogs import DIALOG_CSS
from engine.calibrate.choose import DEFAULT_HOLDOUT
from engine.calibrate.run import DEFAULT_TOKENS, CalibrationConfig, CalibrationProgress
from engine.calibrate.worker import CalibrationDone, CalibrationWorker
from engine.errors import EngineError

if TYPE_CHECKING:
    from app.ui.app import FraqtlApp

MIN_CALIBRATION_TOKENS = 256
MIN_HOLDOUT_TOKENS = 64
MAX_CALIBRATION_TOKENS = 1_048_576


class GgufFileDialog(ModalScreen[Path | None]):
    """Pick a GGUF file: browse folders (only .gguf files are shown) or type a path."""

    DEFAULT_CSS = DIALOG_CSS.format(name="GgufFileDialog") + "GgufFileDialog DirectoryTree { height: 20; }"
    BINDINGS = [("escape", "dismiss(None)", "Cancel")]

    def __init__(self, start: Path) -> None:
        super().__init__()
        self.start = start

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Open a GGUF model", classes="dialog-title")
            yield GgufTree(self.start, id="gguf-tree")
            yield Input(placeholder="/path/to/model.gguf", id="gguf-path")
            yield Static("", classes="dialog-error", id="gguf-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Open", variant="primary", id="gguf-open")
                yield Button("Cancel", id="gguf-cancel")

    def on_mount(self) -> None:
        self.query_one("#gguf-path", Input).focus()  # type or paste straight away; Tab reaches the folders

    @on(DirectoryTree.FileSelected)
    def file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#gguf-path", Input).value = str(event.path)
        self.submit()

    @on(Input.Submitted, "#gguf-path")
    @on(Button.Pressed, "#gguf-open")
    def submit(self) -> None:
        raw = self.query_one("#gguf-path", Input).value.strip().strip("'\"")
        if not raw:
            self.query_one("#gguf-error", Static).update("Choose a .gguf file above or type its path.")
            return
        try:
            card = ModelCard.read(Path(raw).expanduser())
        except EngineError as exc:
            self.query_one("#gguf-error", Static).update(Text(str(exc)))
            return
        self.dismiss(card.path)

    @on(Button.Pressed, "#gguf-cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class GgufTree(DirectoryTree):
    """Folders and .gguf files only."""

    def filter_paths(self, paths):  # type: ignore[no-untyped-def]
        return [p for p in paths if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() == ".gguf")]


class ModelsScreen(ModalScreen[Path | None]):
    """The known models; dismisses with the path of the model to use, or None."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("ctrl+o", "open_gguf", "Open a GGUF")]
    DEFAULT_CSS = """
    ModelsScreen { align: center middle; }
    ModelsScreen > Vertical { width: 96%; height: 94%; border: thick $primary; background: $surface; padding: 0 1; }
    ModelsScreen .models-title { text-style: bold; color: $accent; margin: 1 0 0 0; }
    ModelsScreen #models-list { width: 42; height: 1fr; }
    ModelsScreen #models-card { width: 1fr; height: 1fr; padding: 0 1; }
    ModelsScreen #models-sidecars { margin-top: 1; }
    ModelsScreen #models-error { color: $error; height: auto; }
    ModelsScreen .models-row { height: auto; margin-top: 1; }
    ModelsScreen .models-row Label { padding-top: 1; }
    ModelsScreen #calibrate-tokens { width: 14; }
    ModelsScreen #calibrate-holdout { width: 12; }
    ModelsScreen #calibrate-bar { margin: 1 1 0 1; width: 40; }
    ModelsScreen #calibrate-status { height: auto; color: $text-muted; }
    ModelsScreen Button { margin-right: 1; }
    """

    def __init__(self, in_use: Path) -> None:
        super().__init__()
        self.in_use = in_use
        self.models = listed_models(RecentModels.load(), in_use)
        self.cards: dict[Path, ModelCard | EngineError] = {}
        self.calibration: CalibrationWorker | None = None
        self.calibrating: Path | None = None
        self.checks = 0  # sidecar checks running, for tests and the status line

    @property
    def fraqtl(self) -> FraqtlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Models", classes="models-title")
            with Horizontal():
                yield OptionList(id="models-list")
                with VerticalScroll(id="models-card"):
                    yield Static("", id="models-facts")
                    yield Static("", id="models-sidecars")
                    with Horizontal(classes="models-row"):
                        yield Label("Calibration tokens ")
                        yield Input(str(DEFAULT_TOKENS), type="integer", id="calibrate-tokens")
                        yield Label(" held out ")
                        yield Input(str(DEFAULT_HOLDOUT), type="integer", id="calibrate-holdout",
                                    tooltip="tokens after the calibrated ones on which the recipes are scored; "
                                            "the best becomes plain d2's recipe (0: keep the locked recipe)")
                        yield ProgressBar(show_eta=False, id="calibrate-bar")
                    yield Static("", id="calibrate-status")
                    yield Static("", id="models-error")
            with Horizontal(classes="models-row"):
                yield Button("Use this model", variant="primary", id="models-use")
                yield Button("Open a GGUF…", id="models-open")
                yield Button("Calibrate D2", id="models-calibrate")
                yield Button("Stop calibration", variant="error", id="models-stop", disabled=True)
                yield Button("Close", id="models-close")

    def on_mount(self) -> None:
        self.query_one("#calibrate-bar", ProgressBar).display = False  # until a calibration starts
        self.fill_list(self.in_use)

    # -------------------------------------------------------------- the list and the card

    def fill_list(self, highlight: Path) -> None:
        listed = self.query_one("#models-list", OptionList)
        listed.clear_options()
        for path in self.models:
            listed.add_option(Option(Text(self.label(path)), id=str(path)))
        index = next((i for i, p in enumerate(self.models) if same_file(p, highlight)), 0)
        if self.models:
            listed.highlighted = index
            self.show_card(self.models[index])
        listed.focus()

    def label(self, path: Path) -> str:
        card = self.card(path)
        notes = [n for n, on_ in (("in use", same_file(path, self.in_use)),
                                  ("bundled", isinstance(card, ModelCard) and card.bundled)) if on_]
        name = card.name if isinstance(card, ModelCard) else path.name
        return name + (f" · {', '.join(notes)}" if notes else "")

    def card(self, path: Path) -> ModelCard | EngineError:
        if path not in self.cards:
            try:
                self.cards[path] = ModelCard.read(path)
            except EngineError as exc:
                self.cards[path] = exc
        return self.cards[path]

    def highlighted(self) -> Path | None:
        option = self.query_one("#models-list", OptionList).highlighted_option
        return Path(option.id) if option is not None and option.id else None

    @on(OptionList.OptionHighlighted, "#models-list")
    def model_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.show_card(Path(event.option.id))

    @on(OptionList.OptionSelected, "#models-list")
    def model_selected(self, event: OptionList.OptionSelected) -> None:
        self.use()

    def show_card(self, path: Path) -> None:
        card = self.card(path)
        facts = self.query_one("#models-facts", Static)
        if isinstance(card, EngineError):
            facts.update(Text(str(card)))
            self.query_one("#models-sidecars", Static).update("")
            return
        text = Text()
        for label, value in card.facts():
            text.append(f"{label:<26}", style="bold")
            text.append(f"{value}\n")
        facts.update(text)
        self.query_one("#models-sidecars", Static).update("D2 sidecars              checking…")
        self.checks += 1
        self.check_sidecars(path)

    @work(thread=True, group="sidecars", exclusive=True)
    def check_sidecars(self, path: Path) -> None:
        self.post_message(SidecarsChecked(path, sidecar_status(path)))

    @on(SidecarsChecked)
    def sidecars_checked(self, message: SidecarsChecked) -> None:
        self.checks -= 1
        if same_file(message.path, self.highlighted() or Path()):
            self.query_one("#models-sidecars", Static).update(
                Text(f"{'D2 sidecars':<26}", style="bold") + Text(message.status.detail))

    # -------------------------------------------------------------- actions

    @on(Button.Pressed, "#models-use")
    def use(self) -> None:
        path = self.highlighted()
        if path is None:
            return
        card = self.card(path)
        if isinstance(card, EngineError):
            self.say(str(card))
            return
        if self.calibrating is not None:
            self.say("A calibration is running; stop it first, or wait until it finishes.")
            return
        self.dismiss(path)

    @on(Button.Pressed, "#models-open")
    def action_open_gguf(self) -> None:
        def opened(path: Path | None) -> None:
            if path is None:
                return
            RecentModels.add(path)
            if not any(same_file(path, p) for p in self.models):
                self.models.append(path)
            self.fill_list(path)

        start = self.highlighted() or Path.home()
        self.app.push_screen(GgufFileDialog(start.parent if start.is_file() else start), opened)

    @on(Button.Pressed, "#models-calibrate")
    def calibrate(self) -> None:
        path = self.highlighted()
        if path is None or self.calibrating is not None:
            return
        raw = self.query_one("#calibrate-tokens", Input).value.strip().replace("_", "").replace(",", "")
        if not raw.isdigit() or not MIN_CALIBRATION_TOKENS <= int(raw) <= MAX_CALIBRATION_TOKENS:
            self.say(f"The calibration tokens must be a whole number between {MIN_CALIBRATION_TOKENS:,} and "
                     f"{MAX_CALIBRATION_TOKENS:,}, not {raw or '(empty)'}; {DEFAULT_TOKENS:,} is a good start.")
            return
        held = self.query_one("#calibrate-holdout", Input).value.strip().replace("_", "").replace(",", "")
        if not held.isdigit() or not (int(held) == 0 or MIN_HOLDOUT_TOKENS <= int(held) <= MAX_CALIBRATION_TOKENS):
            self.say(f"The held-out tokens must be 0 (no recipe choice) or a whole number between "
                     f"{MIN_HOLDOUT_TOKENS:,} and {MAX_CALIBRATION_TOKENS:,}, not {held or '(empty)'}; "
                     f"{DEFAULT_HOLDOUT:,} is the default.")
            return
        # the held-out choice writes the manifest's recommended recipe, which plain d2 uses
        config = CalibrationConfig(model_path=path, out_dir=calibration_dir(path), tokens=int(raw),
                                   n_threads=self.fraqtl.settings.n_threads or None, holdout=int(held))
        self.calibrating = path
        self.calibration = CalibrationWorker(config)
        self.say("")
        self.query_one("#calibrate-status", Static).update(Text(f"Starting the calibration of {path.name}…"))
        self.set_calibrating(True)
        self.run_calibration(self.calibration, path)

    @work(thread=True, group="calibration")
    def run_calibration(self, worker: CalibrationWorker, path: Path) -> None:
        for event in worker.events():
            if isinstance(event, CalibrationProgress):
                self.post_message(CalibrationProgressed(event))
            else:
                self.post_message(CalibrationEnded(path, event))

    @on(CalibrationProgressed)
    def calibration_progressed(self, message: CalibrationProgressed) -> None:
        p = message.progress
        self.query_one("#calibrate-bar", ProgressBar).update(total=p.tokens_total, progress=p.tokens_done)
        if p.choosing_recipe:
            self.query_one("#calibrate-status", Static).update(Text(
                f"Sidecars written from {p.tokens_done:,} tokens; choosing the recipe: scoring each candidate "
                f"against the f16 cache on {p.holdout_tokens:,} held-out tokens…"))
            return
        resumed = f" ({p.resumed_tokens:,} resumed)" if p.resumed_tokens else ""
        self.query_one("#calibrate-status", Static).update(Text(
            f"Calibrating: sequence {p.sequence} of {p.n_sequences}, {p.tokens_done:,} / {p.tokens_total:,} "
            f"tokens{resumed} · {p.tok_s:,.0f} tok/s · ETA {p.eta_s:,.0f} s · Stop keeps the finished sequences"))

    @on(CalibrationEnded)
    def calibration_ended(self, message: CalibrationEnded) -> None:
        outcome = message.outcome
        self.calibrating, self.calibration = None, None
        self.set_calibrating(False)
        status = self.query_one("#calibrate-status", Static)
        if isinstance(outcome, CalibrationDone):
            resumed = f", {outcome.resumed_tokens:,} of them resumed" if outcome.resumed_tokens else ""
            status.update(Text(f"Calibrated from {outcome.tokens:,} tokens{resumed} in {outcome.seconds:,.0f} s; "
                               f"the sidecars are in {outcome.k_path.parent}. {recipe_line(outcome)} "
                               "Choose the d2 arm in the settings (F4)."))
            self.notify(f"D2 sidecars written for {message.path.name}.", markup=False)
        else:
            status.update(Text(outcome.message))
            if not outcome.stopped:
                self.say(outcome.message)
        if same_file(message.path, self.highlighted() or Path()):
            self.show_card(message.path)

    @on(Button.Pressed, "#models-stop")
    def stop_calibration(self) -> None:
        if self.calibration is not None:
            self.calibration.stop()
            self.query_one("#calibrate-status", Static).update("Stopping at the next batch…")

    def set_calibrating(self, running: bool) -> None:
        bar = self.query_one("#calibrate-bar", ProgressBar)
        if running:
            bar.update(total=None, progress=0)
        bar.display = True  # shown from the first calibration on; it keeps the last run's result
        self.query_one("#models-calibrate", Button).disabled = running
        self.query_one("#models-stop", Button).disabled = not running
        self.query_one("#calibrate-tokens", Input).disabled = running
        self.query_one("#calibrate-holdout", Input).disabled = running

    def say(self, text: str) -> None:
        self.query_one("#models-error", Static).update(Text(text))

    @on(Button.Pressed, "#models-close")
    def action_close(self) -> None:
        if self.calibration is not None:  # its finished sequences are saved; Calibrate resumes
            self.calibration.stop()
            self.notify("The calibration was stopped; its finished sequences are kept, and Calibrate D2 resumes it.",
                        severity="warning", markup=False)
        self.dismiss(None)


def recipe_line(done: CalibrationDone) -> str:
    """What the held-out choice picked, with its score, or why plain d2 keeps the locked recipe."""
    if done.recommended is None:
        why = done.why.removeprefix("none: ") if done.why else "the held-out choice was skipped (0 tokens)"
        return f"No recipe chosen ({why}); plain d2 uses the locked recipe."
    score = f" (mean KLD vs f16 {done.score:.5f} on the held-out tokens)" if done.score is not None else ""
    return f"Recommended recipe (what plain d2 uses): {done.recommended}{score}."


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return a == b

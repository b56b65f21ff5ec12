"""The settings screen: model, arm, recipe, context, YaRN, sidecar; saved with platformdirs."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch

from app.settings import Settings, SettingsError
from engine.arms import ALL_ARMS

if TYPE_CHECKING:
    from app.ui.app import FraqtlApp


class SettingsScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel"), Binding("ctrl+s", "save", "Save")]
    DEFAULT_CSS = """
    SettingsScreen { align: center middle; }
    SettingsScreen > Vertical { width: 90; height: 90%; border: thick $primary; background: $surface; padding: 0 2; }
    SettingsScreen .settings-title { text-style: bold; color: $accent; margin: 1 0; }
    SettingsScreen .field { height: auto; margin-bottom: 1; }
    SettingsScreen .field Label { width: 24; padding-top: 1; }
    SettingsScreen .field Input, SettingsScreen .field Select { width: 1fr; }
    SettingsScreen .hint { color: $text-muted; }
    SettingsScreen #settings-error { color: $error; height: auto; }
    SettingsScreen #settings-buttons { height: auto; dock: bottom; padding: 1 0; }
    SettingsScreen Button { margin-right: 1; }
    """

    @property
    def fraqtl(self) -> FraqtlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        s = self.fraqtl.settings
        arm, _, recipe = s.arm.partition(":")
        with Vertical():
            yield Label("Settings", classes="settings-title")
            with VerticalScroll():
                with Horizontal(classes="field"):
                    yield Label("Model (GGUF path)")
                    yield Input(s.model or "", placeholder="empty: SmolLM2-135M-Instruct (default)", id="set-model")
                with Horizontal(classes="field"):
                    yield Label("KV-cache arm")
                    yield Select([(a, a) for a in ALL_ARMS], value=arm if arm in ALL_ARMS else "f16",
                                 allow_blank=False, id="set-arm")
                with Horizontal(classes="field"):
                    yield Label("D2 recipe")
                    yield Input(recipe, placeholder="empty: locked recipe k16v32", id="set-recipe")
                with Horizontal(classes="field"):
                    yield Label("Context (tokens)")
                    yield Input(str(s.n_ctx), type="integer", id="set-ctx")
                with Horizontal(classes="field"):
                    yield Label("YaRN beyond training")
                    yield Switch(s.yarn, id="set-yarn")
                with Horizontal(classes="field"):
                    yield Label("D2 sidecar folder")
                    yield Input(s.sidecar or "", placeholder="empty: the one shipped for the model", id="set-sidecar")
                with Horizontal(classes="field"):
                    yield Label("Answer limit (tokens)")
                    yield Input(str(s.max_tokens), type="integer", id="set-max-tokens")
                with Horizontal(classes="field"):
                    yield Label("Compare q4_0 too")
                    yield Switch(s.compare_q4_0, id="set-q4")
                yield Static(f"Saved to {Settings.path()}. Any FRAQTL_<NAME> environment variable "
                             "(e.g. FRAQTL_ARM=q8_0) overrides a setting for one run.", classes="hint")
                yield Static("", id="settings-error")
            with Horizontal(id="settings-buttons"):
                yield Button("Save", variant="primary", id="settings-save")
                yield Button("Cancel", id="settings-cancel")

    @on(Button.Pressed, "#settings-save")
    def action_save(self) -> None:
        current = self.fraqtl.settings
        arm = str(self.query_one("#set-arm", Select).value)
        recipe = self.query_one("#set-recipe", Input).value.strip()
        try:
            candidate = dataclasses.replace(
                current,
                model=self.query_one("#set-model", Input).value.strip() or None,
                arm=f"{arm}:{recipe}" if arm == "d2" and recipe else arm,
                n_ctx=int(self.query_one("#set-ctx", Input).value or 0),
                yarn=self.query_one("#set-yarn", Switch).value,
                sidecar=self.query_one("#set-sidecar", Input).value.strip() or None,
                max_tokens=int(self.query_one("#set-max-tokens", Input).value or 0),
                compare_q4_0=self.query_one("#set-q4", Switch).value,
            ).validate()
            candidate.save()
        except (SettingsError, ValueError, OSError) as exc:
            self.query_one("#settings-error", Static).update(Text(str(exc)))
            return
        for field, value in vars(candidate).items():
            setattr(current, field, value)
        self.dismiss(True)

    @on(Button.Pressed, "#settings-cancel")
    def cancel(self) -> None:
        self.dismiss(False)

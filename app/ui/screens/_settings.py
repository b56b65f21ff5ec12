"""The settings screen: model, arm, recipe, context, YaRN, sidecar, RPC servers, sampling; saved with platformdirs."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch

from app.settings import Settings, SettingsError
from engine.arms import ALL_ARMS
from engine.rpc import parse_endpoints

if TYPE_CHECKING:
    from app.ui.app import FraqtlApp


class SettingsScreen(ModalScreen[Settings | None]):
    """Dismisses with the validated, saved settings, or None; the app, which owns the settings, applies them."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+s", "save", "Save")]
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
        # a named arm (d2:lite) is one choice; d2:<recipe> is "d2" plus the recipe field
        arm, _, recipe = (s.arm, "", "") if s.arm in ALL_ARMS else s.arm.partition(":")
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
                    yield Label("RPC servers")
                    yield Input(s.rpc_servers, placeholder="empty: all layers here; or host:port,host:port",
                                id="set-rpc")
                yield Static("Some layers then run on these hosts, each running fraqtl-chat rpc-server (no "
                             "authentication: a trusted network only).", classes="hint")
                with Horizontal(classes="field"):
                    yield Label("Answer limit (tokens)")
                    yield Input(str(s.max_tokens), type="integer", id="set-max-tokens")
                with Horizontal(classes="field"):
                    yield Label("Temperature")
                    yield Input(f"{s.temperature:g}", placeholder="0: greedy (the default)", id="set-temperature")
                with Horizontal(classes="field"):
                    yield Label("Top-p")
                    yield Input(f"{s.top_p:g}", placeholder="1: every token", id="set-top-p")
                with Horizontal(classes="field"):
                    yield Label("Repetition penalty")
                    yield Input(f"{s.repeat_penalty:g}", placeholder="1: off; 1.1–1.3 curbs repeats",
                                id="set-repeat-penalty")
                yield Static("Sampling applies to chat answers from the next question on; the arm comparison "
                             "always answers greedily, so its arms stay comparable.", classes="hint")
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
                n_ctx=self.number("#set-ctx", "The context", int),
                yarn=self.query_one("#set-yarn", Switch).value,
                sidecar=self.query_one("#set-sidecar", Input).value.strip() or None,
                max_tokens=self.number("#set-max-tokens", "The answer limit", int),
                temperature=self.number("#set-temperature", "The temperature", float),
                top_p=self.number("#set-top-p", "Top-p", float),
                repeat_penalty=self.number("#set-repeat-penalty", "The repetition penalty", float),
                compare_q4_0=self.query_one("#set-q4", Switch).value,
                rpc_servers=self.query_one("#set-rpc", Input).value.strip(),
            ).validate()
            candidate.rpc_servers = ",".join(parse_endpoints(candidate.rpc_servers))  # as llama.cpp gets them
            candidate.save()
        except (SettingsError, OSError) as exc:
            self.query_one("#settings-error", Static).update(Text(str(exc)))
            return
        self.dismiss(candidate)

    def number(self, selector: str, label: str, kind: type[int] | type[float]) -> Any:
        """The field's value as ``kind``; a SettingsError that names the field when it is not one."""
        raw = self.query_one(selector, Input).value.strip()
        try:
            return kind(raw.replace("_", ""))
        except ValueError:
            example = "a whole number, e.g. 8192" if kind is int else "a number, e.g. 0.7"
            raise SettingsError(f"{label} must be {example}, not {raw!r}.") from None

    @on(Button.Pressed, "#settings-cancel")
    def cancel(self) -> None:
        self.dismiss(None)

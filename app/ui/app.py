"""The Textual application: screens, bindings, the command palette, and the factory tests use.

The app owns the settings and the model path; the chat screen owns the chat (document,
conversation, phase). Each changes the other's only by posting it a message
(:class:`~app.ui.messages.ContextChosen`, :class:`~app.ui.messages.EngineRestartRequested`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from app.conversation import Conversation, EngineFactory
from app.ingest import Document
from app.sessions import Session
from app.settings import TAKES_EFFECT, Settings
from app.model_library import RecentModels, is_bundled
from app.ui.chat_state import ChatState, Phase
from app.ui.messages import ChatCommandChosen, ContextChosen, EngineRestartRequested
from app.ui.screens import ChatScreen, CompareScreen, ModelsScreen, SettingsScreen
from engine.models import resolve
from engine.nvml import NvmlSampler
from engine.worker import EngineWorker


def engine_pids() -> list[int]:
    """This process and its engine processes: what the VRAM panel watches."""
    try:
        children = mp.active_children()
    except RuntimeError:  # the set of children changed while a process was starting: try next time
        children = []
    return [os.getpid(), *(p.pid for p in children if p.pid)]


class FraqtlCommands(Provider):
    """One command palette entry for each action, run by the one who owns what it changes."""

    COMMANDS = [  # (name, help, action, owner: "chat" for the chat screen, "app" for the app)
        ("Open document", "Open a PDF, Markdown or text file", "open", "chat"),
        ("Stop answer", "Stop the answer, prefill or comparison now running", "stop", "chat"),
        ("Compare arms", "Answer one question with f16, q8_0 and d2 side by side", "compare", "app"),
        ("Sessions", "Reopen, rename or delete a saved document and transcript", "sessions", "chat"),
        ("Settings", "Model, arm, recipe, context, YaRN, sidecar, RPC servers", "settings", "app"),
        ("Restart engine", "Start the engine process again (after a crash or a settings change)", "restart_engine",
         "chat"),
        ("Toggle VRAM panel", "Show or hide the GPU memory panel", "toggle_vram", "chat"),
        ("Models", "Open a GGUF, see what it is, calibrate D2 sidecars for it (F7)", "models", "app"),
        ("Document view", "Read the text the model reads, page by page (F6)", "document", "chat"),
        ("Export transcript", "Save the questions and answers as Markdown", "export", "chat"),
        ("Save screenshot", "Save an SVG screenshot of this screen", "screenshot", "app"),
    ]

    async def _run(self, action: str, owner: str) -> None:
        """A screen in front of the chat runs a command it has itself (Stop stops the comparison's arms);
        otherwise the app runs its own, and the chat screen is posted the chat's: it runs them, or says why not."""
        app = self.app
        chat = app.chat_screen if isinstance(app, FraqtlApp) else None
        front = app.screen
        if front is not chat and hasattr(front, f"action_{action}"):
            await front.run_action(action)
        elif owner == "app" or chat is None:
            await app.run_action(action)
        else:
            chat.post_message(ChatCommandChosen(action))

    async def discover(self) -> Hits:
        for name, help_text, action, owner in self.COMMANDS:
            yield DiscoveryHit(name, partial(self._run, action, owner), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, action, owner in self.COMMANDS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self._run, action, owner), help=help_text)


class FraqtlApp(App[None]):
    TITLE = "fraqtl-chat"
    COMMANDS = App.COMMANDS | {FraqtlCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]
    CSS = """
    Screen { background: $background; }
    """

    def __init__(self, settings: Settings, model_path: Path, paths: Iterable[Path] = (),
                 factory: EngineFactory = EngineWorker, sampler: Any = None,
                 session: Session | None = None, vram_refresh_s: float = 0.5,
                 notes: Iterable[str] = ()) -> None:
        super().__init__()
        self.start_notes = list(notes)  # what start-up fell back on (bad settings, an unusable session)
        self.settings = settings
        self.model_path = model_path
        self.initial_paths = list(paths)
        self.initial_session = session
        self.factory = factory
        self.sampler = sampler if sampler is not None else NvmlSampler(pids=engine_pids)
        self.vram_refresh_s = vram_refresh_s
        self.chat_screen = ChatScreen()

    @property
    def chat_state(self) -> ChatState:
        """The chat's state, read-only here: the chat screen owns it."""
        return self.chat_screen.chat

    @property
    def document(self) -> Document | None:
        return self.chat_state.document

    @property
    def conversation(self) -> Conversation | None:
        return self.chat_state.conversation

    def get_default_screen(self) -> ChatScreen:
        return self.chat_screen

    def on_mount(self) -> None:
        if hasattr(self.sampler, "start"):
            self.sampler.start()
        for note in self.start_notes:
            self.notify(note, title="At start-up", severity="warning", timeout=20, markup=False)

    def on_unmount(self) -> None:
        if self.conversation is not None:
            self.conversation.close()
        if hasattr(self.sampler, "stop"):
            self.sampler.stop()

    def on_context_chosen(self, message: ContextChosen) -> None:
        self.settings.n_ctx = message.n_ctx  # for this run; the settings file keeps its own

    def action_compare(self) -> None:
        if self.document is None:
            self.notify("Open a document first (ctrl+o).", severity="warning", markup=False)
            return
        self.push_screen(CompareScreen(self.chat_screen.last_question))

    def action_settings(self) -> None:
        def saved(chosen: Settings | None) -> None:
            if chosen is None:
                return
            before = dataclasses.replace(self.settings)
            for field, value in vars(chosen).items():  # in place: the conversation reads this object
                setattr(self.settings, field, value)
            changed = self.settings.changed_from(before)
            self.model_path = resolve(self.settings.model)
            if self.conversation is not None and any(TAKES_EFFECT[f][1] == "engine" for f in changed):
                # mid-answer the chat restarts the engine once the answer is over; else now
                self.chat_screen.post_message(EngineRestartRequested(self.model_path, after_answer=True))
            self.notify(self.settings_notice(changed), timeout=10, markup=False)

        self.push_screen(SettingsScreen(), saved)

    def settings_notice(self, changed: list[str]) -> str:
        """The notice after saving: each change and when it takes effect, as the chat's phase makes it true."""
        if not changed:
            return "Settings saved; nothing changed."
        phase = self.chat_state.phase
        answering = phase is Phase.ANSWERING
        arm = self.settings.arm
        if self.conversation is None:
            engine = "used when the engine starts on a document"
        elif answering:
            engine = (f"the engine restarts with the {arm} cache when this answer ends (Esc ends it now); the "
                      "transcript and the question box stay")
        elif phase is Phase.COMPARING:
            engine = f"the chat's engine restarts with the {arm} cache when you go back to the chat"
        else:
            engine = f"the engine restarts now with the {arm} cache; the transcript stays"
        when = {
            "engine": engine,
            "question": "from the next question" + ("; this answer keeps the ones it started with" if answering
                                                    else ""),
            "comparison": "from the next comparison",
            "document": "from the next document read",
            "now": "now",
        }
        sentences = []
        for kind, effect in when.items():
            names = [TAKES_EFFECT[f][0] for f in changed if TAKES_EFFECT[f][1] == kind]
            if names:
                listed = ", ".join(names)
                sentences.append(f"{listed[0].upper()}{listed[1:]}: {effect}.")
        return " ".join(["Settings saved.", *sentences])

    def action_models(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                self.use_model(path)

        self.push_screen(ModelsScreen(self.model_path), chosen)

    def use_model(self, path: Path) -> None:
        """Make ``path`` the model (saved in the settings) and restart the engine with it."""
        if path.resolve() == self.model_path.resolve():
            self.notify(f"{path.name} is the model in use already.", markup=False)
            return
        if self.chat_state.phase is Phase.ANSWERING:
            self.notify("An answer is streaming; press Esc to stop it, then choose the model again.",
                        severity="warning", markup=False)
            return
        self.settings.model = None if is_bundled(path) else str(path)
        RecentModels.add(self.model_path)  # the model left stays one choice away
        RecentModels.add(path)
        self.model_path = path
        try:
            self.settings.save()
        except OSError as exc:
            self.notify(f"The settings could not be saved ({exc}); {path.name} is used for this run only.",
                        severity="warning", markup=False)
        self.chat_screen.post_message(EngineRestartRequested(path))
        self.notify(f"Now using {path.name}.", markup=False)

    def action_screenshot(self) -> None:
        path = self.save_screenshot()
        self.notify(f"Saved a screenshot to {path}.", markup=False)


def create_app(settings: Settings | None = None, paths: Iterable[Path] = (), model_path: Path | None = None,
               factory: EngineFactory = EngineWorker, sampler: Any = None, session: Session | None = None,
               vram_refresh_s: float = 0.5, notes: Iterable[str] = ()) -> FraqtlApp:
    """Build the app (the CLI and the tests both come through here)."""
    notes = list(notes)
    if settings is None:
        settings, loaded_notes = Settings.load_with_notes()
        notes += loaded_notes
    return FraqtlApp(settings, model_path or resolve(settings.model), paths, factory, sampler, session,
                     vram_refresh_s, notes)

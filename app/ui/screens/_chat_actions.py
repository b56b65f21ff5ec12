"""The chat screen's actions: what its keys and the command palette's chat commands do (Esc, the
open and sessions dialogs, F5, export, the document view, the VRAM panel; F2, F4 and F7 are the app's).

A mixin of :class:`~app.ui.screens._chat.ChatScreen`; each action refuses, in a sentence, what the
chat's phase cannot take.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.sessions import Session
from app.ui.chat_state import Event, Phase
from app.ui.screens._dialogs import OpenDialog, SessionsDialog
from app.ui.screens._document import DocumentScreen
from app.ui.widgets import DocumentBar, VramPanel

if TYPE_CHECKING:
    from app.ui.screens._chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object


class ChatActions(_Base):
    def action_stop(self) -> None:
        if self.chat.phase is Phase.INGESTING:
            self.ingest_stop.set()
            self.query_one(DocumentBar).set_status("Stopping…")
            return
        if self.conversation is not None and self.chat.phase in (Phase.ANSWERING, Phase.PREFILLING):
            self.conversation.stop()
            self.query_one(DocumentBar).set_status("Stopping…")

    def action_open(self) -> None:
        if self.refused_while_comparing(Event.OPENING, "open a document"):
            return

        def opened(paths: list[Path] | None) -> None:
            if paths:
                self.open_paths(paths)

        self.app.push_screen(OpenDialog(), opened)

    def action_sessions(self) -> None:
        if self.refused_while_comparing(Event.OPENING, "reopen a session"):
            return

        def chosen(session: Session | None) -> None:
            if session is not None:
                self.reopen(session)

        self.app.push_screen(SessionsDialog(self.conversation.session if self.conversation else None), chosen)

    def action_restart_engine(self) -> None:
        if self.conversation is None:
            self.notify("Open a document first.", severity="warning", markup=False)
            return
        if self.refused_while_comparing(Event.ENGINE_STARTING, "restart the engine"):
            return
        if self.chat.phase is Phase.ANSWERING:
            self.notify("An answer is streaming; press Esc to stop it, then restart.", severity="warning", markup=False)
            return
        self.start_engine()

    def action_compare(self) -> None:
        self.fraqtl.action_compare()

    def action_settings(self) -> None:
        self.fraqtl.action_settings()

    def action_models(self) -> None:
        self.fraqtl.action_models()

    def action_export(self) -> None:
        if self.conversation is None or not self.conversation.session.turns:
            self.notify("Ask a question first: there is no transcript to export yet.", severity="warning", markup=False)
            return
        try:
            path = self.conversation.session.export(self.fraqtl.model_path.name)
        except OSError as exc:
            self.notify(f"The transcript could not be written ({exc.strerror}); free some disk space and try again.",
                        severity="error", timeout=10, markup=False)
            return
        self.exported_to = path
        self.notify(f"Exported the transcript to {path}.", markup=False)

    def action_document(self) -> None:
        self.action_show_page(None)

    def action_show_page(self, page: int | None) -> None:
        """The document view, at ``page`` (a citation's) or where it was last left."""
        if self.conversation is None:
            self.notify("Open a document first (ctrl+o).", severity="warning", markup=False)
            return
        document = self.conversation.document
        if page is not None and document.page(page) is None:
            self.notify(f"The document has no page {page}; that citation points nowhere.", severity="warning",
                        markup=False)
            page = None

        def left(shown: int | None) -> None:
            if shown is not None:
                self.document_page = shown

        self.app.push_screen(DocumentScreen(document, page if page is not None else self.document_page), left)

    def action_toggle_vram(self) -> None:
        panel = self.query_one(VramPanel)
        panel.display = not panel.display

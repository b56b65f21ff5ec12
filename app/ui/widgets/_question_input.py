"""The question box; a pasted or dropped file path opens that file instead of being typed."""

from __future__ import annotations

from textual import events
from textual.widgets import Input

from app.paths import existing_files
from app.ui.messages import PathsDropped


class QuestionInput(Input):
    def _on_paste(self, event: events.Paste) -> None:
        paths = existing_files(event.text)
        if paths:
            event.stop()
            event.prevent_default()
            self.post_message(PathsDropped(paths))
            return
        super()._on_paste(event)

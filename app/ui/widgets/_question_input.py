"""The question box; a pasted or dropped file path opens that file instead of being typed."""

from __future__ import annotations

from textual import events
from textual.widgets import Input

from app.paths import route_input
from app.ui.messages import PathsDropped, PathsRefused


class QuestionInput(Input):
    def _on_paste(self, event: events.Paste) -> None:
        route = route_input(event.text)
        if route.kind in ("open", "refuse"):
            event.stop()
            event.prevent_default()
            self.post_message(PathsDropped(list(route.files)) if route.files else PathsRefused(route.problem))
            return
        super()._on_paste(event)

"""The question box; a pasted or dropped file path opens that file instead of being typed."""

from __future__ import annotations

from textual import events
from textual.widgets import Input

from app.paths import route_input
from app.ui.messages import PathsDropped, PathsRefused


class QuestionInput(Input):
    def on_paste(self, event: events.Paste) -> None:
        """Paths become a message; anything else falls through to Input's own paste handling."""
        route = route_input(event.text)
        if route.kind in ("open", "refuse"):
            event.stop()
            event.prevent_default()  # Input's handler does not type the path in
            self.post_message(PathsDropped(list(route.files)) if route.files else PathsRefused(route.problem))

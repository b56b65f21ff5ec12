"""One arm's column in the comparison: status, answer, speed, peak VRAM, agreement with f16."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Markdown, Static

from app.compare import ArmResult, agreement_lines

_STATUS = {
    "waiting": "waiting", "loading": "loading the model…", "prefilling": "prefilling…",
    "answering": "answering…", "done": "done", "stopped": "stopped", "unavailable": "unavailable",
    "failed": "failed",
}


class ArmPanel(Vertical):
    DEFAULT_CSS = """
    ArmPanel { width: 1fr; border: round $primary-darken-1; padding: 0 1; }
    ArmPanel .arm-title { text-style: bold; color: $accent; }
    ArmPanel .arm-status { color: $text-muted; }
    ArmPanel.unavailable .arm-status, ArmPanel.failed .arm-status, ArmPanel.stopped .arm-status { color: $warning; }
    ArmPanel .arm-departure { height: auto; color: $text-muted; }
    ArmPanel VerticalScroll { height: 1fr; }
    ArmPanel .arm-stats { height: auto; border-top: solid $primary-darken-2; }
    """

    def __init__(self, arm: str) -> None:
        super().__init__(id=f"arm-{arm.replace(':', '-')}")
        self.arm = arm
        self.result = ArmResult(arm)

    def compose(self) -> ComposeResult:
        yield Label(self.arm, classes="arm-title")
        yield Label("waiting", classes="arm-status")
        with VerticalScroll():
            yield Markdown("", classes="arm-answer")
        yield Static("", classes="arm-departure")
        yield Static("", classes="arm-stats")

    async def show(self, result: ArmResult) -> None:
        previous, self.result = self.result, result
        self.set_class(result.status == "unavailable", "unavailable")
        self.set_class(result.status == "failed", "failed")
        self.set_class(result.status == "stopped", "stopped")
        status = _STATUS.get(result.status, result.status)
        if result.reason:  # a stopped arm's reason says it all ("stopped with Esc", "not run")
            status = result.reason if result.status == "stopped" else f"{status}: {result.reason}"
        self.query_one(".arm-status", Label).update(Text(status))
        if result.answer != previous.answer or not result.answer:
            await self.query_one(".arm-answer", Markdown).update(result.answer)  # awaited: updates stay in order
            if result.status == "answering":  # follow the streaming text, as the chat does
                self.query_one(VerticalScroll).scroll_end(animate=False)
        self.query_one(".arm-stats", Static).update(self._stats(result))
        self.query_one(".arm-departure", Static).update(self._departure(result))

    @staticmethod
    def _departure(r: ArmResult) -> Text:
        """Where this answer leaves f16's: the text before, and the first differing token highlighted."""
        where = r.departure()
        if where is None:
            return Text("")
        before, token, after = where
        text = Text(f"departs from f16 at token {r.departs_at}: …", style="bold")
        text.append(before.replace("\n", " "))
        text.append(token.replace("\n", "⏎") or "(ends here)", style="bold reverse")
        text.append(after.replace("\n", " ") + ("…" if after else ""))  # nothing follows where it ends
        return text

    @staticmethod
    def _stats(r: ArmResult) -> str:
        peak = "n/a (no GPU telemetry)" if r.peak_vram is None else f"{r.peak_vram / 2**20:,.0f} MiB"
        lines = [f"peak VRAM   {peak}",
                 f"estimate    {_measured(r.estimate_bytes / 2**20, '{:,.0f} MiB')}",
                 f"prefill     {_measured(r.prefill_tok_s, '{:,.1f} tok/s')}",
                 f"decode      {_measured(r.decode_tok_s, '{:,.1f} tok/s')}"]
        if r.shared_prefix is not None:
            lines += agreement_lines(r)
        elif r.arm == "f16" and r.ok:
            lines.append("vs f16      (the baseline)")
        return "\n".join(lines)


def _measured(value: float, form: str) -> str:
    """``value`` in ``form``, or a dash while it is not measured yet (a waiting arm is not 0 tok/s)."""
    return form.format(value) if value > 0 else "—"

"""GPU memory: NVML live figures with a sparkline, against f16/Q8/D2 estimates.

Where D2's estimate stands above f16's (a context shorter than D2's window), one note says why: its
fixed cost, and from how many tokens it is the smaller, both from the engine's estimates.

With several GPUs (llama.cpp splits the layers over them) each GPU's live figure is listed
with that GPU's share of the current arm's estimate beside it. Without a GPU or driver the
estimates stay and one line says why telemetry is off.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from engine.arms import ArmConfig
from engine.errors import EngineError
from engine.estimates import break_even_tokens, d2_fixed_bytes, estimate, split_estimate
from engine.gguf import GgufInfo
from engine.nvml import NvmlSampler

PANEL_ARMS = ("f16", "q8_0", "d2")
BAR_WIDTH = 16
GIB = 2**30
MIB = 2**20


def human(n: int) -> str:
    return f"{n / GIB:,.2f} GiB" if n >= GIB else f"{n / MIB:,.0f} MiB"


def bar(value: int, scale: int, style: str) -> Text:
    filled = round(BAR_WIDTH * value / scale) if scale else 0
    filled = max(0, min(BAR_WIDTH, filled))
    return Text.assemble(("█" * filled, style), ("░" * (BAR_WIDTH - filled), "dim"))


class VramPanel(Vertical):
    DEFAULT_CSS = """
    VramPanel { width: 44; border-left: solid $primary-darken-2; padding: 0 1; }
    VramPanel .panel-title { text-style: bold; color: $accent; margin-top: 1; }
    VramPanel Sparkline { height: 3; margin: 0 0 0 0; }
    VramPanel #vram-off { color: $warning; }
    """

    def __init__(self, sampler: NvmlSampler, refresh_s: float = 0.5, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sampler = sampler
        self.refresh_s = refresh_s
        self.info: GgufInfo | None = None
        self.n_ctx = 0
        self.doc_tokens = 0
        self.arm = "f16"
        self._d2_note: tuple[tuple[GgufInfo, int], str] | None = None  # ((info, limit), note): ~20 estimates

    def compose(self) -> ComposeResult:
        yield Static("GPU memory", classes="panel-title")
        yield Static("", id="vram-live")
        yield Static("", id="vram-off")
        yield Sparkline([], id="vram-spark")
        yield Static("", id="vram-estimates")

    def on_mount(self) -> None:
        self.refresh_figures()
        if self.sampler.available and self.refresh_s > 0:
            self.set_interval(self.refresh_s, self.refresh_figures)

    def set_context(self, info: GgufInfo, n_ctx: int, doc_tokens: int, arm: str) -> None:
        self.info, self.n_ctx, self.doc_tokens, self.arm = info, n_ctx, doc_tokens, arm
        self.refresh_figures()

    def live_bytes(self) -> int | None:
        if not self.sampler.available or not self.sampler.history:
            return None
        return self.sampler.process_estimate(self.sampler.history[-1])

    def refresh_figures(self) -> None:
        live = self.query_one("#vram-live", Static)
        off = self.query_one("#vram-off", Static)
        spark = self.query_one("#vram-spark", Sparkline)
        if not self.sampler.available:
            live.display = False
            spark.display = False
            off.display = True
            off.update(Text(self.sampler.unavailable_reason or "GPU telemetry is off."))
        else:
            off.display = False
            history = list(self.sampler.history)
            if len(getattr(self.sampler, "gpus", ())) > 1:
                live.update(self._per_gpu())
                spark.data = [self.sampler.process_estimate(s) / MIB for s in history[-60:]]
            elif history:
                last = history[-1]
                mine = self.sampler.process_estimate(last)
                source = "per process" if last.process_used else "device − baseline"
                live.update(Text.assemble(
                    (f"{getattr(self.sampler.device, 'name', 'GPU')}\n", "bold"),
                    f"device {human(last.device_used)} / {human(last.device_total)}\n",
                    (f"engine {human(mine)}", "bold green"), f" ({source})\ndevice peak {human(self.sampler.peak_used)}"))
                spark.data = [self.sampler.process_estimate(s) / MIB for s in history[-60:]]
        self.query_one("#vram-estimates", Static).update(self._estimates())

    def _gpu_estimates(self) -> list[int] | None:
        """The current arm's estimate on each GPU: llama.cpp's layer split by each GPU's free memory."""
        if self.info is None:
            return None
        shares = []
        for track in self.sampler.gpus:
            first = track.history[0] if track.history else None
            shares.append(max(first.device_total - first.device_used, 1) if first else 1)
        try:
            arm = ArmConfig.parse(self.arm)
        except EngineError:
            return None
        if arm.on_cpu:
            return None  # nothing of an @cpu arm is on a GPU
        return [d.total_bytes for d in split_estimate(self.info, arm, self.n_ctx, shares)]

    def _per_gpu(self) -> Text:
        text = Text()
        estimates = self._gpu_estimates()
        for i, track in enumerate(self.sampler.gpus):
            if not track.history:
                continue
            last = track.history[-1]
            text.append(f"GPU {track.index} {track.name}\n", style="bold")
            text.append(f" device {human(last.device_used)} / {human(last.device_total)}\n")
            text.append(f" engine {human(track.process_estimate(last))}", style="bold green")
            if estimates is not None:
                text.append(f" · est {human(estimates[i])}", style="cyan")
            text.append("\n")
        total = self.sampler.history[-1] if self.sampler.history else None
        if total is not None:
            text.append(f"all GPUs: engine {human(self.sampler.process_estimate(total))}", style="bold green")
            text.append(f"\ndevice peak {human(self.sampler.peak_used)}")
        return text

    def d2_note(self) -> str:
        """Why d2 stands above f16 at a short context: what it keeps exact, at what fixed cost, and from
        how many tokens it is the smaller (the engine's estimates; worked out once per model and limit)."""
        assert self.info is not None
        limit = max(self.info.n_ctx_train, self.n_ctx)
        if self._d2_note is None or self._d2_note[0][0] is not self.info or self._d2_note[0][1] != limit:
            d2, f16 = ArmConfig.parse("d2"), ArmConfig.parse("f16")
            assert d2.recipe is not None
            even = break_even_tokens(self.info, d2, f16, limit)
            when = (f"from about {even:,} tokens it is the smaller" if even is not None
                    else f"it stays above f16 up to {limit:,} tokens")
            note = (f"d2 keeps the last {d2.recipe.window:,} tokens and the first {d2.recipe.sinks:,} exact "
                    f"(fp16), with its bases: a fixed {human(d2_fixed_bytes(self.info, d2))}; {when}.")
            self._d2_note = ((self.info, limit), note)
        return self._d2_note[1]

    def _estimates(self) -> Text:
        text = Text()
        if self.info is None:
            text.append("\nEstimates appear when a document is open.", style="dim")
            return text
        rows: list[tuple[str, int, int]] = []
        points = [("context", self.n_ctx)]
        if self.doc_tokens:
            points.append(("document", self.doc_tokens))
        for _, n in points:
            for arm in PANEL_ARMS:
                e = estimate(self.info, ArmConfig.parse(arm), n)
                rows.append((arm, e.total_bytes, e.kv_bytes + e.exact_copy_bytes))
        live = self.live_bytes()
        scale = max([r[1] for r in rows] + [live or 0])
        i = 0
        d2_above_f16 = False
        for label, n in points:
            text.append(f"\nEstimate at {n:,} tokens ({label})\n", style="bold")
            totals: dict[str, int] = {}
            for _ in PANEL_ARMS:
                arm, total, kv = rows[i]
                i += 1
                totals[arm] = total
                style = "green" if arm == self.arm.split(":")[0] else "cyan"
                text.append(f"{arm:<5}")
                text.append_text(bar(total, scale, style))
                text.append(f" {human(total):>10}\n")
                text.append(f"      KV {human(kv)}\n", style="dim")
            d2_above_f16 |= totals["d2"] > totals["f16"]
        if d2_above_f16:
            text.append(self.d2_note() + "\n", style="italic")
        if live is not None:
            text.append("live ")
            text.append_text(bar(live, scale, "bold green"))
            text.append(f" {human(live):>10}\n")
        text.append("weights + KV + compute buffers", style="dim")
        return text

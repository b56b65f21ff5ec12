"""``fraqtl-bench ui-lag``: how long the app's event loop is ever kept from running, phase by phase.

Drives the real app headless (its Pilot) with the real model over a long generated PDF:
ingest, prefill, a streamed answer, then an arm comparison. A probe task on the app's event
loop asks to wake every ``--interval-ms`` and records how late it woke; a late wake-up is time
in which the app could not redraw or take a key. The worst gap of each phase is the figure,
against a goal of 100 ms. A benchmark, never a test: the numbers belong to the machine.

This is the one bench module that imports the app: it measures the app, not the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import receipt as rc

GOAL_MS = 100.0
PORTS = ["Velmora", "Hallan Point", "Orrin", "Castell Bay", "Dunmere", "Skelby"]


def long_pdf(path: Path, pages: int, lines: dict[tuple[int, int], str] | None = None) -> Path:
    """A ferry log of ``pages`` pages, 30 lines (about 410 words, 750 tokens) each; ``lines``
    replaces the line at (page, line), both counted from 1, e.g. to plant a fact to ask about."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=9)
    for page in range(1, pages + 1):
        pdf.add_page()
        for line in range(1, 31):
            day = (page - 1) * 30 + line
            text = (lines or {}).get((page, line)) or (
                f"Day {day}: the ferry Grey Heron carried {40 + day % 57} passengers from {PORTS[day % 6]} "
                f"to {PORTS[(day * 5 + 1) % 6]}.")
            pdf.cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


@dataclasses.dataclass
class LagProbe:
    """Wakes every ``interval_s`` on the running loop and keeps how late each wake-up was, per phase."""

    interval_s: float
    phase: str = "start"
    gaps: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    durations: dict[str, float] = dataclasses.field(default_factory=dict)
    _phase_start: float = 0.0

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            late = time.perf_counter() - before - self.interval_s
            self.gaps.setdefault(self.phase, []).append(max(late, 0.0))

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        if self._phase_start:
            self.durations[self.phase] = self.durations.get(self.phase, 0.0) + now - self._phase_start
        self.phase, self._phase_start = phase, now

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for phase, gaps in self.gaps.items():
            if phase in ("start", "end"):
                continue
            ordered = sorted(gaps)
            rows.append({
                "phase": phase, "seconds": round(self.durations.get(phase, 0.0), 2), "samples": len(gaps),
                "worst_gap_ms": round(ordered[-1] * 1000, 1),
                "p99_gap_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
                "mean_gap_ms": round(sum(gaps) / len(gaps) * 1000, 2),
                "over_goal": sum(g * 1000 > GOAL_MS for g in gaps),
            })
        return rows


async def _drive(args: argparse.Namespace, model: Path, pdf: Path, probe: LagProbe) -> dict[str, Any]:
    from textual import events

    from app.settings import Settings
    from app.ui import create_app
    from app.ui.screens import CompareScreen

    settings = Settings(n_ctx=args.ctx, yarn=args.ctx > 8192, max_tokens=args.max_tokens,
                        n_threads=args.threads or 0)
    app = create_app(settings, [], model)
    facts: dict[str, Any] = {}

    async def until(pilot: Any, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not reach {what} within {timeout:.0f} s")
            await pilot.pause(0.05)

    async with app.run_test(size=(140, 40)) as pilot:
        chat = app.chat_screen
        sampler = asyncio.create_task(probe.run())
        probe.enter("ingest")
        chat.query_one("#question").post_message(events.Paste(f"'{pdf}'"))
        await until(pilot, lambda: chat.state not in ("empty", "ingesting"), args.timeout, "the end of ingest")
        probe.enter("prefill")
        await until(pilot, lambda: chat.state in ("ready", "refused", "failed"), args.timeout, "a prefilled document")
        if chat.state != "ready":
            raise RuntimeError(f"the document was not prefilled: {chat.query_one('#doc-status').render()}")
        facts["document_tokens"] = app.conversation.fit.tokens if app.conversation.fit else None
        probe.enter("streaming")
        chat.query_one("#question").value = "Which ferry carried the passengers from Orrin?"
        await pilot.press("enter")
        await until(pilot, lambda: chat.state == "ready" and chat.last_done is not None, args.timeout, "an answer")
        facts["answer_tokens"] = chat.last_done.n_generated if chat.last_done else None
        if args.arms:
            probe.enter("comparison")
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, CompareScreen), 30, "the comparison view")
            compare = app.screen
            await pilot.click("#compare-run")
            await until(pilot, lambda: bool(compare.results), args.timeout * 4, "every arm")
            facts["arms"] = {r.arm: r.status for r in compare.results}
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is chat and chat.state == "ready", args.timeout, "the chat again")
        probe.enter("end")
        sampler.cancel()
    return facts


def run(args: argparse.Namespace, model: Path, argv: list[str]) -> Path:
    probe = LagProbe(args.interval_ms / 1000)
    with tempfile.TemporaryDirectory(prefix="fraqtl-ui-lag-") as tmp:
        pdf = long_pdf(Path(tmp) / "ferry log.pdf", args.pages)
        load_before = os.getloadavg()[0]  # other processes on the machine lengthen every gap
        t0 = time.perf_counter()
        facts = asyncio.run(_drive(args, model, pdf, probe))
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
    rows = probe.rows()
    worst = max(r["worst_gap_ms"] for r in rows)
    grid = {"pages": args.pages, "ctx": args.ctx, "max_tokens": args.max_tokens, "interval_ms": args.interval_ms,
            "compare_arms": bool(args.arms), "goal_ms": GOAL_MS}
    record = rc.new_receipt("ui-lag", model, argv, grid)
    record["results"] = rows
    record["summary"] = {"worst_gap_ms": worst, "meets_goal": worst <= GOAL_MS, "wall_s": round(wall, 1),
                         "load_average_1min": [load_before, load_after], **facts}
    verdict = "meets" if worst <= GOAL_MS else "misses"
    markdown = rc.header_markdown(record, "UI responsiveness (event-loop lag)") + "\n".join([
        "",
        f"A probe on the app's event loop asked to wake every {args.interval_ms:g} ms while the app read a "
        f"{args.pages}-page PDF ({facts.get('document_tokens') or '?'} tokens), prefilled it, streamed an answer"
        + (" and compared the arms" if args.arms else "") + "; each row is how late it woke.",
        "",
        rc.markdown_table(rows, ["phase", "seconds", "samples", "worst_gap_ms", "p99_gap_ms", "mean_gap_ms",
                                 "over_goal"]),
        "",
        f"Worst gap {worst:.1f} ms: {verdict} the {GOAL_MS:.0f} ms goal. Load average (1 min) "
        f"{load_before:.1f} at the start and {load_after:.1f} at the end, on {os.cpu_count()} cores.",
        "",
    ])
    return rc.write(rc.receipt_dir(args.out, f"ui-lag-{rc.model_slug(record['model'])}"), record, markdown)

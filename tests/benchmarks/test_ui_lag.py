"""The UI-lag benchmark's parts that are not timing: the probe's per-phase table and the PDF."""

from __future__ import annotations

from pathlib import Path

from app.ingest import load_document
from bench.ui_lag import GOAL_MS, LagProbe, long_pdf


def test_the_probe_reports_each_phase_worst_gap_and_how_many_missed_the_goal() -> None:
    probe = LagProbe(0.005)
    probe.gaps = {"start": [9.0], "prefill": [0.001] * 98 + [0.05, 0.25], "streaming": [0.002, 0.004]}
    probe.durations = {"prefill": 12.345, "streaming": 1.0}
    rows = {r["phase"]: r for r in probe.rows()}
    assert set(rows) == {"prefill", "streaming"}  # before the first phase is not measured
    assert (rows["prefill"]["worst_gap_ms"], rows["prefill"]["p99_gap_ms"], rows["prefill"]["seconds"]) == (
        250.0, 250.0, 12.35)
    assert rows["prefill"]["over_goal"] == 1 and GOAL_MS == 100
    assert (rows["streaming"]["samples"], rows["streaming"]["mean_gap_ms"]) == (2, 3.0)


def test_the_generated_pdf_has_its_pages_and_planted_lines(tmp_path: Path) -> None:
    document = load_document(long_pdf(tmp_path / "log.pdf", 3, {(2, 5): "The tide table is on the pier."}))
    assert len(document.pages) == 3 and "Day 1: the ferry Grey Heron" in document.page(1)
    assert "The tide table is on the pier." in document.page(2) and "Day 35:" not in document.page(2)

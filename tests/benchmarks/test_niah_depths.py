"""NIAH needles land in D2's compressed region (not the 1024-token exact window), and flips are paired."""

from __future__ import annotations

import pytest

from bench.cli import GRIDS
from bench.retrieval import paired_flips
from bench.tasks import EXACT_WINDOW, PromptBuilder, niah_cases
from engine.errors import EngineError


@pytest.fixture(scope="module")
def pb() -> PromptBuilder:
    try:
        from engine.models import resolve

        builder = PromptBuilder(resolve(None))
    except EngineError as exc:
        pytest.skip(f"patched llama_cpp or the default model is unavailable: {exc}")
    yield builder
    builder.close()


def test_full_grid_puts_most_needles_outside_the_exact_window(pb: PromptBuilder) -> None:
    contexts = [2048, 4096]  # the full grid's shortest lengths, where the window matters most
    cases = niah_cases(pb, contexts, GRIDS["niah"]["depths"][1], 1)
    outside = [c for c in cases if c.in_exact_window is False]
    assert len(outside) * 4 >= len(cases) * 3, [(c.id, c.needle_from_end) for c in cases]
    for case in cases:
        # the recorded position is where the needle's tokens start
        text = pb.rt.detokenize(case.tokens[case.needle_pos : case.needle_pos + 8])
        assert "special magic number" in text, (case.id, text)
        assert case.public()["in_exact_window"] == (case.n_prompt - case.needle_pos <= EXACT_WINDOW)


def test_a_late_needle_is_reported_inside_the_window(pb: PromptBuilder) -> None:
    (case,) = niah_cases(pb, [2048], [0.9], 1)
    assert case.in_exact_window is True and case.needle_from_end < EXACT_WINDOW


def _record(window: bool, f16: bool, arm: bool) -> dict:
    cls = "flip" if f16 and not arm else "gain" if arm and not f16 else "ok"
    return {"in_exact_window": window,
            "answers": {"f16": {"right": f16, "class": "ok"}, "d2": {"right": arm, "class": cls}}}


def test_paired_flips_split_by_region() -> None:
    records = [_record(False, True, False), _record(False, True, True), _record(True, True, False),
               _record(False, False, True)]
    (row,) = paired_flips(records, ["f16", "d2"])
    assert (row["n_all"], row["flips_all"], row["gains_all"]) == (4, 2, 1)
    assert (row["n_compressed"], row["flips_compressed"]) == (3, 1)
    assert (row["n_window"], row["flips_window"]) == (1, 1)

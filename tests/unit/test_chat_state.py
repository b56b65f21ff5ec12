"""The chat's phases and transitions (app/ui/chat_state.py), without a terminal."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.ui.chat_state import TRANSITIONS, ChatState, Event, Phase

ROOT = Path(__file__).resolve().parents[2]


def run(*events: Event, start: ChatState | None = None) -> ChatState:
    """Apply ``events`` in order; each must be accepted."""
    state = start or ChatState()
    for event in events:
        after = state.after(event)
        assert after is not None, f"{event.name} refused in {state.phase}"
        state = after
    return state


OPENED = (Event.OPENING, Event.DOCUMENT_READ, Event.ENGINE_STARTING, Event.ENGINE_STARTED, Event.FITS,
          Event.PREFILL_PROGRESSED, Event.PREFILLED)


def test_a_new_users_first_question_walks_the_phases_in_order() -> None:
    state = run(Event.OPENING)
    assert state.phase is Phase.INGESTING and state.resume is Phase.EMPTY and state.busy
    state = run(*OPENED)
    assert state.phase is Phase.READY and not state.busy
    state = run(Event.ASKED, Event.PREFILL_PROGRESSED, Event.ANSWER_STREAMED, start=state)
    assert state.phase is Phase.ANSWERING and state.busy
    assert run(Event.ANSWERED, start=state).phase is Phase.READY


@pytest.mark.parametrize("event", [Event.ANSWER_STREAMED, Event.ANSWERED, Event.PREFILLED, Event.FITS,
                                   Event.ENGINE_STARTED, Event.INGEST_PROGRESSED])
@pytest.mark.parametrize("phase", [Phase.EMPTY, Phase.READY, Phase.REFUSED, Phase.FAILED])
def test_a_stray_engine_report_is_refused_and_changes_nothing(phase: Phase, event: Event) -> None:
    # a late answer in an idle chat (the old string machine set "ready" even with no document open)
    if (phase, event) in TRANSITIONS:
        pytest.skip("this phase takes the event")
    state = ChatState(phase)
    assert state.after(event) is None
    assert state == ChatState(phase)


def test_an_answer_cannot_start_while_another_streams_nor_before_the_prefill() -> None:
    answering = run(*OPENED, Event.ASKED)
    assert answering.after(Event.ASKED) is None
    prefilling = run(*OPENED[:-1])
    assert prefilling.phase is Phase.PREFILLING and prefilling.after(Event.ASKED) is None


def test_reading_another_document_keeps_where_the_engine_is_and_a_failed_read_returns_there() -> None:
    answering = run(*OPENED, Event.ASKED)
    reading = run(Event.OPENING, start=answering)
    assert reading.phase is Phase.INGESTING and reading.resume is Phase.ANSWERING
    # the answer that opening stopped completes while the new file is read: Esc still stops the reading
    reading = run(Event.ANSWERED, start=reading)
    assert reading.phase is Phase.INGESTING and reading.resume is Phase.READY
    assert run(Event.OPENING, start=reading).resume is Phase.READY  # a third file: still back to READY
    assert run(Event.READ_FAILED, start=reading).phase is Phase.READY


def test_reading_the_first_document_takes_no_engine_report() -> None:
    reading = run(Event.OPENING)
    assert reading.after(Event.ANSWERED) is None and reading.after(Event.ENGINE_FAILED) is None
    assert run(Event.READ_FAILED, start=reading).phase is Phase.EMPTY


def test_engine_faults_and_the_overflow_dialog() -> None:
    loading = run(*OPENED[:4])
    assert run(Event.OVERFLOWS, start=loading).phase is Phase.REFUSED
    assert run(Event.OVERFLOWS, Event.DOCUMENT_READ, start=loading).phase is Phase.LOADING  # a page range
    assert run(Event.ENGINE_FAILED, start=loading).phase is Phase.FAILED
    failed = run(*OPENED[:-1], Event.PREFILL_CANCELLED)
    assert failed.phase is Phase.FAILED and failed.after(Event.ASKED) is None
    assert run(Event.ENGINE_STARTING, start=failed).phase is Phase.LOADING  # F5
    answering = run(*OPENED, Event.ASKED)
    assert run(Event.QUESTION_REFUSED, start=answering).phase is Phase.READY
    assert run(Event.ENGINE_FAILED, start=answering).phase is Phase.FAILED
    assert answering.after(Event.ENGINE_STARTING) is None  # F5 waits for Esc


def test_a_misspelt_phase_or_event_fails_where_it_is_written() -> None:
    # the old screen took set_state("fialed") silently and never left that state
    with pytest.raises(TypeError, match="must be a Phase"):
        ChatState("fialed")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a Phase"):
        ChatState(Phase.READY, resume="ready")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Phase("answring")
    with pytest.raises(TypeError, match="not a chat Event"):
        ChatState().after("ANSWERED")  # type: ignore[arg-type]


def test_every_phase_can_be_reached_and_left() -> None:
    reached = {after for after in TRANSITIONS.values()} | {Phase.EMPTY, Phase.INGESTING}
    left = {phase for phase, _ in TRANSITIONS} | {Phase.EMPTY}  # EMPTY is left by OPENING, from any phase
    assert reached == set(Phase) and left == set(Phase)


def _string_phase_comparisons(path: Path) -> list[str]:
    """``x.state == "ready"``, ``x.phase in ("a", "b")``, ``set_state("...")`` in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) \
                and node.left.attr in ("state", "phase"):
            for right in node.comparators:
                items = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
                if any(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
                    found.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "set_state":
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_the_app_compares_phases_as_enum_members_never_as_strings() -> None:
    # a Phase equals its string, so `state == "answring"` would be silently False: the app must name members
    found = [hit for path in sorted((ROOT / "app").rglob("*.py")) for hit in _string_phase_comparisons(path)]
    assert found == []


def test_the_comparison_holds_the_engine_until_the_chat_reclaims_it() -> None:
    ready = run(*OPENED)
    comparing = run(Event.ENGINE_RELEASED, start=ready)
    assert comparing.phase is Phase.COMPARING and not comparing.busy  # the comparison may run again
    # nothing that would start an engine beside the arms': a new document, F5, a question
    for event in (Event.OPENING, Event.ENGINE_STARTING, Event.ASKED, Event.ENGINE_RELEASED):
        assert comparing.after(event) is None, event
    assert run(Event.ENGINE_RECLAIMED, start=comparing).phase is Phase.LOADING
    for busy in (run(*OPENED[:-1]), run(*OPENED, Event.ASKED), run(Event.OPENING, start=ready)):
        assert busy.after(Event.ENGINE_RELEASED) is None, busy.phase  # a busy chat keeps its engine
    assert run(Event.ENGINE_RELEASED, start=run(*OPENED[:4], Event.OVERFLOWS)).phase is Phase.COMPARING

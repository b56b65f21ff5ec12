"""Fuzzing what people type into the new fields: sampling values (settings screen and FRAQTL_*
variables) and session names. Every input is used or refused with the app's own error, never
another exception; whatever is accepted survives a save and a load unchanged."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.sessions import MAX_NAME, Session, SessionNameError
from app.settings import Settings, SettingsError
from engine.sampling import Sampling, TokenSampler

EXAMPLES = int(os.environ.get("FRAQTL_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6).map(float)


@FUZZ
@given(numbers, numbers, numbers)
def test_any_sampling_value_is_used_or_refused_in_one_sentence(temperature: float, top_p: float,
                                                                penalty: float) -> None:
    candidate = Settings(temperature=temperature, top_p=top_p, repeat_penalty=penalty)
    try:
        candidate.validate()
    except SettingsError as exc:
        assert str(exc).startswith("The ") and str(exc).endswith(".")
        return
    assert 0 <= temperature <= 5 and 0 < top_p <= 1 and 1 <= penalty <= 5
    sampler = TokenSampler(candidate.sampling())
    token = sampler.pick(np.array([0.5, 2.0, -1.0, 2.0], dtype=np.float32), recent=[1, 3])
    assert 0 <= token < 4


@FUZZ
@given(st.text(max_size=40))
def test_any_environment_value_for_a_sampling_setting(raw: str) -> None:
    try:
        loaded = Settings.load(env={"FRAQTL_TEMPERATURE": raw}, path=Path(os.devnull))
    except SettingsError as exc:
        assert "FRAQTL_TEMPERATURE=" in str(exc)
        return
    assert isinstance(loaded.temperature, float)
    if math.isfinite(loaded.temperature) and 0 <= loaded.temperature <= 5:
        assert loaded.sampling() == Sampling(temperature=loaded.temperature)


_DIR = Path(tempfile.mkdtemp(prefix="fraqtl-fuzz-sessions-"))


@FUZZ
@given(name=st.text(max_size=MAX_NAME + 20))
def test_any_session_name_is_kept_exactly_as_tidied_or_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("FRAQTL_DATA_DIR", str(_DIR))  # the same folder for every example
    session = Session("/d.pdf", "d.pdf", "0" * 64, id="fuzz")
    try:
        session.rename(name)
    except SessionNameError as exc:
        assert f"at most {MAX_NAME} characters" in str(exc)
        return
    assert Session.load("fuzz").name == " ".join(name.split())

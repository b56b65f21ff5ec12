"""The engine on the real default model: load through our build, answer, stream, estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.arms import ArmConfig
from engine.errors import ContextOverflowError, EngineError, ModelFormatError, ModelNotFoundError
from engine.estimates import estimate, kv_bytes
from engine.events import AnswerDone, PrefillProgress, Token
from engine.gguf import read_gguf
from engine.models import SMOLLM2, resolve
from engine.runtime import Runtime


@pytest.fixture(scope="module")
def model() -> Path:
    return resolve(None)


def test_default_model_is_the_verified_smollm2(model: Path) -> None:
    import hashlib

    assert model.name == SMOLLM2.filename
    assert hashlib.sha256(model.read_bytes()).hexdigest() == SMOLLM2.sha256
    info = read_gguf(model)
    assert (info.arch, info.n_layer, info.n_head, info.n_head_kv, info.head_dim_k) == ("llama", 30, 9, 3, 64)
    assert info.n_ctx_train == 8192 and info.chat_template


def test_greedy_answer_from_the_prompt(model: Path) -> None:
    rt = Runtime(model, "f16", n_ctx=1024)
    try:
        messages = [{"role": "user", "content": "The secret code of the vault is 4817. The vault is in Lisbon.\n\n"
                                                "What is the secret code of the vault?"}]
        events = list(rt.answer(messages, max_tokens=32))
    finally:
        rt.close()
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.finish == "stop"
    assert "4817" in done.text
    assert "".join(e.text for e in events if isinstance(e, Token)) == done.text
    assert any(isinstance(e, PrefillProgress) and e.done == e.total for e in events)


def test_kv_allocation_matches_the_estimate(model: Path) -> None:
    info = read_gguf(model)
    for name in ("f16", "q8_0", "q4_0"):
        rt = Runtime(model, name, n_ctx=1000)
        try:
            mem = rt.kv_memory()
        finally:
            rt.close()
        assert mem is not None and not mem.d2
        assert mem.kv_bytes == kv_bytes(info, ArmConfig.parse(name), 1000)
    est = estimate(info, ArmConfig.parse("f16"), 1000)
    assert est.total_bytes > est.weights_bytes + est.kv_bytes


def test_prompt_over_the_context_is_refused_with_numbers(model: Path) -> None:
    rt = Runtime(model, "f16", n_ctx=256)
    try:
        with pytest.raises(ContextOverflowError) as err:
            list(rt.generate(list(range(100, 400)), max_tokens=4))
    finally:
        rt.close()
    assert (err.value.tokens, err.value.limit) == (300, 256)
    assert "300" in str(err.value) and "256" in str(err.value)


def test_bad_model_paths_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        Runtime(tmp_path / "missing.gguf", "f16")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelFormatError):
        Runtime(junk, "f16")
    with pytest.raises(EngineError, match="not an arm"):
        ArmConfig.parse("q3_x")

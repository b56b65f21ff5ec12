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


def test_a_context_larger_than_host_memory_is_refused_before_llama_cpp_tries(model: Path) -> None:
    from engine.errors import ContextMemoryError

    with pytest.raises(ContextMemoryError) as caught:
        Runtime(model, "f16", n_ctx=2**32 - 256, n_threads=2)
    exc = caught.value
    assert exc.available is not None and exc.needed > exc.available
    assert str(exc).startswith("A 4,294,967,040-token context with the f16 cache needs about")
    assert "choose a smaller context or a smaller cache" in str(exc)


def test_llama_cpps_own_out_of_memory_at_context_creation_is_a_named_error(model: Path) -> None:
    """With the pre-check off and a 6 GiB address-space limit, llama.cpp itself fails to allocate
    a 12 GiB cache: that failure must read as ContextMemoryError, not a bare ValueError."""
    import subprocess
    import sys

    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
        "from engine.errors import ContextMemoryError\n"
        "from engine.runtime import Runtime\n"
        "try:\n"
        f"    Runtime({str(model)!r}, 'f16', n_ctx=2**19, n_threads=2)\n"
        "except ContextMemoryError as exc:\n"
        "    print('REFUSED', exc.available, exc)\n"
        "else:\n"
        "    print('CREATED')\n"
    )
    env = {**__import__("os").environ, "FRAQTL_NO_MEMORY_CHECK": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("REFUSED None A 524,288-token context with the f16 cache could not be created "
                                  "by llama.cpp"), done.stdout + done.stderr[-2000:]


def test_placement_options_are_checked_before_the_model_loads(model: Path, monkeypatch) -> None:
    from engine import rpc
    from engine.errors import ArmUnavailableError

    with pytest.raises(EngineError, match="split mode 'row' is not one of none, layer"):
        Runtime(model, "f16", n_ctx=256, split_mode="row")
    with pytest.raises(EngineError, match=r"tensor split \[-1.0, 2.0\] must be shares of zero or more"):
        Runtime(model, "f16", n_ctx=256, tensor_split=[-1.0, 2.0])
    with pytest.raises(ArmUnavailableError, match="an @cpu arm keeps every layer on this machine"):
        Runtime(model, "d2@cpu", n_ctx=256, rpc_servers=["127.0.0.1:50052"])
    with pytest.raises(EngineError, match="'127.0.0.1' is not an RPC server address"):
        Runtime(model, "f16", n_ctx=256, rpc_servers=["127.0.0.1"])
    # ggml cannot forget a server: a runtime without them in the same process would still use them
    monkeypatch.setattr(rpc, "registered", lambda: ("10.0.0.2:50052",))
    with pytest.raises(EngineError, match="already sent layers to the RPC servers 10.0.0.2:50052"):
        Runtime(model, "f16", n_ctx=256)


def test_rpc_devices_do_not_count_as_a_local_gpu() -> None:
    # llama_supports_gpu_offload() is true on any build with the RPC backend, GPU or not; the host
    # memory check (and anything else asking "is the cache on this machine?") must not follow it
    from engine import rpc
    from engine.runtime import load_llama_cpp

    lc = load_llama_cpp()
    kinds = {d.kind for d in rpc.devices(lc)}
    assert "cpu" in kinds
    if lc.llama_cpp.llama_supports_rpc() and not any(d.kind == "gpu" and not d.is_rpc for d in rpc.devices(lc)):
        assert lc.llama_cpp.llama_supports_gpu_offload() and not rpc.has_local_gpu(lc)


def test_a_cpu_reference_arm_keeps_every_op_on_the_cpu(model: Path) -> None:
    # on a CUDA build llama.cpp runs a prompt's large batches on the GPU even for CPU-resident
    # layers (op offload): an @cpu arm measured that way compared the GPU with itself
    for arm, offload in (("f16@cpu", False), ("f16", True)):
        rt = Runtime(model, arm, n_ctx=256)
        try:
            assert rt.llm.context_params.op_offload is offload
        finally:
            rt.close()

"""D2 over llama.cpp's RPC backend: two ggml-rpc-server processes on loopback (CPU) take the
layers of SmolLM2, and the result is d2 on the local CPU's.

Tolerance: both sides run the same ggml-cpu kernels from the same build on the same data;
splitting the layers only adds exact f32 copies of the hidden state between the servers, so
the logits should be identical. Measured: max |Δlogit| 0.0 over 1,500 positions × 49,152
logits (2026-11-29, this machine). The bound 1e-4 leaves room for a reduction order that
changes with a server's thread count, three orders of magnitude below the d2-vs-f16 effect
(KLD 0.005 ≈ logit changes of 0.1).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

llama_cpp = pytest.importorskip("llama_cpp")

from engine import rpc  # noqa: E402
from engine.errors import RpcServerError  # noqa: E402

SERVER = rpc.server_binary(llama_cpp)
if SERVER is None:
    pytest.skip("this engine build has no ggml-rpc-server (built before GGML_RPC); run `python -m engine.build`",
                allow_module_level=True)

MIB = 2**20
TENSOR_SPLIT = (1.0, 2.0)  # not the default, so the split points are the ones the estimate must follow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[str, ...]]:
    logs = tmp_path_factory.mktemp("rpc")
    procs, endpoints = [], []
    for i in range(2):
        port = _free_port()
        log = (logs / f"server{i}.log").open("w")
        procs.append(subprocess.Popen(rpc.server_command(SERVER, "127.0.0.1", port, threads=1), stdout=log,
                                      stderr=subprocess.STDOUT))
        endpoints.append(f"127.0.0.1:{port}")
    try:
        for endpoint in endpoints:
            for _ in range(100):
                try:
                    rpc.probe(endpoint)
                    break
                except RpcServerError:
                    time.sleep(0.1)
            else:
                pytest.fail(f"rpc-server {endpoint} did not come up: {(logs / 'server0.log').read_text()[-500:]}")
        yield tuple(endpoints)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def tokens(model_path: Path) -> list[int]:
    from engine.runtime import load_llama_cpp

    text = (Path(__file__).resolve().parents[2] / "bench/evaltext/adventures-of-sherlock-holmes.txt").read_text()
    lc = load_llama_cpp()
    params = lc.llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    vocab = lc.llama_cpp.llama_model_get_vocab(model)
    raw = text.encode()
    buf = (lc.llama_cpp.llama_token * (len(raw) + 8))()
    n = lc.llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    lc.llama_cpp.llama_model_free(model)
    assert n > 1500
    return [int(t) for t in buf[:1500]]


def _in_own_process(fn, *args):
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result(timeout=600)


@pytest.fixture(scope="module")
def runs(model_path, tokens, servers, tmp_path_factory):
    from rpc_child import d2_logits

    logs = tmp_path_factory.mktemp("rpc-logs")
    local = _in_own_process(d2_logits, str(model_path), tokens, (), None, str(logs / "local.log"))
    split = _in_own_process(d2_logits, str(model_path), tokens, servers, TENSOR_SPLIT, str(logs / "split.log"))
    return local, split, (logs / "local.log").read_text(), (logs / "split.log").read_text()


def test_d2_split_over_two_rpc_servers_gives_the_local_logits(runs) -> None:
    local, split, _, _ = runs
    diff = np.abs(local["logits"] - split["logits"])
    assert diff.max() <= 1e-4, f"max |Δlogit| {diff.max()} at position {np.unravel_index(diff.argmax(), diff.shape)[0]}"
    assert (local["logits"].argmax(-1) == split["logits"].argmax(-1)).all()
    assert split["generated"] == local["generated"]  # decode (one query at a time) too
    assert split["kv_bytes"] == local["kv_bytes"]


def test_the_d2_cache_and_bases_live_on_the_servers(runs, servers) -> None:
    _, _, local_log, split_log = runs
    # every layer's D2 cache is on a device (the servers), none in this process's memory
    assert "D2 cache in device memory (30 of 30 layers on a device)" in split_log
    assert "D2 cache in host memory (0 of 30 layers on a device)" in local_log
    for endpoint in servers:
        assert re.search(rf"RPC\d\[{re.escape(endpoint)}\] KV buffer size", split_log), endpoint
    assert not re.search(r"\bCPU KV buffer", split_log)
    # the scheduler's splits (GGML_SCHED_DEBUG): the embeddings on the CPU, layers 0-10 on the first
    # server, the rest on the second, which takes layer 10's output; what each split copies in from
    # another device is never a basis, an exact copy or a cache: those live on their layer's server
    splits = re.findall(r"## SPLIT #\d+: (\S+) # \d+ inputs(?:: (.*))?", split_log)
    assert {backend for backend, _ in splits} == {"CPU"} | {f"RPC0[{e}]" for e in servers}
    assert any(backend == f"RPC0[{servers[1]}]" and "[l_out-10 " in inputs for backend, inputs in splits)
    copied = {name for _, inputs in splits for name in re.findall(r"\[(\S+) \(", inputs or "")}
    assert copied and not {n for n in copied if n.startswith(("fraqtl_rot", "fraqtl_unrot", "fraqtl_exact", "cache_"))}


def test_each_servers_buffers_match_the_per_device_estimate(runs, servers, model_path) -> None:
    # the layer split llama.cpp made over the servers is the one engine.estimates.split_estimate predicts
    from engine.arms import ArmConfig
    from engine.estimates import split_estimate
    from engine.gguf import read_gguf

    _, _, _, split_log = runs
    estimated = split_estimate(read_gguf(model_path), ArmConfig.parse("d2"), 2048, TENSOR_SPLIT, n_ubatch=256)
    assert [len(d.layers) for d in estimated] == [11, 19] and estimated[1].has_output
    for endpoint, device in zip(servers, estimated):
        for kind, expected in (("model", device.weights_bytes), ("KV", device.kv_bytes)):
            found = re.search(rf"RPC\d\[{re.escape(endpoint)}\] {kind} buffer size\s*=\s*([\d.]+) MiB", split_log)
            assert found, (endpoint, kind)
            assert float(found.group(1)) == pytest.approx(expected / MIB, abs=0.01), (endpoint, kind)


def test_an_answer_with_d2_through_the_engine_worker(model_path, servers) -> None:
    from engine.events import AnswerDone
    from engine.worker import EngineSpec, EngineWorker

    spec = EngineSpec(str(model_path), "d2", n_ctx=1024, n_threads=1, rpc_servers=servers)
    with EngineWorker(spec) as worker:
        events = list(worker.answer([{"role": "user", "content": "Name a colour of the sky."}], max_tokens=12))
    done = [e for e in events if isinstance(e, AnswerDone)]
    assert done and done[0].n_generated > 0 and done[0].text.strip(), events[-1]


def test_an_unreachable_server_is_a_clear_error_not_a_dead_engine(model_path) -> None:
    from engine.worker import EngineSpec, EngineWorker

    endpoint = f"127.0.0.1:{_free_port()}"
    worker = EngineWorker(EngineSpec(str(model_path), "d2", n_ctx=512, n_threads=1, rpc_servers=(endpoint,)))
    with pytest.raises(RpcServerError, match=f"{endpoint} cannot be used: nothing answers there") as info:
        worker.start()
    assert info.value.endpoint == endpoint


def test_a_server_without_the_d2_types_is_refused(servers, monkeypatch) -> None:
    # a real server asked about a type it does not know hangs up, as an upstream server does for D2's
    # (250: past every ggml type, ours included)
    monkeypatch.setattr(rpc, "_GGML_TYPE_D2_P16", 250)
    with pytest.raises(RpcServerError, match="does not know the D2 cache types"):
        rpc.probe(servers[0])
    assert rpc.probe(servers[0], need_d2=False).n_devices == 1  # and it still serves afterwards

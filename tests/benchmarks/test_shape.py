"""The shaped model: exact Mistral-7B-v0.3 tensor plan, llama.cpp's Q4_K_M policy, loads and runs."""

from pathlib import Path

import pytest

from engine.gguf import read_gguf
from engine.shape import MISTRAL_7B_V03, tensor_shapes, tensor_type, tensor_types, write_shaped_gguf
from engine.shape import _tensor_bytes


def test_mistral_shape_has_the_published_parameter_count_and_q4_k_m_size() -> None:
    s = MISTRAL_7B_V03
    assert (s.n_layer, s.n_embd, s.n_head, s.n_head_kv, s.head_dim, s.n_ff, s.n_vocab) == (
        32, 4096, 32, 8, 128, 14336, 32768)
    assert s.n_params == 7_248_023_552  # Mistral-7B-v0.3
    plan = [(n, ne, tensor_type(n, ne, "Q4_K_M", s.n_layer)) for n, ne in tensor_shapes(s)]
    # Q6_K for output and for attn_v / ffn_down in the layers use_more_bits picks (llama-quant.cpp)
    q6 = sorted(n for n, _, t in plan if t == 14)
    assert "output.weight" in q6 and len(q6) == 1 + 2 * 16
    assert sum(_tensor_bytes(ne, t) for _, ne, t in plan) == 4_372_054_016  # ≈ the real 4.37 GB file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("shape")
    shape = MISTRAL_7B_V03.scaled(layers=8, scale=8)
    direct = write_shaped_gguf(folder / "direct.gguf", shape, "Q4_K_M")
    via_llama = write_shaped_gguf(folder / "llama.gguf", shape, "Q4_K_M", method="llama", n_threads=2)
    return direct, via_llama


def test_direct_types_match_llama_model_quantize(tiny: tuple[Path, Path]) -> None:
    direct, via_llama = tiny
    ours, theirs = tensor_types(direct), tensor_types(via_llama)
    assert ours == theirs
    assert direct.stat().st_size == via_llama.stat().st_size


def test_tiny_shaped_model_loads_and_decodes_in_llama_cpp(tiny: tuple[Path, Path]) -> None:
    from engine.events import AnswerDone
    from engine.runtime import Runtime

    info = read_gguf(tiny[0])
    assert (info.n_layer, info.n_head, info.n_head_kv, info.head_dim_k) == (8, 32, 8, 16)
    assert info.metadata["fraqtl.shape"] == "mistral-7b-instruct-v0.3-8l-w8"
    rt = Runtime(tiny[0], "f16", n_ctx=256, n_gpu_layers=0)  # head_dim 16 is too small for q8_0 blocks
    try:
        tokens = rt.tokenize("memory figures at seven billion parameters", add_bos=True)
        assert len(tokens) > 5 and tokens[0] == 1
        done = [e for e in rt.generate(tokens, max_tokens=4) if isinstance(e, AnswerDone)][-1]
        assert done.n_prompt == len(tokens)
        assert done.n_generated + (done.finish == "stop") >= 1
    finally:
        rt.close()


def test_shape_model_cli_writes_a_tiny_model(tmp_path: Path) -> None:
    from bench.cli import main

    out = tmp_path / "m.gguf"
    assert main(["shape-model", "--layers", "2", "--scale", "8", "--type", "Q8_0", "-o", str(out)]) == 0
    info = read_gguf(out)
    assert info.n_layer == 2 and info.n_embd == 512
    assert {t.ggml_type for t in info.tensors if len(t.shape) == 2} == {8}  # Q8_0 everywhere

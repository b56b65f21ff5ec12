"""The D2 KV cache in our llama.cpp build, driven through the engine on the real SmolLM2.

Controls prove the rotation algebra (identity and signed-permutation bases with every
direction in fp16 reproduce the f16 arm; a dense random basis stays within fp16 rounding),
the allocation equals the recipe's formula, prefix reuse and seq_rm keep the exact
sink/window copies right, and bad sidecars are clear errors, never an abort.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engine import d2 as d2_module
from engine import metrics
from engine import sidecar as sc
from engine.arms import LITE, ArmConfig, Recipe
from engine.d2 import D2Settings
from engine.errors import ArmUnavailableError
from engine.estimates import estimate
from engine.estimates import kv_bytes as estimate_kv_bytes
from engine.events import AnswerDone
from engine.gguf import read_gguf
from engine.runtime import Runtime

N_TOKENS = 1024
NO_EXACT = Recipe(sinks=0, window=0)


@pytest.fixture(scope="module")
def model() -> Path:
    from engine.models import resolve

    return resolve(None)


@pytest.fixture(scope="module")
def tokens(model: Path) -> list[int]:
    text = (Path(__file__).resolve().parents[2] / "engine" / "corpus" / "technical-prose.txt").read_text()
    rt = Runtime(model, "f16", n_ctx=256)
    try:
        toks = rt.tokenize(text)
    finally:
        rt.close()
    assert len(toks) >= N_TOKENS
    return toks[:N_TOKENS]


def run_logits(model: Path, toks: list[int], arm: str, d2: D2Settings | None = None) -> np.ndarray:
    rt = Runtime(model, arm, n_ctx=2048, logits_all=True, d2=d2)
    try:
        rt.llm.eval(toks)
        return np.array(rt.llm.scores[: len(toks)], dtype=np.float64)
    finally:
        rt.close()


def kld(ref: np.ndarray, other: np.ndarray) -> float:
    return float(metrics.kld(metrics.log_softmax(ref), metrics.log_softmax(other)).mean())


@pytest.fixture(scope="module")
def f16_logits(model: Path, tokens: list[int]) -> np.ndarray:
    return run_logits(model, tokens, "f16")


def test_identity_basis_all_fp16_matches_f16(model: Path, tokens: list[int], f16_logits: np.ndarray) -> None:
    # compressed path only (no exact copies) and the exact-copy path: both reproduce f16
    for recipe in (NO_EXACT, Recipe(sinks=8, window=256)):
        d2 = D2Settings(recipe=recipe, basis="identity", k_protect=64, v_protect=64)
        logits = run_logits(model, tokens, "d2", d2)
        assert np.abs(logits - f16_logits).max() <= 1e-3


def control_basis(model: Path, tmp_path: Path, mode: str) -> D2Settings:
    """Signed identity ("sign") or signed permutation ("perm"): orthonormal and exact in fp16."""
    info = read_gguf(model)
    rng = np.random.default_rng(11)
    basis = np.zeros((info.n_layer, info.n_head_kv, 64, 64), dtype=np.float32)
    for il in range(info.n_layer):
        for h in range(info.n_head_kv):
            perm = np.arange(64) if mode == "sign" else rng.permutation(64)
            basis[il, h, np.arange(64), perm] = rng.choice([-1.0, 1.0], size=64)
    k = sc.write_sidecar(sc.SidecarFile("k", basis, ranks=np.full((info.n_layer, info.n_head_kv), 64, np.int32)),
                         tmp_path / f"{mode}.fraqtl-k-eigenbasis.bin")
    v = sc.write_sidecar(sc.SidecarFile("v", basis, protect=64), tmp_path / f"sidecar_real_u_{mode}.bin")
    return D2Settings(recipe=NO_EXACT, k_sidecar=k, v_sidecar=v, k_protect=64, v_protect=64)


def test_per_head_sign_basis_matches_f16_exactly(model: Path, tokens: list[int], f16_logits: np.ndarray,
                                                 tmp_path: Path) -> None:
    # different matrices per (layer, KV head): a wrong head mapping for Q, K, V or the output
    # would break this, and fp16 rounding commutes with a sign flip
    logits = run_logits(model, tokens, "d2", control_basis(model, tmp_path, "sign"))
    assert np.abs(logits - f16_logits).max() <= 1e-3


def test_dense_random_basis_is_within_fp16_rounding(model: Path, tokens: list[int], f16_logits: np.ndarray,
                                                    tmp_path: Path) -> None:
    # Reordering head dimensions (a signed permutation: exact algebra, exact fp16 values) only
    # changes the order of the fp16 dot products, yet this 135M model amplifies that to a
    # visible KLD: that is the rounding floor. A dense random basis must stay at that floor.
    floor = kld(f16_logits, run_logits(model, tokens, "d2", control_basis(model, tmp_path, "perm")))
    dense = run_logits(model, tokens, "d2",
                       D2Settings(recipe=NO_EXACT, basis="random", seed=5, k_protect=64, v_protect=64))
    assert 0 < floor < 0.01
    assert kld(f16_logits, dense) < 1.5 * floor
    assert np.mean(dense.argmax(1) == f16_logits.argmax(1)) > 0.95


def test_allocation_equals_the_recipe_formula(model: Path) -> None:
    info = read_gguf(model)
    for recipe, (type_k, type_v) in ((Recipe(), (43, 44)), (Recipe(k_rank=32, v_rank=64), (44, 45)),
                                     (LITE, (50, 49)), (Recipe(k_rank=32, v_rank=64, k_bits=2, v_bits=2), (47, 48)),
                                     (Recipe(k_rank=64, v_rank=16, k_bits=3, v_bits=2), (45, 46))):
        arm = ArmConfig("d2", recipe)
        rt = Runtime(model, arm, n_ctx=1000, d2=D2Settings(recipe=recipe, basis="identity"))
        try:
            mem = rt.kv_memory()
        finally:
            rt.close()
        assert mem is not None and mem.d2
        assert (mem.type_k, mem.type_v) == (type_k, type_v)
        cells = 1024  # llama.cpp pads the context to 256 cells
        pk, pv, i8 = recipe.protected(64, "k"), recipe.protected(64, "v"), recipe.protect_bits == 8
        k_block = (4 + pk if i8 else 2 + 2 * pk) + (64 - pk) * recipe.k_bits // 8
        v_block = (4 + pv if i8 else 2 + 2 * pv) + (64 - pv) * recipe.v_bits // 8
        assert mem.k_bytes == cells * info.n_layer * info.n_head_kv * k_block
        assert mem.v_bytes == cells * info.n_layer * info.n_head_kv * v_block
        assert mem.kv_bytes == estimate_kv_bytes(info, arm, 1000)
        # exact copies: sinks + window (capped at the cache) + one scratch row, f16
        rows = min(recipe.sinks + recipe.window, cells) + 1
        assert mem.exact_bytes == rows * info.n_layer * info.n_head_kv * 128 * 2
        # and the estimate (what the app shows before loading) counts the same fixed buffers
        assert estimate(info, arm, 1000).exact_copy_bytes == mem.exact_bytes
        assert estimate(info, arm, 1000).basis_bytes == mem.basis_bytes
    # the locked recipe at head_dim 64 is the same 5.69 bits per element as at 128
    assert ArmConfig.parse("d2").bits_per_element(64, 64) == pytest.approx(5.6875)
    assert ArmConfig.parse("d2").bits_per_element(128, 128) == pytest.approx(5.6875)


def kauto_sidecars(model: Path, tmp_path: Path, ranks: np.ndarray) -> tuple[Path, Path]:
    """Random orthonormal K and V sidecars whose K ranks are ``ranks`` [layer, head]."""
    info = read_gguf(model)
    k, v = sc.control_sidecars_for(info, 16, 16, seed=3)
    k = sc.SidecarFile("k", k.basis, ranks=ranks.astype(np.int32))
    name = "-".join(map(str, ranks.max(axis=1)[:4]))
    return (sc.write_sidecar(k, tmp_path / f"{name}.fraqtl-k-eigenbasis.bin"),
            sc.write_sidecar(v, tmp_path / f"sidecar_real_u_{name}.bin"))


def test_kauto_gives_each_layer_the_k_type_its_ranks_need(model: Path, tmp_path: Path) -> None:
    # layers' largest head ranks cycle 8, 16, 24, 40 at head_dim 64: d2_p8, d2_p16, d2_p32 and the
    # whole head in f16; the other heads' smaller ranks are rounded up to their layer's type
    info = read_gguf(model)
    ranks = np.full((info.n_layer, info.n_head_kv), 8, dtype=np.int32)
    ranks[:, 1] = [(8, 16, 24, 40)[il % 4] for il in range(info.n_layer)]
    k_path, v_path = kauto_sidecars(model, tmp_path, ranks)
    recipe = Recipe.parse("kautov16")
    arm = ArmConfig("d2", recipe)
    rt = Runtime(model, arm, n_ctx=1000, d2=D2Settings(recipe=recipe, k_sidecar=k_path, v_sidecar=v_path))
    try:
        mem = rt.kv_memory()
        last_layer_only = d2_module.kv_memory(rt.llama_cpp, rt.llm.ctx)  # what llama.cpp itself says
        memory_arm = rt.memory_arm
    finally:
        rt.close()
    assert mem is not None and mem.d2
    # the report names every layer's K type, not the last layer's for all of them
    assert mem.type_k is None and mem.k_types == tuple((43, 44, 45, 1)[il % 4] for il in range(info.n_layer))
    assert last_layer_only is not None and last_layer_only.type_k == mem.k_types[-1]
    count = [sum(1 for il in range(info.n_layer) if il % 4 == i) for i in range(4)]
    assert mem.k_type_name == f"per layer: {count[3]} × f16, {count[0]} × d2_p8, {count[1]} × d2_p16, {count[2]} × d2_p32"
    cells = 1024
    k_bytes = {8: 2 + 16 + 56 * 3 // 8, 16: 2 + 32 + 48 * 3 // 8, 32: 2 + 64 + 32 * 3 // 8, 64: 128}
    per_layer = [k_bytes[(8, 16, 32, 64)[il % 4]] for il in range(info.n_layer)]
    assert mem.k_bytes == cells * info.n_head_kv * sum(per_layer)
    assert mem.v_bytes == cells * info.n_layer * info.n_head_kv * (2 + 16 + 56 * 3 // 8)
    # the estimate the app shows reads the same ranks: exact, as the README's formula says
    assert memory_arm.recipe is not None and memory_arm.recipe.k_layers == tuple((8, 16, 32, 64)[il % 4]
                                                                                  for il in range(info.n_layer))
    assert mem.kv_bytes == estimate_kv_bytes(info, memory_arm, 1000)
    assert estimate(info, memory_arm, 1000).exact_copy_bytes == mem.exact_bytes


@pytest.mark.parametrize("rank, fixed", [(16, "k32v16"), (8, "k16v16")])
def test_kauto_with_uniform_ranks_is_the_fixed_recipe(model: Path, tokens: list[int], tmp_path: Path, rank: int,
                                                      fixed: str) -> None:
    # every layer's K the same type: the per-layer bases and block order must give the fixed
    # recipe's logits bit for bit (a window of 64 so that most rows are read compressed)
    info = read_gguf(model)
    k_path, v_path = kauto_sidecars(model, tmp_path, np.full((info.n_layer, info.n_head_kv), rank))
    logits = {}
    for text in ("kautov16", fixed):
        recipe = dataclasses.replace(Recipe.parse(text), window=64)
        logits[text] = run_logits(model, tokens[:512], "d2", D2Settings(recipe=recipe, k_sidecar=k_path,
                                                                        v_sidecar=v_path))
    np.testing.assert_array_equal(logits["kautov16"], logits[fixed])


def test_kauto_needs_a_k_sidecar(model: Path) -> None:
    with pytest.raises(ArmUnavailableError, match="K sidecar"):
        Runtime(model, "d2:kautov16", n_ctx=512, d2=D2Settings(recipe=Recipe.parse("kautov16"), basis="identity"))


def test_seq_rm_keeps_exact_copies_consistent(model: Path, tokens: list[int]) -> None:
    # a small window so that the ring wraps; removing a tail and evaluating other tokens
    # must give the logits a fresh context gives for the same sequence
    d2 = D2Settings(recipe=Recipe(sinks=8, window=64), basis="random", seed=2)
    a, b, c = tokens[:300], tokens[300:420], tokens[600:700]
    rt = Runtime(model, "d2", n_ctx=1024, logits_all=True, d2=d2)
    try:
        rt.llm.eval(a + b)
        rt.truncate(len(a))
        rt.llm.eval(c)
        reused = np.array(rt.llm.scores[len(a) : len(a) + len(c)])
    finally:
        rt.close()
    rt = Runtime(model, "d2", n_ctx=1024, logits_all=True, d2=d2)
    try:
        rt.llm.eval(a + c)
        fresh = np.array(rt.llm.scores[len(a) : len(a) + len(c)])
    finally:
        rt.close()
    assert np.abs(reused - fresh).max() <= 1e-3


def test_truncate_and_continue_equals_fresh_prefill(model: Path, tokens: list[int]) -> None:
    # The continuation (20 tokens) is shorter than the window (64): the window positions
    # before the cut whose ring slots the removed tokens took must be exact again, as in a
    # fresh prefill of the same tokens. Compressed rows differ from exact ones here
    # (protect < head_dim, random bases), so a stale ring shows in the logits.
    d2 = D2Settings(recipe=Recipe(sinks=8, window=64), basis="random", seed=3)
    a, b, c = tokens[:300], tokens[300:340], tokens[600:620]
    rt = Runtime(model, "d2", n_ctx=1024, n_batch=64, logits_all=True, d2=d2)
    try:
        list(rt.prefill(a + b))
        list(rt.prefill(a + c))
        reused = rt.last_logits()
    finally:
        rt.close()
    rt = Runtime(model, "d2", n_ctx=1024, n_batch=64, logits_all=True, d2=d2)
    try:
        list(rt.prefill(a + c))
        fresh = rt.last_logits()
    finally:
        rt.close()
    assert np.abs(reused - fresh).max() <= 1e-3


@pytest.mark.parametrize("base", [Recipe(), LITE], ids=["d2", "d2-lite"])
def test_window_covering_every_token_equals_all_exact_attention(model: Path, tokens: list[int], base: Recipe) -> None:
    # protect < head_dim: compressed rows differ from exact ones. With a window that holds
    # every token, attention must read only exact rows: the result matches a cache that keeps
    # every direction in fp16 (same bases) to fp16 rounding. A cache that ignored its exact
    # copies would read the 3-bit tails (d2-lite: and int8 protected values) here and land
    # where the compressed-only cache does.
    def settings(recipe: Recipe, protect: int | None = None) -> D2Settings:
        return D2Settings(recipe=recipe, basis="random", seed=7, k_protect=protect, v_protect=protect)

    no_exact = dataclasses.replace(base, sinks=0, window=0)
    ref = run_logits(model, tokens, "d2", settings(no_exact, 64))
    exact = run_logits(model, tokens, "d2", settings(dataclasses.replace(base, sinks=8, window=2048)))
    lossy = run_logits(model, tokens, "d2", settings(no_exact))
    # the all-fp16 reference runs llama.cpp's f16 kernels (Q rounded to f16), the exact rows
    # D2's f32 ones: they differ by the fp16 rounding floor (~0.003 here), 1/70 of lossy's
    assert kld(ref, exact) < 0.01
    assert kld(ref, lossy) > 20 * kld(ref, exact)
    # top-1: fp16 rounding alone flips near-ties at about 5 % of positions (0.948-0.962 with two
    # summation orders of the same inverse rotation); the compressed-only cache flips about 30 %
    assert np.mean(exact.argmax(1) == ref.argmax(1)) > 0.92 > 0.8 > np.mean(lossy.argmax(1) == ref.argmax(1))


def test_follow_up_question_reuses_the_document(model: Path) -> None:
    # the shipped calibrated sidecars, with a small window so that the document is compressed
    document = ("The research station Kestrel Point lies on the island of Varn. Its director is Maren Oduya. "
                "The station was opened in 1962 and its radio call sign is KPX-44.\n") * 6
    rt = Runtime(model, "d2:k16v32s8w32", n_ctx=2048, n_batch=64)
    try:
        def ask(question: str) -> AnswerDone:
            messages = [{"role": "user", "content": f"{document}\n{question}"}]
            return [ev for ev in rt.answer(messages, max_tokens=24) if isinstance(ev, AnswerDone)][0]

        first = ask("Who is the director of the station?")
        n_doc = len(rt.chat_tokens([{"role": "user", "content": document}]))
        second = ask("In which year was the station opened?")
    finally:
        rt.close()
    assert first.n_evaluated == first.n_prompt
    # the document was not evaluated again: the question, plus the exact window before the cut
    # (32 tokens, back to a batch boundary) when the first answer's tail is dropped
    assert second.n_evaluated < second.n_prompt - n_doc + 16 + 32 + 64
    assert second.n_prompt - n_doc + 16 + 32 + 64 < second.n_prompt
    assert "Maren" in first.text or "Oduya" in first.text
    # the reused cache answers exactly as a fresh prefill of the same prompt does
    fresh_rt = Runtime(model, "d2:k16v32s8w32", n_ctx=2048, n_batch=64)
    try:
        messages = [{"role": "user", "content": f"{document}\nIn which year was the station opened?"}]
        fresh = [ev for ev in fresh_rt.answer(messages, max_tokens=24) if isinstance(ev, AnswerDone)][0]
    finally:
        fresh_rt.close()
    assert fresh.n_evaluated == fresh.n_prompt
    assert second.token_ids == fresh.token_ids


def write_bad(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bad_sidecars_are_clear_errors(model: Path, tmp_path: Path) -> None:
    info = read_gguf(model)
    good_v = sc.write_sidecar(sc.control_sidecar("v", info.n_layer, info.n_head_kv, 64, 16, basis="identity"),
                              tmp_path / "good_v.bin")
    wrong_model = sc.write_sidecar(
        sc.SidecarFile("k", np.tile(np.eye(64, dtype=np.float32), (info.n_layer + 2, info.n_head_kv, 1, 1)),
                       ranks=np.full((info.n_layer + 2, info.n_head_kv), 8, np.int32)),
        tmp_path / "other.fraqtl-k-eigenbasis.bin")
    good_k = sc.write_sidecar(
        sc.SidecarFile("k", np.tile(np.eye(64, dtype=np.float32), (info.n_layer, info.n_head_kv, 1, 1)),
                       ranks=np.full((info.n_layer, info.n_head_kv), 8, np.int32)),
        tmp_path / "good.fraqtl-k-eigenbasis.bin")
    raw = good_k.read_bytes()
    truncated = write_bad(tmp_path, "truncated.bin", raw[: len(raw) - 100])
    bad_magic = write_bad(tmp_path, "magic.bin", b"XXXX" + raw[4:])
    scaled = sc.write_sidecar(
        sc.SidecarFile("k", np.tile(1.2 * np.eye(64, dtype=np.float32), (info.n_layer, info.n_head_kv, 1, 1)),
                       ranks=np.full((info.n_layer, info.n_head_kv), 8, np.int32)),
        tmp_path / "scaled.fraqtl-k-eigenbasis.bin")
    cases = {
        wrong_model: "dims",
        truncated: "truncated",
        bad_magic: "magic",
        scaled: "not orthonormal",
    }
    for path, word in cases.items():
        with pytest.raises(ArmUnavailableError) as err:
            Runtime(model, "d2", n_ctx=512, d2=D2Settings(k_sidecar=path, v_sidecar=good_v))
        assert str(path) in str(err.value) and word in str(err.value)


def test_unsupported_recipe_is_an_error_not_an_abort(model: Path) -> None:
    with pytest.raises(ArmUnavailableError) as err:
        Runtime(model, "d2", n_ctx=512, d2=D2Settings(basis="identity", k_protect=24))
    assert "protected directions" in str(err.value)


def test_the_cpp_sidecar_reader_refuses_bad_files_itself(model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Python checks bypassed, llama.cpp's own reader (llama-fraqtl-sidecar.h, the code the
    libFuzzer harness drives) names each bad file and the mismatch; a good pair still loads."""
    info = read_gguf(model)
    monkeypatch.setattr(Runtime, "_check_sidecars", lambda self: None)
    good_v = sc.write_sidecar(sc.control_sidecar("v", info.n_layer, info.n_head_kv, 64, 16, basis="identity"),
                              tmp_path / "good_v.bin")
    eye = np.tile(np.eye(64, dtype=np.float32), (info.n_layer, info.n_head_kv, 1, 1))
    good_k = sc.write_sidecar(sc.SidecarFile("k", eye, ranks=np.full((info.n_layer, info.n_head_kv), 8, np.int32)),
                              tmp_path / "good.fraqtl-k-eigenbasis.bin")
    raw = good_k.read_bytes()
    n_ranks = info.n_layer * info.n_head_kv * 4
    nan = np.array([np.nan], "<f2").tobytes()
    cases = {
        write_bad(tmp_path, "truncated.bin", raw[:-100]): "(truncated)",
        write_bad(tmp_path, "trailing.bin", raw + b"\0"): "(trailing bytes)",
        write_bad(tmp_path, "magic.bin", b"XXXX" + raw[4:]): "magic 0x58585858, expected 0x4B514152",
        write_bad(tmp_path, "dims.bin", raw[:8] + np.int32(info.n_layer + 1).tobytes() + raw[12:]): "the model has",
        write_bad(tmp_path, "rank.bin", raw[:32] + np.int32(65).tobytes() + raw[36:]): "is outside [8, 64]",
        write_bad(tmp_path, "nan.bin", raw[:32 + n_ranks] + nan + raw[34 + n_ranks:]): "non-finite value at layer 0",
    }
    for path, words in cases.items():
        with pytest.raises(ArmUnavailableError) as err:
            Runtime(model, "d2", n_ctx=512, d2=D2Settings(k_sidecar=path, v_sidecar=good_v))
        assert f"sidecar {path}" in str(err.value) and words in str(err.value)
    Runtime(model, "d2", n_ctx=512, d2=D2Settings(k_sidecar=good_k, v_sidecar=good_v)).close()


def test_d2_lite_arm_end_to_end_on_the_real_model(model: Path, tokens: list[int], f16_logits: np.ndarray) -> None:
    # the arm as the app and the bench name it: shipped sidecars, K d2_p16i8 and V d2_p8i8 blocks,
    # a window small enough that most of the 1024 tokens are read from the compressed rows
    info = read_gguf(model)
    arm = ArmConfig.parse("d2:lite")
    rt = Runtime(model, dataclasses.replace(arm, recipe=dataclasses.replace(LITE, window=128)), n_ctx=2048,
                 logits_all=True)
    try:
        mem = rt.kv_memory()
        rt.llm.eval(tokens)
        lite = np.array(rt.llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        rt.close()
    assert mem is not None and mem.d2 and (mem.type_k, mem.type_v) == (50, 49)
    assert mem.kv_bytes == estimate_kv_bytes(info, arm, 2048)
    assert mem.kv_bytes * 8 / (2048 * info.n_layer * info.n_head_kv * 128) == pytest.approx(4.4375)
    # measurably lossy (it is not silently reading an f16 cache), and closer to f16 than q4_0 at
    # its 4.5 bits, though most rows here are compressed and none of q4_0's is exact
    q4 = run_logits(model, tokens, "q4_0")
    assert 1e-4 < kld(f16_logits, lite) < kld(f16_logits, q4)
    assert np.mean(lite.argmax(1) == f16_logits.argmax(1)) > 0.85
    rt = Runtime(model, "d2:lite", n_ctx=2048, n_batch=64)
    try:
        document = ("The research station Kestrel Point lies on the island of Varn. Its director is Maren Oduya. "
                    "The station was opened in 1962 and its radio call sign is KPX-44.\n") * 6
        messages = [{"role": "user", "content": f"{document}\nWho is the director of the station?"}]
        done = [ev for ev in rt.answer(messages, max_tokens=24) if isinstance(ev, AnswerDone)][0]
    finally:
        rt.close()
    assert "Maren" in done.text or "Oduya" in done.text



_DECODE = """
import dataclasses, json, sys
import numpy as np
from engine.arms import LITE, Recipe
from engine.d2 import D2Settings
from engine.runtime import Runtime
model, lite, window, threads = sys.argv[1], sys.argv[2] == "lite", int(sys.argv[3]), int(sys.argv[4])
toks, n_decode = json.loads(sys.stdin.read()), 12
recipe = dataclasses.replace(LITE if lite else Recipe(), sinks=8, window=window)
rt = Runtime(model, "d2", n_ctx=1024, n_batch=64, n_threads=threads, d2=D2Settings(recipe=recipe, basis="random", seed=4))
try:
    list(rt.prefill(toks[:-n_decode]))
    steps = []
    for t in toks[-n_decode:]:
        rt.llm.eval([t])
        steps.append(rt.last_logits())
finally:
    rt.close()
sys.stdout.buffer.write(np.array(steps, dtype=np.float32).tobytes())
"""


def decode_both_forms(model: Path, tokens: list[int], lite: bool, window: int, threads: int) -> list[np.ndarray]:
    """Logits of 12 tokens decoded one at a time after a 288-token prefill, with the CPU's shared
    decode and with FRAQTL_D2_PER_HEAD=1 (llama.cpp's per-head loop; chosen once per process)."""
    import json
    import os
    import subprocess
    import sys

    out = []
    for per_head in ("0", "1"):
        run = subprocess.run([sys.executable, "-c", _DECODE, str(model), "lite" if lite else "d2", str(window), str(threads)],
                             input=json.dumps(tokens[:300]).encode(), capture_output=True, check=True,
                             env=dict(os.environ, FRAQTL_D2_PER_HEAD=per_head), cwd=Path(__file__).resolve().parents[2])
        out.append(np.frombuffer(run.stdout, dtype=np.float32).reshape(12, -1).astype(np.float64))
    return out


def test_one_token_decode_sharing_rows_across_query_heads_equals_the_per_head_loop(model: Path,
                                                                                  tokens: list[int]) -> None:
    # One-token decode on the CPU decodes each cached row of a KV head once for the query heads
    # that share it (SmolLM2: 3 per KV head), rows split over the threads. On one thread with
    # every row exact, it does the per-head loop's arithmetic in the same order: a wrong head,
    # mask, exact slot or partial shows as a difference here.
    shared, per_head = decode_both_forms(model, tokens, lite=False, window=2048, threads=1)
    assert np.array_equal(shared, per_head)


@pytest.mark.parametrize("lite", [False, True], ids=["d2", "d2-lite"])
def test_one_token_decode_over_compressed_rows_agrees_with_the_per_head_loop(model: Path, tokens: list[int],
                                                                            lite: bool) -> None:
    # Window 64 of 300 tokens, two threads: most rows are compressed, and the shared form
    # dequantizes K and takes f32 dots where the per-head loop uses the block's fused dot, and
    # adds the threads' partial sums: other rounding, which this model amplifies (a random
    # basis's own floor, see above, is KLD ~0.003).
    shared, per_head = decode_both_forms(model, tokens, lite=lite, window=64, threads=2)
    assert not np.array_equal(shared, per_head)  # both forms ran
    assert kld(per_head, shared) < 0.01
    assert np.mean(shared.argmax(1) == per_head.argmax(1)) >= 0.9

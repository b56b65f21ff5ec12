"""Calibration math: eigenbases, spectra, energy shares, the K rank rule, corpus handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import calibrate as cal
from engine import sidecar as sc
from engine.errors import EngineError
from engine.gguf import GgufInfo


def synthetic_moments(n_layers: int, n_heads: int, d: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sum of x xᵀ over n anisotropic rows per (layer, head), and the rows themselves."""
    rng = np.random.default_rng(seed)
    scales = np.exp(-np.arange(d) / (d / 6))  # decaying variances, like post-RoPE K
    rows = rng.standard_normal((n_layers, n_heads, n, d)) * scales
    rot = sc.random_orthonormal(n_layers, n_heads, d, seed=seed + 1).astype(np.float64)
    rows = rows @ np.swapaxes(rot, -1, -2) + 0.3  # rotated, with a mean (uncentered moments)
    return np.einsum("lhnd,lhne->lhde", rows, rows), rows


@pytest.mark.parametrize("d", [64, 128])
def test_bases_orthonormal_after_fp16_storage(tmp_path: Path, d: int) -> None:
    moments, _ = synthetic_moments(2, 2, d, 4 * d)
    _, u = cal.eigenbasis(moments, 4 * d)
    path = sc.write_sidecar(sc.SidecarFile("v", u, protect=16), tmp_path / "v.bin")
    stored = sc.read_sidecar(path, "v").basis.astype(np.float64)
    eye = np.eye(d)
    for layer in range(2):
        for head in range(2):
            gram = stored[layer, head].T @ stored[layer, head]
            assert np.linalg.norm(gram - eye, 2) < 1e-3
            assert np.abs(gram - eye).max() < 1e-3


def test_spectra_sorted_and_non_negative() -> None:
    moments, _ = synthetic_moments(3, 2, 32, 200)
    w, u = cal.eigenbasis(moments, 200)
    assert w.shape == (3, 2, 32) and u.shape == (3, 2, 32, 32)
    assert (np.diff(w, axis=-1) <= 1e-12).all()
    assert (w >= 0).all()
    # U diagonalises the per-token moment: Uᵀ M U = diag(w)
    m = moments[1, 1] / 200
    np.testing.assert_allclose(u[1, 1].T @ m @ u[1, 1], np.diag(w[1, 1]), atol=1e-9)
    # eigenvalues sum to the mean squared norm of the rows (no mean subtracted)
    _, rows = synthetic_moments(3, 2, 32, 200)
    np.testing.assert_allclose(w.sum(axis=-1), (rows**2).sum(axis=-1).mean(axis=-1), rtol=1e-10)


def test_rank_deficient_moment_gives_zero_tail() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 4)) @ rng.standard_normal((4, 16))  # rank 4 in 16 dims
    w, u = cal.eigenbasis(x.T @ x, 100)
    assert (w[4:] < 1e-9 * w[0]).all() and (w >= 0).all()
    assert np.abs(u.T @ u - np.eye(16)).max() < 1e-12


def test_sign_convention_is_deterministic() -> None:
    moments, _ = synthetic_moments(1, 1, 16, 64)
    _, u1 = cal.eigenbasis(moments, 64)
    _, u2 = cal.eigenbasis(moments.copy(), 64)
    np.testing.assert_array_equal(u1, u2)
    big = np.take_along_axis(u1[0, 0], np.argmax(np.abs(u1[0, 0]), axis=0)[None, :], axis=0)
    assert (big > 0).all()


@pytest.mark.parametrize("rank", [8, 16, 24, 40])
def test_top_r_reconstruction_energy_equals_eigenvalue_share(rank: int) -> None:
    moments, rows = synthetic_moments(1, 2, 64, 500, seed=3)
    w, u = cal.eigenbasis(moments, 500)
    for head in range(2):
        x = rows[0, head]
        coeffs = x @ u[0, head]
        np.testing.assert_allclose(coeffs @ u[0, head].T, x, atol=1e-10)  # no dimension is dropped
        top = coeffs[:, :rank] @ u[0, head][:, :rank].T  # projection on the top-R directions
        measured = (top**2).sum() / (x**2).sum()
        share = cal.energy_share(w[0, head], rank)
        np.testing.assert_allclose(measured, share, rtol=1e-9)
        # and with the fp16-stored basis, to storage precision
        u16 = u[0, head].astype(np.float16).astype(np.float64)
        top16 = (x @ u16[:, :rank]) @ u16[:, :rank].T
        np.testing.assert_allclose((top16**2).sum() / (x**2).sum(), share, atol=2e-3)


def test_energy_share_broadcasts_per_head_ranks() -> None:
    w = np.array([[[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])
    share = cal.energy_share(w, np.array([[1, 2]]))
    np.testing.assert_allclose(share, [[0.4, 0.5]])
    np.testing.assert_allclose(cal.energy_share(w, 4), [[1.0, 1.0]])
    assert cal.energy_share(np.zeros(4), 2) == 1.0  # an all-zero head loses nothing


def test_energy_rank_rule() -> None:
    d = 64
    w = np.zeros(d)
    w[:10] = 1.0  # 10 equal directions hold everything
    assert cal.energy_rank(w, 0.5) == 8  # 8/10 >= 0.5
    assert cal.energy_rank(w, 0.9) == 16  # 8/10 < 0.9 -> next multiple of 8
    assert cal.energy_rank(w, 1.0) == 16
    flat = np.ones(d)
    assert cal.energy_rank(flat, 0.99) == d  # capped at head_dim
    assert cal.energy_rank(flat, 0.01) == 8  # never below 8
    assert cal.energy_rank(np.zeros(d), 0.9) == 8
    assert cal.energy_rank(np.ones(12), 0.99) == 12  # head_dim not a multiple of 8: capped
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = np.sort(rng.exponential(size=d))[::-1]
        target = rng.uniform(0.3, 0.99)
        r = cal.energy_rank(w, target)
        assert r % 8 == 0 and 8 <= r <= d
        assert cal.energy_share(w, r) >= target
        if r > 8:
            assert cal.energy_share(w, r - 8) < target  # smallest such R


def test_choose_ranks_fixed_and_auto() -> None:
    w = np.zeros((2, 3, 32))
    w[..., :5] = 1.0
    w[1, 2, :20] = 1.0
    np.testing.assert_array_equal(cal.choose_ranks(w, 16), np.full((2, 3), 16))
    auto = cal.choose_ranks(w, "auto", 0.9)
    assert auto.dtype == np.int32 and auto.shape == (2, 3)
    assert auto[0, 0] == 8 and auto[1, 2] == 24


def test_rope_params_yarn_above_trained_context() -> None:
    info = GgufInfo(Path("m.gguf"), 3, {"general.architecture": "llama", "llama.context_length": 8192}, (), 0)
    assert cal.rope_params(info, 8192) == {"scaling": "none"}
    assert cal.rope_params(info, 32768) == {"scaling": "yarn", "freq_scale": 0.25, "orig_ctx": 8192}
    assert cal.default_ctx(info, 100_000) == 8192
    assert cal.default_ctx(info, 3000) == 3000


def test_builtin_corpus_is_shipped_and_digested() -> None:
    files = cal.corpus_files(None)
    assert [f.path.name for f in files] == ["technical-prose.txt", "python-language-reference.txt"]
    assert all(f.n_bytes > 30_000 for f in files) and sum(f.n_bytes for f in files) < 400_000
    assert all(f.licence for f in files)
    digest = cal.corpus_digest(files)
    assert digest == cal.corpus_digest(cal.corpus_files(None))
    assert digest != cal.corpus_digest(list(reversed(files)))  # order is part of the digest


def test_text_and_pdf_corpora(tmp_path: Path) -> None:
    txt = tmp_path / "notes.md"
    txt.write_text("# Title\n\nSome *markdown* text.\n")
    assert "markdown" in cal.read_text(txt)
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 8, "Groundwater moves slowly through porous rock.")
    path = tmp_path / "doc.pdf"
    pdf.output(str(path))
    assert "Groundwater moves slowly" in cal.read_text(path)
    blank = fpdf.FPDF()
    blank.add_page()
    blank.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(cal.CorpusError, match="no text layer"):
        cal.read_text(tmp_path / "scan.pdf")
    with pytest.raises(cal.CorpusError, match="no such file"):
        cal.corpus_files([tmp_path / "missing.txt"])


def test_text_chunks_reassemble() -> None:
    text = "\n\n".join(f"Paragraph {i} " + "word " * (i % 50) for i in range(3000))
    chunks = list(cal._text_chunks(text, size=4096))
    assert "".join(chunks) == text
    assert all(len(c) <= 4096 for c in chunks)
    assert all(c.endswith("\n\n") for c in chunks[:-1])  # cut at paragraph breaks


def test_cli_arguments() -> None:
    args = cal.build_parser().parse_args(["m.gguf", "--corpus", "a.txt", "--corpus", "b.pdf", "--k-rank", "16",
                                          "--tokens", "4096", "-o", "out"])
    assert args.corpus == ["a.txt", "b.pdf"] and args.k_rank == 16 and args.tokens == 4096
    assert cal.build_parser().parse_args([]).k_rank == "auto"
    with pytest.raises(SystemExit):
        cal.build_parser().parse_args(["--k-rank", "lots"])


def test_query_order_protects_the_directions_the_scores_depend_on() -> None:
    # K: most energy along e0, little along e1; the queries only ever look along e1
    w = np.array([[[10.0, 1.0, 0.5, 0.1]]])
    u = np.eye(4)[None, None]
    q = np.diag([0.0, 5.0, 0.0, 0.1])[None, None] * 7  # a sum over 7 tokens
    wq, uq = cal.query_order(w, u, q, 7)
    assert wq[0, 0].tolist() == [1.0, 0.1, 10.0, 0.5]  # shares 5, 0.01, 0, 0 (stable among zeros)
    assert np.array_equal(uq[0, 0], np.eye(4)[:, [1, 3, 0, 2]])
    # isotropic queries keep K's energy order
    wi, ui = cal.query_order(w, u, np.eye(4)[None, None], 1)
    assert np.array_equal(wi, w) and np.array_equal(ui, u)


def test_budget_ranks_fit_kauto_into_the_locked_recipes_bytes() -> None:
    from engine.arms import ArmConfig, Recipe
    from engine.calibrate.spectrum import budget_target, kauto_budget

    moments, _ = synthetic_moments(4, 2, 64, 400)
    w, _ = cal.eigenbasis(moments, 400)
    budget = kauto_budget(64, 64)
    assert budget == 52  # 91 B of k16v32 at head_dim 64 minus V's d2_p8 39 B
    ranks = cal.choose_ranks(w, "budget", budget=budget)
    target = budget_target(w, budget)
    np.testing.assert_array_equal(ranks, cal.choose_ranks(w, "auto", target))  # per-head energy ranks kept
    def size(r: np.ndarray) -> float:
        kauto = Recipe.parse("kautov16").with_k_ranks(r.tolist(), 64)
        return ArmConfig("d2", kauto).kv_bytes_per_token(4, 2, 64, 64)
    locked = ArmConfig.parse("d2").kv_bytes_per_token(4, 2, 64, 64)
    assert size(ranks) <= locked < size(cal.choose_ranks(w, "auto", target + 0.005))  # the highest that fits
    with pytest.raises(EngineError, match="no K ranks fit"):
        budget_target(w, 38)
    with pytest.raises(EngineError, match="needs a byte budget"):
        cal.choose_ranks(w, "budget")


def test_kauto_is_a_candidate_only_where_its_ranks_fit_the_locked_bytes() -> None:
    from engine.calibrate.choose import kauto_recipes

    info = GgufInfo(Path("m.gguf"), 3, {"general.architecture": "llama", "llama.block_count": 2,
                                         "llama.attention.head_count": 3, "llama.attention.head_count_kv": 3,
                                         "llama.embedding_length": 192}, (), 0)
    assert (info.n_layer, info.n_head_kv, info.head_dim_k) == (2, 3, 64)
    allowed, refused = kauto_recipes(info, [[16, 16, 8], [16, 8, 8]])  # d2_p16 K: k32v16's bytes
    assert [r.label for r in allowed] == ["kautov16"] and allowed[0].k_layers == (16, 16)
    assert list(refused) == ["kautov32"] and "+14.3% bytes over k16v32" in refused["kautov32"]
    allowed, refused = kauto_recipes(info, [[24, 8, 8], [8, 8, 8]])  # one layer d2_p32: 13 B over
    assert allowed == [] and "kautov16" in refused

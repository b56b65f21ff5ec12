"""fraqtl-calibrate on the real SmolLM2 model (CPU, a few hundred tokens per run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import calibrate as cal
from engine import sidecar as sc
from engine.errors import EngineError, SidecarMismatchError
from engine.gguf import read_gguf

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        from engine import models
        from engine.runtime import load_llama_cpp

        load_llama_cpp()
        return models.resolve(None)
    except EngineError as exc:
        pytest.skip(f"patched llama_cpp or the default model is unavailable: {exc}")


def small_config(model_path: Path, out: Path, **kw) -> cal.CalibrationConfig:
    base = dict(model_path=model_path, out_dir=out, tokens=384, ctx=128, n_batch=64, n_threads=2)
    base.update(kw)
    return cal.CalibrationConfig(**base)


def test_capture_counts_every_token_per_layer(model_path: Path) -> None:
    info = read_gguf(model_path)
    model = cal.CaptureModel(model_path, info, n_ctx=256, n_batch=64, n_threads=2)
    try:
        tokens = model.tokenize("The write-ahead log is the truth; the data files are a cache of the log. " * 4)
        assert 40 < len(tokens) < 128
        model.decode(tokens[:50])
        model.decode(tokens[50:])  # a second ubatch continues the sequence
        for il in range(info.n_layer):
            assert model.capture.tokens(il, "k") == len(tokens)
            assert model.capture.tokens(il, "v") == len(tokens)
        mk = model.capture.moments(7, "k")
        assert mk.shape == (info.n_head_kv, info.head_dim_k, info.head_dim_k)
        np.testing.assert_array_equal(mk, np.swapaxes(mk, -1, -2))  # symmetric
        assert (np.linalg.eigvalsh(mk) > -1e-6 * np.abs(mk).max()).all()  # positive semi-definite
        assert model.capture.tokens(info.n_layer, "k") == -1  # out of range is refused
    finally:
        model.close()


def test_tiny_calibration_writes_valid_sidecars(model_path: Path, tmp_path: Path) -> None:
    result = cal.calibrate(small_config(model_path, tmp_path / "out", k_rank=16, k_order="energy"))
    info = read_gguf(model_path)
    assert result.tokens == 384 and result.resumed_tokens == 0
    k, v = sc.load_sidecars(result.k_path, result.v_path, info)
    assert (k.ranks == 16).all() and v.protect == 16  # the locked V recipe scaled to head_dim 64
    assert k.orthonormality_error() < 1e-3 and v.orthonormality_error() < 1e-3
    assert (np.diff(result.k_eigenvalues, axis=-1) <= 0).all()
    m = result.manifest
    assert m["model"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert (m["model"]["n_layer"], m["model"]["n_head_kv"], m["model"]["head_dim_k"]) == (30, 3, 64)
    assert m["calibration"]["tokens"] == 384 and m["calibration"]["sequences"] == 3
    assert m["calibration"]["corpus"][0]["file"] == "technical-prose.txt"
    assert len(m["spectra"]["k"]["energy_top_r"]) == 30
    assert all(0 < e <= 1 for e in m["spectra"]["v"]["energy_top_r_per_layer"])
    assert not (tmp_path / "out" / cal.STATE_NAME).exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [sc.MANIFEST_NAME, result.k_path.name, result.v_path.name])
    found = sc.find_sidecars(m["model"]["sha256"], [tmp_path])
    assert found is not None and found[0] == result.k_path
    # the calibrated basis concentrates energy far better than a random rotation would
    share = cal.energy_share(result.k_eigenvalues, 16).mean()
    assert share > 0.6 > 16 / 64


def test_query_order_keeps_the_basis_and_protects_what_the_scores_use(model_path: Path, tmp_path: Path) -> None:
    energy = cal.calibrate(small_config(model_path, tmp_path / "energy", k_order="energy"))
    query = cal.calibrate(small_config(model_path, tmp_path / "query"))  # the default
    assert (energy.manifest["recipe"]["k_order"], query.manifest["recipe"]["k_order"]) == ("energy", "query")
    ue, uq = energy.k.basis.astype(np.float64), query.k.basis.astype(np.float64)
    # the same directions (fp16 storage aside), reordered per (layer, head)
    overlap = np.abs(np.swapaxes(ue, -1, -2) @ uq)
    assert np.allclose(overlap.max(axis=-2), 1.0, atol=2e-3) and np.allclose(overlap.max(axis=-1), 1.0, atol=2e-3)
    moved = (np.argmax(overlap, axis=-2) != np.arange(ue.shape[-1])).any(axis=-1)
    assert moved.mean() > 0.5  # most heads protect other directions than K's energy order would
    assert sorted(query.k_eigenvalues.ravel().tolist()) == pytest.approx(sorted(energy.k_eigenvalues.ravel().tolist()))
    # V is untouched by the K order
    assert query.v_path.read_bytes() == energy.v_path.read_bytes()


def test_resume_after_interruption_gives_identical_sidecars(model_path: Path, tmp_path: Path) -> None:
    reference = cal.calibrate(small_config(model_path, tmp_path / "ref"))
    out = tmp_path / "resumed"
    batches = iter(range(1000))
    with pytest.raises(cal.CalibrationInterrupted) as info:
        # two ubatches per 128-token sequence: stop in the middle of the second sequence
        cal.calibrate(small_config(model_path, out), should_stop=lambda: next(batches) >= 3)
    assert info.value.tokens_done == 128 and "run the same command again" in str(info.value)
    assert [p.name for p in out.iterdir()] == [cal.STATE_NAME]  # no sidecar in place yet
    progress: list[cal.CalibrationProgress] = []
    resumed = cal.calibrate(small_config(model_path, out), on_progress=progress.append)
    assert resumed.resumed_tokens == 128 and resumed.tokens == 384
    assert progress[0].sequence == 2 and progress[-1].tokens_done == 384
    assert resumed.k_path.read_bytes() == reference.k_path.read_bytes()
    assert resumed.v_path.read_bytes() == reference.v_path.read_bytes()
    assert not (out / cal.STATE_NAME).exists()


def test_changed_inputs_do_not_resume_a_stale_state(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(cal.CalibrationInterrupted):
        calls = iter(range(1000))
        cal.calibrate(small_config(model_path, out), should_stop=lambda: next(calls) >= 2)
    corpus = tmp_path / "mine.txt"
    corpus.write_text("Transformers carry a nameplate that lists their rating and impedance. " * 40)
    result = cal.calibrate(small_config(model_path, out, corpus=(corpus,), tokens=256))
    assert result.resumed_tokens == 0
    assert result.manifest["calibration"]["corpus"][0]["licence"] == "user's"


def test_model_sidecar_mismatch_is_detected(model_path: Path, tmp_path: Path) -> None:
    info = read_gguf(model_path)
    k, v = sc.control_sidecars_for(info, k_rank=8, v_protect=16)
    k_ok = sc.write_sidecar(k, tmp_path / "k.bin")
    wrong = sc.control_sidecar("v", info.n_layer - 2, info.n_head_kv, info.head_dim_v, 16)
    v_wrong = sc.write_sidecar(wrong, tmp_path / "v.bin")
    with pytest.raises(SidecarMismatchError) as err:
        sc.load_sidecars(k_ok, v_wrong, info)
    assert err.value.field == "n_layers" and err.value.expected == 30 and err.value.found == 28
    assert str(v_wrong) in str(err.value)
    wide = sc.control_sidecar("k", info.n_layer, info.n_head_kv, 128, 16)
    with pytest.raises(SidecarMismatchError, match="head_dim is 128, the model has 64"):
        sc.read_sidecar(sc.write_sidecar(wide, tmp_path / "k128.bin"), "k", info)


def test_shipped_sidecars_fit_the_default_model(model_path: Path) -> None:
    from engine import models

    found = sc.find_sidecars(models.model_sha256(model_path), [REPO / "sidecars"])
    if found is None:
        pytest.skip("no sidecars shipped for the default model yet")
    k_path, v_path, manifest = found
    k, v = sc.load_sidecars(k_path, v_path, read_gguf(model_path))
    assert manifest.data["files"]["k_sha256"] == __import__("hashlib").sha256(k_path.read_bytes()).hexdigest()
    assert manifest.data["calibration"]["ctx"] == 8192
    assert k.orthonormality_error() < 1e-3 and v.orthonormality_error() < 1e-3


def test_cli_ctrl_c_then_resume(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "engine.calibrate", str(model_path), "--tokens", "2048", "--ctx", "128",
           "--batch", "128", "--threads", "2", "--holdout-tokens", "0", "-q", "-o", str(out)]
    # a shell may start tests with SIGINT ignored (background jobs); the child must see Ctrl-C
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / cal.STATE_NAME).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in " ".join(err.split())
    assert not list(out.glob("*.bin"))
    env = dict(os.environ, COLUMNS="300")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stderr and "2,048 tokens" in done.stderr
    k, v = sc.load_sidecars(next(out.glob("*k-eigenbasis.bin")), next(out.glob("sidecar_real_u_*.bin")),
                            read_gguf(model_path))
    assert k.n_layers == 30


def test_cli_reports_bad_arguments(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cal.main([str(model_path), "--k-rank", "12", "-q", "-o", str(tmp_path)]) == 1
    assert "multiple of 8" in capsys.readouterr().err
    assert cal.main([str(tmp_path / "none.gguf"), "-q", "-o", str(tmp_path)]) == 1
    assert "No GGUF model" in capsys.readouterr().err


class _OverflowingCapture:
    """Stands in for libllama's capture: counts rows, returns an inf moment (as a random-weight
    shape model's overflowing activations do)."""

    def __init__(self, info) -> None:  # type: ignore[no-untyped-def]
        self.n_layer, self.info, self.count = info.n_layer, info, 0

    def tokens(self, layer: int, kind: str) -> int:
        return self.count

    def add_moments(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass

    def all_moments(self, kind: str) -> np.ndarray:
        d = self.info.head_dim_k
        m = np.tile(np.eye(d), (self.n_layer, self.info.n_head_kv, 1, 1)) * self.count
        if kind == "k":
            m[3, 1, 0, 0] = np.inf
        return m


class _FakeCaptureModel:
    def __init__(self, model_path, info, n_ctx, n_batch, n_threads) -> None:  # type: ignore[no-untyped-def]
        self.capture = _OverflowingCapture(info)
        self.bos = None

    def tokenize(self, text: str) -> list[int]:
        return [hash(w) % 1000 for w in text.split()]

    def clear(self) -> None:
        pass

    def decode(self, tokens) -> None:  # type: ignore[no-untyped-def]
        self.capture.count += len(tokens)

    def close(self) -> None:
        pass


def test_non_finite_moments_stop_with_a_clear_message(model_path: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(cal.run, "CaptureModel", _FakeCaptureModel)  # run.py is where calibrate() looks it up
    with pytest.raises(cal.NonFiniteMomentsError) as info:
        cal.calibrate(small_config(model_path, tmp_path / "a", k_order="energy"))
    assert (info.value.kind, info.value.layer, info.value.head) == ("k", 3, 1)
    assert "--basis random" in str(info.value)
    assert not list((tmp_path / "a").glob("*.bin"))  # nothing half-written
    # the command line prints one sentence and exits 1, no traceback (it raised ValueError before)
    rc = cal.main([str(model_path), "--tokens", "384", "--ctx", "128", "--batch", "64", "--threads", "2",
                   "--k-order", "energy", "-o", str(tmp_path / "b"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "not finite" in err and "Traceback" not in err


def test_check_moments_names_the_head() -> None:
    m = np.zeros((2, 3, 4, 4))
    cal.check_moments("v", m)
    m[1, 2, 3, 3] = np.nan
    with pytest.raises(cal.NonFiniteMomentsError, match="layer 1 head 2"):
        cal.check_moments("v", m)


def test_the_recommended_recipe_is_the_lowest_held_out_kld_at_the_locked_memory(model_path: Path, tmp_path: Path) -> None:
    from engine.arms import ArmConfig
    from engine.calibrate.choose import equal_memory_recipes, kauto_recipes
    from engine.d2 import recipe_for

    info = read_gguf(model_path)
    result = cal.calibrate(small_config(model_path, tmp_path / "c", holdout=256))
    recipe = result.manifest["recipe"]
    scores = recipe["candidates"]
    candidates = equal_memory_recipes(info)
    # kauto recipes are scored where this sidecar's ranks make them cost no more, else refused with why
    auto, refused = kauto_recipes(info, result.k.ranks.tolist())
    assert set(scores) == {r.label for r in candidates + auto} and len(scores) >= 2
    assert recipe.get("refused", {}) == refused and set(refused) | {r.label for r in auto} == {"kautov16", "kautov32"}
    locked = ArmConfig.parse("d2")

    def size(r) -> float:
        return ArmConfig("d2", r).kv_bytes_per_token(info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v)
    assert {size(r) for r in candidates} == {size(locked.recipe)} and all(size(r) <= size(locked.recipe) for r in auto)
    # every candidate read compressed rows (a window over everything would score 0 for all)
    assert min(scores.values()) > 0.0
    assert recipe["recommended"] == min(scores, key=scores.get)
    assert "256 held-out corpus tokens (after the 384 calibrated on" in recipe["recommended_why"]
    assert json.loads(result.manifest_path.read_text())["recipe"]["recommended"] == recipe["recommended"]
    assert recipe_for(info, locked, result.manifest, result.k_path).label == recipe["recommended"]


def test_too_little_text_for_a_held_out_split_keeps_the_locked_recipe_and_says_why(model_path: Path,
                                                                                    tmp_path: Path) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text("The tide came in over the harbour wall twice a day, and the boats rose with it. " * 40)
    result = cal.calibrate(small_config(model_path, tmp_path / "c", corpus=(corpus,), tokens=256, holdout=4096))
    recipe = result.manifest["recipe"]
    assert "recommended" not in recipe and "candidates" not in recipe
    assert recipe["recommended_why"].startswith("none: the corpus has fewer than 4,096 tokens after the")
    assert result.k_path.is_file() and result.v_path.is_file()

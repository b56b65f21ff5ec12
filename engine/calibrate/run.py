"""One calibration run: plan sequences, capture moments (resumable), write the sidecars.

State is saved after every sequence so that an interrupted run resumes; sidecars and the
manifest are written atomically. Never imports the app.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine import models
from engine.arms import LOCKED
from engine.calibrate.capture import CaptureModel, MomentCapture, rope_params
from engine.calibrate.choose import choose_recipe, held_out
from engine.calibrate.corpus import (
    CorpusError,
    CorpusFile,
    _text_chunks,
    corpus_digest,
    corpus_files,
    read_text,
)
from engine.calibrate.manifest import build_manifest
from engine.calibrate.spectrum import (
    DEFAULT_K_ENERGY,
    K_ORDERS,
    RANK_STEP,
    check_moments,
    choose_ranks,
    budget_target,
    kauto_budget,
    eigenbasis,
    query_order,
)
from engine.errors import EngineError
from engine.files import write_atomic
from engine.gguf import GgufInfo, read_gguf
from engine.runtime import fraqtl_version
from engine.sidecar import (
    MANIFEST_NAME,
    MIN_RANK,
    SidecarFile,
    default_file_names,
    write_manifest,
    write_sidecar,
)


DEFAULT_TOKENS = 16384
DEFAULT_BATCH = 2048  # CPU flash attention runs ~2x faster with 2048-token ubatches than 512
STATE_NAME = ".fraqtl-calibrate-state.npz"
STATE_VERSION = 1


class CalibrationInterrupted(EngineError):
    def __init__(self, tokens_done: int, tokens_total: int, state_path: Path) -> None:
        self.tokens_done, self.tokens_total, self.state_path = tokens_done, tokens_total, state_path
        if tokens_done:
            saved = f"the moments of those tokens are saved in {state_path}; run the same command again to resume."
        else:
            saved = "no sequence had finished, so nothing was saved; run the command again to start over."
        super().__init__(f"Calibration stopped after {tokens_done:,} of {tokens_total:,} tokens; {saved}")


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    model_path: Path
    out_dir: Path
    corpus: tuple[Path, ...] = ()  # empty: the built-in corpus
    tokens: int = DEFAULT_TOKENS
    ctx: int | None = None  # None: min(n_ctx_train, tokens)
    k_rank: int | str = "auto"
    k_energy: float = DEFAULT_K_ENERGY
    v_protect: int | None = None  # None: the locked recipe's V rank at this head_dim
    k_order: str = "query"  # K directions by share of the score ("query") or by K energy ("energy")
    n_batch: int = DEFAULT_BATCH
    n_threads: int | None = None
    stem: str | None = None  # file name stem; None: from the model file name
    holdout: int = 0  # corpus tokens after the calibrated ones that score the equal-memory recipes; 0: none


@dataclasses.dataclass(frozen=True)
class CalibrationProgress:
    tokens_done: int
    tokens_total: int
    sequence: int  # 1-based sequence being evaluated
    n_sequences: int
    tok_s: float
    eta_s: float
    resumed_tokens: int = 0
    # sent once the moments are gathered, when the held-out tokens (``holdout_tokens`` of them)
    # start scoring the recipes
    choosing_recipe: bool = False
    holdout_tokens: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationResult:
    k_path: Path
    v_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    k: SidecarFile
    v: SidecarFile
    k_eigenvalues: np.ndarray  # [layers, heads, d] per token, in the K sidecar's order (see k_order)
    v_eigenvalues: np.ndarray
    tokens: int
    seconds: float  # evaluation time of this run (excluding resumed work)
    resumed_tokens: int


def default_ctx(info: GgufInfo, tokens: int) -> int:
    trained = info.n_ctx_train or 4096
    return max(64, min(trained, tokens))


def model_stem(path: Path) -> str:
    return path.stem.lower().replace(".", "-")


def _token_stream(model: CaptureModel, files: Sequence[CorpusFile], need: int) -> list[int]:
    """The corpus as one token stream (files joined by a blank line), at least ``need`` tokens where it has them."""
    sep = model.tokenize("\n\n")
    stream: list[int] = []
    for i, f in enumerate(files):
        if len(stream) >= need:
            break
        if i:
            stream.extend(sep)
        for chunk in _text_chunks(read_text(f.path)):
            stream.extend(model.tokenize(chunk))
            if len(stream) >= need:
                break
    return stream


def _plan_sequences(model: CaptureModel, stream: Sequence[int], budget: int, ctx: int) -> list[list[int]]:
    """Token sequences of ``ctx`` tokens (BOS first where the model wants one) up to ``budget`` tokens of ``stream``."""
    bos = model.bos
    body = ctx - (1 if bos is not None else 0)
    sequences = []
    pos = 0
    total = 0
    while pos < len(stream) and total < budget:
        room = min(body, budget - total - (1 if bos is not None else 0))
        if room <= 0:
            break
        seq = ([bos] if bos is not None else []) + stream[pos : pos + room]
        if len(seq) < min(64, ctx):  # too short to say anything about positions; stop
            break
        sequences.append(seq)
        pos += room
        total += len(seq)
    return sequences


def _fingerprint(model_sha: str, digest: str, tokens: int, ctx: int, rope: dict[str, Any], k_order: str) -> str:
    # what fixes the token sequences and their statistics; --batch/--threads may change on resume.
    # A query-ordered run also keeps query moments, so its state is not an energy run's.
    fields = {"v": STATE_VERSION, "model": model_sha, "corpus": digest, "tokens": tokens, "ctx": ctx, "rope": rope}
    if k_order != "energy":
        fields["k_order"] = k_order
    return json.dumps(fields, sort_keys=True)


def _save_state(path: Path, fingerprint: str, seq_done: int, tokens_done: int, capture: MomentCapture,
                queries: tuple[np.ndarray, int] | None) -> None:
    import io

    extra = {} if queries is None else {"mq": queries[0], "nq": np.int64(queries[1])}
    buf = io.BytesIO()
    np.savez(buf, fingerprint=np.array(fingerprint), seq_done=np.int64(seq_done), tokens_done=np.int64(tokens_done),
             mk=capture.all_moments("k"), mv=capture.all_moments("v"),
             nk=np.array([capture.tokens(i, "k") for i in range(capture.n_layer)], dtype=np.int64),
             nv=np.array([capture.tokens(i, "v") for i in range(capture.n_layer)], dtype=np.int64), **extra)
    write_atomic(path, buf.getvalue())


def _queries(capture: MomentCapture, saved: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, int]:
    """Query moments and their token count: what a resumed state held plus what this run captured.

    (libllama's capture takes saved K and V moments back, but not query moments: they stay here.)
    """
    mq, nq = capture.all_moments("q"), capture.tokens(0, "q")
    if saved is not None:
        mq, nq = mq + saved[0], nq + saved[1]
    return mq, nq


def _load_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            state = {k: z[k] for k in ("seq_done", "tokens_done", "mk", "mv", "nk", "nv")}
            if "mq" in z:
                state["queries"] = (z["mq"], int(z["nq"]))
            return state
    except (OSError, ValueError, KeyError):
        return None  # a damaged state file: start over


def _check_counts(capture: MomentCapture, expected: int) -> None:
    for il in range(capture.n_layer):
        for kind in ("k", "v"):
            found = capture.tokens(il, kind)
            if found != expected:
                hint = (" (the graph has no post-RoPE 'Kcur-N'/'Vcur-N' tensors this capture understands)"
                        if found == 0 else "")
                raise EngineError(
                    f"Calibration captured {found:,} {kind.upper()} rows in layer {il} but fed {expected:,} tokens"
                    f"{hint}; this model cannot be calibrated with this build."
                )


def calibrate(
    config: CalibrationConfig,
    on_progress: Callable[[CalibrationProgress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CalibrationResult:
    """Run a calibration (resuming a saved state with the same inputs) and write the sidecars."""
    model_path = Path(config.model_path)
    info = read_gguf(model_path)
    if info.n_layer <= 0 or info.n_head_kv <= 0:
        raise EngineError(f"{model_path} has no attention layers the capture understands (arch {info.arch}).")
    if config.k_rank not in ("auto", "budget"):
        k = int(config.k_rank)
        if not MIN_RANK <= k <= info.head_dim_k or k % RANK_STEP:
            raise EngineError(f"--k-rank {k} must be a multiple of 8 between 8 and head_dim {info.head_dim_k}.")
    if not 0.0 < config.k_energy <= 1.0:
        raise EngineError(f"--k-energy {config.k_energy} must lie in (0, 1].")
    v_protect = config.v_protect if config.v_protect is not None else LOCKED.protected(info.head_dim_v, "v")
    if not MIN_RANK <= v_protect <= info.head_dim_v:
        raise EngineError(f"--v-protect {v_protect} must lie between 8 and head_dim {info.head_dim_v}.")
    if config.k_order not in K_ORDERS:
        raise EngineError(f"--k-order {config.k_order} must be one of {', '.join(K_ORDERS)}.")
    if config.tokens < 64:
        raise EngineError(f"--tokens {config.tokens} is too few; give at least 64.")
    ctx = config.ctx or default_ctx(info, config.tokens)
    if ctx < 64:
        raise EngineError(f"--ctx {ctx} is too short; give at least 64.")
    n_batch = max(32, min(config.n_batch, ctx))
    files = corpus_files(config.corpus)
    digest = corpus_digest(files)
    model_sha = models.model_sha256(model_path)
    rope = rope_params(info, ctx)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_NAME
    fingerprint = _fingerprint(model_sha, digest, config.tokens, ctx, rope, config.k_order)
    by_query = config.k_order == "query"
    n_threads = config.n_threads or max(os.cpu_count() or 1, 1)

    model = CaptureModel(model_path, info, ctx, n_batch, n_threads)
    saved_queries: tuple[np.ndarray, int] | None = None
    try:
        if by_query:
            model.capture.enable_queries(info.n_head)
        # one tokenization serves the calibration and the held-out text after it
        stream = _token_stream(model, files, config.tokens + config.holdout)
        sequences = _plan_sequences(model, stream, config.tokens, ctx)
        if not sequences:
            raise CorpusError(", ".join(str(f.path) for f in files), "it has fewer than 64 tokens")
        total = sum(len(s) for s in sequences)
        state = _load_state(state_path, fingerprint)
        seq_done, tokens_done = 0, 0
        if state is not None:
            seq_done, tokens_done = int(state["seq_done"]), int(state["tokens_done"])
            for il in range(info.n_layer):
                model.capture.add_moments(il, "k", state["mk"][il], int(state["nk"][il]))
                model.capture.add_moments(il, "v", state["mv"][il], int(state["nv"][il]))
            _check_counts(model.capture, tokens_done)
            saved_queries = state.get("queries")
            if by_query and saved_queries is None and tokens_done:
                raise EngineError(f"{state_path} holds no query moments; delete it to start this run over.")
        resumed = tokens_done
        t0 = time.perf_counter()
        fed = 0
        stop_reason: BaseException | None = None
        for i in range(seq_done, len(sequences)):
            seq = sequences[i]
            model.clear()
            try:
                for start in range(0, len(seq), n_batch):
                    if should_stop():
                        raise KeyboardInterrupt
                    batch = seq[start : start + n_batch]
                    model.decode(batch)
                    fed += len(batch)
                    rate = fed / max(time.perf_counter() - t0, 1e-9)
                    done = tokens_done + start + len(batch)
                    on_progress(CalibrationProgress(done, total, i + 1, len(sequences), rate,
                                                    (total - done) / max(rate, 1e-9), resumed))
            except KeyboardInterrupt as exc:
                stop_reason = exc
                break
            tokens_done += len(seq)
            _check_counts(model.capture, tokens_done)
            _save_state(state_path, fingerprint, i + 1, tokens_done, model.capture,
                        _queries(model.capture, saved_queries) if by_query else None)
        if stop_reason is not None:
            raise CalibrationInterrupted(tokens_done, total, state_path)
        seconds = time.perf_counter() - t0
        mk, mv = model.capture.all_moments("k"), model.capture.all_moments("v")
        holdout: list[int] = []
        calibrated = sum(len(s) - (1 if model.bos is not None else 0) for s in sequences)
        if config.holdout > 0:
            held = held_out(stream, calibrated, config.holdout)
            holdout = ([model.bos] if model.bos is not None and held else []) + held
        mq, nq = _queries(model.capture, saved_queries) if by_query else (None, 0)
        libllama = fraqtl_version()
    finally:
        model.close()

    check_moments("k", mk)
    check_moments("v", mv)
    wk, uk = eigenbasis(mk, tokens_done)
    wv, uv = eigenbasis(mv, tokens_done)
    if mq is not None:
        check_moments("q", mq)
        wk, uk = query_order(wk, uk, mq, nq)
    with np.errstate(over="ignore"):  # moments that overflow in fp16 after the eigensolver
        check_moments("k", uk.astype(np.float16))
        check_moments("v", uv.astype(np.float16))
    k_energy = config.k_energy
    if config.k_rank == "budget":  # the energy rule at the highest target that fits kautov16 in the locked bytes
        k_energy = budget_target(wk, kauto_budget(info.head_dim_k, info.head_dim_v))
    ranks = choose_ranks(wk, "auto" if config.k_rank == "budget" else config.k_rank, k_energy)
    k_side = SidecarFile("k", uk.astype(np.float32), ranks=ranks)
    v_side = SidecarFile("v", uv.astype(np.float32), protect=v_protect)
    stem = config.stem or model_stem(model_path)
    k_name, v_name = default_file_names(stem)
    k_path = write_sidecar(k_side, out_dir / k_name)
    v_path = write_sidecar(v_side, out_dir / v_name)
    manifest = build_manifest(
        info=info, model_path=model_path, model_sha=model_sha, k_path=k_path, v_path=v_path, files=files,
        digest=digest, tokens=tokens_done, n_sequences=len(sequences), ctx=ctx, n_batch=n_batch, rope=rope,
        k_rank=config.k_rank, k_energy=k_energy, k_order=config.k_order, v_protect=v_protect, ranks=ranks,
        wk=wk, wv=wv,
        seconds=seconds, tok_s=(tokens_done - resumed) / max(seconds, 1e-9), n_threads=n_threads,
        resumed=resumed, libllama=libllama,
    )
    if config.holdout > 0:
        # the sidecars are written first: a failed scoring keeps them and leaves the locked recipe
        write_manifest(out_dir / MANIFEST_NAME, manifest)
        if holdout:
            on_progress(CalibrationProgress(tokens_done, tokens_done, len(sequences), len(sequences), 0.0, 0.0,
                                            resumed, choosing_recipe=True, holdout_tokens=len(holdout)))
            choice = choose_recipe(model_path, info, k_path, v_path, holdout, calibrated, n_threads)
            manifest["recipe"].update(choice.manifest_fields())
        else:
            manifest["recipe"]["recommended_why"] = (
                f"none: the corpus has fewer than {config.holdout:,} tokens after the {calibrated:,} calibrated on; "
                "give more text (--corpus) or fewer --tokens for a held-out choice. Plain d2 uses the locked recipe."
            )
    manifest_path = write_manifest(out_dir / MANIFEST_NAME, manifest)
    state_path.unlink(missing_ok=True)
    return CalibrationResult(k_path, v_path, manifest_path, manifest, k_side, v_side, wk, wv, tokens_done,
                             seconds, resumed)

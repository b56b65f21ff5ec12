"""``fraqtl-calibrate``: D2 sidecars for any llama-family GGUF, from calibration text.

Runs the model over text through our llama.cpp build with an f16 cache and flash attention;
libllama's calibration capture (``llama_fraqtl_calib_*``) folds post-RoPE K and V of every
(layer, KV head) into float64 uncentered second moments, so no activation is ever kept.
Sequences are as long as the context (post-RoPE statistics depend on position); above the
trained context YaRN scales RoPE by ``n_ctx / n_ctx_train``. The moments are eigendecomposed
(eigenvalues decreasing) into the bases U of the K and V sidecars (format v1, see
:mod:`engine.sidecar`), written with a JSON manifest.

K rank rule (``--k-rank auto``): per (layer, head) the smallest R that is a multiple of 8,
at least 8 and at most head_dim, whose top-R eigenvalues hold at least ``--k-energy``
(default 0.80) of the head's energy (trace of its second moment). ``--k-rank N`` fixes R.
``--k-rank budget`` applies the same rule at the highest target at which ``d2:kautov16`` (each
layer's K cache the block type of its largest head rank) costs no more than the locked recipe.

K order (``--k-order query``, the default): the engine keeps a K head's first directions exact,
so the K basis is ordered by each direction's share of the attention scores' second moment,
λ_c · E[(q·u_c)²], with the queries of the head captured beside K and V; ``energy`` keeps K's
own eigenvalue order.

After every sequence the moments, the token count and the corpus position are saved in
``DIR/.fraqtl-calibrate-state.npz``; Ctrl-C (or a crash) loses at most the current
sequence, and the same command resumes. Sidecars are written through temp files and a
rename, so a half-written sidecar never sits in place. This package never imports the app.

One concept per module: :mod:`.spectrum` (eigenbases, energy, the rank rule), :mod:`.corpus`
(calibration text), :mod:`.capture` (libllama's moment capture), :mod:`.run` (a resumable run),
:mod:`.manifest`, :mod:`.report`, :mod:`.cli`. The names below are the public API.
"""

from __future__ import annotations

from engine.calibrate.capture import CaptureModel, MomentCapture, rope_params
from engine.calibrate.cli import build_parser, main
from engine.calibrate.corpus import CorpusError, CorpusFile, _text_chunks, corpus_digest, corpus_files, read_text  # noqa: F401
from engine.calibrate.manifest import SHARE_RANKS, TOOL, build_manifest
from engine.calibrate.report import write_report
from engine.calibrate.run import (
    DEFAULT_BATCH,
    DEFAULT_TOKENS,
    STATE_NAME,
    STATE_VERSION,
    CalibrationConfig,
    CalibrationInterrupted,
    CalibrationProgress,
    CalibrationResult,
    calibrate,
    default_ctx,
    model_stem,
)
from engine.calibrate.spectrum import (
    DEFAULT_K_ENERGY,
    RANK_STEP,
    K_ORDERS,
    budget_target,
    kauto_budget,
    NonFiniteMomentsError,
    check_moments,
    choose_ranks,
    eigenbasis,
    energy_rank,
    energy_share,
    query_order,
)

__all__ = [
    "CaptureModel", "MomentCapture", "rope_params", "build_parser", "main", "CorpusError", "CorpusFile",
    "corpus_digest", "corpus_files", "read_text", "SHARE_RANKS", "TOOL", "build_manifest", "write_report",
    "DEFAULT_BATCH", "DEFAULT_TOKENS", "STATE_NAME", "STATE_VERSION", "CalibrationConfig",
    "CalibrationInterrupted", "CalibrationProgress", "CalibrationResult", "calibrate", "default_ctx",
    "model_stem", "DEFAULT_K_ENERGY", "RANK_STEP", "NonFiniteMomentsError", "check_moments", "choose_ranks",
    "eigenbasis", "energy_rank", "energy_share", "K_ORDERS", "query_order", "budget_target", "kauto_budget",
]

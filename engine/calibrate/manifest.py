"""The JSON manifest written beside a calibrated sidecar pair: model, corpus, recipe, spectra.

Never imports the app.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import engine
from engine.calibrate.corpus import CorpusFile
from engine.calibrate.spectrum import RANK_STEP, energy_share
from engine.files import sha256_file
from engine.gguf import GgufInfo
from engine.sidecar import MANIFEST_FORMAT, MIN_RANK


TOOL = "fraqtl-calibrate"
SHARE_RANKS = (8, 16, 32)  # energy shares reported in the manifest at these ranks


def _r(x: np.ndarray, digits: int = 5) -> list[Any]:
    return np.round(np.asarray(x, dtype=np.float64), digits).tolist()


def build_manifest(*, info: GgufInfo, model_path: Path, model_sha: str, k_path: Path, v_path: Path,
                   files: Sequence[CorpusFile], digest: str, tokens: int, n_sequences: int, ctx: int, n_batch: int,
                   rope: dict[str, Any], k_rank: int | str, k_energy: float, v_protect: int, ranks: np.ndarray,
                   k_order: str = "energy",
                   wk: np.ndarray, wv: np.ndarray, seconds: float, tok_s: float, n_threads: int, resumed: int,
                   libllama: str) -> dict[str, Any]:
    def spectrum(w: np.ndarray, r: np.ndarray | int) -> dict[str, Any]:
        return {
            "energy_top_r": _r(energy_share(w, r)),  # [layer][head]
            "energy_top_r_per_layer": _r(energy_share(w, r).mean(axis=1)),
            **{f"energy_top_{n}_per_layer": _r(energy_share(w, min(n, w.shape[-1])).mean(axis=1))
               for n in SHARE_RANKS},
            "trace_per_token": _r(w.sum(axis=-1), 4),  # [layer][head]
            "top_eigenvalue": _r(w[..., 0], 4),
        }

    return {
        "format": MANIFEST_FORMAT,
        "tool": TOOL,
        "tool_version": engine.__version__,
        "libllama": libllama,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "model": {
            "file": model_path.name, "sha256": model_sha, "arch": info.arch, "name": info.name,
            "n_layer": info.n_layer, "n_head_kv": info.n_head_kv, "head_dim_k": info.head_dim_k,
            "head_dim_v": info.head_dim_v, "n_ctx_train": info.n_ctx_train,
        },
        "files": {"k": k_path.name, "v": v_path.name, "k_sha256": sha256_file(k_path), "v_sha256": sha256_file(v_path)},
        "recipe": {
            "k_rank": k_rank if k_rank in ("auto", "budget") else int(k_rank),
            "k_rank_rule": (f"smallest multiple of {RANK_STEP} >= {MIN_RANK} with top-R energy share >= {k_energy}"
                            if k_rank == "auto" else
                            f"smallest multiple of {RANK_STEP} >= {MIN_RANK} with top-R energy share >= {k_energy}, "
                            "the highest target (steps of 0.005) at which d2:kautov16 (each layer's K the block type "
                            "of its largest head rank) costs no more than the locked recipe" if k_rank == "budget"
                            else "fixed"),
            "k_energy_target": k_energy if k_rank in ("auto", "budget") else None,
            "k_order": k_order,
            "k_order_rule": ("K directions by their share of the scores' second moment, eigenvalue x query "
                             "variance along the direction" if k_order == "query" else "K directions by K energy"),
            "k_ranks": ranks.astype(int).tolist(),
            "k_rank_mean": round(float(ranks.mean()), 3),
            "v_protect": v_protect,
        },
        "calibration": {
            "corpus": [{"file": f.path.name, "sha256": f.sha256, "bytes": f.n_bytes, "source": f.source,
                        "licence": f.licence} for f in files],
            "corpus_digest": digest,
            "tokens": tokens,
            "sequences": n_sequences,
            "ctx": ctx,
            "n_batch": n_batch,
            "rope": rope,
            "cache": "f16",
            "flash_attn": True,
            "accumulation": "float64 uncentered second moments, post-RoPE K, V as is",
            "seconds": round(seconds, 2),
            "tok_s": round(tok_s, 1),
            "threads": n_threads,
            "resumed_tokens": resumed,
        },
        "spectra": {"k": spectrum(wk, ranks), "v": spectrum(wv, v_protect)},
    }

"""The calibration report: JSON (manifest and full spectra), markdown and a PNG of energy shares.

Written atomically; never imports the app.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.arms import LOCKED
from engine.calibrate.manifest import _r
from engine.calibrate.run import CalibrationResult
from engine.calibrate.spectrum import choose_ranks, energy_share
from engine.files import write_atomic, write_figure


def write_report(result: CalibrationResult, out_dir: Path, title: str = "Calibration") -> list[Path]:
    """A receipt: JSON (manifest + full spectra), markdown and a PNG of per-layer top-R energy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    m = result.manifest
    ranks = result.k.ranks
    assert ranks is not None
    ek = energy_share(result.k_eigenvalues, ranks)  # [layer, head]
    ev = energy_share(result.v_eigenvalues, result.v.protect)
    data = {
        "title": title,
        "manifest": m,
        "eigenvalues_normalised": {  # per head, divided by the head's trace
            kind: _r(w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-30), 6)
            for kind, w in (("k", result.k_eigenvalues), ("v", result.v_eigenvalues))
        },
    }
    json_path = out_dir / "calibration.json"
    write_atomic(json_path, json.dumps(data, indent=1) + "\n", mode=0o644)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    layers = np.arange(ek.shape[0])
    d = result.k_eigenvalues.shape[-1]
    rk_locked = LOCKED.protected(d, "k")
    ek_locked = energy_share(result.k_eigenvalues, rk_locked)
    for share, label, style in (
        (ek, f"K, auto ranks (mean {ranks.mean():.1f})", "-o"),
        (ek_locked, f"K, R={rk_locked} (locked recipe)", "-^"),
        (ev, f"V, R={result.v.protect} (protect)", "--s"),
    ):
        line, = axes[0].plot(layers, share.mean(axis=1), style, ms=3, label=label)
        axes[0].fill_between(layers, share.min(axis=1), share.max(axis=1), color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("energy share in top R directions")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("Top-R energy per layer (mean over KV heads, band: min..max)")
    for kind, w, style in (("K", result.k_eigenvalues, "-"), ("V", result.v_eigenvalues, "--")):
        share = np.cumsum(w, axis=-1) / np.maximum(w.sum(axis=-1, keepdims=True), 1e-30)
        axes[1].plot(np.arange(1, d + 1), share.reshape(-1, d).mean(axis=0), style, label=f"{kind} (mean over layers, heads)")
        axes[1].fill_between(np.arange(1, d + 1), share.reshape(-1, d).min(axis=0), share.reshape(-1, d).max(axis=0),
                             alpha=0.15)
    axes[1].set_xlabel("R (directions kept)")
    axes[1].set_ylabel("cumulative energy share")
    axes[1].set_title("Cumulative spectrum (band: min..max)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{title}: {m['calibration']['tokens']:,} tokens at ctx {m['calibration']['ctx']}")
    fig.tight_layout()
    png_path = out_dir / "energy.png"
    write_figure(png_path, fig, dpi=110)
    plt.close(fig)

    cal = m["calibration"]
    lines = [
        f"# {title}",
        "",
        f"- model: `{m['model']['file']}` (sha256 `{m['model']['sha256'][:16]}…`, {m['model']['arch']}, "
        f"{m['model']['n_layer']} layers × {m['model']['n_head_kv']} KV heads × head_dim {m['model']['head_dim_k']})",
        f"- corpus: {', '.join(c['file'] for c in cal['corpus'])} (digest `{cal['corpus_digest'][:16]}…`)",
        f"- tokens: {cal['tokens']:,} in {cal['sequences']} sequences of up to {cal['ctx']} tokens; "
        f"f16 cache, flash attention, RoPE {cal['rope']['scaling']}",
        f"- evaluation time: {cal['seconds']:.1f} s ({cal['tok_s']:.0f} tok/s, {cal['threads']} threads)",
        f"- K rank rule: {m['recipe']['k_rank_rule']}; mean K rank {m['recipe']['k_rank_mean']}; V protect {m['recipe']['v_protect']}",
        f"- reproduce: `{m.get('command', 'fraqtl-calibrate')}`",
        "",
        "Energy share in the top R directions (mean over KV heads; min over heads in brackets):",
        "",
        f"| layer | K ranks | K top-R | V top-R (R={result.v.protect}) | K top-{rk_locked} (locked) | V top-8 |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    v8 = energy_share(result.v_eigenvalues, min(8, result.v_eigenvalues.shape[-1]))
    for il in range(ek.shape[0]):
        lines.append(
            f"| {il} | {'/'.join(str(int(r)) for r in ranks[il])} | {ek[il].mean():.3f} ({ek[il].min():.3f}) | "
            f"{ev[il].mean():.3f} ({ev[il].min():.3f}) | {ek_locked[il].mean():.3f} | {v8[il].mean():.3f} |"
        )
    lines += ["", f"All layers: K top-R {ek.mean():.3f} (auto ranks), K top-{rk_locked} {ek_locked.mean():.3f}, "
              f"V top-{result.v.protect} {ev.mean():.3f}.", "",
              "K rank rule at other energy targets (ranks over all layers and heads):", "",
              "| target | mean rank | min | max |", "|---:|---:|---:|---:|"]
    for target in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        r = choose_ranks(result.k_eigenvalues, "auto", target)
        lines.append(f"| {target:.2f} | {r.mean():.1f} | {r.min()} | {r.max()} |")
    lines += ["", "![energy](energy.png)", ""]
    md_path = out_dir / "README.md"
    write_atomic(md_path, "\n".join(lines), mode=0o644)
    return [json_path, md_path, png_path]

"""PNG plots for receipts (matplotlib, Agg backend: no display needed). Never imports the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.files import write_figure  # noqa: E402


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def kld_plot(path: Path, outcomes: dict[str, dict[str, Any]]) -> Path:
    """KLD distribution per arm (percentile curve), log scale."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, kld in outcomes.items():
        pct = kld.get("kld_percentiles")
        if not pct or arm == "f16":
            continue
        ax.plot(range(len(pct)), [max(v, 1e-6) for v in pct], label=f"{arm} (mean {kld['kld_mean']:.4f})")
    ax.set_yscale("log")
    ax.set_xlabel("percentile of tokens")
    ax.set_ylabel("KLD vs f16 (nats)")
    ax.set_title("Per-token KLD of each arm's next-token distribution vs the f16 cache")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path


def niah_heatmap(directory: Path, arm: str, contexts: list[int], depths: list[float],
                 grid: dict[tuple[int, float], tuple[int, int]], flips: dict[tuple[int, float], int]) -> Path:
    """Share of needles found (content scorer) by depth × context, flips vs f16 annotated."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(contexts), 1.2 + 0.6 * len(depths)))
    values = [[(grid.get((c, d), (0, 0))[0] / max(grid.get((c, d), (0, 1))[1], 1)) for c in contexts] for d in depths]
    image = ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i, d in enumerate(depths):
        for j, c in enumerate(contexts):
            found, total = grid.get((c, d), (0, 0))
            label = f"{found}/{total}" + (f"\n{flips[(c, d)]} flip" if flips.get((c, d)) else "")
            ax.text(j, i, label, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(contexts)), [f"{c // 1024}K" if c % 1024 == 0 else str(c) for c in contexts])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"NIAH, arm {arm}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = directory / f"niah-{_safe(arm)}.png"
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path


def bars(path: Path, title: str, ylabel: str, series: dict[str, dict[str, float]]) -> Path:
    """Grouped bars: series[arm][group] = value."""
    arms = list(series)
    groups = sorted({g for values in series.values() for g in values})
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * max(len(arms), 1) / 2), 4))
    width = 0.8 / max(len(arms), 1)
    for k, arm in enumerate(arms):
        xs = [i + k * width for i in range(len(groups))]
        ax.bar(xs, [series[arm].get(g, 0.0) for g in groups], width, label=arm)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path


def lines(path: Path, title: str, ylabel: str, series: dict[str, list[tuple[int, float]]],
          reference: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """One line per arm over context length; dashed reference lines (estimates) where given."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, points in series.items():
        if points:
            line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=arm)
            if reference and reference.get(arm):
                ref = reference[arm]
                ax.plot([p[0] for p in ref], [p[1] for p in ref], linestyle="--", color=line.get_color(),
                        label=f"{arm} estimate")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path

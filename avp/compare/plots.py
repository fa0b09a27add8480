"""Plots of runs: mean learning curves per variant with a ±std band over seeds, and the ablation bar chart."""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence

import numpy as np

from avp.compare.ranking import Ranking
from avp.compare.runs import RunLog
from avp.compare.tables import MetricSummary


def _safe(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_")


def mean_curve(series: Sequence[Sequence[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds' curves on the union of their steps: (steps, mean, std), NaN-aware where a seed lacks a step."""
    steps = np.array(sorted({s for curve in series for s, _ in curve}))
    grid = np.full((len(series), len(steps)), np.nan)
    index = {s: i for i, s in enumerate(steps)}
    for row, curve in enumerate(series):
        for s, v in curve:
            grid[row, index[s]] = v
    count = np.sum(~np.isnan(grid), axis=0)
    mean = np.nanmean(grid, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with a single seed: no spread
        std = np.where(count > 1, np.nanstd(grid, axis=0, ddof=1), 0.0)
    return steps, mean, std


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_curves(runs: Sequence[RunLog], variants: Sequence[str], metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, v in enumerate(variants):
        series = [r.scalars[metric] for r in runs if r.variant == v and r.scalars.get(metric)]
        if not series:
            continue
        steps, mean, std = mean_curve(series)
        color = f"C{i % 10}"
        ax.plot(steps, mean, color=color, label=f"{v} (n={len(series)})", marker="." if len(steps) < 30 else None)
        if len(series) > 1:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    data = _png(fig)
    plt.close(fig)
    return data


def plot_ablation(summary: dict[str, dict[str, MetricSummary]], variants: Sequence[str], metrics: Sequence[str],
                  ranks: dict[str, Ranking]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        present = [v for v in variants if metric in summary.get(v, {})]
        stats = [MetricSummary.stats(summary[v][metric].final) for v in present]
        means = [m for m, _ in stats]
        errs = [0.0 if math.isnan(s) else s for _, s in stats]
        ax.bar(range(len(present)), means, yerr=errs, capsize=4, color=[f"C{variants.index(v) % 10}" for v in present])
        ax.set_xticks(range(len(present)), present, rotation=30, ha="right", fontsize="small")
        ax.set_title(f"{metric} {ranks[metric].arrow} (final)", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data

"""Summaries of runs per variant (final and best values over seeds) as markdown and CSV tables."""

from __future__ import annotations

import csv
import fnmatch
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avp.compare.ranking import Ranking
from avp.compare.runs import RunLog

IGNORED_TAGS = ("epoch", "hp_metric")


@dataclass
class MetricSummary:
    final: list[float]
    best: list[float]

    @staticmethod
    def stats(values: Sequence[float]) -> tuple[float, float]:
        """Mean and sample standard deviation (NaN for one value)."""
        arr = np.asarray(values, dtype=float)
        return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def select_metrics(runs: Sequence[RunLog], patterns: Sequence[str] | None) -> list[str]:
    """Metrics to tabulate: ``patterns`` (globs) if given, else every val/test metric, else every metric."""
    tags = sorted({t for r in runs for t in r.scalars if t not in IGNORED_TAGS})
    if patterns:
        chosen = [t for t in tags if any(fnmatch.fnmatch(t, p) for p in patterns)]
        if not chosen:
            raise ValueError(f"no metric matches {', '.join(patterns)}; logged: {', '.join(tags)}")
        return chosen
    evaluated = [t for t in tags if t.split("/", 1)[0] in ("val", "test")]
    return evaluated or tags


def summarise(runs: Sequence[RunLog], metrics: Sequence[str], ranks: dict[str, Ranking]
              ) -> dict[str, dict[str, MetricSummary]]:
    """variant -> metric -> per-seed final and best values (best by the metric's goal, NaN without one; runs lacking
    the metric are left out)."""
    table: dict[str, dict[str, MetricSummary]] = {}
    for run in runs:
        for metric in metrics:
            series = run.scalars.get(metric)
            if not series:
                continue
            values = [v for _, v in series]
            goal = ranks[metric].goal
            best = goal.best(values) if goal is not None else math.nan
            entry = table.setdefault(run.variant, {}).setdefault(metric, MetricSummary([], []))
            entry.final.append(values[-1])
            entry.best.append(best)
    return table


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "–"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-4):
        return f"{value:.3e}"
    return f"{value:.4g}"


def _cell(values: Sequence[float], runs: int) -> str:
    """``mean ± std``; ``(n=k)`` when only k of the variant's runs logged the metric."""
    mean, std = MetricSummary.stats(values)
    text = _fmt(mean) if math.isnan(std) else f"{_fmt(mean)} ± {_fmt(std)}"
    return text if len(values) == runs else f"{text} (n={len(values)})"


def markdown_table(summary: dict[str, dict[str, MetricSummary]], variants: Sequence[str], metrics: Sequence[str],
                   runs: Sequence[RunLog], ranks: dict[str, Ranking]) -> str:
    """Two tables (final, best): rows = variants, columns = metrics; the best variant per ranked column in bold."""
    counts = {v: sum(r.variant == v for r in runs) for v in variants}
    parts = []
    for kind in ("final", "best"):
        means = {m: {v: MetricSummary.stats(getattr(summary[v][m], kind))[0]
                     for v in variants if m in summary.get(v, {})} for m in metrics}
        # every variant tied with the best is bold; none when all tie or the column is not ranked
        winners: dict[str, set[str]] = {}
        for m, vals in means.items():
            finite = {v: x for v, x in vals.items() if not math.isnan(x)}
            if not ranks[m].ranked or not finite:
                winners[m] = set()
                continue
            best = ranks[m].goal.best(list(finite.values()))
            tied = {v for v, x in finite.items() if x == best}
            winners[m] = tied if len(tied) < len(vals) else set()
        header = ["variant", "seeds", *(f"{m} {ranks[m].arrow}" for m in metrics)]
        what = "value at the last logged step" if kind == "final" else "best value over training"
        lines = [f"**{kind.capitalize()} values** (mean ± std over seeds; {what})", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for v in variants:
            cells = []
            for m in metrics:
                if m not in summary.get(v, {}):
                    cells.append("n/a")
                    continue
                text = _cell(getattr(summary[v][m], kind), counts[v])
                cells.append(f"**{text}**" if v in winners[m] else text)
            lines.append("| " + " | ".join([v, str(counts[v]), *cells]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def csv_rows(summary: dict[str, dict[str, MetricSummary]], variants: Sequence[str], metrics: Sequence[str],
             runs: Sequence[RunLog]) -> list[list[str]]:
    header = ["variant", "seeds"]
    for m in metrics:
        header += [f"{m} final mean", f"{m} final std", f"{m} best mean", f"{m} best std"]
    rows = [header]
    for v in variants:
        row = [v, str(sum(r.variant == v for r in runs))]
        for m in metrics:
            if m not in summary.get(v, {}):
                row += ["", "", "", ""]
                continue
            for kind in ("final", "best"):
                mean, std = MetricSummary.stats(getattr(summary[v][m], kind))
                row += [repr(mean), "" if math.isnan(std) else repr(std)]
        rows.append(row)
    return rows


def run_rows(runs: Sequence[RunLog], metrics: Sequence[str], ranks: dict[str, Ranking]) -> list[list[str]]:
    rows = [["run", "variant", "seed", "last step", *(f"{m} {k}" for m in metrics for k in ("final", "best"))]]
    for run in runs:
        last = max((s[-1][0] for s in run.scalars.values() if s), default="")
        path = run.path.resolve()
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        row = [str(shown), run.variant, "" if run.seed is None else str(run.seed), str(last)]
        for m in metrics:
            values = [v for _, v in run.scalars.get(m, [])]
            if not values:
                row += ["", ""]
                continue
            goal = ranks[m].goal
            row += [repr(values[-1]), repr(goal.best(values)) if goal is not None else ""]
        rows.append(row)
    return rows


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()

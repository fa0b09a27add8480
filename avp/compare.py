"""``avp compare RUN_DIRS… [--out DIR]``: ablation tables and plots from runs' TensorBoard logs.

Each argument is a run folder, a sweep folder (every run below it), or any directory holding TensorBoard event
files. Runs are grouped into variants (a sweep run's ``run.json`` names its variant and seed; otherwise the folder
name, with a trailing ``seed<k>`` / ``version_<k>`` folder counted as a seed of its parent). For every scalar metric
it reports the final value (at the last logged step) and the best value by the metric's goal
(:mod:`avp.metrics.goals`: higher, lower, or closest to a target), as mean ± std over seeds, in the paper's ablation
layout: rows = variants, columns = metrics.

Runs pooled as seeds of one variant must share their resolved config (``config.yaml``) up to the seed and the run's
own paths; each difference is reported as a warning naming the keys. A column is ranked (best variant in bold) only
when its metric has a goal and the variants agree on the config keys its scale depends on (a loss over 64 vs 1,024
quantisation levels is not ranked).

Writes ``table.md`` (printed too), ``table.csv`` (one row per variant), ``runs.csv`` (one row per run),
``curves_<metric>.png`` (mean curve per variant with a ±std band over seeds) and ``ablation.png`` (bar chart of the
final values). Logs are read with TensorBoard's ``EventAccumulator``, which honours purge markers, so a run that was
killed and resumed counts each step once.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from avp.atomic import atomic_write_bytes, atomic_write_text
from avp.metrics.goals import Goal, goal_of

EVENT_GLOB = "events.out.tfevents.*"
IGNORED_TAGS = ("epoch", "hp_metric")
SEED_DIR = re.compile(r"^(seed|version_)(\d+)$")
CONFIG_FILE = "config.yaml"
RUN_IDENTITY_KEYS = ("seed", "seed_everything", "save_dir", "name", "version", "dirpath", "default_root_dir",
                     "ckpt_path", "bank_dir", "generator_ckpt", "status_file", "checkpoint_dir")
"""Last components of config keys that differ between seeds of one variant by design (seeds, the run's own paths,
the generator checkpoint a decoder seed was paired with)."""


@dataclass
class RunLog:
    """The scalar logs of one run."""

    path: Path
    """Run folder (a sweep run's folder, or the directory holding the event files)."""
    variant: str
    seed: int | None
    order: tuple
    """Sort key: sweep order when known, then path."""
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """tag -> [(step, value)] sorted by step, each step once."""
    config: dict[str, str] | None = None
    """The resolved config flattened to dotted keys (values as JSON text), or None when the run has no
    ``config.yaml``."""


@dataclass
class MetricSummary:
    final: list[float]
    best: list[float]

    @staticmethod
    def stats(values: Sequence[float]) -> tuple[float, float]:
        """Mean and sample standard deviation (NaN for one value)."""
        arr = np.asarray(values, dtype=float)
        return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


# ---------------------------------------------------------------------------------------------------- reading
def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a TensorBoard log directory (purged steps dropped; a repeated step keeps its last value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        by_step = {e.step: float(e.value) for e in acc.Scalars(tag)}
        out[tag] = sorted(by_step.items())
    return out


def _log_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such run or sweep folder")
    dirs = {p.parent for p in root.rglob(EVENT_GLOB)} if root.is_dir() else set()
    return sorted(dirs)


def _describe(log_dir: Path) -> tuple[Path, str, int | None, tuple]:
    """(run folder, variant, seed, order) of a log directory."""
    run_dir = log_dir.parent if (log_dir.parent / "run.json").exists() else log_dir
    record_path = run_dir / "run.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        return run_dir, record["variant"], record.get("seed"), (0, record.get("index", 0), str(run_dir))
    match = SEED_DIR.match(run_dir.name)
    if match:
        return run_dir, run_dir.parent.name, int(match.group(2)), (1, str(run_dir))
    return run_dir, run_dir.name, None, (1, str(run_dir))


def flatten_config(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings to ``{"a.b.c": json text of the leaf}`` (lists are leaves)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten_config(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(tree, sort_keys=True, default=str)}


def read_config(log_dir: Path, run_dir: Path) -> dict[str, str] | None:
    """A run's resolved config (``avp fit`` saves it beside its event files; a sweep run has one in its folder)."""
    for folder in (log_dir, run_dir):
        path = folder / CONFIG_FILE
        if path.is_file():
            try:
                return flatten_config(yaml.safe_load(path.read_text()) or {})
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: not valid YAML ({e})") from e
    return None


def load_runs(paths: Iterable[str | Path]) -> list[RunLog]:
    """Find every run under ``paths`` and read its scalars and config; raises if none has logs."""
    runs: dict[Path, RunLog] = {}
    for path in paths:
        for log_dir in _log_dirs(Path(path)):
            run_dir, variant, seed, order = _describe(log_dir)
            if run_dir in runs:
                continue
            runs[run_dir] = RunLog(run_dir, variant, seed, order, read_scalars(log_dir), read_config(log_dir, run_dir))
    found = [r for r in runs.values() if r.scalars]
    if not found:
        raise FileNotFoundError(f"no TensorBoard scalars under {', '.join(map(str, paths))}")
    return sorted(found, key=lambda r: r.order)


# ---------------------------------------------------------------------------------------------------- consistency
def _identity_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RUN_IDENTITY_KEYS or key.startswith("trainer.logger")


def pooled_differences(runs: Sequence[RunLog]) -> dict[str, list[str]]:
    """variant -> config keys whose values differ between its runs (seeds and run paths excepted)."""
    out = {}
    for variant in variants_in_order(runs):
        configs = [r.config for r in runs if r.variant == variant]
        known = [c for c in configs if c is not None]
        if len(known) < 2:
            continue
        keys = sorted({k for c in known for k in c if not _identity_key(k)})
        differing = [k for k in keys if len({c.get(k) for c in known}) > 1]
        if differing:
            out[variant] = differing
    return out


def incomparable(runs: Sequence[RunLog], metric: str, goal: Goal | None) -> list[str]:
    """Config keys the metric's scale depends on whose values differ between the runs that logged it."""
    if goal is None or not goal.depends_on:
        return []
    configs = [r.config for r in runs if r.config is not None and r.scalars.get(metric)]
    keys = sorted({k for c in configs for k in c if k.startswith(goal.depends_on)})
    return [k for k in keys if len({c.get(k) for c in configs}) > 1]


@dataclass
class Ranking:
    """How one column is ranked."""

    goal: Goal | None
    """None: the metric has no declared goal (tabulated, not ranked)."""
    differs: list[str]
    """Config keys that make the variants' values incomparable (the column is not ranked)."""

    @property
    def ranked(self) -> bool:
        return self.goal is not None and not self.differs

    @property
    def arrow(self) -> str:
        return self.goal.arrow if self.goal is not None else "?"


def rankings(runs: Sequence[RunLog], metrics: Sequence[str], higher: Sequence[str] = (),
             lower: Sequence[str] = ()) -> dict[str, Ranking]:
    goals = {m: goal_of(m, higher, lower) for m in metrics}
    return {m: Ranking(goals[m], incomparable(runs, m, goals[m])) for m in metrics}


# ---------------------------------------------------------------------------------------------------- summarising


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


def variants_in_order(runs: Sequence[RunLog]) -> list[str]:
    return list(dict.fromkeys(r.variant for r in runs))


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


# ---------------------------------------------------------------------------------------------------- plots
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


# ---------------------------------------------------------------------------------------------------- entry point
@dataclass
class CompareOutput:
    markdown: str
    files: list[Path]
    runs: list[RunLog]
    metrics: list[str]
    warnings: list[str] = field(default_factory=list)
    """Pooled runs whose configs differ, columns left unranked and why."""


def _warnings(runs: Sequence[RunLog], variants: Sequence[str], ranks: dict[str, Ranking]) -> list[str]:
    out = []
    for variant, keys in pooled_differences(runs).items():
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        out.append(f"variant {variant!r} pools runs whose configs differ beyond the seed: {shown}")
    missing = [r for r in runs if r.config is None]
    if missing:
        out.append(f"{len(missing)} run(s) have no {CONFIG_FILE} (their settings could not be checked): "
                   + ", ".join(str(r.path) for r in missing[:4]) + (" …" if len(missing) > 4 else ""))
    for metric, rank in ranks.items():
        if rank.goal is None:
            out.append(f"{metric}: no declared goal (avp.metrics.goals), not ranked; pass --higher-is-better or "
                       "--lower-is-better to rank it")
        elif rank.differs and len(variants) > 1:
            out.append(f"{metric}: not ranked, its scale depends on settings the runs differ in: "
                       + ", ".join(rank.differs))
    return out


def compare(paths: Sequence[str | Path], out: str | Path | None = None, *, metrics: Sequence[str] | None = None,
            higher: Sequence[str] = (), lower: Sequence[str] = (), plots: bool = True) -> CompareOutput:
    """Read the runs under ``paths`` and write tables (and plots) into ``out``."""
    runs = load_runs(paths)
    chosen = select_metrics(runs, metrics)
    variants = variants_in_order(runs)
    ranks = rankings(runs, chosen, higher, lower)
    summary = summarise(runs, chosen, ranks)
    if out is None:
        out = Path(os.path.commonpath([str(Path(p).resolve()) for p in paths])) / "compare"
    out = Path(out)
    markdown = markdown_table(summary, variants, chosen, runs, ranks)
    notes = _warnings(runs, variants, ranks)
    sources = ", ".join(sorted({str(Path(p)) for p in paths}))
    document = (f"# avp compare\n\n{len(runs)} run(s) in {len(variants)} variant(s) from {sources}; "
                "↓ lower is better, ↑ higher is better, →x closest to x is best, ? no declared goal; best variant "
                "per ranked column in bold.\n\n"
                + "".join(f"> **Warning:** {n}\n>\n" for n in notes) + ("\n" if notes else "") + markdown)
    files = [out / "table.md", out / "table.csv", out / "runs.csv"]
    atomic_write_text(files[0], document)
    atomic_write_text(files[1], _csv_text(csv_rows(summary, variants, chosen, runs)))
    atomic_write_text(files[2], _csv_text(run_rows(runs, chosen, ranks)))
    if plots:
        for metric in chosen:
            path = out / f"curves_{_safe(metric)}.png"
            atomic_write_bytes(path, plot_curves(runs, variants, metric))
            files.append(path)
        path = out / "ablation.png"
        atomic_write_bytes(path, plot_ablation(summary, variants, chosen, ranks))
        files.append(path)
    return CompareOutput(markdown, files, runs, chosen, notes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avp compare", description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    p.add_argument("runs", nargs="+", help="run folders, sweep folders, or directories with TensorBoard event files")
    p.add_argument("--out", help="output folder (default: <common parent of RUNS>/compare)")
    p.add_argument("--metrics", nargs="+", metavar="GLOB",
                   help="metrics to tabulate (default: every val/* and test/* metric, else every metric)")
    p.add_argument("--higher-is-better", nargs="+", default=[], metavar="GLOB",
                   help="metrics to maximise, overriding avp.metrics.goals (globs over the whole tag)")
    p.add_argument("--lower-is-better", nargs="+", default=[], metavar="GLOB",
                   help="metrics to minimise, overriding avp.metrics.goals")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = compare(args.runs, args.out, metrics=args.metrics, higher=args.higher_is_better,
                         lower=args.lower_is_better, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as e:
        print(f"avp compare: {e}", file=sys.stderr)
        return 2
    for note in result.warnings:
        print(f"avp compare: warning: {note}", file=sys.stderr)
    print(result.markdown)
    print(f"wrote {', '.join(str(f) for f in result.files)}")
    return 0

"""``avp compare RUN_DIRS… [--out DIR]``: ablation tables and plots from runs' TensorBoard logs.

:func:`compare` reads the runs, writes the tables and plots and returns the markdown with its warnings; :func:`main`
is the console verb (the whole description is :mod:`avp.compare`'s docstring).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from avp.atomic import atomic_write_bytes, atomic_write_text
from avp.compare.plots import _safe, plot_ablation, plot_curves
from avp.compare.ranking import Ranking, pooled_differences, rankings
from avp.compare.runs import CONFIG_FILE, RunLog, load_runs, variants_in_order
from avp.compare.tables import _csv_text, csv_rows, markdown_table, run_rows, select_metrics, summarise

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


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


def build_parser() -> ArgumentParser:
    from avp.tool_parser import tool_parser

    p = tool_parser("avp compare", __doc__.split("\n\n")[0].split(": ", 1)[-1])
    p.add_argument("runs", type=str, nargs="+",
                   help="run folders, sweep folders, or directories with TensorBoard event files")
    p.add_argument("--out", type=str, help="output folder (default: <common parent of RUNS>/compare)")
    p.add_argument("--metrics", type=str, nargs="+", metavar="GLOB",
                   help="metrics to tabulate (default: every val/* and test/* metric, else every metric)")
    p.add_argument("--higher-is-better", type=str, nargs="+", default=[], metavar="GLOB",
                   help="metrics to maximise, overriding avp.metrics.goals (globs over the whole tag)")
    p.add_argument("--lower-is-better", type=str, nargs="+", default=[], metavar="GLOB",
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

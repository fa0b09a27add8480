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

from avp.compare.cli import CompareOutput, build_parser, compare, main
from avp.compare.plots import mean_curve, plot_ablation, plot_curves
from avp.compare.ranking import Ranking, incomparable, pooled_differences, rankings
from avp.compare.runs import RunLog, flatten_config, load_runs, read_config, read_scalars, variants_in_order
from avp.compare.tables import MetricSummary, csv_rows, markdown_table, run_rows, select_metrics, summarise

__all__ = [
    "CompareOutput",
    "MetricSummary",
    "Ranking",
    "RunLog",
    "build_parser",
    "compare",
    "csv_rows",
    "flatten_config",
    "incomparable",
    "load_runs",
    "main",
    "markdown_table",
    "mean_curve",
    "plot_ablation",
    "plot_curves",
    "pooled_differences",
    "rankings",
    "read_config",
    "read_scalars",
    "run_rows",
    "select_metrics",
    "summarise",
    "variants_in_order",
]

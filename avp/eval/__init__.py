"""Evaluation: reenactment protocols (:mod:`avp.eval.protocol`), what a run covers (:mod:`avp.eval.plan`: clips,
samples, frames, views, seeds), decoded sources and targets (:mod:`avp.eval.clips`), the table's rows
(:mod:`avp.eval.methods`), scoring (:mod:`avp.eval.scores`), the loop that ties them (:mod:`avp.eval.runner`) and
reports (:mod:`avp.eval.report`: JSON lines, ``metrics.json``/CSV with provenance, paper-layout markdown tables). The
metrics it scores with live in :mod:`avp.metrics`. Never Lightning-aware.
"""

from __future__ import annotations

from avp.eval.report import (
    PAPER_COLUMNS,
    ReportFiles,
    RunMetrics,
    RunReport,
    flatten_metrics,
    markdown_table,
    read_metrics,
    scalars_for_logging,
    table_from_runs,
    write_markdown_table,
)

__all__ = [
    "PAPER_COLUMNS",
    "ReportFiles",
    "RunMetrics",
    "RunReport",
    "flatten_metrics",
    "markdown_table",
    "read_metrics",
    "scalars_for_logging",
    "table_from_runs",
    "write_markdown_table",
]

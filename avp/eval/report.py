"""Evaluation reports: per-sample JSON lines, per-run ``metrics.json`` and ``metrics.csv`` with provenance, and
markdown tables in the paper's layout (rows are methods, columns metrics with ↑/↓). Every file is written atomically.

:class:`RunReport` writes one method's report; :func:`write_run_reports` writes the whole folder of an ``avp eval`` run
(every method: ``samples.jsonl``, ``metrics.json``/``.csv``, ``table.md``, ``examples.png``, per-method reports and
TensorBoard scalars). One responsibility (what a run's numbers look like on disk), hence its length.

Values are floats or :class:`~avp.metrics.unavailable.Unavailable`. In JSON an unavailable value is
``{"unavailable": "<reason>"}`` and a non-finite float is the string ``"inf"``, ``"-inf"`` or ``"nan"`` (JSON has no
such numbers); in CSV and markdown an unavailable value reads ``unavailable (<reason>)``, never a number.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avp.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from avp.eval.protocol import EvalProtocol
from avp.metrics.goals import goal_of
from avp.metrics.unavailable import MetricValue, Unavailable, as_metric_value, format_value
from avp.provenance import environment, git_sha

REPORT_SCHEMA = 1
RUN_SCHEMA = 1
"""Schema of an ``avp eval`` run folder (``run.json``, ``metrics.json``)."""
SAMPLES_FILE = "samples.jsonl"
METRICS_FILE = "metrics.json"
CSV_FILE = "metrics.csv"
TABLE_FILE = "table.md"


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is shown in tables (which way is better comes from :mod:`avp.metrics.goals`)."""

    label: str
    """column title without the arrow"""
    digits: int = 3
    """decimals shown"""


METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec("PSNR", 2),
    "psnr_masked": MetricSpec("PSNR (mask)", 2),
    "ssim": MetricSpec("SSIM", 4),
    "ssim_masked": MetricSpec("SSIM (mask)", 4),
    "lpips": MetricSpec("LPIPS", 3),
    "fid": MetricSpec("FID", 2),
    "akd": MetricSpec("AKD", 2),
    "apd": MetricSpec("APD", 2),
    "apd_yaw": MetricSpec("APD yaw", 2),
    "apd_pitch": MetricSpec("APD pitch", 2),
    "apd_roll": MetricSpec("APD roll", 2),
    "keypoint_pair_rate": MetricSpec("Landmark pairs", 3),
    "identity_cosine": MetricSpec("ID cos", 3),
    "identity_distance": MetricSpec("ID dist", 3),
    "identity_same_rate": MetricSpec("ID same", 3),
    "face_detection_rate": MetricSpec("Face det.", 3),
    "clip": MetricSpec("CLIP", 3),
    "cross_fid": MetricSpec("Cross-FID", 2),
    "cross_clip": MetricSpec("Cross-CLIP", 3),
    "cross_identity_cosine": MetricSpec("Cross-ID cos", 3),
}
"""Known metric keys; other keys are shown by name without an arrow."""

PAPER_COLUMNS = ("lpips", "fid", "akd", "apd", "cross_fid", "cross_clip")
"""The paper's main table (PAPER.md §6.2)"""


def spec(key: str) -> MetricSpec:
    return METRICS.get(key, MetricSpec(key))


def higher_is_better(key: str) -> bool | None:
    """True: ↑, False: ↓, None: no direction (no arrow, never bold: undeclared, or best at a target value)."""
    goal = goal_of(key)
    return None if goal is None or goal.better == "target" else goal.better == "higher"


def flatten_metrics(outputs: Mapping[str, Any]) -> dict[str, MetricValue]:
    """Metric outputs (tensors, floats, ``Unavailable``, or dicts of them as the face metrics return) as one flat
    ``{key: float | Unavailable}``; a nested dict's keys replace its parent key."""
    flat: dict[str, MetricValue] = {}
    for key, value in outputs.items():
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value))
        else:
            flat[key] = as_metric_value(value)
    return flat


def scalars_for_logging(metrics: Mapping[str, Any], prefix: str = "test") -> dict[str, float]:
    """``{"<prefix>/<key>": float}`` of the available, finite values (TensorBoard); unavailable ones are left out."""
    return {f"{prefix}/{k}": v for k, v in flatten_metrics(metrics).items()
            if not isinstance(v, Unavailable) and math.isfinite(v)}


def to_json_value(value: Any) -> Any:
    """A metric value (or a dict/list of them) as JSON-safe data (see the module docstring)."""
    if isinstance(value, Unavailable):
        return {"unavailable": value.reason}
    if isinstance(value, Tensor):
        value = as_metric_value(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value


def from_json_value(value: Any) -> MetricValue:
    """Inverse of :func:`to_json_value` for one metric value."""
    if isinstance(value, Mapping) and "unavailable" in value:
        return Unavailable(str(value["unavailable"]))
    if isinstance(value, str):
        return float(value)  # "inf", "-inf", "nan"
    return float(value)


@dataclass(frozen=True)
class ReportFiles:
    """Where a run's report went."""

    samples: Path
    metrics_json: Path
    metrics_csv: Path
    table: Path


class RunReport:
    """Collects one evaluation run (one method on one protocol) and writes its files into ``out_dir``.

    ``protocol`` must hold ``name`` and ``version`` (the protocol config, recorded whole); ``config`` is the run's
    configuration (checkpoints, sampling options, …). ``add_sample`` per evaluated sample, then ``finish`` with the
    aggregated metrics. ``write_samples`` may be called any time to persist progress.
    """

    def __init__(self, out_dir: str | Path, *, method: str, protocol: Mapping[str, Any],
                 config: Mapping[str, Any] | None = None) -> None:
        for key in ("name", "version"):
            if key not in protocol:
                raise ValueError(f"the protocol record needs a {key!r} field; got keys {sorted(protocol)}")
        self.out_dir = Path(out_dir)
        self.method = method
        self.protocol = dict(protocol)
        self.config = dict(config or {})
        self.samples: list[dict[str, Any]] = []

    def add_sample(self, sample_id: str, metrics: Mapping[str, Any], **info: Any) -> None:
        """Record one sample's values (``info``: subject, sequence, frames, views, … as JSON-able values)."""
        record = {"sample": sample_id, **info, "metrics": to_json_value(flatten_metrics(metrics))}
        self.samples.append(record)

    def write_samples(self) -> Path:
        path = self.out_dir / SAMPLES_FILE
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in self.samples))
        return path

    def finish(self, metrics: Mapping[str, Any]) -> ReportFiles:
        """Write samples, ``metrics.json``, ``metrics.csv`` and a one-row ``table.md``; return their paths."""
        values = flatten_metrics(metrics)
        samples = self.write_samples()
        sha = git_sha()
        record = {
            "schema": REPORT_SCHEMA,
            "method": self.method,
            "protocol": self.protocol,
            "config": self.config,
            "git_sha": sha,
            "environment": environment(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_samples": len(self.samples),
            "metrics": to_json_value(values),
        }
        metrics_json = self.out_dir / METRICS_FILE
        atomic_write_json(metrics_json, record)
        metrics_csv = self.out_dir / CSV_FILE
        atomic_write_text(metrics_csv, _csv_text(self.method, self.protocol, self.config, sha, len(self.samples),
                                                 values))
        table = self.out_dir / TABLE_FILE
        atomic_write_text(table, markdown_table({self.method: values}, columns=list(values)))
        return ReportFiles(samples=samples, metrics_json=metrics_json, metrics_csv=metrics_csv, table=table)


def _csv_text(method: str, protocol: Mapping[str, Any], config: Mapping[str, Any], sha: str | None, n: int,
              values: Mapping[str, MetricValue]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "protocol", "protocol_version", "git_sha", "n_samples", *values, "config"])
    cells = [v if isinstance(v, Unavailable) else repr(float(v)) for v in values.values()]
    writer.writerow([method, protocol["name"], protocol["version"], sha or "", n, *map(str, cells),
                     json.dumps(config, sort_keys=True, default=str)])
    return buffer.getvalue()


@dataclass(frozen=True)
class RunMetrics:
    """A run's ``metrics.json`` read back."""

    method: str
    protocol: dict[str, Any]
    config: dict[str, Any]
    git_sha: str | None
    metrics: dict[str, MetricValue] = field(default_factory=dict)


def read_metrics(path: str | Path) -> RunMetrics:
    """Read ``metrics.json`` (or a run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read evaluation metrics from {path}: {e}") from e
    for key in ("method", "protocol", "metrics"):
        if key not in record:
            raise ValueError(f"{path} has no {key!r} field; is it an avp metrics.json?")
    return RunMetrics(method=record["method"], protocol=record["protocol"], config=record.get("config", {}),
                      git_sha=record.get("git_sha"),
                      metrics={k: from_json_value(v) for k, v in record["metrics"].items()})


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = PAPER_COLUMNS, *,
                   bold_best: bool = True) -> str:
    """A markdown table: one row per method (``rows``: method -> metrics), one column per metric key with ↑/↓.

    The best available value of each column with a direction is bold (ties too). A missing or unavailable value reads
    ``unavailable [n]`` with note ``[n] unavailable (<reason>)`` under the table.
    """
    table = {m: flatten_metrics(v) for m, v in rows.items()}
    best: dict[str, float] = {}
    for col in columns:
        direction = higher_is_better(col)
        numbers = [v for r in table.values() if isinstance(v := r.get(col), float) and not math.isnan(v)]
        if bold_best and direction is not None and numbers:
            best[col] = max(numbers) if direction else min(numbers)
    notes: dict[str, int] = {}
    header = ["Method"] + [spec(c).label + {True: "↑", False: "↓", None: ""}[higher_is_better(c)]
                           for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, values in table.items():
        cells = [method]
        for col in columns:
            value = values.get(col, Unavailable("not measured in this run"))
            if isinstance(value, Unavailable):
                note = notes.setdefault(str(value), len(notes) + 1)
                cells.append(f"unavailable [{note}]")
                continue
            text = format_value(value, spec(col).digits)
            cells.append(f"**{text}**" if col in best and value == best[col] else text)
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{n}] {text}" for text, n in notes.items()]
    return "\n".join(lines) + "\n"


def write_markdown_table(path: str | Path, rows: Mapping[str, Mapping[str, Any]],
                         columns: Sequence[str] = PAPER_COLUMNS) -> Path:
    """:func:`markdown_table` written atomically to ``path``."""
    path = Path(path)
    atomic_write_text(path, markdown_table(rows, columns))
    return path


def table_from_runs(run_dirs: Sequence[str | Path], columns: Sequence[str] = PAPER_COLUMNS) -> str:
    """The paper-layout table of several runs' ``metrics.json`` (rows in the given order, named by method)."""
    runs = [read_metrics(p) for p in run_dirs]
    names = [r.method for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"two runs share a method name: {names}; rows would collide")
    return markdown_table({r.method: r.metrics for r in runs}, columns)


def write_run_reports(out: Path, protocol: EvalProtocol, run_record: Mapping[str, Any], labels: Mapping[str, str],
                      metrics: Mapping[str, Mapping[str, MetricValue]], records: Sequence[Mapping[str, Any]],
                      example: Sequence[Tensor]) -> dict[str, Path]:
    """Write every report file of a finished evaluation run into ``out``; returns their paths.

    ``run_record``: the run's ``run.json`` content (its ``methods`` hold each row's description, checkpoint included);
    ``labels``: method key -> table row, in table order; ``metrics``: method key -> the run's values; ``records``: one
    per method x sample (``samples.jsonl``); ``example``: image columns ``[V, 3, H, W]`` for ``examples.png``.
    """
    from torch.utils.tensorboard import SummaryWriter

    sha = run_record["git_sha"]
    n_samples = len({r["sample"] for r in records})
    descriptions = run_record["methods"]
    checkpoints = {k: d.get("checkpoint") for k, d in descriptions.items()}
    files: dict[str, Path] = {}

    samples_text = "".join(json.dumps({**r, "metrics": to_json_value(r["metrics"])}) + "\n" for r in records)
    files["samples"] = out / "samples.jsonl"
    atomic_write_text(files["samples"], samples_text)

    files["metrics_json"] = out / "metrics.json"
    atomic_write_json(files["metrics_json"], {
        "schema": RUN_SCHEMA, "protocol": run_record["protocol"], "n_samples": n_samples,
        "methods": {k: {"label": labels[k], "metrics": to_json_value(v)} for k, v in metrics.items()},
        "checkpoints": run_record["checkpoints"], "options": run_record["options"], "data": run_record["data"],
        "git_sha": sha, "environment": run_record["environment"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    files["metrics_csv"] = out / "metrics.csv"
    atomic_write_text(files["metrics_csv"], _run_csv(metrics, labels, protocol, sha, n_samples, checkpoints))

    rows = {labels[k]: v for k, v in metrics.items()}
    table = markdown_table(rows, protocol.columns())
    res = protocol.render.resolution
    overrides = run_record["protocol"]["overrides"]
    header = (f"# {protocol.name} v{protocol.version} ({protocol.task}-reenactment)\n\n"
              f"{n_samples} samples of split `{protocol.data.split}`, {res}x{res} renders, face metrics at "
              f"{protocol.face.resolution} px{'; overrides: `' + ' '.join(overrides) + '`' if overrides else ''}; "
              f"git `{sha}`.\n\n")
    notes = _direction_notes(protocol.columns())
    files["table"] = out / "table.md"
    atomic_write_text(files["table"], header + table + notes)

    if example:
        files["examples"] = out / "examples.png"
        atomic_write_bytes(files["examples"], _image_grid(example))

    protocol_record = {"name": protocol.name, "version": protocol.version, **run_record["protocol"]}
    for key in labels:
        report = RunReport(out / "methods" / _slug(key), method=labels[key], protocol=protocol_record,
                           config={"method": key, **descriptions[key], "options": run_record["options"]})
        for r in records:
            if r["method"] == key:
                report.add_sample(r["sample"], r["metrics"], subject=r["subject"], driver=r["driver"],
                                  frames=r["frames"], views=r["views"], seed=r["seed"], n_points=r["n_points"],
                                  finished=r["finished"])
        report.finish(metrics[key])
        writer = SummaryWriter(log_dir=str(out / "tensorboard" / _slug(key)))
        try:
            for tag, value in scalars_for_logging(metrics[key], "test").items():
                writer.add_scalar(tag, value, global_step=0)
            writer.add_text("test/protocol", f"{protocol.name} v{protocol.version}: {labels[key]}", global_step=0)
        finally:
            writer.close()
    files["tensorboard"] = out / "tensorboard"
    return files


def _direction_notes(columns: Sequence[str]) -> str:
    known = [c for c in columns if higher_is_better(c) is not None]
    if not known:
        return ""
    return "\n↑ higher is better, ↓ lower is better; the best available value of a column is bold.\n"


def _image_grid(columns: Sequence[Tensor]) -> bytes:
    """PNG of image columns, each ``[V, 3, H, W]`` (rows = views)."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(col), dim=-2) for col in columns], dim=-1)  # [3, V H, C W]
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _run_csv(rows: Mapping[str, Mapping[str, MetricValue]], labels: Mapping[str, str], protocol: EvalProtocol,
             sha: str | None, n: int, checkpoints: Mapping[str, Any]) -> str:
    keys: list[str] = []
    for values in rows.values():
        keys += [k for k in values if k not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "label", "protocol", "protocol_version", "git_sha", "n_samples", *keys,
                     "checkpoint_sha256"])
    for method, values in rows.items():
        cells = []
        for k in keys:
            v = values.get(k, Unavailable("not measured for this method"))
            cells.append(str(v) if isinstance(v, Unavailable) else repr(float(v)))
        ckpt = checkpoints.get(method) or {}
        writer.writerow([method, labels[method], protocol.name, protocol.version, sha or "", n, *cells,
                         ckpt.get("sha256", "")])
    return buffer.getvalue()


def _slug(key: str) -> str:
    return key.replace("/", "_")

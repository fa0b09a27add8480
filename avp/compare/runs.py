"""Finding runs and reading them: TensorBoard scalars, the resolved config, and the variant and seed each run
belongs to (a sweep run's ``run.json``, else its folder names)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EVENT_GLOB = "events.out.tfevents.*"


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


def variants_in_order(runs: Sequence[RunLog]) -> list[str]:
    return list(dict.fromkeys(r.variant for r in runs))

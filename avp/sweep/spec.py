"""Sweep specs: one YAML file that expands variants × seeds into ``avp fit`` runs with merged configs.

A spec (see ``experiments/README.md`` for the full reference)::

    name: generator-ablation            # default: the spec file's stem
    out: runs/generator-ablation        # default: runs/<name>; one folder per run: <out>/<variant>/seed<k>
    base: [configs/generator/base.yaml, configs/debug/generator.yaml]   # applied left to right
    seeds: [0, 1, 2]                    # or a count: 3 -> 0, 1, 2
    overrides: {trainer.max_steps: 2000}          # dotted keys for every run
    checkpoint_every_n_steps: 500       # resume granularity (default: once per epoch / validation)
    runs:                               # variants, in table order
      full: {}
      window-2k: experiments/generator/window_2k.yaml          # a delta (or a list of deltas)
      levels-256:
        deltas: [experiments/generator/levels_256.yaml]
        overrides: {data.init_args.batch_size: 8}
        launcher: {tasks_per_node: 2}   # per-variant resources
    launcher: {nodes: 1, gpus_per_node: 4, cpus_per_task: 8, mem_gb: 64, time_min: 720,
               partition: gpu, account: my-lab, signal_delay_s: 300}

Relative paths are resolved against ``workdir`` (default: the directory ``avp sweep`` runs in), which is also the
working directory of every run. Each run's config is the real CLI's parse of base + deltas + overrides, dumped with
every default resolved, plus what makes it a sweep run (seed, run folder, TensorBoard logger, resume checkpoint,
fault tolerance, devices/nodes from the launcher): the run folder alone reproduces the run.

Keys are checked by jsonargparse like every config here (:func:`parse_keys`): types, unknown and missing keys fail in
its words after the file and key path; ranges, paths, folder names and consistency are checked here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avp.atomic import atomic_write_json, atomic_write_text

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")

TENSORBOARD_LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"
RESUME_CHECKPOINT = "avp.lit.callbacks.ResumeCheckpoint"
FAULT_TOLERANCE = "avp.lit.callbacks.FaultTolerance"
LOG_SUBDIR = "tb"
CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
STATUS_FILE = "status.json"


class SpecError(ValueError):
    """A sweep spec, or a config it names, is invalid; the message names the file and key."""


@dataclass
class Resources:
    """What one run asks the launcher for (``launcher:`` in a spec; per-variant ``launcher:`` overrides fields)."""

    nodes: int = 1
    """Nodes per run (``trainer.num_nodes``; SLURM only above 1)."""
    gpus_per_node: int = 0
    """GPUs per node; 0 trains on the CPU (``trainer.accelerator: cpu``)."""
    tasks_per_node: int | None = None
    """Processes per node (``trainer.devices``; one per GPU); default: ``gpus_per_node`` or 1."""
    cpus_per_task: int = 1
    """CPU cores per process (also ``OMP_NUM_THREADS``)."""
    mem_gb: float | None = None
    """Memory per node in GiB (SLURM ``--mem``); default: the cluster's."""
    time_min: int = 60
    """Wall-clock limit per job in minutes (SLURM ``--time``); a requeued run gets it again."""
    partition: str | None = None
    """SLURM partition."""
    account: str | None = None
    """SLURM account."""
    signal_delay_s: int = 120
    """SLURM sends USR1 this long before the time limit: the run checkpoints and requeues itself."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in the job before ``srun`` (``module load …``, ``source venv/bin/activate``)."""
    sbatch_args: list[str] = field(default_factory=list)
    """Extra ``#SBATCH`` options, verbatim (``--qos=high``, ``--constraint=a100``)."""
    python: str | None = None
    """Interpreter that runs ``avp`` in the job; default: the one running ``avp sweep``."""

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    def validate(self, where: str) -> None:
        """Ranges and consistency beyond types (which the parser checks); raises :class:`SpecError` naming the key."""
        for key in ("nodes", "cpus_per_task", "time_min"):
            if getattr(self, key) < 1:
                raise SpecError(f"{where}.{key}: expected an integer >= 1, got {getattr(self, key)!r}")
        for key in ("gpus_per_node", "signal_delay_s"):
            if getattr(self, key) < 0:
                raise SpecError(f"{where}.{key}: expected an integer >= 0, got {getattr(self, key)!r}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise SpecError(f"{where}.tasks_per_node: expected an integer >= 1, got {self.tasks_per_node!r}")
        if self.gpus_per_node and self.ntasks_per_node != self.gpus_per_node:
            raise SpecError(f"{where}: tasks_per_node ({self.tasks_per_node}) must equal gpus_per_node "
                            f"({self.gpus_per_node}): Lightning runs one process per GPU")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise SpecError(f"{where}.mem_gb: expected a positive number, got {self.mem_gb!r}")
        if self.signal_delay_s >= self.time_min * 60:
            raise SpecError(f"{where}.signal_delay_s ({self.signal_delay_s}) must be shorter than time_min "
                            f"({self.time_min} min), or every job is told to requeue as soon as it starts")


@dataclass
class Variant:
    name: str
    """Row of the ablation table; folder name of its runs."""
    deltas: list[Path]
    """Delta configs applied after the base configs, left to right."""
    overrides: dict[str, Any]
    """Dotted keys applied after the deltas (after the spec-wide overrides)."""
    resources: Resources


@dataclass
class SweepSpec:
    path: Path
    name: str
    out: Path
    workdir: Path
    base: list[Path]
    seeds: list[int]
    overrides: dict[str, Any]
    variants: list[Variant]
    resources: Resources
    checkpoint_every_n_steps: int | None


@dataclass
class PlannedRun:
    """One ``avp fit`` invocation: a variant with a seed."""

    name: str
    """``<variant>/seed<k>``"""
    variant: str
    seed: int
    index: int
    """Position in the sweep (variant-major), used to order tables."""
    run_dir: Path
    configs: list[Path]
    overrides: dict[str, Any]
    resources: Resources
    workdir: Path
    sweep: str
    checkpoint_every_n_steps: int | None

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_SUBDIR

    @property
    def log_dir(self) -> Path:
        return self.run_dir / LOG_SUBDIR


@dataclass
class SpecFile:
    """The keys of a sweep spec file as the parser checks them (types, unknown and missing keys); what they mean is
    in the module docstring. Paths stay text until resolved against the work folder."""

    base: str | list[str]
    runs: dict
    """Variant name -> a delta path, a list of them, null, or a mapping of :class:`VariantFile` keys."""
    name: str | None = None
    out: str | None = None
    workdir: str | None = None
    seeds: int | list[int] = field(default_factory=lambda: [0])
    overrides: dict | None = None
    launcher: dict | None = None
    """:class:`Resources` keys; a variant's ``launcher`` is merged over it, then the result is parsed."""
    checkpoint_every_n_steps: int | None = None


@dataclass
class VariantFile:
    """The keys of one variant's mapping under ``runs``."""

    deltas: str | list[str] = field(default_factory=list)
    overrides: dict | None = None
    launcher: dict | None = None


# ---------------------------------------------------------------------------------------------------- loading
T = TypeVar("T")


@functools.cache
def _parser(cls: type) -> Any:
    """The jsonargparse parser of one of the spec's dataclasses (built once per class; parsing does not change it)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="avp sweep", exit_on_error=False, default_env=False)
    parser.add_class_arguments(cls, None, fail_untyped=True)
    return parser


def parse_keys(cls: type[T], data: Any, where: str) -> T:
    """``data``, a mapping of ``cls``'s fields, type-checked and built by jsonargparse; errors name ``where`` (the
    spec file, and the key path inside it) and jsonargparse's message names the key."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of {', '.join(f.name for f in fields(cls))}, got {data!r}")
    parser = _parser(cls)
    try:
        namespace = parser.parse_object(data)
    except argparse.ArgumentError as e:
        raise SpecError(f"{where}: {e}") from None
    built = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(namespace)  # renamed in 4.49
    return cls(**{f.name: built[f.name] for f in fields(cls)})


def _overrides(value: dict | None, where: str) -> dict[str, Any]:
    for key in value or {}:
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][\w.]*$", key):
            raise SpecError(f"{where}: {key!r} is not a dotted config key (e.g. trainer.max_steps)")
    return dict(value or {})


def _paths(value: str | list[str], root: Path, where: str) -> list[Path]:
    paths = []
    for item in [value] if isinstance(value, str) else value:
        path = (root / item).resolve()
        if not path.is_file():
            raise SpecError(f"{where}: {item} does not exist (relative paths are resolved against {root})")
        paths.append(path)
    return paths


def _resources(launcher: dict[str, Any], where: str) -> Resources:
    resources = parse_keys(Resources, launcher, where)
    resources.validate(where)
    return resources


def _variant(name: Any, body: Any, launcher: dict | None, root: Path, where: str) -> Variant:
    """One entry of ``runs``; ``launcher`` is the spec's, which the variant's own ``launcher`` keys override."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SpecError(f"{where}: {name!r} is not a usable folder name")
    if body is None:
        body = {}
    elif isinstance(body, (str, list)):
        body = {"deltas": body}
    keys = parse_keys(VariantFile, body, where)
    return Variant(name, _paths(keys.deltas, root, f"{where}.deltas"),
                   _overrides(body.get("overrides"), f"{where}.overrides"),
                   _resources({**(launcher or {}), **(body.get("launcher") or {})}, f"{where}.launcher"))


def load_spec(path: str | Path, *, workdir: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep spec; every error names the spec file and the key (types, unknown and missing keys
    in jsonargparse's words, :func:`parse_keys`; ranges, paths and names in ours)."""
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"{where}: cannot read the sweep spec ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{where}: not valid YAML: {e}") from e
    spec = parse_keys(SpecFile, raw, where)
    # the mappings (runs, overrides, launcher) are read from ``raw``: the parser checked they are mappings but
    # YAML-parses text values inside them once more ("null" would become None, "1" a number), and their contents
    # are checked where they are used (variants and launchers by the parser, overrides by the real CLI)

    root = Path(workdir) if workdir is not None else Path(spec.workdir or ".")
    root = root.resolve()
    if not root.is_dir():
        raise SpecError(f"{where}.workdir: {root} is not a directory")
    name = spec.name if spec.name is not None else path.stem.removesuffix(".sweep")
    if not NAME_PATTERN.match(name):
        raise SpecError(f"{where}.name: {name!r} is not a usable folder name")
    out = (root / (spec.out if spec.out is not None else f"runs/{name}")).resolve()
    base = _paths(spec.base, root, f"{where}.base")
    if not base:
        raise SpecError(f"{where}.base: needs at least one config")

    seeds = spec.seeds
    if isinstance(seeds, int):
        if seeds < 1:
            raise SpecError(f"{where}.seeds: a count must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    if not seeds or len(set(seeds)) != len(seeds):
        raise SpecError(f"{where}.seeds: expected a count or a list of distinct integers, got {seeds!r}")
    every = spec.checkpoint_every_n_steps
    if every is not None and every < 1:
        raise SpecError(f"{where}.checkpoint_every_n_steps: expected an integer >= 1 or null, got {every!r}")

    resources = _resources(raw.get("launcher") or {}, f"{where}.launcher")
    if not spec.runs:
        raise SpecError(f"{where}.runs: needs at least one variant")
    variants = [_variant(vname, body, raw.get("launcher"), root, f"{where}.runs.{vname}")
                for vname, body in raw["runs"].items()]
    return SweepSpec(path=path.resolve(), name=name, out=out, workdir=root, base=base, seeds=seeds,
                     overrides=_overrides(raw.get("overrides"), f"{where}.overrides"), variants=variants,
                     resources=resources, checkpoint_every_n_steps=every)


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """Variants × seeds, variant-major (the order of the spec's ``runs``)."""
    runs = []
    for variant in spec.variants:
        for seed in spec.seeds:
            runs.append(PlannedRun(
                name=f"{variant.name}/seed{seed}", variant=variant.name, seed=seed, index=len(runs),
                run_dir=spec.out / variant.name / f"seed{seed}", configs=[*spec.base, *variant.deltas],
                overrides={**spec.overrides, **variant.overrides}, resources=variant.resources,
                workdir=spec.workdir, sweep=spec.name, checkpoint_every_n_steps=spec.checkpoint_every_n_steps))
    return runs


# ---------------------------------------------------------------------------------------------------- configs
def cli_value(value: Any) -> str:
    """A YAML value as jsonargparse reads it from a ``--key=value`` flag."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def parse_with_cli(args: list[str], where: str) -> dict[str, Any]:
    """Parse ``--config``/``--key=value`` args with the real ``avp fit`` parser; returns the resolved config."""
    from avp.cli import build_cli

    err = io.StringIO()
    quiet = logging.getLogger("lightning.fabric.utilities.seed")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    argv = sys.argv
    sys.argv = argv[:1]  # LightningCLI warns when it sees both ``args`` and command-line arguments
    try:
        with contextlib.redirect_stderr(err):
            cli = build_cli(args, run=False, instantiate=False)
    except SystemExit as e:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), max(0, len(lines) - 12))
        raise SpecError(f"{where}: the config does not parse:\n" + "\n".join(lines[start:])) from e
    finally:
        sys.argv = argv
        quiet.setLevel(level)
    return yaml.safe_load(cli.parser.dump(cli.config))


def _is_class(entry: Any, suffix: str) -> bool:
    return isinstance(entry, dict) and str(entry.get("class_path", "")).split(".")[-1] == suffix


def _logger_entries(current: Any, run_dir: Path) -> list[dict[str, Any]]:
    tensorboard = {"class_path": TENSORBOARD_LOGGER,
                   "init_args": {"save_dir": str(run_dir), "name": "", "version": LOG_SUBDIR,
                                 "default_hp_metric": False}}
    entries = current if isinstance(current, list) else [current] if isinstance(current, dict) else []
    out = [tensorboard]
    for entry in entries:
        if _is_class(entry, "TensorBoardLogger"):
            kept = {k: v for k, v in (entry.get("init_args") or {}).items() if k not in tensorboard["init_args"]}
            tensorboard["init_args"].update(kept)
        elif isinstance(entry, dict):
            args = dict(entry.get("init_args") or {})
            if "save_dir" in args:
                args["save_dir"] = str(run_dir)
            out.append({**entry, "init_args": args})
    return out


def _callback_entries(current: Any, run: PlannedRun) -> list[dict[str, Any]]:
    """The config's callbacks writing into the run folder, plus the resume checkpoint and fault tolerance.

    The config's own ``ModelCheckpoint``s keep their top-k files but stop writing ``last`` (only the resume
    checkpoint writes ``last.ckpt``, so resuming never has to choose between two of them).
    """
    ckpt_dir = str(run.checkpoint_dir)
    entries = []
    for entry in current or []:
        if _is_class(entry, "FaultTolerance") or _is_class(entry, "ResumeCheckpoint"):
            continue
        entry = dict(entry)
        if _is_class(entry, "ModelCheckpoint"):
            entry["init_args"] = {**(entry.get("init_args") or {}), "dirpath": ckpt_dir, "save_last": False}
        entries.append(entry)
    resume: dict[str, Any] = {"dirpath": ckpt_dir}
    if run.checkpoint_every_n_steps is not None:
        resume["every_n_train_steps"] = run.checkpoint_every_n_steps
    entries.append({"class_path": RESUME_CHECKPOINT, "init_args": resume})
    entries.append({"class_path": FAULT_TOLERANCE,
                    "init_args": {"status_file": STATUS_FILE, "checkpoint_dir": ckpt_dir}})
    return entries


def sweep_config(config: dict[str, Any], run: PlannedRun) -> dict[str, Any]:
    """What makes a resolved config a sweep run: seed, run folder, logger, checkpoints, devices."""
    cfg = dict(config)
    cfg["seed_everything"] = run.seed
    trainer = dict(cfg.get("trainer") or {})
    res = run.resources
    trainer["default_root_dir"] = str(run.run_dir)
    trainer["accelerator"] = "gpu" if res.gpus_per_node else "cpu"
    trainer["devices"] = res.ntasks_per_node
    trainer["num_nodes"] = res.nodes
    if res.world_size > 1 and trainer.get("strategy", "auto") == "auto":
        trainer["strategy"] = "ddp"
    trainer["enable_checkpointing"] = True
    trainer["logger"] = _logger_entries(trainer.get("logger"), run.run_dir)
    trainer["callbacks"] = _callback_entries(trainer.get("callbacks"), run)
    cfg["trainer"] = trainer
    return cfg


@contextlib.contextmanager
def importable(workdir: Path):
    """Make ``workdir`` importable while parsing, as it is for the run (``PYTHONPATH``): configs name its classes."""
    entry = str(workdir)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def resolve_run_config(run: PlannedRun) -> str:
    """The run's complete config as YAML, validated by a second parse with the real CLI."""
    with importable(run.workdir):
        return _resolve_run_config(run)


def _resolve_run_config(run: PlannedRun) -> str:
    args: list[str] = []
    for config in run.configs:
        args += ["--config", str(config)]
    args += [f"--{key}={cli_value(value)}" for key, value in run.overrides.items()]
    where = f"run {run.name} ({' + '.join(c.name for c in run.configs)})"
    cfg = sweep_config(parse_with_cli(args, where), run)
    text = yaml.safe_dump(cfg, sort_keys=False)
    parse_with_cli(["--config", text], f"{where}, with the sweep's settings")
    header = (f"# avp sweep {run.sweep}: run {run.name} (seed {run.seed}), generated from\n"
              + "".join(f"#   {c}\n" for c in run.configs)
              + (f"#   overrides: {json.dumps(run.overrides)}\n" if run.overrides else "")
              + "# Re-run: python -m avp.sweep.run " + str(run.run_dir) + "\n")
    return header + text


def run_record(run: PlannedRun) -> dict[str, Any]:
    from avp.provenance import git_sha

    return {
        "name": run.name, "variant": run.variant, "seed": run.seed, "index": run.index, "sweep": run.sweep,
        "workdir": str(run.workdir), "configs": [str(c) for c in run.configs], "overrides": run.overrides,
        "resources": asdict(run.resources), "python": run.resources.python or sys.executable,
        # the code that runs is avp's checkout (the work folder may be anywhere, e.g. a scratch dir on a cluster)
        "git": git_sha(), "workdir_git": git_sha(run.workdir),
    }


def run_started(run_dir: Path) -> bool:
    return (run_dir / STATUS_FILE).exists() or any((run_dir / CHECKPOINT_SUBDIR).glob("*.ckpt"))


def write_run(run: PlannedRun, config_text: str) -> None:
    """Create the run folder: ``config.yaml`` + ``run.json``. A started run keeps its config: a change is refused."""
    existing = run.config_path.read_text() if run.config_path.exists() else None
    if existing is not None and existing != config_text and run_started(run.run_dir):
        old, new = existing.splitlines(), config_text.splitlines()
        diff = next((f"    was: {a}\n    now: {b}" for a, b in zip(old, new) if a != b), "    (length differs)")
        raise SpecError(f"run {run.name}: {run.config_path} was started with a different config\n{diff}\n"
                        "  use a new sweep name (or out:) for changed settings, or delete that run folder")
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if existing != config_text:
        atomic_write_text(run.config_path, config_text)
    if not (run.run_dir / RUN_FILE).exists():
        atomic_write_json(run.run_dir / RUN_FILE, run_record(run))


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}

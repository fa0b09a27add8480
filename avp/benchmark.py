"""``avp benchmark``: the paper's ablation at toy scale, every row trained on what it is tested on, over seeds.

One command (``make benchmark``) runs, each step skipped when an earlier run of the same configuration finished it:

1. ``avp data synth``, and of ``generator_data`` when the generator has a dataset of its own;
2. ``avp fit`` of the generator (one seed: its budget dominates; ``generator_seeds`` trains more);
3. for every row and seed, ``avp fit`` of a decoder: the shared decoder stage plus the row's ``delta`` and the seed;
4. ``avp eval`` of every decoder on the held-out subjects (the row's ``eval_points``), one folder per run;
5. point metrics of the held-out clouds against their teachers (Chamfer, F-score at each ``taus``, count ratio,
   binding agreement): generated (per seed), template points, and a resampled teacher (the noise floor);
6. ``results.json`` (``{"commit", "seeds", "rows": {ROW: {METRIC: {"mean", "std", "n"}}}}``), ``table.md``,
   learning curves (``curves.png``) and the decoders' validation renders, under ``--out`` and copied to ``--docs``.

Rows (``configs/benchmark.yaml``): ``full`` (generated points, position + AR features: the paper's model, its decoder
trained on a bank of clouds sampled from the frozen generator), ``ar_position_only`` (no AR features, no
cross-attention), ``ar_feature_only``, ``template`` ("FLAME position", LAM-style: template points, their position
encoding and cross-attention to the portrait, no generator), and two ceilings: ``teacher_points`` (the exact
centres of the splats that rendered the targets) and ``resampled_teacher`` (a new surface sampling of the same
subject: what a perfect generator could give).

``avp demo`` runs this benchmark with one decoder seed and avatarizes with the ``full`` row's decoder: the config
sections, the step machinery (:class:`Steps`) and the stage layers live here, and the demo imports them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from avp.atomic import atomic_write_json, atomic_write_text

EvalPoints = Literal["generated", "teacher", "resampled", "template"]
ROWS = ("full", "ar_position_only", "ar_feature_only", "template", "teacher_points", "resampled_teacher")
IMAGE_METRICS = {"psnr": "psnr", "psnr_mask": "psnr_masked", "ssim": "ssim", "ssim_mask": "ssim_masked"}
"""Benchmark name -> the evaluation runner's metric name."""


@dataclass
class BenchmarkData:
    """A synthetic dataset (``avp data synth``)."""

    subjects: int = 200
    """Subjects in total, split by the fractions below."""
    val_fraction: float = 0.04
    test_fraction: float = 0.04
    views: int = 6
    frames: int = 3
    size: int = 64
    """Frame size in pixels."""
    portrait_size: int = 112
    points: tuple[int, int] = (150, 300)
    """Teacher point count range per subject."""
    cameras: Literal["arc", "sphere"] = "arc"
    """Clip cameras: a NeRSemble-like frontal arc, or all around the head (``avp data synth --cameras``)."""
    hair_volume: float = 1.0
    """Hair depth off the scalp relative to the default look (``avp data synth --hair-volume``)."""
    portrait_points: int = 0
    """0: portraits rendered from the teacher; N: from an N-point sampling of the subject, sharp like a photo
    (``avp data synth --portrait-points``)."""
    seed: int = 0


@dataclass
class BenchmarkStage:
    """One ``avp fit``: configs applied left to right, then ``delta`` (LightningCLI keys), then the sizes below."""

    configs: list[str] = field(default_factory=list)
    max_steps: int = 100
    """Optimiser steps (the knob to turn with more time)."""
    batch_size: int = 2
    samples_per_epoch: int = 200
    """Samples per epoch (validation and checkpoints happen at epoch ends)."""
    delta: dict[str, Any] = field(default_factory=dict)


def eval_overrides(overrides: Sequence[str], seed: int) -> list[str]:
    """The protocol overrides of a decoder seed's evaluation: ``sampling.seed=<seed>``, then ``overrides`` (which
    keep theirs where they set it)."""
    own = any(item.partition("=")[0].strip() == "sampling.seed" for item in overrides)
    return list(overrides) if own else [f"sampling.seed={seed}", *overrides]


@dataclass
class BenchmarkEval:
    """``avp eval`` on the held-out subjects."""

    protocol: str = "configs/eval/self_reenactment.yaml"
    overrides: list[str] = field(default_factory=list)
    """Protocol overrides ``KEY=VALUE`` (recorded with the results). Each decoder seed's evaluation samples its
    clouds with ``sampling.seed`` set to that seed unless an override sets it: a generated row's seed spread then
    includes the draws, which move a row's held-out PSNR by up to 0.25 dB (EXPERIMENTS.md, exp26)."""
    limit: int | None = None


@dataclass
class BenchmarkSheet:
    """The contact sheet."""

    subjects: int = 4
    size: int = 128
    seed: int = 0


@dataclass
class BenchmarkRow:
    """One row of the table: a decoder trained with ``delta`` on top of the shared decoder stage."""

    eval_points: EvalPoints = "generated"
    """Points the row is evaluated on (``generated``: sampled from the portrait, the full pipeline)."""
    delta: dict[str, Any] = field(default_factory=dict)
    """LightningCLI keys on top of the shared decoder stage (e.g. ``model.init_args.decoder.inputs``)."""
    decoder_from: str | None = None
    """Evaluate the decoders of another row instead of training new ones (e.g. the resampled-teacher ceiling uses
    the teacher-points decoders: teacher and resampled teacher are draws of the same subject's point process)."""


@dataclass
class BenchmarkPoints:
    """Point metrics of the held-out clouds against their teachers."""

    taus: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.02])
    """F-score thresholds in metres."""
    split: str = "test"
    temperature: float | None = None
    """Sampling temperature (None: the evaluation protocol's override, else the decoder's)."""
    draws: int | None = None
    """Clouds merged per portrait (None: the evaluation protocol's override, else the decoder's)."""


@dataclass
class BenchmarkConfig:
    data: BenchmarkData = field(default_factory=BenchmarkData)
    """The dataset every decoder row trains on and every row is evaluated on (its held-out split)."""
    generator_data: BenchmarkData | None = None
    """A dataset for the generator alone (None: ``data``): more subjects for the stage that needs them, without a
    point bank over all of them. Its seed must differ from ``data``'s, so that the two share no subject (a synthetic
    subject is a function of the dataset seed and its index) and the held-out subjects stay unseen by both stages."""
    generator: BenchmarkStage = field(default_factory=BenchmarkStage)
    decoder: BenchmarkStage = field(default_factory=BenchmarkStage)
    """The decoder stage every row starts from."""
    rows: dict[str, BenchmarkRow] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Decoder seeds (``seed_everything`` and the module's sampling seed)."""
    generator_seeds: int = 1
    """Generators trained (seed 0 .. n-1); decoder seed ``k`` uses generator ``k % generator_seeds``."""
    eval: BenchmarkEval = field(default_factory=BenchmarkEval)
    points: BenchmarkPoints = field(default_factory=BenchmarkPoints)
    sheet: BenchmarkSheet = field(default_factory=BenchmarkSheet)
    """Contact sheet of the first seed's full and template decoders (``subjects: 0`` skips it)."""
    threads: int = 2
    """torch CPU threads of every step."""


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="avp benchmark", description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="benchmark config (configs/benchmark.yaml)")
    parser.add_argument("--out", default="benchmark", help="output folder (default benchmark/)")
    parser.add_argument("--docs", default=None, help="also copy results.json, table.md and figures here "
                                                     "(make benchmark: docs/benchmark)")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first instead of reusing finished steps")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the avp steps")
    parser.add_argument("--in-process", action="store_true",
                        help="run the steps in this process (seconds-sized test configs; not for real runs)")
    parser.add_class_arguments(BenchmarkConfig, None)
    return parser


def _build(cls: type, value: Any) -> Any:
    return value if isinstance(value, cls) else cls(**(value.as_dict() if hasattr(value, "as_dict") else value))


def sections_from_namespace(args: Any) -> dict[str, Any]:
    """The sections ``avp benchmark`` and ``avp demo`` share (all but the seeds), from a parsed namespace, as
    keyword arguments of their config dataclasses."""
    return {
        "data": _build(BenchmarkData, args.data),
        "generator_data": None if args.generator_data is None else _build(BenchmarkData, args.generator_data),
        "generator": _build(BenchmarkStage, args.generator), "decoder": _build(BenchmarkStage, args.decoder),
        "rows": {name: _build(BenchmarkRow, row) for name, row in (args.rows or {}).items()},
        "eval": _build(BenchmarkEval, args.eval), "points": _build(BenchmarkPoints, args.points),
        "sheet": _build(BenchmarkSheet, args.sheet), "threads": int(args.threads),
    }


def config_from_namespace(args: Any) -> BenchmarkConfig:
    """The parsed namespace as :class:`BenchmarkConfig` (unknown row names are refused, naming the valid ones)."""
    config = BenchmarkConfig(**sections_from_namespace(args), seeds=list(args.seeds),
                             generator_seeds=int(args.generator_seeds))
    check_config(config)
    return config


def check_config(config: BenchmarkConfig, prog: str = "avp benchmark") -> None:
    """Raise ``ValueError`` naming the key for what the benchmark cannot run (``prog`` starts the message)."""
    unknown = sorted(set(config.rows) - set(ROWS))
    if unknown:
        raise ValueError(f"{prog}: rows {unknown} are not benchmark rows; valid rows are {list(ROWS)}")
    if not config.rows:
        raise ValueError(f"{prog}: the config names no rows (rows: {{full: …, template: …}})")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"{prog}: seeds must be distinct and non-empty, got {config.seeds}")
    for name, row in config.rows.items():
        if row.decoder_from is not None and (row.decoder_from not in config.rows
                                             or config.rows[row.decoder_from].decoder_from is not None):
            raise ValueError(f"{prog}: rows.{name}.decoder_from {row.decoder_from!r} must name a row that "
                             f"trains its own decoders (rows: {list(config.rows)})")
    if config.generator_data is not None and config.generator_data.seed == config.data.seed:
        raise ValueError(f"{prog}: generator_data.seed must differ from data.seed ({config.data.seed}): with "
                         "the same seed the two datasets hold the same subjects, and the generator would train on "
                         "the held-out ones")
    if config.generator_seeds < 1:
        raise ValueError(f"{prog}: generator_seeds must be >= 1, got {config.generator_seeds}")


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of the finite values (sample std; 0 for one value; NaN mean for none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def budget_layer(stage: BenchmarkStage) -> dict[str, Any]:
    """A stage's step budget as a config layer."""
    return {"trainer": {"max_steps": stage.max_steps},
            "data": {"init_args": {"batch_size": stage.batch_size, "samples_per_epoch": stage.samples_per_epoch}}}


def write_layers(folder: Path, title: str, layers: Sequence[tuple[str, dict[str, Any]]]) -> list[Path]:
    """Each non-empty ``(name, config)`` layer as ``folder/<i>-<name>.yaml``, in order, the folder emptied first.

    Passed as ``--config`` files after a stage's base configs, LightningCLI (jsonargparse) applies them in order,
    later layers winning key by key: one merge mechanism, the one every ``avp fit`` uses.
    """
    if folder.exists():
        shutil.rmtree(folder)
    paths = []
    for name, layer in layers:
        if not layer:
            continue
        path = folder / f"{len(paths) + 1}-{name}.yaml"
        atomic_write_text(path, f"# written by {title}: layer {name}\n" + yaml.safe_dump(layer, sort_keys=False))
        paths.append(path)
    return paths


class Steps:
    """The step machinery: each step is an ``avp`` command (printed, so that it can be re-run by hand), skipped when
    an earlier run with the same payload finished it (a fingerprint of the payload under ``OUT/.done``), so an
    interrupted run resumes and a changed setting redoes the steps that depend on it."""

    def __init__(self, out: Path, python: str, threads: int, in_process: bool = False,
                 prog: str = "avp benchmark") -> None:
        """``in_process``: run the ``avp`` steps in this process instead of ``python -m avp.cli`` subprocesses (the
        seconds-sized test runs; a real run keeps each step in its own process and thread setting)."""
        self.out, self.python, self.threads, self.in_process, self.prog = out, python, threads, in_process, prog
        self.timings: dict[str, float] = {}
        """Seconds per step run by this object (steps found done are not timed)."""
        self.done_dir = out / ".done"

    def fingerprint(self, name: str, payload: Any) -> str:
        text = json.dumps({"step": name, "payload": payload}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def finished(self, name: str, payload: Any) -> bool:
        marker = self.done_dir / name
        return marker.is_file() and marker.read_text().strip() == self.fingerprint(name, payload)

    def mark(self, name: str, payload: Any) -> None:
        atomic_write_text(self.done_dir / name, self.fingerprint(name, payload) + "\n")

    def avp(self, title: str, args: list[str]) -> None:
        """Run ``python -m avp.cli ARGS``, streaming its output; fail loudly with the command on error."""
        command = [self.python, "-m", "avp.cli", *args]
        print(f"\n==> {title}\n    $ avp {' '.join(args)}", flush=True)
        if self.in_process:
            from avp.cli import main as avp_main

            try:
                code = avp_main(args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        else:
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
            code = subprocess.run(command, env=env, cwd=Path.cwd()).returncode
        if code != 0:
            raise RuntimeError(f"{self.prog}: step '{title}' failed (exit {code}): avp {' '.join(args)}")

    def step(self, name: str, title: str, payload: Any, fn: Callable[[], object]) -> None:
        if self.finished(name, payload):
            print(f"\n==> {title}: already done in {self.out} (delete {self.done_dir / name} to redo)", flush=True)
            return
        start = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - start, 1)
        self.mark(name, payload)


class Benchmark:
    def __init__(self, config: BenchmarkConfig, out: Path, python: str, in_process: bool = False,
                 prog: str = "avp benchmark") -> None:
        self.config, self.out = config, out
        self.steps = Steps(out, python, config.threads, in_process, prog)

    # ------------------------------------------------------------------------------------------------- paths
    @property
    def data_root(self) -> Path:
        return self.out / "data"

    @property
    def generator_data_root(self) -> Path:
        return self.data_root if self.config.generator_data is None else self.out / "generator_data"

    def generator_run(self, gseed: int) -> Path:
        return self.out / "runs" / "generator" / f"seed{gseed}"

    def generator_ckpt(self, gseed: int) -> Path:
        return self.generator_run(gseed) / "version_0" / "checkpoints" / "last.ckpt"

    def decoder_run(self, row: str, seed: int) -> Path:
        return self.out / "runs" / row / f"seed{seed}"

    def decoder_ckpt(self, row: str, seed: int) -> Path:
        source = self.config.rows[row].decoder_from or row
        return self.decoder_run(source, seed) / "version_0" / "checkpoints" / "last.ckpt"

    def eval_dir(self, row: str, seed: int) -> Path:
        return self.out / "eval" / row / f"seed{seed}"

    def generator_for(self, seed: int) -> int:
        return self.config.seeds.index(seed) % self.config.generator_seeds

    @property
    def draws_sheet(self) -> bool:
        """Whether :meth:`write` draws the contact sheet (it compares the full and template rows)."""
        return {"full", "template"} <= set(self.config.rows) and self.config.sheet.subjects > 0

    # ---------------------------------------------------------------------------------------------- payloads
    # what each step's output depends on: its fingerprint under .done, so a change redoes exactly the steps after it
    def data_payload(self) -> dict[str, Any]:
        c = self.config
        payload = dataclasses.asdict(c.data)
        if c.generator_data is not None:
            payload = {**payload, "generator_data": dataclasses.asdict(c.generator_data)}
        return payload

    def generator_payload(self) -> dict[str, Any]:
        c = self.config
        return {"generator": dataclasses.asdict(c.generator), "data": self.data_payload(),
                "generator_seeds": c.generator_seeds}

    def fit_payload(self, row: str, seed: int) -> dict[str, Any]:
        """The payload of the fit that trains ``row``'s decoder of ``seed`` (its ``decoder_from`` row's fit)."""
        c = self.config
        trained = c.rows[row].decoder_from or row
        return {"decoder": dataclasses.asdict(c.decoder), "row": dataclasses.asdict(c.rows[trained]), "seed": seed,
                **self.generator_payload()}

    # ------------------------------------------------------------------------------------------------- steps
    def synth(self, d: BenchmarkData, root: Path, title: str) -> None:
        """``avp data synth`` of the dataset ``d`` into ``root``."""
        self.steps.avp(title, [
            "data", "synth", "--out", str(root), "--subjects", str(d.subjects), "--views", str(d.views),
            "--frames", str(d.frames), "--size", str(d.size), "--portrait-size", str(d.portrait_size),
            "--points", str(d.points[0]), str(d.points[1]), "--val-fraction", str(d.val_fraction),
            "--test-fraction", str(d.test_fraction), "--seed", str(d.seed), "--cameras", d.cameras,
            "--hair-volume", str(d.hair_volume), "--portrait-points", str(d.portrait_points), "--overwrite"])

    def _write_layers(self, name: str, stage: BenchmarkStage, run_dir: Path, seed: int,
                      extra: Sequence[tuple[str, dict[str, Any]]]) -> list[Path]:
        run = {
            "seed_everything": seed,
            "data": {"init_args": {"root": str(self.data_root), "seed": seed}},
            "trainer": {"enable_progress_bar": True,
                        "logger": {"init_args": {"save_dir": str(run_dir.parent), "name": run_dir.name,
                                                 "version": 0}}},
        }
        return write_layers(self.out / "configs" / name, f"{self.steps.prog}: {name} on top of {stage.configs}",
                            [("run", run), ("delta", stage.delta), *extra, ("budget", budget_layer(stage))])

    def generator_layers(self, gseed: int) -> list[Path]:
        """The config layers the generator of ``gseed`` fits with after its base configs (written under
        ``OUT/configs``, so that the exact runs are on disk)."""
        return self._write_layers(f"generator-seed{gseed}", self.config.generator, self.generator_run(gseed), gseed, [
            ("generator", {"model": {"init_args": {"seed": gseed}},
                           "data": {"init_args": {"root": str(self.generator_data_root)}}})])

    def decoder_layers(self, row: str, seed: int) -> list[Path]:
        """The config layers ``row``'s decoder of ``seed`` fits with after the decoder stage's base configs."""
        c = self.config
        # one bank for every row and seed: its key digests the generator and the sampling settings
        generator = {"model": {"init_args": {
            "generator_ckpt": str(self.generator_ckpt(self.generator_for(seed))), "seed": seed,
            "bank_dir": str(self.out / "point_bank")}}}
        return self._write_layers(f"{row}-seed{seed}", c.decoder, self.decoder_run(row, seed), seed,
                                  [("row", c.rows[row].delta), ("generator", generator)])

    def _fit(self, title: str, stage: BenchmarkStage, layers: list[Path], run_dir: Path) -> None:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an unfinished earlier run: start clean, version_0
        args = ["fit"]
        for path in [*stage.configs, *map(str, layers)]:
            args += ["--config", path]
        self.steps.avp(title, args)

    def fit_generator(self, gseed: int) -> None:
        self._fit(f"fit the generator (seed {gseed})", self.config.generator, self.generator_layers(gseed),
                  self.generator_run(gseed))

    def fit_decoder(self, row: str, seed: int) -> None:
        self._fit(f"fit the decoder row {row} (seed {seed})", self.config.decoder, self.decoder_layers(row, seed),
                  self.decoder_run(row, seed))

    def evaluate(self, row: str, seed: int) -> None:
        e = self.config.eval
        points = self.config.rows[row].eval_points
        ckpt = str(self.decoder_ckpt(row, seed))
        args = ["eval", "--protocol", e.protocol, "--decoder", ckpt, "--data", str(self.data_root),
                "--out", str(self.eval_dir(row, seed)), "--overwrite", "--no-teacher", "--no-progress"]
        args += ["--points", "none", "--template-decoder", ckpt] if points == "template" else ["--points", points]
        for item in eval_overrides(e.overrides, seed):
            args += ["--override", item]
        if e.limit is not None:
            args += ["--limit", str(e.limit)]
        self.steps.avp(f"evaluate {row} (seed {seed})", args)

    def image_metrics(self, row: str, seed: int) -> dict[str, float]:
        """The row's image metrics from its evaluation's ``metrics.json`` (NaN where unavailable)."""
        record = json.loads((self.eval_dir(row, seed) / "metrics.json").read_text())
        [method] = record["methods"].values()
        out = {}
        for name, key in IMAGE_METRICS.items():
            value = method["metrics"].get(key)
            out[name] = float(value) if isinstance(value, (int, float)) else math.nan
        return out

    def point_metrics(self) -> dict[str, dict[str, list[float]]]:
        """Per row, per metric: one value per seed (generated rows) or one value (fixed point sets)."""
        from avp.benchmark_points import held_out_point_metrics

        c = self.config
        generated = [name for name, row in c.rows.items() if row.eval_points == "generated"]
        template = [name for name, row in c.rows.items() if row.eval_points == "template"]
        source_row = next(iter([*generated, *template]), None)
        if source_row is None:
            return {}
        per_seed = held_out_point_metrics(
            data_root=self.data_root, split=c.points.split,
            decoder_ckpts=[self.decoder_ckpt(source_row, s) for s in c.seeds], seeds=c.seeds, taus=c.points.taus,
            temperature=self._sampling("temperature", float), draws=self._sampling("draws", int))
        out: dict[str, dict[str, list[float]]] = {}
        for name, row in c.rows.items():  # the point sources are named as the rows' eval_points
            out[name] = {k: [m[row.eval_points][k] for m in per_seed] for k in per_seed[0][row.eval_points]}
        return out

    def _sampling(self, name: str, kind: type) -> Any:
        """The point metrics' sampling setting ``name``: the points section's, else the evaluation's override, else
        None (the decoder's), so that the clouds measured are the ones the evaluation rendered."""
        if getattr(self.config.points, name, None) is not None:
            return getattr(self.config.points, name)
        for item in self.config.eval.overrides:
            key, _, value = item.partition("=")
            if key.strip() == f"sampling.{name}":
                return kind(value)
        return None

    # ------------------------------------------------------------------------------------------------ driver
    def run(self, docs: Path | None = None) -> dict[str, Any]:
        c = self.config
        started = time.perf_counter()
        step = self.steps.step
        step("data", "synthetic dataset", dataclasses.asdict(c.data),
             lambda: self.synth(c.data, self.data_root, "synthetic dataset"))
        if c.generator_data is not None:
            gd = c.generator_data
            step("generator-data", "synthetic dataset of the generator", dataclasses.asdict(gd),
                 lambda: self.synth(gd, self.generator_data_root, "synthetic dataset of the generator"))
        for g in range(c.generator_seeds):
            payload = {"spec": dataclasses.asdict(c.generator), "data": self.data_payload(), "seed": g}
            step(f"generator-seed{g}", f"fit the generator (seed {g})", payload, lambda g=g: self.fit_generator(g))
        for row in c.rows:
            for seed in c.seeds:
                trained = c.rows[row].decoder_from or row
                payload = self.fit_payload(row, seed)
                step(f"{trained}-seed{seed}", f"fit {trained} (seed {seed})", payload,
                     lambda r=trained, s=seed: self.fit_decoder(r, s))
                payload = {**payload, "eval_points": c.rows[row].eval_points,
                           "eval_overrides": eval_overrides(c.eval.overrides, seed)}
                step(f"eval-{row}-seed{seed}", f"evaluate {row} (seed {seed})",
                     {"eval": dataclasses.asdict(c.eval), **payload}, lambda r=row, s=seed: self.evaluate(r, s))
        print("\n==> point metrics of the held-out clouds", flush=True)
        points = self.point_metrics()
        results = self.results(points)
        self.write(results, docs, time.perf_counter() - started)
        return results

    def results(self, points: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        from avp.provenance import git_sha

        c = self.config
        rows: dict[str, dict[str, Any]] = {}
        for row in c.rows:
            per_seed = [self.image_metrics(row, s) for s in c.seeds]
            metrics = {name: summarize([m[name] for m in per_seed]) for name in IMAGE_METRICS}
            for name, values in points.get(row, {}).items():
                metrics[name] = summarize(values)
            rows[row] = metrics
        gap = {}
        if {"full", "template", "resampled_teacher"} <= set(rows):
            for metric in ("psnr", "psnr_mask"):
                lo, hi = rows["template"][metric]["mean"], rows["resampled_teacher"][metric]["mean"]
                full = rows["full"][metric]["mean"]
                gap[metric] = (full - lo) / (hi - lo) if hi != lo else math.nan
        return {"commit": git_sha(), "seeds": list(c.seeds), "generator_seeds": c.generator_seeds,
                "rows": rows, "gap_closed": gap}

    def write(self, results: dict[str, Any], docs: Path | None, wall_s: float) -> None:
        from avp.benchmark_report import learning_curves, markdown_table

        results = {**results, "wall_s": round(wall_s, 1)}
        atomic_write_json(self.out / "results.json", results)
        atomic_write_text(self.out / "table.md", markdown_table(results))
        figures = learning_curves(self.out, list(self.config.rows), self.config.seeds,
                                  list(range(self.config.generator_seeds)))
        if self.draws_sheet:
            from avp.demo_sheet import contact_sheet

            s = self.config.sheet
            print("\n==> contact sheet", flush=True)
            seed = self.config.seeds[0]
            figures.append(contact_sheet(self.data_root, self.decoder_ckpt("full", seed),
                                         self.decoder_ckpt("template", seed), self.out / "contact_sheet.png",
                                         subjects=s.subjects, size=s.size, seed=s.seed, split=self.config.points.split))
        if docs is not None:
            docs.mkdir(parents=True, exist_ok=True)
            for path in [self.out / "results.json", self.out / "table.md", *figures]:
                shutil.copyfile(path, docs / path.name)
        print(f"\n==> results: {self.out / 'results.json'}\n    table: {self.out / 'table.md'}\n"
              f"    total wall time this run: {wall_s:.0f} s", flush=True)
        print(markdown_table(results), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = config_from_namespace(args)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        Benchmark(config, out, args.python, args.in_process).run(None if args.docs is None else Path(args.docs))
    except (RuntimeError, FileNotFoundError) as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0

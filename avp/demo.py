"""``avp demo``: the whole pipeline at toy scale, one command (``make demo``), every size in one config file.

Steps, each a real ``avp`` command run as a subprocess (the command lines are printed, so every step can be re-run
by hand), and each skipped when a previous run of the same configuration finished it:

1. ``avp data synth``: a synthetic multi-view dataset with train / val / test subjects;
2. ``avp fit`` of the generator, then of the decoder on its checkpoint, and of the template-points baseline;
3. ``avp eval`` on the held-out subjects: full model vs template points vs the teacher upper bound;
4. ``avp avatarize`` of a held-out synthetic portrait and of the scikit-image astronaut, driven by a built-in motion;
5. a summary: ``README.md`` with the results table, a contact sheet (portrait | generated points | renders | ground
   truth) and the TensorBoard command.

Stage configs are the repository's bases and CPU deltas plus the ``delta`` written in the demo config; the merged
deltas are written under ``OUT/configs/`` so that the exact runs are on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from avp.atomic import atomic_write_json, atomic_write_text


@dataclass
class DemoData:
    """The synthetic dataset (``avp data synth``)."""

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
    seed: int = 0


@dataclass
class DemoStage:
    """One ``avp fit``: configs applied left to right, then ``delta`` (LightningCLI keys), then the sizes below."""

    configs: list[str] = field(default_factory=list)
    max_steps: int = 100
    """Optimiser steps (the knob to turn with more time)."""
    batch_size: int = 2
    samples_per_epoch: int = 200
    """Samples per epoch (validation and checkpoints happen at epoch ends)."""
    delta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoEval:
    """``avp eval`` on the held-out subjects."""

    protocol: str = "configs/eval/self_reenactment.yaml"
    overrides: list[str] = field(default_factory=list)
    """Protocol overrides ``KEY=VALUE`` (recorded with the results)."""
    limit: int | None = None


@dataclass
class DemoAvatarize:
    """``avp avatarize`` of a held-out synthetic portrait and of a real photo."""

    motion: str = "talk"
    frames: int = 48
    orbit_frames: int = 36
    size: int = 128
    fit_steps: int = 200
    photo: str = "astronaut"
    """``astronaut`` (scikit-image's public-domain portrait) or a path to a photo."""


@dataclass
class DemoSheet:
    """The contact sheet."""

    subjects: int = 4
    size: int = 128
    seed: int = 0


@dataclass
class DemoConfig:
    data: DemoData = field(default_factory=DemoData)
    generator: DemoStage = field(default_factory=DemoStage)
    decoder: DemoStage = field(default_factory=DemoStage)
    template: DemoStage = field(default_factory=DemoStage)
    """The template-points baseline (the paper's "FLAME position" row)."""
    eval: DemoEval = field(default_factory=DemoEval)
    avatarize: DemoAvatarize = field(default_factory=DemoAvatarize)
    sheet: DemoSheet = field(default_factory=DemoSheet)
    threads: int = 2
    """torch CPU threads of every step."""


STAGES = ("generator", "decoder", "template")


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="avp demo", description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="demo config (configs/demo.yaml); may repeat")
    parser.add_argument("--out", default="demo", help="output folder (default demo/)")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first instead of reusing finished steps")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the avp steps")
    parser.add_class_arguments(DemoConfig, None)
    return parser


def config_from_namespace(args: Any) -> DemoConfig:
    """The parsed (and type-checked) namespace as :class:`DemoConfig`."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(DemoConfig):
        value = args[f.name]
        cls = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        kwargs[f.name] = cls(**value.as_dict()) if dataclasses.is_dataclass(cls) else value
    return DemoConfig(**kwargs)


class Demo:
    def __init__(self, config: DemoConfig, out: Path, python: str, in_process: bool = False) -> None:
        """``in_process``: run the ``avp`` steps in this process instead of ``python -m avp.cli`` subprocesses (the
        seconds-sized test runs; a real run keeps each step in its own process and thread setting)."""
        self.config, self.out, self.python, self.in_process = config, out, python, in_process
        self.timings: dict[str, float] = {}
        self.done_dir = out / ".done"

    # --------------------------------------------------------------------------------------------- machinery
    def _fingerprint(self, name: str, payload: Any) -> str:
        text = json.dumps({"step": name, "payload": payload}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _finished(self, name: str, payload: Any) -> bool:
        marker = self.done_dir / name
        return marker.is_file() and marker.read_text().strip() == self._fingerprint(name, payload)

    def _mark(self, name: str, payload: Any) -> None:
        atomic_write_text(self.done_dir / name, self._fingerprint(name, payload) + "\n")

    def _run(self, title: str, args: list[str]) -> None:
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
            env = {**os.environ, "OMP_NUM_THREADS": str(self.config.threads)}
            code = subprocess.run(command, env=env, cwd=Path.cwd()).returncode
        if code != 0:
            raise RuntimeError(f"avp demo: step '{title}' failed (exit {code}): avp {' '.join(args)}")

    def _step(self, name: str, title: str, payload: Any, fn: Any) -> None:
        if self._finished(name, payload):
            print(f"\n==> {title}: already done in {self.out} (delete {self.done_dir / name} to redo)", flush=True)
            return
        start = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - start, 1)
        self._mark(name, payload)

    # ------------------------------------------------------------------------------------------------- paths
    @property
    def data_root(self) -> Path:
        return self.out / "data"

    def run_dir(self, stage: str) -> Path:
        return self.out / "runs" / stage

    def checkpoint(self, stage: str) -> Path:
        return self.run_dir(stage) / "version_0" / "checkpoints" / "last.ckpt"

    # ------------------------------------------------------------------------------------------------- steps
    def synth(self, data: DemoData | None = None, root: Path | None = None,
              title: str = "1/6 synthetic dataset") -> None:
        """``avp data synth`` of ``data`` (default: the config's) into ``root`` (default: :attr:`data_root`)."""
        d = self.config.data if data is None else data
        root = self.data_root if root is None else root
        self._run(title, [
            "data", "synth", "--out", str(root), "--subjects", str(d.subjects), "--views", str(d.views),
            "--frames", str(d.frames), "--size", str(d.size), "--portrait-size", str(d.portrait_size),
            "--points", str(d.points[0]), str(d.points[1]), "--val-fraction", str(d.val_fraction),
            "--test-fraction", str(d.test_fraction), "--seed", str(d.seed), "--cameras", d.cameras,
            "--hair-volume", str(d.hair_volume), "--overwrite"])

    def stage_configs(self, stage: str) -> list[Path]:
        """The config layers ``stage`` fits with after its base configs: where it writes (data root, logger), the
        demo's delta, the step budget and the generator checkpoint (decoder stages)."""
        spec: DemoStage = getattr(self.config, stage)
        layers = [
            ("run", {"data": {"init_args": {"root": str(self.data_root)}},
                     "trainer": {"enable_progress_bar": True,
                                 "logger": {"init_args": {"save_dir": str(self.out / "runs"), "name": stage,
                                                          "version": 0}}}}),
            ("delta", spec.delta),
            ("budget", budget_layer(spec)),
        ]
        if stage != "generator":
            ckpt = str(self.checkpoint("generator"))
            layers.append(("generator", {"model": {"init_args": {"generator_ckpt": ckpt}}}))
        return write_layers(self.out / "configs" / stage, f"avp demo: the {stage} stage on top of {spec.configs}",
                            layers)

    def fit(self, stage: str, number: str) -> None:
        spec: DemoStage = getattr(self.config, stage)
        if self.run_dir(stage).exists():
            shutil.rmtree(self.run_dir(stage))  # an unfinished earlier run: start clean, version_0
        args = ["fit"]
        for path in [*spec.configs, *map(str, self.stage_configs(stage))]:
            args += ["--config", path]
        self._run(f"{number} fit the {stage}", args)

    def evaluate(self) -> None:
        e = self.config.eval
        args = ["eval", "--protocol", e.protocol, "--decoder", str(self.checkpoint("decoder")),
                "--generator", str(self.checkpoint("generator")), "--template-decoder",
                str(self.checkpoint("template")), "--points", "generated", "teacher", "--data", str(self.data_root),
                "--out", str(self.out / "eval"), "--overwrite"]
        for item in e.overrides:
            args += ["--override", item]
        if e.limit is not None:
            args += ["--limit", str(e.limit)]
        self._run("5/6 evaluate on held-out subjects", args)

    def portraits(self) -> dict[str, Path]:
        """The photos to avatarize: a held-out synthetic portrait and the configured real photo, as PNG files."""
        import numpy as np
        from PIL import Image

        from avp.data.reader import iter_raw_samples, resolve_shards
        from avp.data.schema import decode_sample
        from avp.driving import save_driving_npz
        from avp.types import HeadParams

        folder = self.out / "portraits"
        folder.mkdir(parents=True, exist_ok=True)
        shards, _ = resolve_shards(self.data_root, "test")
        raw = next(iter_raw_samples(shards[0]))
        sample = decode_sample(raw, shard=shards[0].name, decode_frames=False)
        synthetic = folder / f"{sample.meta['subject']}.png"
        Image.fromarray(np.ascontiguousarray(sample.portrait)).save(synthetic)
        head = HeadParams.from_dict({k: np.asarray(v)[None] for k, v in sample.portrait_head.items()})
        save_driving_npz(folder / f"{sample.meta['subject']}_head.npz", head, fps=25.0)
        photo = self.config.avatarize.photo
        if photo == "astronaut":
            from skimage import data

            real = folder / "astronaut.png"
            Image.fromarray(data.astronaut()).save(real)
        else:
            real = Path(photo)
            if not real.is_file():
                raise FileNotFoundError(f"avp demo: avatarize.photo {photo!r} is not a file")
        return {"synthetic": synthetic, "photo": real}

    def portrait_head(self, image: Path) -> Path | None:
        """The known head parameters written beside a synthetic portrait (None for photos)."""
        path = image.with_name(f"{image.stem}_head.npz")
        return path if path.is_file() else None

    def avatarize(self) -> None:
        a = self.config.avatarize
        for name, image in self.portraits().items():
            head = self.portrait_head(image)
            given = ["--portrait-head", str(head)] if head is not None else []
            self._run(f"6/6 avatarize the {name} portrait ({image.name})", [
                "avatarize", *given, "--image", str(image), "--out", str(self.out / "avatars" / name),
                "--decoder", str(self.checkpoint("decoder")), "--generator", str(self.checkpoint("generator")),
                "--drive", a.motion, "--frames", str(a.frames), "--orbit-frames", str(a.orbit_frames),
                "--size", str(a.size), "--fit-steps", str(a.fit_steps), "--seed", "0"])

    def sheet(self) -> Path:
        from avp.demo_sheet import contact_sheet

        s = self.config.sheet
        path = self.out / "contact_sheet.png"
        print("\n==> contact sheet", flush=True)
        contact_sheet(self.data_root, self.checkpoint("decoder"), self.checkpoint("template"), path,
                      subjects=s.subjects, size=s.size, seed=s.seed)
        return path

    # ------------------------------------------------------------------------------------------------ driver
    def run(self) -> Path:
        c = self.config
        started = time.perf_counter()
        self._step("data", "1/6 synthetic dataset", dataclasses.asdict(c.data), self.synth)
        previous: Any = dataclasses.asdict(c.data)
        for i, stage in enumerate(STAGES):
            payload = {"spec": dataclasses.asdict(getattr(c, stage)), "after": previous}
            self._step(stage, f"{i + 2}/6 fit the {stage}", payload, lambda s=stage, n=i + 2: self.fit(s, f"{n}/6"))
            previous = payload if stage == "generator" else previous
        trained = {s: dataclasses.asdict(getattr(c, s)) for s in STAGES} | {"data": dataclasses.asdict(c.data)}
        self._step("eval", "5/6 evaluate", {"eval": dataclasses.asdict(c.eval), **trained}, self.evaluate)
        self._step("avatarize", "6/6 avatarize", {"avatarize": dataclasses.asdict(c.avatarize), **trained},
                   self.avatarize)
        self._step("sheet", "contact sheet", {"sheet": dataclasses.asdict(c.sheet), **trained}, self.sheet)
        summary = self.summarize(time.perf_counter() - started)
        return summary

    def summarize(self, wall_s: float) -> Path:
        timings_file = self.out / "timings.json"
        timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
        timings.update(self.timings)
        timings["last_run_wall_s"] = round(wall_s, 1)
        atomic_write_json(timings_file, timings)
        table = (self.out / "eval" / "table.md").read_text() if (self.out / "eval" / "table.md").is_file() else ""
        outputs = sorted(p.relative_to(self.out).as_posix() for p in (self.out / "avatars").rglob("*")
                         if p.suffix in (".mp4", ".ply", ".json") and p.is_file())
        lines = [
            "# avp demo results", "",
            "The whole pipeline at toy scale on the CPU (`make demo`): synthetic subjects, the AR generator, the",
            "conditioned decoder, the template-points baseline, evaluation on held-out subjects and avatarization.",
            "", "## Held-out subjects (self-reenactment)", "", table, "",
            "## Contact sheet", "", "![contact sheet](contact_sheet.png)", "",
            "Columns: portrait | generated points | full model | template points | teacher fit | ground truth.", "",
            "## Avatars", "", *[f"- `{p}`" for p in outputs], "",
            "## TensorBoard", "", f"    tensorboard --logdir {self.out / 'runs'}", "",
            "## Step timings (seconds)", "", *[f"- {k}: {v}" for k, v in timings.items()], "",
        ]
        readme = self.out / "README.md"
        atomic_write_text(readme, "\n".join(lines))
        print(f"\n==> summary: {readme}\n    table: {self.out / 'eval' / 'table.md'}\n    contact sheet: "
              f"{self.out / 'contact_sheet.png'}\n    avatars: {self.out / 'avatars'}\n    logs: tensorboard --logdir "
              f"{self.out / 'runs'}\n    total wall time this run: {wall_s:.0f} s", flush=True)
        return readme


def budget_layer(stage: DemoStage) -> dict[str, Any]:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    demo_config = config_from_namespace(args)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        Demo(demo_config, out, args.python).run()
    except (RuntimeError, FileNotFoundError) as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0

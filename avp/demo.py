"""``avp demo``: the whole pipeline at toy scale, one command (``make demo``), every size in one config file.

The demo is ``avp benchmark`` with one decoder seed, then avatars. Steps, each a real ``avp`` command run as a
subprocess (the command lines are printed, so every step can be re-run by hand), and each skipped when a previous run
of the same configuration finished it:

1. the benchmark (:class:`avp.benchmark.Benchmark`, ``seeds: [seed]``): ``avp data synth`` of the dataset (and of
   the generator's own), ``avp fit`` of the generator, of one decoder per row (the full model, the ablations, the
   template-points baseline, the teacher ceilings), ``avp eval`` of every row on the held-out subjects, point metrics,
   ``results.json``, ``table.md``, learning curves and a contact sheet;
2. ``avp avatarize`` of a held-out synthetic portrait and of the scikit-image astronaut with the ``full`` row's
   decoder, driven by a built-in motion;
3. a summary: ``README.md`` with the benchmark's table, the contact sheet, the learning curves, the avatars and the
   TensorBoard command.

Stage configs are the repository's bases and CPU deltas plus the ``delta`` written in the config; the layers of every
run are written under ``OUT/configs/`` so that the exact runs are on disk.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avp.atomic import atomic_write_json, atomic_write_text
from avp.benchmark import (
    Benchmark,
    BenchmarkConfig,
    BenchmarkData,
    BenchmarkEval,
    BenchmarkPoints,
    BenchmarkRow,
    BenchmarkSheet,
    BenchmarkStage,
    check_config,
    sections_from_namespace,
)

AVATAR_ROW = "full"
"""The row whose decoder makes the avatars: the paper's model."""


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
class DemoConfig:
    """``avp benchmark``'s sections (``configs/benchmark.yaml``) with one decoder seed, plus the avatars."""

    data: BenchmarkData = field(default_factory=BenchmarkData)
    """The dataset every decoder row trains on; its held-out split is evaluated and gives the synthetic portrait."""
    generator_data: BenchmarkData | None = None
    """A dataset for the generator alone (None: ``data``); its seed must differ from ``data``'s."""
    generator: BenchmarkStage = field(default_factory=BenchmarkStage)
    decoder: BenchmarkStage = field(default_factory=BenchmarkStage)
    """The decoder stage every row starts from."""
    rows: dict[str, BenchmarkRow] = field(default_factory=dict)
    """The benchmark's rows; ``full`` is required (its decoder makes the avatars)."""
    seed: int = 0
    """The one decoder seed (``avp benchmark`` repeats every row over several)."""
    eval: BenchmarkEval = field(default_factory=BenchmarkEval)
    points: BenchmarkPoints = field(default_factory=BenchmarkPoints)
    sheet: BenchmarkSheet = field(default_factory=BenchmarkSheet)
    """Contact sheet of the full and template rows (``subjects: 0`` skips it)."""
    avatarize: DemoAvatarize = field(default_factory=DemoAvatarize)
    threads: int = 2
    """torch CPU threads of every step."""

    def benchmark(self) -> BenchmarkConfig:
        """The benchmark the demo runs: the same sections, ``seeds: [seed]`` and one generator."""
        return BenchmarkConfig(data=self.data, generator_data=self.generator_data, generator=self.generator,
                               decoder=self.decoder, rows=self.rows, seeds=[self.seed], generator_seeds=1,
                               eval=self.eval, points=self.points, sheet=self.sheet, threads=self.threads)


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="avp demo", description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="demo config (configs/demo.yaml); may repeat")
    parser.add_argument("--out", default="demo", help="output folder (default demo/)")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first instead of reusing finished steps")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the avp steps")
    parser.add_class_arguments(DemoConfig, None)
    return parser


def check_demo_config(config: DemoConfig) -> None:
    """Raise ``ValueError`` naming the key for what the demo cannot run: the benchmark's checks, and a ``full``
    row to avatarize with."""
    check_config(config.benchmark(), "avp demo")
    if AVATAR_ROW not in config.rows:
        raise ValueError(f"avp demo: rows.{AVATAR_ROW} is missing: the demo avatarizes the portraits with the "
                         f"{AVATAR_ROW} row's decoder (rows: {list(config.rows)})")


def config_from_namespace(args: Any) -> DemoConfig:
    """The parsed (and type-checked) namespace as :class:`DemoConfig`; what cannot run raises ``ValueError``."""
    avatarize = args.avatarize
    config = DemoConfig(**sections_from_namespace(args), seed=int(args.seed),
                        avatarize=avatarize if isinstance(avatarize, DemoAvatarize) else
                        DemoAvatarize(**avatarize.as_dict()))
    check_demo_config(config)
    return config


class Demo:
    def __init__(self, config: DemoConfig, out: Path, python: str, in_process: bool = False) -> None:
        """``in_process``: run the ``avp`` steps in this process instead of ``python -m avp.cli`` subprocesses (the
        seconds-sized test runs; a real run keeps each step in its own process and thread setting)."""
        check_demo_config(config)
        self.config, self.out = config, out
        self.benchmark = Benchmark(config.benchmark(), out, python, in_process, prog="avp demo")
        self.steps = self.benchmark.steps

    # ------------------------------------------------------------------------------------------------- paths
    @property
    def data_root(self) -> Path:
        return self.benchmark.data_root

    @property
    def decoder_ckpt(self) -> Path:
        """The checkpoint that makes the avatars: the full row's decoder of the demo's seed."""
        return self.benchmark.decoder_ckpt(AVATAR_ROW, self.config.seed)

    @property
    def generator_ckpt(self) -> Path:
        return self.benchmark.generator_ckpt(self.benchmark.generator_for(self.config.seed))

    # ------------------------------------------------------------------------------------------------- steps
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
            self.steps.avp(f"avatarize the {name} portrait ({image.name})", [
                "avatarize", *given, "--image", str(image), "--out", str(self.out / "avatars" / name),
                "--decoder", str(self.decoder_ckpt), "--generator", str(self.generator_ckpt),
                "--drive", a.motion, "--frames", str(a.frames), "--orbit-frames", str(a.orbit_frames),
                "--size", str(a.size), "--fit-steps", str(a.fit_steps), "--seed", "0"])

    # ------------------------------------------------------------------------------------------------ driver
    def run(self) -> Path:
        c = self.config
        started = time.perf_counter()
        self.benchmark.run()
        # the avatars depend on what the full row's decoder was trained with (generator and data included)
        payload = {"avatarize": dataclasses.asdict(c.avatarize),
                   "decoder": self.benchmark.fit_payload(AVATAR_ROW, c.seed)}
        self.steps.step("avatarize", f"avatarize the portraits with the {AVATAR_ROW} row", payload, self.avatarize)
        return self.summarize(time.perf_counter() - started)

    def summarize(self, wall_s: float) -> Path:
        timings_file = self.out / "timings.json"
        timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
        timings.update(self.steps.timings)
        timings["last_run_wall_s"] = round(wall_s, 1)
        atomic_write_json(timings_file, timings)
        table = (self.out / "table.md").read_text()
        outputs = sorted(p.relative_to(self.out).as_posix() for p in (self.out / "avatars").rglob("*")
                         if p.suffix in (".mp4", ".ply", ".json") and p.is_file())
        seed = self.config.seed
        sheet = (["![contact sheet](contact_sheet.png)", "",
                  "Columns: portrait | generated points | full model | template points | teacher fit | ground truth."]
                 if self.benchmark.draws_sheet else
                 ["Not drawn: it needs the `full` and `template` rows and `sheet.subjects` > 0."])
        lines = [
            "# avp demo results", "",
            "The whole pipeline at toy scale on the CPU (`make demo`): synthetic subjects, the AR generator, one",
            f"decoder per row of `avp benchmark` (decoder seed {seed}), evaluation on held-out subjects, and",
            f"avatarization with the `{AVATAR_ROW}` row's decoder.", "",
            "## Held-out subjects (self-reenactment)", "", table,
            f"Per-row evaluation reports: `eval/<row>/seed{seed}/`; the numbers: `results.json`.", "",
            "## Contact sheet", "", *sheet, "",
            "## Learning curves", "", "![learning curves](curves.png)", "",
            "## Avatars", "", *[f"- `{p}`" for p in outputs], "",
            "## TensorBoard", "", f"    tensorboard --logdir {self.out / 'runs'}", "",
            "## Step timings (seconds)", "", *[f"- {k}: {v}" for k, v in timings.items()], "",
        ]
        readme = self.out / "README.md"
        atomic_write_text(readme, "\n".join(lines))
        print(f"\n==> summary: {readme}\n    table: {self.out / 'table.md'}\n    contact sheet: "
              f"{self.out / 'contact_sheet.png'}\n    avatars: {self.out / 'avatars'}\n    logs: tensorboard --logdir "
              f"{self.out / 'runs'}\n    total wall time this run: {wall_s:.0f} s", flush=True)
        return readme


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        demo_config = config_from_namespace(args)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
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

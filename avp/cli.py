"""The ``avp`` console script: LightningCLI verbs plus the project's tool verbs.

``avp fit|validate|test|predict --config FILE [--config DELTA ...]`` is LightningCLI with the LightningModule and
LightningDataModule chosen by ``class_path`` in the config; configs apply left to right and dotted flags
(``--model.lr 3e-4``) override them. Tool verbs (``avp data …``, ``avp bench …``) are plain sub-programs registered
in :data:`TOOLS` and imported only when called, so ``avp --help`` stays fast.

``avp predict`` adds :class:`avp.lit.predict.PredictionWriter` unless the config lists a prediction writer: each
stage's predictions (generated clouds, avatars) land in ``<log_dir>/predictions/<subject>/``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

LIGHTNING_VERBS = {
    "fit": "train a stage (generator or decoder) from a config",
    "validate": "run the validation loop of a config/checkpoint",
    "test": "run the test loop (evaluation protocol) of a config/checkpoint",
    "predict": "write each stage's predictions (clouds / avatars) into the run folder",
}

# verb -> (module exposing ``main(argv) -> int``, one-line description)
TOOLS: dict[str, tuple[str, str]] = {
    "demo": ("avp.demo", "the whole pipeline at toy scale: the benchmark rows with one seed, then avatars (make demo)"),
    "benchmark": ("avp.benchmark", "the paper's ablation rows over seeds at toy scale, JSON + table (make benchmark)"),
    "bench": ("avp.bench", "benchmarks that print JSON (avp bench --list)"),
    "data": ("avp.data.cli", "build and check shard datasets: synth, convert, preview, validate, index"),
    "sweep": ("avp.sweep.cli", "run an ablation sweep (variants x seeds) locally or on SLURM"),
    "compare": ("avp.compare", "tables (md/csv) and plots comparing runs from their TensorBoard logs"),
    "avatarize": ("avp.avatarize", "photo -> avatar: driven and orbit mp4, GaussianAvatars and 3DGS ply exports"),
    "eval": ("avp.eval.cli", "evaluate a model on a protocol (configs/eval/): renders, metrics, report tables"),
    "view": ("avp.view.cli", "look at an avatar and drive it in the browser (viser; the view extra)"),
}


def _usage() -> str:
    lines = [
        "usage: avp VERB [options]   (avp VERB --help for a verb's options)",
        "",
        "training and evaluation (LightningCLI; --config FILE may repeat, later files override earlier ones):",
    ]
    lines += [f"  {verb:<10} {desc}" for verb, desc in LIGHTNING_VERBS.items()]
    lines += ["", "tools:"]
    lines += [f"  {verb:<10} {desc}" for verb, (_, desc) in TOOLS.items()]
    lines += ["", "example: avp fit --config configs/generator/base.yaml --config configs/debug/generator.yaml"]
    return "\n".join(lines)


def build_cli(args: Sequence[str] | None = None, *, run: bool = True, instantiate: bool = True) -> Any:
    """Construct the LightningCLI (``run=False`` parses a config without a subcommand, as the config tests do).

    With ``instantiate=False`` the config is parsed and validated but no model, data or trainer is built.
    """
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class AvpCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            if instantiate and self.subcommand == "fit":
                from avp.lit.resume import resolve_resume

                resolve_resume(self.config["fit"])  # same run folder, readable checkpoint (avp.lit.resume)

        def instantiate_classes(self) -> None:
            if instantiate:
                super().instantiate_classes()

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            from lightning.pytorch.callbacks import ProgressBar

            from avp.lit.progress import StepProgressBar

            # avp runs are step-limited: unless the config brings its own bar or turns bars off, the bar counts
            # steps towards max_steps with an ETA (and writes lines when stderr is not a terminal)
            config = self._get(self.config_init, "trainer", default={})
            listed = config.get("callbacks") or []
            listed = list(listed) if isinstance(listed, list) else [listed]
            if config.get("enable_progress_bar") is not False and "callbacks" not in kwargs \
                    and not any(isinstance(c, ProgressBar) for c in listed):
                kwargs["callbacks"] = [*listed, StepProgressBar()]
            trainer = super().instantiate_trainer(**kwargs)
            if self.subcommand == "predict":
                add_prediction_writer(trainer)
            if self.subcommand == "fit":
                add_run_summary(trainer)
                add_fault_tolerance(trainer)
            return trainer

    return AvpCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "avp", "description": "avp: AvatarPointillist training and evaluation"},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def ensure_callback(trainer: Any, kind: type, make: Callable[[], Any]) -> Any:
    """The trainer's first callback of type ``kind``; without one, ``make()`` appended. Returns the one in use."""
    configured = [cb for cb in trainer.callbacks if isinstance(cb, kind)]
    if configured:
        return configured[0]
    callback = make()
    trainer.callbacks.append(callback)
    return callback


def add_run_summary(trainer: Any) -> Any:
    """``avp fit`` registers the run's metrics, hyper-parameters and config in TensorBoard
    (:class:`avp.lit.tensorboard.RunSummary`) unless the config lists one. Returns the callback in use, or None
    without a TensorBoard logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from avp.lit.tensorboard import RunSummary

    if not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
        return None
    return ensure_callback(trainer, RunSummary, RunSummary)


def add_fault_tolerance(trainer: Any) -> Any:
    """``avp fit`` writes checkpoints atomically and, on resume, purges the TensorBoard events written after the
    checkpoint (:class:`avp.lit.callbacks.FaultTolerance`, no status file) unless the config lists one (sweeps do,
    with their status file). Returns the callback in use."""
    from avp.lit.callbacks import FaultTolerance

    # a fit without checkpointing stays without: no final last.ckpt appears
    final = bool(trainer.checkpoint_callbacks)
    return ensure_callback(trainer, FaultTolerance, partial(FaultTolerance, status_file=None, final_checkpoint=final))


def add_prediction_writer(trainer: Any) -> Any:
    """``avp predict`` writes its predictions: add :class:`avp.lit.predict.PredictionWriter` (``<log_dir>/predictions``)
    unless the config lists a prediction writer of its own. Returns the writer in use."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    from avp.lit.predict import PredictionWriter

    return ensure_callback(trainer, BasePredictionWriter, PredictionWriter)


def config_files(argv: Sequence[str]) -> list[str]:
    """The files given to ``--config`` / ``-c`` (either ``--config X`` or ``--config=X``)."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def yaml_error(path: str) -> str | None:
    """Why the YAML file ``path`` does not parse (naming the file, line and column), or None.

    jsonargparse reports a syntax error as ``in "<unicode string>"``, which does not say which of several
    ``--config`` files it is; every verb checks its config files first.
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        return None  # jsonargparse names a missing file itself
    try:
        yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        return f"config file {file}{where}: not valid YAML: {problem}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    verb = argv[0]
    for path in config_files(argv[1:]):
        problem = yaml_error(path)
        if problem is not None:
            print(f"avp {verb}: {problem}", file=sys.stderr)
            return 2
    if verb in TOOLS:
        module = importlib.import_module(TOOLS[verb][0])
        return int(module.main(argv[1:]) or 0)
    if verb in LIGHTNING_VERBS or verb.startswith("-"):
        # LightningCLI reads sys.argv itself when run from the shell (passing both triggers its warning)
        build_cli(None if from_command_line else argv)
        return 0
    print(f"avp: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

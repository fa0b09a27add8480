"""A tiny LightningModule + DataModule for testing the run machinery (sweeps, DDP, fault tolerance) cheaply.

Linear regression on fixed random data: fast, deterministic, and it learns, so a resumed or distributed run can be
checked against numbers rather than shapes. Lives in tests/ only; the real stages are in avp/lit/.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class ToyRegression(pl.LightningModule):
    """``y = x @ w``; logs ``train/loss`` (synchronised over ranks) and ``val/loss``.

    With ``record_dir`` every rank writes ``rank{r}.json`` at the end of training: per step the synchronised value it
    logged, its local (unsynchronised) loss, and its final weights, so tests can compare what each rank saw.
    ``step_delay`` (seconds) slows training down so a test can interrupt it mid-run. ``pause_at_step`` holds the
    process in ``on_train_batch_end`` at that global step, once (it creates ``pause_marker``; a resumed run with
    the marker present goes on): after the callbacks' hooks (a checkpoint of that step has just been saved) and
    before Lightning logs the step's metrics, the narrowest window in which a kill can separate a checkpoint from
    its logs. (A resumed ``avp fit`` takes the model's hyper-parameters from the checkpoint, not the config.)
    """

    def __init__(self, in_features: int = 8, lr: float = 0.05, step_delay: float = 0.0,
                 record_dir: str | None = None, pause_at_step: int | None = None,
                 pause_marker: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(in_features, 1)
        self._record: dict[str, list] = {"step": [], "synced": [], "local": []}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.hparams.step_delay:
            time.sleep(self.hparams.step_delay)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, sync_dist=True)
        self._record["step"].append(self.global_step)
        self._record["local"].append(float(loss.detach()))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._record["synced"].append(float(self.trainer.callback_metrics["train/loss"]))
        if (self.hparams.pause_at_step is not None and self.global_step == self.hparams.pause_at_step
                and not Path(self.hparams.pause_marker).exists()):
            Path(self.hparams.pause_marker).touch()
            time.sleep(600)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y), sync_dist=True)

    def on_train_end(self) -> None:
        if self.hparams.record_dir is None:
            return
        out = Path(self.hparams.record_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = dict(self._record, rank=self.global_rank, world_size=self.trainer.world_size, pid=os.getpid(),
                      weights=self.linear.weight.detach().flatten().tolist())
        (out / f"rank{self.global_rank}.json").write_text(json.dumps(record))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class ToyData(pl.LightningDataModule):
    """Fixed random regression data: ``n_train``/``n_val`` samples, ``y = x @ w_true + 0.01 noise``."""

    def __init__(self, in_features: int = 8, n_train: int = 256, n_val: int = 64, batch_size: int = 16,
                 seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        w_true = torch.randn(in_features, generator=generator)
        x = torch.randn(n_train + n_val, in_features, generator=generator)
        y = x @ w_true + 0.01 * torch.randn(n_train + n_val, generator=generator)
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train:], y[n_train:])
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def toy_config(*, max_steps: int = 40, model: dict | None = None, **trainer: object) -> dict:
    """A complete ``avp fit`` config for the toy module (quiet, logs every step); ``model``: its init args."""
    model_args = dict(model or {})
    return {
        "model": {"class_path": "tests.lit.toy.ToyRegression", "init_args": model_args},
        "data": {"class_path": "tests.lit.toy.ToyData"},
        "trainer": {"max_steps": max_steps, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, **trainer},
    }


def plan_sweep(spec: dict, directory: Path) -> list:
    """Write ``spec`` to ``directory/sweep.yaml`` and create its run folders; returns the planned runs."""
    import yaml

    from avp.sweep.spec import expand, load_spec, resolve_run_config, write_run

    path = Path(directory) / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = expand(load_spec(path, workdir=Path(__file__).resolve().parents[2]))
    for run in runs:
        write_run(run, resolve_run_config(run))
    return runs


def run_env() -> dict:
    """Environment for ``avp`` subprocesses of tests: the repository importable, two threads."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


class RecordMetrics(pl.Callback):
    """Every rank writes ``out_dir/rank{r}.json``: the ``keys`` of ``trainer.callback_metrics`` after each validation
    (sanity check excluded), keyed by the step they are logged at, so tests can compare what each rank logged."""

    def __init__(self, out_dir: str, keys: list[str]) -> None:
        self.out_dir = out_dir
        self.keys = keys
        self._record: dict[str, dict[str, float]] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        self._record[str(step)] = {k: float(trainer.callback_metrics[k]) for k in self.keys
                                   if k in trainer.callback_metrics}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"world_size": trainer.world_size, "pid": os.getpid(), "metrics": self._record}))


def add_callback(config_path: Path, class_path: str, **init_args: object) -> None:
    """Append a callback to a planned (not yet started) run's config."""
    import yaml

    header = "".join(line + "\n" for line in config_path.read_text().splitlines() if line.startswith("#"))
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["callbacks"].insert(0, {"class_path": class_path, "init_args": init_args})
    config_path.write_text(header + yaml.safe_dump(config, sort_keys=False))


def set_callback_args(config_path: Path, class_name: str, **init_args: object) -> None:
    """Update the init args of the callback whose class is ``class_name`` in a planned (not yet started) run."""
    import yaml

    header = "".join(line + "\n" for line in config_path.read_text().splitlines() if line.startswith("#"))
    config = yaml.safe_load(config_path.read_text())
    found = [c for c in config["trainer"]["callbacks"] if c["class_path"].rsplit(".", 1)[-1] == class_name]
    assert found, f"{config_path}: no {class_name} callback"
    for callback in found:
        callback.setdefault("init_args", {}).update(init_args)
    config_path.write_text(header + yaml.safe_dump(config, sort_keys=False))


def tiny_shards(base: Path) -> Path:
    """Tiny synthetic shards (6 subjects, 112 px portraits, 60-120 teacher points) for the real generator's
    debug config; made once per directory ``base`` (pass ``tmp_path_factory.getbasetemp()`` to share a session)."""
    root = Path(base) / "avp-synth-tiny"
    if not (root / "shards.json").exists():
        from avp.cli import main

        code = main(["data", "synth", "--out", str(root), "--subjects", "6", "--views", "1", "--frames", "1",
                     "--size", "32", "--portrait-size", "112", "--points", "60", "120", "--workers", "1"])
        assert code == 0 and (root / "shards.json").exists(), "avp data synth failed"
    return root


GENERATOR_CONFIGS = ["configs/generator/base.yaml", "configs/debug/generator.yaml"]
DECODER_CONFIGS = ["configs/decoder/base.yaml", "configs/debug/decoder.yaml"]

# CPU-minute sizes on top of the debug configs (flags of `avp fit`), for tests that only need real, tiny runs
FAST_GENERATOR_FLAGS = [
    "--trainer.max_steps=2", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--data.init_args.samples_per_epoch=4",  # 2 steps per epoch: one validation (with sampling) at step 2
    "--model.init_args.val_sample_subjects=1", "--model.init_args.val_sampling.max_points=24",
]
FAST_DECODER_FLAGS = [
    "--trainer.max_steps=2", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1", "--data.init_args.samples_per_epoch=2", "--data.init_args.image_size=32",
    "--model.init_args.sampling.max_points=24", "--model.init_args.template_points=64",
]


def run_cli(argv: list[str], cwd: Path | None = None):
    """``avp <argv>`` in this process (LightningCLI); returns the CLI object (``.trainer``, ``.model``).

    ``cwd``: working directory during the run (the shipped configs log to ``runs/`` relative to it)."""
    import sys

    from avp.cli import build_cli

    root = Path(__file__).resolve().parents[2]
    argv = [a if not a.startswith("configs/") else str(root / a) for a in argv]
    saved, here = sys.argv, Path.cwd()
    sys.argv = saved[:1]  # LightningCLI warns when it sees both ``args`` and command-line arguments
    if cwd is not None:
        Path(cwd).mkdir(parents=True, exist_ok=True)
        os.chdir(cwd)
    try:
        return build_cli(argv)
    finally:
        os.chdir(here)
        sys.argv = saved


def trained_generator(base: Path) -> Path:
    """``last.ckpt`` of a 2-step ``avp fit`` of the generator stage (its shipped base + debug configs) on
    :func:`tiny_shards`; made once per directory ``base`` (pass ``tmp_path_factory.getbasetemp()``)."""
    out = Path(base) / "avp-generator-tiny"
    ckpt = out / "runs" / "generator-debug" / "version_0" / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        shards = tiny_shards(base)
        out.mkdir(parents=True, exist_ok=True)
        run_cli(["fit", *(a for c in GENERATOR_CONFIGS for a in ("--config", c)), f"--data.init_args.root={shards}",
                 *FAST_GENERATOR_FLAGS], cwd=out)
        assert ckpt.exists(), f"the generator fit wrote no {ckpt}"
    return ckpt

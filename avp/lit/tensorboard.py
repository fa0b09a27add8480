"""What TensorBoard shows of a run besides its curves: the HParams tab with the run's real metrics, and the resolved
config as text.

Lightning registers only ``hp_metric = -1`` with the hyper-parameters (and lists its own ``_instantiator`` among
them), so the HParams tab compares runs on nothing. :class:`RunSummary` writes one hparams session at the start of
the fit whose metrics are the run's validation metrics (TensorBoard fills each column with the last value logged
under that tag), with the module's hyper-parameters flattened to dotted keys, plus the ``config.yaml`` LightningCLI
saved, as a text summary. Rank 0 only; other loggers are left alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

DEFAULT_METRICS = ("val/loss", "val/psnr", "val/ssim", "val/lpips", "val/chamfer", "val/fscore", "val/count_ratio",
                   "val/binding_agreement", "val/finished_fraction")
"""Registered when the module declares no ``hparam_metrics`` (a tag no run logs shows as an empty column)."""
PRIVATE_KEYS = ("_instantiator", "_class_path")


def flatten_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested hyper-parameters as ``{"decoder.width": 64, …}``: scalars kept, lists and None as text (what
    TensorBoard's HParams tab can show); Lightning's private keys dropped."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in tree.items():
        if key in PRIVATE_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def scalar_step(trainer: pl.Trainer) -> int:
    """The step Lightning files ``self.log`` values under at this moment (its logger connector's
    ``_batches_that_stepped``): in ``on_train_batch_end`` the batch's own scalars' step, during a validation inside a
    fit the ``val/*`` scalars' step, both ``trainer.global_step - 1`` there (the optimiser step is counted before,
    the logging step after). Anything logged by hand with this step (images, figures) sits on the same x as the curves
    of the same moment in TensorBoard; ``trainer.global_step`` would put it one step to the right."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(trainer.global_step if step is None else step)


class RunSummary(pl.Callback):
    """Registers the run's metrics and hyper-parameters in TensorBoard's HParams tab and its config as text."""

    def __init__(self, metrics: Sequence[str] | None = None, config_file: str = "config.yaml") -> None:
        """
        Args:
            metrics: tags shown in the HParams tab; None: the module's ``hparam_metrics``, else ``DEFAULT_METRICS``.
            config_file: the resolved config LightningCLI saves in the log directory (shown when present).
        """
        super().__init__()
        self.metrics = None if metrics is None else list(metrics)
        self.config_file = config_file

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        metrics = self.metrics or list(getattr(pl_module, "hparam_metrics", DEFAULT_METRICS))
        params = flatten_hparams(dict(pl_module.hparams))
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            # the summaries only, not log_hyperparams: it would also log a value for every metric at step 0
            writer = logger.experiment
            for summary in hparams(params, dict.fromkeys(metrics, 0.0)):
                writer._get_file_writer().add_summary(summary)
            config = Path(logger.log_dir) / self.config_file
            if config.is_file():
                writer.add_text("config", "```yaml\n" + config.read_text() + "\n```", global_step=trainer.global_step)
            writer.flush()

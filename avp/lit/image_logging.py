"""TensorBoard image grids of the decoder stage: per view a row ``target | render | error``, under a row of labels.

The module keeps the panels of its latest step in ``pl_module.last_visuals[stage]`` (``[V, 3 panels, 3, H, W]``,
the first sample's first frame: target, render, per-pixel mean absolute error in grey), detached but on its own
device; :class:`DecoderImageLogger` turns them into one grid image, logs it as ``train/images`` every
``every_n_steps`` training steps and as ``val/images`` after each validation epoch, and optionally writes the same
grid as a PNG under ``<log_dir>/images/`` (atomically) so it can be looked at without TensorBoard. The panels are
copied to the CPU (a device sync) only there: on rank 0, on the steps that log.

In TensorBoard an image sits at the step of the scalars logged at the same moment
(:func:`avp.lit.tensorboard.scalar_step`): ``val/images`` at the ``val/*`` scalars' step, ``train/images`` at its
batch's ``train/*`` step. The PNG names carry ``trainer.global_step`` (optimiser steps taken, as checkpoint names
do), one more than that::

    trainer:
      callbacks:
        - class_path: avp.lit.image_logging.DecoderImageLogger
          init_args: {every_n_steps: 100}
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from avp.atomic import atomic_write_bytes
from avp.lit.callbacks import local_log_dir
from avp.lit.tensorboard import scalar_step

PANEL_LABELS = ("target", "render", "|error|")
LABEL_HEIGHT = 12
"""Pixels of the label row above the grid (PIL's built-in bitmap font is ~11 px tall)."""


def label_row(labels: tuple[str, ...], panel_width: int, padding: int, width: int) -> Tensor:
    """``[3, LABEL_HEIGHT, width]`` white strip with each label above its column of a :func:`make_grid` grid."""
    from PIL import ImageDraw, ImageFont

    strip = Image.new("RGB", (width, LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for column, label in enumerate(labels):
        draw.text((padding + column * (panel_width + padding) + 1, 0), label, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1).float() / 255


def visual_grid(panels: Tensor, padding: int = 2, labels: tuple[str, ...] | None = PANEL_LABELS) -> Tensor:
    """``panels [V, P, 3, H, W]`` -> one image ``[3, H', W']``: a row per view, the ``P`` panels side by side, under a
    row naming the panels (``labels``, one per panel; None: no labels)."""
    if panels.ndim != 5 or panels.shape[2] != 3:
        raise ValueError(f"visual_grid: panels must be [V, P, 3, H, W], got {tuple(panels.shape)}")
    V, P = panels.shape[:2]
    grid = make_grid(panels.flatten(0, 1).float().clamp(0, 1), nrow=P, padding=padding, pad_value=1.0)
    if labels is None:
        return grid
    if len(labels) != P:
        raise ValueError(f"visual_grid: {len(labels)} labels for {P} panels")
    header = label_row(labels, panels.shape[-1], padding, grid.shape[-1]).to(grid)
    return torch.cat([header, grid], dim=1)


def host_panels(panels: Tensor) -> Tensor:
    """``panels`` on the CPU as float32: the one device-to-host copy of the previews, made only when they are logged."""
    return panels.detach().to("cpu", torch.float32)


def png_bytes(image: Tensor) -> bytes:
    """``image [3, H, W]`` in 0..1 -> PNG bytes."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class DecoderImageLogger(Callback):
    """Logs ``target | render | error`` grids of the decoder stage to TensorBoard (and PNG files).

    Args:
        every_n_steps: training grids every this many optimiser steps (0: none); validation grids every epoch.
        save_png: also write ``<log_dir>/images/{train,val}_step<step>.png``.
    """

    def __init__(self, every_n_steps: int = 200, save_png: bool = True) -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ValueError(f"DecoderImageLogger: every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.save_png = save_png
        self.written: list[Path] = []
        """PNG files written so far (this process)."""
        self._last_train_step = -1
        self._log_dir: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # ``trainer.log_dir`` is a collective (a broadcast of rank 0's folder): read it here, where every rank runs
        # the same hook, never behind a rank check (rank 0 alone would wait for, or crash, the other ranks)
        self._log_dir = Path(trainer.log_dir or trainer.default_root_dir)

    def log_dir(self, trainer: Trainer) -> Path:
        """Where the PNGs go (``<log_dir>/images``): the folder :meth:`setup` agreed on, else the logger's own
        (read without any collective)."""
        return self._log_dir if self._log_dir is not None else local_log_dir(trainer)

    def _emit(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        panels = getattr(pl_module, "last_visuals", {}).get(stage)
        # nothing below is a collective: ranks other than 0 may return here
        if panels is None or not trainer.is_global_zero:
            return
        grid = visual_grid(host_panels(panels))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(f"{stage}/images", grid, global_step=scalar_step(trainer))
        if self.save_png:
            path = self.log_dir(trainer) / "images" / f"{stage}_step{int(trainer.global_step):07d}.png"
            atomic_write_bytes(path, png_bytes(grid))
            self.written.append(path)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(trainer.global_step)  # already advanced past this batch's optimiser step
        if self.every_n_steps and step != self._last_train_step and (step == 1 or step % self.every_n_steps == 0):
            self._last_train_step = step  # once per optimiser step, also with gradient accumulation
            self._emit(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._emit(trainer, pl_module, "val")

"""Progress of a step-limited fit: the bar counts optimizer steps towards ``max_steps`` (with an ETA), not batches of
the current epoch; without a terminal (SLURM logs, ``nohup``) it writes a line now and then instead of a bar.

Lightning's default bar resets every epoch and, for a run limited by ``max_steps`` over an iterable stream, reads
"Epoch 4/-2": it says neither how far the run is nor how long it will take. avp runs are step-limited (``max_steps``
in every shipped config), so the overall step is what a user waits for.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_info


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"7 min 05 s"``, ``"2 h 03 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StepProgressBar(TQDMProgressBar):
    """A tqdm bar over the whole fit (``global_step / max_steps``, rate and ETA), validation bars as Lightning's.

    Without a terminal on stderr (or with ``lines=True``) the bar is off and a line like
    ``fit: step 120/1000 (12%), 2.1 steps/s, ETA 7 min 01 s, train/loss=3.21`` is logged (rank 0) every
    ``line_every_s`` seconds and at the end. Runs limited by epochs only (``max_steps = -1``) keep Lightning's bar.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, *, lines: bool | None = None,
                 line_every_s: float = 60.0) -> None:
        """
        Args:
            refresh_rate, process_position: as :class:`~lightning.pytorch.callbacks.TQDMProgressBar`.
            lines: periodic lines instead of a bar; None: when stderr is not a terminal.
            line_every_s: seconds between lines (0: every step).
        """
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.lines = (not sys.stderr.isatty()) if lines is None else lines
        self.line_every_s = line_every_s
        self._start_time = 0.0
        self._start_step = 0
        self._last_line = -float("inf")

    @staticmethod
    def _step_limited(trainer: pl.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_time, self._start_step = time.monotonic(), trainer.global_step
        if self.lines and self._step_limited(trainer):
            self.disable()  # before the bars are made: they are made disabled
        super().on_train_start(trainer, pl_module)
        if self._step_limited(trainer):
            self._span_the_fit(trainer)

    def _span_the_fit(self, trainer: pl.Trainer) -> None:
        bar = self.train_progress_bar
        if not bar.disable and bar.total != trainer.max_steps:  # once per fit: the bar spans every epoch
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step  # a resumed fit starts where its checkpoint is
            bar.refresh()

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._step_limited(trainer):
            super().on_train_epoch_start(trainer, *args)
            return
        self._span_the_fit(trainer)
        if not self.is_disabled:
            self.train_progress_bar.set_description(f"fit (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._step_limited(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        step = trainer.global_step
        if self.lines:
            now = time.monotonic()
            if now - self._last_line >= self.line_every_s or step >= trainer.max_steps:
                self._last_line = now
                rank_zero_info(self.progress_line(trainer, pl_module))
            return
        bar = self.train_progress_bar
        if not bar.disable and (step % self.refresh_rate == 0 or step >= trainer.max_steps):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._step_limited(trainer):
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.is_disabled:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def progress_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """One line of progress: step, percentage, rate, ETA and the bar's metrics."""
        step, total = trainer.global_step, trainer.max_steps
        done = step - self._start_step
        elapsed = time.monotonic() - self._start_time
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = format_duration((total - step) / rate) if rate > 0 else "?"
        metrics = ", ".join(f"{k}={v}" for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num")
        return (f"fit: step {step}/{total} ({100 * step / total:.0f}%), {rate:.2f} steps/s, ETA {eta}"
                + (f", {metrics}" if metrics else ""))

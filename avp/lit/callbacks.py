"""Callbacks of the run machinery: fault tolerance (atomic deferred checkpoints, consistent logs, SLURM requeue).

``avp sweep`` adds :class:`FaultTolerance` to every run it launches; any config can add it by hand::

    trainer:
      callbacks:
        - class_path: avp.lit.callbacks.FaultTolerance
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from avp.atomic import atomic_write_json
from avp.lit.checkpointing import AtomicCheckpointIO, remove_stale_temps
from avp.lit.ranks import rank_seed, rng_state, seed_rank, set_rng_state

log = logging.getLogger(__name__)

REQUEUE_CHECKPOINT = "last-requeue.ckpt"
LAST_CHECKPOINT = "last.ckpt"
RNG_STATES_KEY = "avp_rng_states"
"""Checkpoint key of the global RNG states, one entry per rank (:func:`avp.lit.ranks.rng_state`)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def local_log_dir(trainer: pl.Trainer) -> Path:
    """The run's log folder as ``trainer.log_dir`` names it (the first logger's ``log_dir``, or its ``save_dir``
    for other loggers, else ``default_root_dir``), read **without** ``trainer.log_dir``'s broadcast.

    ``trainer.log_dir`` is a collective: a hook that reads it on rank 0 only (after ``if not
    trainer.is_global_zero: return``) hangs or crashes the other ranks. Read it in a hook every rank runs (``setup``)
    when ranks must agree on the folder; this function is for code that already runs on one rank only.
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
        if folder is not None:
            return Path(folder)
    return Path(trainer.default_root_dir)


def write_tensorboard_purge(logger: TensorBoardLogger, step: int) -> None:
    """Tell TensorBoard that events at ``step`` and later in this log directory are superseded.

    This is the event ``SummaryWriter(purge_step=…)`` writes: TensorBoard (and ``EventAccumulator``) then drop the
    events a killed process wrote after the checkpoint it is resuming from, so every step appears once.
    """
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    writer = logger.experiment._get_file_writer()
    writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    writer.flush()


class ResumeCheckpoint(ModelCheckpoint):
    """Keeps exactly one checkpoint, ``<dirpath>/last.ckpt``, replaced (atomically, with ``FaultTolerance``) at
    every trigger: each ``every_n_train_steps`` steps, else at each epoch end / validation.

    ``ModelCheckpoint(save_top_k=0, save_last=True)`` does not do this (it writes ``last`` only when a top-k file
    was written in the same step), and a second unmonitored ``ModelCheckpoint`` would clash with a config's own in
    Lightning's callback state; this class has its own state key and never versions its file (no ``last-v1``).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None,
                 train_time_interval: Any = None, every_n_epochs: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename=LAST_CHECKPOINT.removesuffix(".ckpt"), monitor=None,
                         save_top_k=1, save_last=False, every_n_train_steps=every_n_train_steps,
                         train_time_interval=train_time_interval, every_n_epochs=every_n_epochs,
                         enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return f"Resume{super().state_key}"


class FaultTolerance(Callback):
    """Makes a fit resumable after any interruption with its checkpoints and logs consistent.

    - Installs :class:`~avp.lit.checkpointing.AtomicCheckpointIO` (unless a custom CheckpointIO is configured):
      every checkpoint is written to a temp file and renamed. Saves made inside the training loop are *deferred*
      until the next batch starts (or training ends), after the loggers are flushed, so a checkpoint never exists
      on disk before the metrics of the steps it contains.
    - On resume, writes a TensorBoard purge marker at the first step the resumed run logs: events the killed
      process wrote after its checkpoint disappear, so each step is logged once and the curve continues.
    - Always leaves ``last.ckpt`` of the final state in ``checkpoint_dir`` when training ends.
    - Keeps the random numbers training draws (windows, mesh samples, dropout) on course across a resume: every
      checkpoint holds each rank's global RNG states, and the resumed run puts them back right before its first
      training step (after the module's fit-start reseeding, :mod:`avp.lit.ranks`, which would otherwise replay the
      run's first draws). Validation inside a fit leaves the training stream as it found it, so whether a resumed
      run repeats or skips a validation changes nothing. Together with the DataModule's stream position, a resumed
      run's losses are those of the uninterrupted run, step for step (``docs/resume.md``).
    - Under SLURM (``requeue``): ``requeue_signal`` (send it with ``sbatch --signal=USR1@SECONDS``) only sets a flag;
      at the next batch boundary all ranks agree, save ``last-requeue.ckpt``, commit it once that batch is logged,
      then rank 0 runs ``scontrol requeue`` and every rank exits. The requeued job resumes from that checkpoint. This
      replaces Lightning's handler, which checkpoints inside the signal handler (mid-step, and in DDP possibly while
      another rank is inside a collective).
    - Rank 0 keeps ``status_file`` (``state``: running / finished / failed / interrupted / requeued, the global
      step, and one entry per attempt): ``avp sweep`` skips runs whose state is ``finished``.
    """

    def __init__(self, status_file: str | None = "status.json", checkpoint_dir: str | None = None,
                 final_checkpoint: bool = True, requeue: bool = True, requeue_signal: str = "SIGUSR1") -> None:
        """
        Args:
            status_file: JSON status of the run, relative to ``trainer.default_root_dir`` unless absolute (None: no
                status file, as for a plain ``avp fit``).
            checkpoint_dir: where ``last.ckpt`` / ``last-requeue.ckpt`` go; default: the ``dirpath`` of the first
                ``ResumeCheckpoint`` or ``ModelCheckpoint`` with ``save_last``, else ``<default_root_dir>/checkpoints``.
            final_checkpoint: save ``last.ckpt`` at the end of training if no checkpoint holds the final step yet.
            requeue: under SLURM, checkpoint and requeue on ``requeue_signal``.
            requeue_signal: signal name, as in ``sbatch --signal`` (``SIGUSR1``, ``USR1``, ``SIGUSR2``, …).
        """
        super().__init__()
        self.status_file = status_file
        self.checkpoint_dir = checkpoint_dir
        self.final_checkpoint = final_checkpoint
        self.requeue = requeue
        name = requeue_signal.upper()
        self.requeue_signal = getattr(signal.Signals, name if name.startswith("SIG") else f"SIG{name}")
        self._io: AtomicCheckpointIO | None = None
        self._signal_received = False
        self._requeue_armed = False
        self._requeue_now = False
        self._previous_handler: Any = None
        self._purge_pending = False
        self._status: dict[str, Any] = {}
        self._rng_to_restore: dict[str, Any] | None = None
        """This rank's RNG states from the checkpoint being resumed, put back before the first training step."""
        self._rng_training: dict[str, Any] | None = None
        """During a validation inside a fit: the training stream's states, put back when it ends."""

    # ------------------------------------------------------------------ paths and status
    def status_path(self, trainer: pl.Trainer) -> Path:
        path = Path(self.status_file)
        return path if path.is_absolute() else Path(trainer.default_root_dir) / path

    def resolve_checkpoint_dir(self, trainer: pl.Trainer) -> Path:
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and (cb.save_last or isinstance(cb, ResumeCheckpoint)) and cb.dirpath:
                return Path(cb.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    def _write_status(self, trainer: pl.Trainer, state: str, **attempt: Any) -> None:
        if not trainer.is_global_zero or self.status_file is None:
            return
        self._status["state"] = state
        self._status["global_step"] = int(trainer.global_step)
        self._status["updated"] = _now()
        if attempt and self._status.get("attempts"):
            self._status["attempts"][-1].update(attempt)
        atomic_write_json(self.status_path(trainer), self._status)

    def _start_attempt(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or self.status_file is None:
            return
        path = self.status_path(trainer)
        try:
            self._status = json.loads(path.read_text())
        except (OSError, ValueError):
            self._status = {}
        self._status.setdefault("attempts", []).append({
            "started": _now(),
            "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "cluster_environment": type(trainer._accelerator_connector.cluster_environment).__name__,
            "strategy": type(trainer.strategy).__name__,
        })
        self._write_status(trainer, "running")

    # ------------------------------------------------------------------ logs and commits
    def _flush_loggers(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()

    def _commit(self, trainer: pl.Trainer) -> None:
        if self._io is not None:
            self._io.commit()

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        io = trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            self._io = io
        elif type(io) is TorchCheckpointIO:
            self._io = AtomicCheckpointIO()
            trainer.strategy.checkpoint_io = self._io
        else:
            log.warning("FaultTolerance: custom CheckpointIO %s kept; checkpoints are not made atomic",
                        type(io).__name__)
        if self._io is not None:
            self._io.before_commit = lambda: self._flush_loggers(trainer)
        self._requeue_armed = bool(self.requeue and SLURMEnvironment.detect()
                                   and threading.current_thread() is threading.main_thread())
        if self._requeue_armed:
            # registered before the Trainer installs its own handlers, which then leaves this signal alone
            self._previous_handler = signal.signal(self.requeue_signal, self._on_requeue_signal)

    def _on_requeue_signal(self, signum: int, frame: Any) -> None:
        self._signal_received = True

    def _restore_signal(self) -> None:
        if self._requeue_armed and self._previous_handler is not None:
            signal.signal(self.requeue_signal, self._previous_handler)
            self._previous_handler = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            for directory in {self.resolve_checkpoint_dir(trainer), Path(trainer.default_root_dir)}:
                for stale in remove_stale_temps(directory):
                    log.info("FaultTolerance: removed the half-written checkpoint %s", stale)
        self._start_attempt(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._io is not None:
            self._io.defer = True
        self._purge_pending = trainer.ckpt_path is not None
        self._write_status(trainer, "running", resumed_step=int(trainer.global_step))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # the first step of a resumed run draws what the next one would have
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        # every metric of the previous step is logged by now: checkpoints saved since become visible
        self._commit(trainer)
        if self._purge_pending:
            self._purge_pending = False
            step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step the next log call uses
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        write_tensorboard_purge(logger, step)
        if self._requeue_now:
            self._do_requeue(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._requeue_armed or self._requeue_now:
            return
        if trainer.strategy.reduce_boolean_decision(self._signal_received, all=False):
            # same point in the loop as ModelCheckpoint's step saves; committed when the next batch starts
            trainer.save_checkpoint(self.resolve_checkpoint_dir(trainer) / REQUEUE_CHECKPOINT)
            self._requeue_now = True

    def _do_requeue(self, trainer: pl.Trainer) -> None:
        # scontrol requeue sends SIGTERM; Lightning's SIGTERM handler would start a collective inside the handler
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        trainer.strategy.barrier("avp-requeue")
        ok = True
        if trainer.is_global_zero:
            array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            ok = result.returncode == 0
            if ok:
                log.info("FaultTolerance: checkpointed at step %d and requeued SLURM job %s", trainer.global_step, job)
            else:
                log.error("FaultTolerance: scontrol requeue %s failed: %s", job, result.stderr.strip())
            self._write_status(trainer, "requeued" if ok else "interrupted", ended=_now(),
                               end_state="requeued" if ok else "requeue failed",
                               end_step=int(trainer.global_step))
        raise SystemExit(0)

    # ------------------------------------------------------------------ random streams
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # (Lightning isolates the sanity check)
            self._rng_training = rng_state()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng_training is not None:
            set_rng_state(self._rng_training)
            self._rng_training = None

    def _training_rng(self) -> dict[str, Any]:
        """The states the next training step of this rank starts from."""
        for pending in (self._rng_to_restore, self._rng_training):
            if pending is not None:
                return pending
        return rng_state()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        mine = self._training_rng()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank dumps the checkpoint (Lightning's save_checkpoint is collective); rank 0 writes all states
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, mine)
        else:
            states = [mine]
        checkpoint[RNG_STATES_KEY] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(RNG_STATES_KEY)
        if states is not None and len(states) == trainer.world_size:
            self._rng_to_restore = states[trainer.global_rank]
            return
        # an older checkpoint, or another number of ranks: fresh draws for this step, not the run's first ones again
        seed = rank_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)), int(checkpoint.get("global_step", 0)))
        seed_rank(trainer.global_rank, seed=seed)
        self._rng_to_restore = rng_state()
        log.warning("FaultTolerance: the checkpoint holds %s RNG states for %d rank(s); the random draws of the "
                    "resumed run are reseeded from (seed, step, rank) and differ from the interrupted run's",
                    "no" if states is None else len(states), trainer.world_size)

    # ------------------------------------------------------------------ end
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._commit(trainer)
        if self._io is not None:
            self._io.defer = False
        if self.final_checkpoint:
            last = self.resolve_checkpoint_dir(trainer) / LAST_CHECKPOINT
            saved = self._io.saved_steps.get(os.fspath(last)) if self._io is not None else None
            # only rank 0 writes (and knows what it wrote); every rank must agree, save_checkpoint is collective
            if trainer.strategy.broadcast(saved != trainer.global_step, src=0):
                trainer.save_checkpoint(last)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signal()
        self._write_status(trainer, "finished", ended=_now(), end_state="finished",
                           end_step=int(trainer.global_step))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_signal()
        # pending checkpoints are complete files; committing them after a flush keeps logs and state consistent
        self._commit(trainer)
        if self._requeue_now and isinstance(exception, SystemExit):
            return  # status written by _do_requeue
        interrupted = isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException"
        state = "interrupted" if interrupted else "failed"
        self._write_status(trainer, state, ended=_now(), end_state=state, end_step=int(trainer.global_step),
                           error=f"{type(exception).__name__}: {exception}")

"""``AvatarDataModule``: multi-view head clip shards -> :class:`avp.types.AvatarBatch` for both training stages.

The streaming logic lives in :mod:`avp.data.stream` (no Lightning); this module sizes the streams for DDP
(rank and world size are read here, in the main process, after the process group exists), builds the loaders,
checks the corruption budget, logs the skip counts and keeps the training stream's position in checkpoints. Each
loader yields ``len(loader)`` batches per epoch on every rank.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from torch.utils.data import DataLoader

from avp.data.collate import CorruptionMonitor
from avp.data.manifest import Manifest
from avp.data.reader import ShardRef, iter_raw_samples, resolve_shards
from avp.data.schema import decode_meta
from avp.data.stream import ClipStream, StreamConfig, distributed_info
from avp.types import AvatarBatch, CorruptionCounts

log = logging.getLogger(__name__)


class EpochLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ClipStream` that gives each pass its epoch (fresh shuffles each epoch, also
    with non-persistent workers) and feeds every batch through a :class:`CorruptionMonitor`.

    ``epoch`` is the epoch of the next pass and ``skip`` the batches of it to leave out (a run resumed mid-epoch):
    the DataModule saves the position in checkpoints and restores it, so a resumed run continues with the batch
    the interrupted one would have trained next. ``pass_epoch`` is the epoch of the pass last started (None before
    the first).

    Starting a pass draws nothing from the global torch RNG: the ``DataLoader`` draws its workers' base seed from
    a generator of its own, seeded per pass from ``(seed, epoch)`` (PyTorch's default draws it from the global
    RNG, so each epoch start, and the resumed run's extra one, would shift the random numbers training draws).
    """

    def __init__(self, dataset: ClipStream, *args: Any, monitor: CorruptionMonitor | None = None, epoch: int = 0,
                 skip: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, *args, **kwargs)
        self.monitor = monitor
        self.epoch = epoch
        self.skip = skip
        self.pass_epoch: int | None = None

    def __iter__(self) -> Iterator[AvatarBatch]:  # type: ignore[override]
        stream = self.dataset
        assert isinstance(stream, ClipStream)
        # in-process streams and fresh worker copies take the epoch (and the batches to skip) from here; persistent
        # workers got them with their copy of the stream at the first pass and count on from there, pass by pass, as
        # this counter does
        stream.epoch, stream.skip = self.epoch, self.skip
        self.pass_epoch = self.epoch
        self.epoch, self.skip = self.epoch + 1, 0
        if self.generator is not None:
            self.generator.manual_seed(zlib.crc32(repr(("loader", stream.cfg.seed, self.pass_epoch)).encode()))
        if self.monitor is not None:
            self.monitor.start_pass()
        for out in super().__iter__():
            if isinstance(out, CorruptionCounts):  # a pass without samples reports its skips alone
                if self.monitor is not None:
                    self.monitor.record(out)
                continue
            yield self.monitor.update(out) if self.monitor is not None else out
        if self.monitor is not None:
            self.monitor.finish_pass()


class AvatarDataModule(LightningDataModule):
    """Multi-view head clip shards for the generator and decoder stages.

    Args:
        root: a folder holding ``shards.json``, that file, or a glob/brace pattern of tars (``{split}`` in the
            pattern is replaced by the split name).
        train_split, val_split, test_split: split names in the manifest.
        batch_size: clips per batch (per rank).
        num_workers: DataLoader worker processes (each streams its own shards).
        frames_per_sample, views_per_sample: timesteps/cameras drawn at random per clip (deterministic per clip for
            validation/test); 0 skips decoding frames (the generator stage needs only portrait + teacher points).
        image_size: square size of the target frames (pad to square with the clip background, resize, adjust
            intrinsics); None keeps the stored size.
        shuffle_buffer: training sample shuffle buffer (shard order is shuffled too).
        samples_per_epoch: training samples per epoch over all ranks (default: the split's sample count); every rank
            yields ``max(1, samples_per_epoch // (world * workers * batch_size)) * workers`` full batches
            (``workers = max(num_workers, 1)``).
        skip_corrupt: skip and count corrupt samples and shards (``batch.corrupt.skipped`` by reason, running totals
            in ``batch.corrupt.total``/``samples_total``/``reasons_total``) instead of raising. A fit then logs the
            counts (:class:`CorruptSamplesLogger`, added unless the trainer has one): ``train/data_corrupt_skipped``
            and ``train/data_corrupt/<reason>``, ``val/data_corrupt_skipped`` per validation run.
        max_corrupt_fraction: with ``skip_corrupt``, fail once more than this fraction of the samples (of the larger
            of samples read and one epoch) was corrupt; checked on every loader (train, val, test, predict). An
            evaluation loader whose pass yields no sample at all fails too, naming the last errors.
        pin_memory, persistent_workers: as in ``torch.utils.data.DataLoader``.
        seed: drives shard order, the shuffle buffer and the frame/view draws.
        resample_teacher: training only, the probability that a sample's teacher is replaced by a fresh surface
            sampling of the same synthetic subject (built-in head only; an augmentation of ours for the generator:
            :attr:`avp.data.stream.StreamConfig.resample_teacher`).

    The training stream's position (the epoch of the pass, which with ``seed`` fixes the order, and the batches of
    it already trained) is saved in checkpoints (:meth:`state_dict`) and restored on resume: a resumed run continues
    at the batch the interrupted run would have trained next, also mid-epoch, instead of starting again at epoch
    0's order.
    """

    def __init__(self, root: str, *, train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 batch_size: int = 4, num_workers: int = 2, frames_per_sample: int = 1, views_per_sample: int = 4,
                 image_size: int | None = None, shuffle_buffer: int = 64, samples_per_epoch: int | None = None,
                 skip_corrupt: bool = False, max_corrupt_fraction: float = 0.01, pin_memory: bool = False,
                 persistent_workers: bool = False, seed: int = 0, resample_teacher: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if frames_per_sample < 0 or views_per_sample < 0:
            raise ValueError("frames_per_sample and views_per_sample must be >= 0")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0 <= resample_teacher <= 1:
            raise ValueError(f"data: resample_teacher must be a probability in [0, 1], got {resample_teacher}")
        self.root = root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch = samples_per_epoch
        self.max_corrupt_fraction = max_corrupt_fraction
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers and num_workers > 0
        self.config = StreamConfig(frames_per_sample=frames_per_sample, views_per_sample=views_per_sample,
                                   image_size=image_size, shuffle_buffer=shuffle_buffer, skip_corrupt=skip_corrupt,
                                   seed=seed, resample_teacher=resample_teacher)
        self._shards: dict[str, list[ShardRef]] = {}
        self._manifest: Manifest | None = None
        self._head_model: str | None = None
        self._train_loader: EpochLoader | None = None
        # the next training pass's epoch and the batches of it to skip until a train loader exists (then: its own)
        self._train_epoch, self._train_skip = 0, 0

    # ------------------------------------------------------------------------------------------------ shards
    def shards(self, which: str) -> list[ShardRef]:
        """The shards of ``which`` in ``train|val|test`` (resolved once)."""
        if which not in self._shards:
            refs, manifest = resolve_shards(self.root, self.splits[which])
            self._shards[which] = refs
            self._manifest = manifest or self._manifest
        return self._shards[which]

    @property
    def manifest(self) -> Manifest | None:
        if self._manifest is None and not self._shards:
            self.shards("train")
        return self._manifest

    @property
    def head_model_name(self) -> str:
        """The head model the shards were written with (a LightningModule checks it matches its own)."""
        if self._head_model is None:
            manifest = self.manifest
            if manifest is not None:
                self._head_model = manifest.head_model
            else:
                refs = next((r for w in ("train", "val", "test") for r in self._try_shards(w)), None)
                if refs is None:
                    raise FileNotFoundError(f"{self.root}: no shards to read the head model from")
                raw = next(iter_raw_samples(refs, verify=False))
                self._head_model = decode_meta(raw, shard=refs.name)["head_model"]
        return self._head_model

    def _try_shards(self, which: str) -> list[ShardRef]:
        try:
            return self.shards(which)
        except FileNotFoundError:
            return []

    def setup(self, stage: str | None = None) -> None:
        needs = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for which in needs.get(stage or "fit", ("train", "val")):
            if which == "val":
                self._try_shards(which)
            else:
                self.shards(which)
        self._add_corruption_logger()

    def _add_corruption_logger(self) -> None:
        """Skip counts go to the loggers (TensorBoard) by default, not only to WARNING lines: a trainer that skips
        corrupt data gets a :class:`CorruptSamplesLogger` unless its callbacks have one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not self.config.skip_corrupt:
            return
        if any(isinstance(cb, CorruptSamplesLogger) for cb in trainer.callbacks):
            return
        # before the checkpoint callbacks, which Lightning keeps last
        at = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)), len(trainer.callbacks))
        trainer.callbacks.insert(at, CorruptSamplesLogger())

    # ------------------------------------------------------------------------------------------ stream position
    def state_dict(self) -> dict[str, Any]:
        """The training stream's position, saved in checkpoints: the epoch of the pass to continue and how many of
        its batches were trained (0: the pass starts afresh), and the seed that, with the epoch, fixes the order."""
        epoch, batches = self._train_position()
        return {"train_epoch": int(epoch), "train_batches": int(batches), "seed": int(self.config.seed)}

    def _train_position(self) -> tuple[int, int]:
        loader = self._train_loader
        if loader is None:
            return self._train_epoch, self._train_skip
        done = self._batches_trained()
        trainer = self._trainer_or_none()
        total = trainer.num_training_batches if trainer is not None else math.inf
        if loader.pass_epoch is not None and done is not None and 0 < done < total:
            # mid-epoch: the batches of the pass in progress that the fit loop counts as done (the checkpoint of a
            # step holds that step's update; a resumed fit loop continues after them and so does the stream)
            return loader.pass_epoch, done
        return loader.epoch, loader.skip

    def _trainer_or_none(self) -> Trainer | None:
        return getattr(self, "trainer", None)

    def _batches_trained(self) -> int | None:
        """Batches of the current epoch the fit loop has trained (what it continues after on resume), or None."""
        trainer = self._trainer_or_none()
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        progress = getattr(loop, "batch_progress", None)
        return int(progress.current.processed) if progress is not None else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training stream where the checkpoint's run left it."""
        epoch = int(state_dict.get("train_epoch", 0))
        batches = int(state_dict.get("train_batches", 0))
        if epoch < 0:
            raise ValueError(f"AvatarDataModule state: train_epoch must be >= 0, got {epoch}")
        if batches < 0:
            raise ValueError(f"AvatarDataModule state: train_batches must be >= 0, got {batches}")
        saved_seed = state_dict.get("seed")
        if saved_seed is not None and int(saved_seed) != self.config.seed:
            log.warning("resuming with data seed %d, the checkpoint's run used %d: the sample order differs from "
                        "the interrupted run's", self.config.seed, int(saved_seed))
        self._train_epoch, self._train_skip = epoch, batches
        if self._train_loader is not None:
            self._train_loader.epoch, self._train_loader.skip = epoch, batches
            self._train_loader.pass_epoch = None

    # ------------------------------------------------------------------------------------------- dataloaders
    def stream(self, which: str) -> ClipStream:
        """The :class:`ClipStream` of ``which`` for this process's rank."""
        rank, world = distributed_info()
        train = which == "train"
        refs = self.shards(which)
        if not refs:
            have = self._manifest.splits if self._manifest is not None else []
            raise ValueError(f"{self.root}: no shards of split {self.splits[which]!r} (the manifest has {have})")
        return ClipStream(refs, train=train, batch_size=self.batch_size, config=self.config,
                          num_workers=self.num_workers, samples_per_epoch=self.samples_per_epoch if train else None,
                          rank=rank, world_size=world)

    def _loader(self, which: str, epoch: int = 0, skip: int = 0) -> EpochLoader:
        stream = self.stream(which)
        epoch_samples = stream.samples_per_epoch if stream.train else stream.total
        # an evaluation pass without a single sample would end quietly and switch validation (and every checkpoint
        # that tracks a val metric) off: it fails instead
        monitor = CorruptionMonitor(self.max_corrupt_fraction, epoch_samples, split=self.splits[which],
                                    require_samples=not stream.train)
        return EpochLoader(stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                           persistent_workers=self.persistent_workers, monitor=monitor, epoch=epoch, skip=skip)

    def train_dataloader(self) -> EpochLoader:
        # a reloaded loader (reload_dataloaders_every_n_epochs) continues the previous one's epochs
        loader = self._train_loader
        epoch, skip = (loader.epoch, loader.skip) if loader is not None else (self._train_epoch, self._train_skip)
        self._train_loader = self._loader("train", epoch=epoch, skip=skip)
        return self._train_loader

    def val_dataloader(self) -> EpochLoader | list:
        if not self._try_shards("val"):
            log.warning("%s: no %r shards; validation is skipped", self.root, self.splits["val"])
            return []
        return self._loader("val")

    def test_dataloader(self) -> EpochLoader:
        return self._loader("test")

    def predict_dataloader(self) -> EpochLoader:
        return self._loader("test")


class CorruptSamplesLogger(Callback):
    """Logs the corrupt samples that ``skip_corrupt`` skipped, as the batches carry them.

    Training: the running totals ``train/data_corrupt_skipped`` and ``train/data_corrupt/<reason>`` at every step.
    Validation: ``val/data_corrupt_skipped``, the skips of each validation run (summed over ranks). The
    :class:`AvatarDataModule` adds this callback to a trainer when ``skip_corrupt`` is on.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not isinstance(batch, AvatarBatch) or batch.corrupt.total is None:
            return
        metrics = {"train/data_corrupt_skipped": batch.corrupt.total}
        for reason, count in (getattr(batch.corrupt, "reasons_total", None) or {}).items():
            metrics[f"train/data_corrupt/{reason}"] = count
        for name, value in metrics.items():
            pl_module.log(name, float(value), on_step=True, on_epoch=False, batch_size=batch.batch_size)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not isinstance(batch, AvatarBatch):
            return
        pl_module.log("val/data_corrupt_skipped", float(batch.corrupt.skipped), on_step=False, on_epoch=True,
                      reduce_fx="sum", sync_dist=True, batch_size=batch.batch_size)

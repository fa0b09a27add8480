"""``AvatarDataModule``: multi-view head clip shards -> :class:`avp.types.AvatarBatch` for both training stages.

The streaming logic lives in :mod:`avp.data.stream` (no Lightning); this module sizes the streams for DDP
(rank and world size are read here, in the main process, after the process group exists), builds the loaders and
checks the corruption budget. Each loader yields ``len(loader)`` batches per epoch on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader

from avp.data.collate import CorruptionMonitor
from avp.data.manifest import Manifest
from avp.data.reader import ShardRef, iter_raw_samples, resolve_shards
from avp.data.schema import decode_meta
from avp.data.stream import ClipStream, StreamConfig, distributed_info
from avp.types import AvatarBatch

log = logging.getLogger(__name__)


class EpochLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ClipStream` that advances the stream's epoch (fresh shuffles each epoch,
    also with non-persistent workers) and feeds every batch through a :class:`CorruptionMonitor`."""

    def __init__(self, dataset: ClipStream, *args: Any, monitor: CorruptionMonitor | None = None,
                 **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.monitor = monitor
        self._epochs_started = 0

    def __iter__(self) -> Iterator[AvatarBatch]:  # type: ignore[override]
        stream = self.dataset
        assert isinstance(stream, ClipStream)
        if self.num_workers > 0 and not self.persistent_workers:
            # fresh worker copies each epoch: tell them which epoch it is (persistent or in-process streams count
            # their own iterations)
            stream.epoch = self._epochs_started
        self._epochs_started += 1
        for batch in super().__iter__():
            yield self.monitor.update(batch) if self.monitor is not None else batch


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
        skip_corrupt: skip and count corrupt samples (``batch.corrupt.skipped``, running totals in
            ``batch.corrupt.total``/``samples_total``) instead of raising.
        max_corrupt_fraction: with ``skip_corrupt``, fail once more than this fraction of the samples (of the larger
            of samples read and one epoch) was corrupt.
        pin_memory, persistent_workers: as in ``torch.utils.data.DataLoader``.
        seed: drives shard order, the shuffle buffer and the frame/view draws.
    """

    def __init__(self, root: str, *, train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 batch_size: int = 4, num_workers: int = 2, frames_per_sample: int = 1, views_per_sample: int = 4,
                 image_size: int | None = None, shuffle_buffer: int = 64, samples_per_epoch: int | None = None,
                 skip_corrupt: bool = False, max_corrupt_fraction: float = 0.01, pin_memory: bool = False,
                 persistent_workers: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if frames_per_sample < 0 or views_per_sample < 0:
            raise ValueError("frames_per_sample and views_per_sample must be >= 0")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root = root
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch = samples_per_epoch
        self.max_corrupt_fraction = max_corrupt_fraction
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers and num_workers > 0
        self.config = StreamConfig(frames_per_sample=frames_per_sample, views_per_sample=views_per_sample,
                                   image_size=image_size, shuffle_buffer=shuffle_buffer, skip_corrupt=skip_corrupt,
                                   seed=seed)
        self._shards: dict[str, list[ShardRef]] = {}
        self._manifest: Manifest | None = None
        self._head_model: str | None = None

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

    def _loader(self, which: str) -> EpochLoader:
        stream = self.stream(which)
        epoch_samples = stream.samples_per_epoch if stream.train else stream.total
        monitor = CorruptionMonitor(self.max_corrupt_fraction, epoch_samples)
        return EpochLoader(stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                           persistent_workers=self.persistent_workers, monitor=monitor)

    def train_dataloader(self) -> EpochLoader:
        return self._loader("train")

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
    """Logs the running corrupt-sample total that training batches carry as ``train/data_corrupt_skipped``."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if isinstance(batch, AvatarBatch) and batch.corrupt.total is not None:
            pl_module.log("train/data_corrupt_skipped", float(batch.corrupt.total), on_step=True,
                          on_epoch=False, batch_size=batch.batch_size)

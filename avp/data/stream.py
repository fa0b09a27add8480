"""The training and evaluation streams: shards -> :class:`avp.types.AvatarBatch` (no Lightning; ``avp.lit.data``
wraps them).

Stages, each a generator: shard list -> :func:`split_by_node` -> :func:`split_by_worker` -> raw samples (checksums
verified while streaming) -> webdataset's ``shuffle`` buffer (training, seeded) -> decode the drawn frames/views into a
typed :class:`~avp.data.item.ClipItem` (:mod:`avp.data.item`) -> :func:`~avp.data.collate.collate` with padding
(:mod:`avp.data.collate`). Why the splits are ours and not webdataset's stages: ``avp/data/README.md``.

Distribution. Training streams are epoch-sized and resampled: every (rank, worker) cycles over its own disjoint
share of the shards (or of the samples, when there are fewer shards than ranks x workers) in a fresh random order
per pass and emits exactly ``max(1, samples_per_epoch // (world * workers * batch_size))`` full batches per epoch
(drop-last rounding), so every DDP rank gets the same number of batches. Evaluation streams visit every sample once
in order (sample-level split); with several ranks each worker pads its share by wrapping around, as
``DistributedSampler`` does, so the batch counts match across ranks.

Corruption. Every sample is validated (values included, and against the manifest) before it becomes an item, and
every shard is checked (checksum, tar structure, duplicate keys) before its first sample is read
(:mod:`avp.data.reader`). With ``skip_corrupt=False`` (the default) any :class:`~avp.data.schema.ShardError`
propagates and names shard/key/member/field. With ``skip_corrupt=True`` the sample, or the whole shard, is skipped
and counted (a shard as the samples of it this worker would have read), by reason; each batch carries
``corrupt.skipped`` (skips since the worker's previous batch), ``corrupt.reasons`` and ``corrupt.errors`` (their
messages), which the DataModule totals (:class:`~avp.data.collate.CorruptionMonitor`) and turns into a failure
past ``max_corrupt_fraction``. The last batch of a pass carries every skip after it; a pass that yields no batch
yields its :class:`~avp.data.collate.SkipCounts` alone, so no skip goes uncounted.

Position. The training order is a function of ``(seed, epoch, rank, worker)`` only; :attr:`ClipStream.epoch` is the
epoch of the next pass and :attr:`ClipStream.skip` the batches of it to leave out (the DataModule saves both in
checkpoints, so a run resumed mid-epoch continues at the very batch the interrupted one would have trained next).
"""

from __future__ import annotations

import logging
import math
import os
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from avp.data.collate import SkipCounts, collate
from avp.data.item import ClipItem, sample_to_item
from avp.data.reader import ShardRef, count_samples, iter_raw_samples
from avp.data.schema import ShardError
from avp.types import AvatarBatch

log = logging.getLogger(__name__)


@dataclass
class StreamConfig:
    """Per-sample drawing and decoding options (the DataModule's arguments of the same names)."""

    frames_per_sample: int = 1
    """Timesteps drawn per clip (0: decode no frame)."""
    views_per_sample: int = 4
    """Cameras drawn per clip (0: decode no frame)."""
    image_size: int | None = None
    """Square output size of frames (pad to square with the clip's background, then resize); None keeps them."""
    shuffle_buffer: int = 64
    """Samples held by the training shuffle buffer (0 or 1: no sample shuffling)."""
    skip_corrupt: bool = False
    """Skip and count corrupt samples instead of raising."""
    seed: int = 0
    resample_teacher: float = 0.0
    """Training only: the probability that a sample's teacher is replaced by a fresh surface sampling of the same
    synthetic subject (:func:`avp.data.item.resampled_teacher`). An augmentation of ours for the generator on
    synthetic data: every visit of a subject shows another draw of its point distribution instead of the one draw
    the shard holds."""


def distributed_info() -> tuple[int, int]:
    """(rank, world size) from ``torch.distributed`` when initialised, else the ``RANK``/``WORLD_SIZE``
    environment (as webdataset reads it), else (0, 1). Called in the main process so that workers agree."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def split_by_node(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``r`` takes items ``r, r + world, ...`` (webdataset's ``split_by_node`` slicing, with the rank given)."""
    return list(islice(items, rank, None, world_size)) if world_size > 1 else list(items)


def split_by_worker(items: Sequence[Any], worker: int, num_workers: int) -> list[Any]:
    """Worker ``w`` takes items ``w, w + workers, ...`` (webdataset's ``split_by_worker`` slicing)."""
    return list(islice(items, worker, None, num_workers)) if num_workers > 1 else list(items)


class CorruptCounter:
    """Skip-and-count (``skip=True``) or raise (``skip=False``) on :class:`ShardError`."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.pending = 0
        self.messages: list[str] = []
        self.reasons: Counter[str] = Counter()
        self.total = 0

    def handle(self, error: ShardError, samples: int = 1) -> None:
        """Raise ``error``, or count ``samples`` skipped samples (a whole shard counts its samples)."""
        if not self.skip:
            raise error
        if samples <= 0:
            return
        self.pending += samples
        self.total += samples
        self.reasons[error.reason] += samples
        self.messages.append(str(error) if samples == 1 else f"{error} ({samples} samples skipped)")
        log.warning("skipping corrupt data (%s, %d sample%s): %s", error.reason, samples, "s"[:samples != 1], error)

    def take(self) -> SkipCounts:
        """The skips since the previous call (what the next batch carries), and start counting anew."""
        counts = SkipCounts(skipped=self.pending, errors=self.messages, reasons=dict(self.reasons))
        self.pending, self.messages, self.reasons = 0, [], Counter()
        return counts


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


def _drop(items: Iterator[ClipItem], n: int) -> Iterator[ClipItem]:
    """``items`` without its first ``n`` (drawn and decoded all the same: what comes after them is unchanged)."""
    for i, item in enumerate(items):
        if i >= n:
            yield item


class ClipStream(IterableDataset):
    """Batches of one split (an ``IterableDataset`` yielding :class:`AvatarBatch`; use ``batch_size=None``).

    ``rank``/``world_size`` are fixed when the stream is built (in the main process); worker identity comes from
    ``torch.utils.data.get_worker_info()``. ``num_workers`` must equal the DataLoader's (it sizes the epoch). A pass
    whose samples were all skipped yields one :class:`~avp.data.collate.SkipCounts` instead of batches.
    """

    def __init__(self, shards: Sequence[ShardRef], *, train: bool, batch_size: int, config: StreamConfig,
                 num_workers: int = 0, samples_per_epoch: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        if not shards:
            raise ValueError("ClipStream: no shards")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shards = list(shards)
        self.train, self.batch_size, self.cfg = train, batch_size, config
        self.num_workers = max(num_workers, 0)
        self.rank, self.world_size = rank, world_size
        self.counts = [self._count(s) for s in self.shards]
        self.offsets = [sum(self.counts[:i]) for i in range(len(self.counts))]
        """Global index of each shard's first sample (sample-level splits and evaluation order)."""
        self.total = sum(self.counts)
        if self.total == 0:
            raise ValueError(f"ClipStream: the shards hold no samples ({[s.name for s in self.shards]})")
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else self.total
        self._expects = {ref.name: ref.expect for ref in self.shards}
        self.epoch = 0
        """The epoch of the next pass: it seeds the training order (each pass counts it up)."""
        self.skip = 0
        """Training: batches (of this rank, over all its workers) the next pass leaves out at its start, to resume
        mid-epoch; the pass draws them as usual (same order and random draws after them) but does not yield them.
        Reset to 0 when the pass starts."""

    def _count(self, ref: ShardRef) -> int:
        try:
            return count_samples(ref)
        except ShardError as e:
            if not self.cfg.skip_corrupt:
                raise
            # unreadable headers: the reader refuses the shard and counts it as one skipped sample
            log.warning("cannot count the samples of a corrupt shard: %s", e)
            return 0

    # ---- sizing
    @property
    def _slots(self) -> int:
        return max(self.num_workers, 1)

    def _train_quota(self) -> int:
        per = self.samples_per_epoch // (self.world_size * self._slots * self.batch_size)
        return max(per, 1) * self.batch_size

    def _eval_indices(self, worker: int) -> list[int]:
        """Global sample indices this (rank, worker) evaluates, in order (with wrap-around padding if DDP)."""
        k, stride = self.rank * self._slots + worker, self.world_size * self._slots
        if self.world_size == 1:
            return list(range(worker, self.total, stride))
        quota = math.ceil(self.total / stride)
        return [(k + i * stride) % self.total for i in range(quota)]

    def batches_per_worker(self, worker: int = 0) -> int:
        if self.train:
            return self._train_quota() // self.batch_size
        return math.ceil(len(self._eval_indices(worker)) / self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (over all its workers)."""
        return sum(self.batches_per_worker(w) for w in range(self._slots))

    # ---- iteration
    def __iter__(self) -> Iterator[AvatarBatch | SkipCounts]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers != self._slots:
            raise RuntimeError(f"ClipStream was built for {self._slots} worker slots but runs in {n_workers}; "
                               "pass the DataLoader's num_workers")
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        counter = CorruptCounter(self.cfg.skip_corrupt)
        if not self.train:
            items = self._eval_items(worker, counter)
        elif skip == 0:
            items = self._train_items(worker, epoch, counter)
        else:
            # the loader takes batches from its workers in turn, starting with worker 0: batch j of a full pass is
            # batch j // slots of slot j % slots. Resumed after `skip` batches, batch j of this pass is batch
            # skip + j of the full one, so worker w plays slot (skip + w) % slots from that slot's batch
            # (skip + w) // slots on: the same batches in the same order as the rest of the uninterrupted pass
            slot, done = (worker + skip) % self._slots, (worker + skip) // self._slots
            items = _drop(self._train_items(slot, epoch, counter), done * self.batch_size)
        # one full batch is held back until the next one is complete (or the pass ends), so that the last batch
        # carries the skips that come after its samples
        held: list[ClipItem] | None = None
        batch: list[ClipItem] = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                if held is not None:
                    yield collate(held, corrupt=counter.take())
                held, batch = batch, []
        for rest in (held, batch):
            if rest:
                yield collate(rest, corrupt=counter.take())
        if held is None and not batch:
            yield counter.take()  # no sample at all: the skips still reach the monitor

    def _raw(self, order: Sequence[int], counter: CorruptCounter,
             mine: Callable[[int], int] = lambda i: 1) -> Iterator[tuple[int, dict[str, bytes]]]:
        """(global index, raw sample) of the shards ``order`` (indices into ``self.shards``) for the samples that
        ``mine(index)`` claims (how many times); a refused shard is counted as the samples of it that were mine."""
        for s in order:
            ref, offset = self.shards[s], self.offsets[s]
            index = offset
            try:
                for raw in iter_raw_samples(ref):
                    if mine(index):
                        yield index, raw
                    index += 1
            except ShardError as e:
                rest = range(index, offset + max(self.counts[s], index - offset + 1))
                counter.handle(e, samples=sum(mine(i) for i in rest))

    def _decode(self, raw: dict[str, bytes], rng: np.random.Generator, counter: CorruptCounter,
                samples: int = 1, teacher_rng: np.random.Generator | None = None) -> ClipItem | None:
        """The item of ``raw``, or None when it is corrupt (counted as ``samples`` skips: the times it was wanted).
        ``teacher_rng``: the training stream's draws of resampled teachers (None: the shard's teacher)."""
        shard = raw.get("__shard__", b"").decode()
        try:
            return sample_to_item(raw, rng, frames_per_sample=self.cfg.frames_per_sample,
                                  views_per_sample=self.cfg.views_per_sample, image_size=self.cfg.image_size,
                                  expect=self._expects.get(shard),
                                  resample_teacher=self.cfg.resample_teacher if teacher_rng is not None else 0.0,
                                  teacher_rng=teacher_rng)
        except ShardError as e:
            counter.handle(e, samples=samples)
            return None

    def _train_items(self, worker: int, epoch: int, counter: CorruptCounter) -> Iterator[ClipItem]:
        slots = self.world_size * self._slots
        shard_level = len(self.shards) >= slots
        everything = list(range(len(self.shards)))
        if shard_level:
            mine = split_by_worker(split_by_node(everything, self.rank, self.world_size), worker, self._slots)
            claim: Callable[[int], int] = lambda i: 1
        else:
            mine = everything
            slot = self.rank * self._slots + worker
            claim = lambda i: int(i % slots == slot)
        seed = _seed(self.cfg.seed, epoch, self.rank, worker)
        rng_py = random.Random(seed)
        rng = np.random.default_rng(seed)
        teacher_rng = np.random.default_rng(_seed(self.cfg.seed, epoch, self.rank, worker, "teacher"))
        quota = self._train_quota()
        produced = 0
        while produced < quota:
            order = list(mine)
            rng_py.shuffle(order)  # sample-level splits read every shard in order, but draw the same numbers
            stream: Iterator[dict[str, bytes]] = (raw for _, raw in self._raw(order if shard_level else everything,
                                                                              counter, claim))
            if self.cfg.shuffle_buffer > 1:
                # webdataset's shuffle stage with our seeded rng (a full buffer before the first draw)
                buffer = self.cfg.shuffle_buffer
                stream = wds.shuffle(bufsize=buffer, initial=buffer, rng=rng_py)(stream)
            got_any = False
            for raw in stream:
                item = self._decode(raw, rng, counter, teacher_rng=teacher_rng)
                if item is None:
                    continue
                got_any = True
                yield item
                produced += 1
                if produced >= quota:
                    return
            if not got_any:
                raise RuntimeError(f"rank {self.rank} worker {worker}: a full pass over its shards "
                                   f"{[self.shards[i].name for i in mine]} gave no readable sample "
                                   f"({counter.total} corrupt)")

    def _eval_items(self, worker: int, counter: CorruptCounter) -> Iterator[ClipItem]:
        wanted = Counter(self._eval_indices(worker))
        if not wanted:
            return
        order = sorted(wanted)
        out: dict[int, ClipItem] = {}
        for index, raw in self._raw(range(len(self.shards)), counter, lambda i: wanted.get(i, 0)):
            rng = np.random.default_rng(_seed(self.cfg.seed, raw["__key__"].decode()))
            item = self._decode(raw, rng, counter, samples=wanted[index])
            if item is not None:
                out[index] = item
            # samples arrive in global order: every wanted index up to this one is final (a refused shard's never
            # arrive)
            while order and order[0] <= index:
                i = order.pop(0)
                for _ in range(wanted[i] if i in out else 0):
                    yield out[i]
                out.pop(i, None)
            if not order:
                return


__all__ = ["ClipStream", "CorruptCounter", "StreamConfig", "distributed_info", "split_by_node", "split_by_worker"]

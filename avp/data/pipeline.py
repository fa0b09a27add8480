"""The streaming pipeline from shards to :class:`avp.types.AvatarBatch` (no Lightning; ``avp.lit.data`` wraps it).

Stages, each a generator: shard list -> :func:`split_by_node` -> :func:`split_by_worker` -> raw samples (checksums
verified while streaming) -> webdataset's ``shuffle`` buffer (training, seeded) -> decode the drawn frames/views into a
typed :class:`ClipItem` -> :func:`collate` with padding. Why the splits are ours and not webdataset's stages:
``avp/data/README.md``.

Distribution. Training streams are epoch-sized and resampled: every (rank, worker) cycles over its own disjoint
share of the shards (or of the samples, when there are fewer shards than ranks x workers) in a fresh random order
per pass and emits exactly ``max(1, samples_per_epoch // (world * workers * batch_size))`` full batches per epoch
(drop-last rounding), so every DDP rank gets the same number of batches. Evaluation streams visit every sample once
in order (sample-level split); with several ranks each worker pads its share by wrapping around, as
``DistributedSampler`` does, so the batch counts match across ranks.

Corruption. With ``skip_corrupt=False`` (the default) any :class:`~avp.data.schema.ShardError` propagates and
names shard/key/member. With ``skip_corrupt=True`` the sample (or the rest of a truncated shard) is skipped and
counted; each batch carries ``extras["corrupt_skipped"]`` (skips since the worker's previous batch) and
``extras["corrupt_errors"]`` (their messages), which the DataModule totals and turns into a failure past
``max_corrupt_fraction``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from avp.data.reader import ShardRef, count_samples, iter_raw_samples
from avp.data.schema import ShardError, activate, decode_meta, decode_sample
from avp.types import HEAD_PARAM_FIELDS, AvatarBatch, Cameras, HeadParams

log = logging.getLogger(__name__)

PAD_LOG_SCALE = -20.0
"""Raw value of padded ``log_scales``/``opacity_logits``: padding is invisible even where a mask is ignored."""


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
        self.total = 0

    def handle(self, error: ShardError) -> None:
        if not self.skip:
            raise error
        self.pending += 1
        self.total += 1
        self.messages.append(str(error))
        log.warning("skipping corrupt data: %s", error)

    def take(self) -> tuple[int, list[str]]:
        n, msgs = self.pending, self.messages
        self.pending, self.messages = 0, []
        return n, msgs


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


# ------------------------------------------------------------------------------------------ per-sample transforms

def _choose(n_available: int, n_wanted: int, rng: np.random.Generator) -> list[int]:
    """``n_wanted`` indices from ``range(n_available)``: without replacement when possible."""
    if n_wanted <= 0:
        return []
    if n_wanted <= n_available:
        return sorted(rng.choice(n_available, size=n_wanted, replace=False).tolist())
    return sorted(rng.choice(n_available, size=n_wanted, replace=True).tolist())


def square_intrinsics(Ks: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """``Ks [..., 3, 3]`` after :func:`fit_square` (pixel centres at +0.5, so continuous coordinates scale)."""
    side = max(height, width)
    Ks = Ks.clone()
    Ks[..., 0, 2] += (side - width) // 2
    Ks[..., 1, 2] += (side - height) // 2
    Ks[..., :2, :] *= size / side
    return Ks


def fit_square(images: torch.Tensor, size: int, background: torch.Tensor) -> torch.Tensor:
    """Pad ``images [..., C, H, W]`` to a centred square filled with ``background [C]``, then resize to ``size``
    (area-preserving antialiasing when shrinking); :func:`square_intrinsics` gives the matching cameras."""
    H, W = images.shape[-2:]
    side = max(H, W)
    top, left = (side - H) // 2, (side - W) // 2
    if (H, W) != (side, side):
        lead = images.shape[:-3]
        canvas = background.to(images).view(*([1] * len(lead)), -1, 1, 1)
        canvas = canvas.expand(*lead, images.shape[-3], side, side).clone()
        canvas[..., top:top + H, left:left + W] = images
        images = canvas
    if side != size:
        flat = images.reshape(-1, *images.shape[-3:])  # [M, C, side, side]
        flat = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=size < side)
        images = flat.reshape(*images.shape[:-2], size, size).clamp(0, 1)
    return images


def _to_float(img: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., H, W, C]`` -> float ``[..., C, H, W]`` in 0..1.

    Done in numpy (single-threaded): with ``num_workers=0`` this runs in the training process, where multi-threaded
    torch kernels on many small images contend with the training step for the cores.
    """
    out = np.moveaxis(img, -1, -3).astype(np.float32)
    out /= np.float32(255.0)
    return torch.from_numpy(out)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` for CPU tensors via numpy (single-threaded; see :func:`_to_float`)."""
    return torch.from_numpy(np.stack([t.numpy() for t in tensors]))


@dataclass
class ClipItem:
    """One decoded sample: the frames/views drawn from one clip, as tensors ready for :func:`collate`."""

    key: str
    subject: str
    head_model: str
    portrait: torch.Tensor
    """``[3, Hp, Wp]`` in 0..1."""
    portrait_head: HeadParams
    """Unbatched head parameters estimated for the portrait."""
    portrait_camera: Cameras
    """``Ks [1, 3, 3]``, ``viewmats [1, 4, 4]`` and the portrait's size."""
    teacher: dict[str, torch.Tensor]
    """Raw teacher splats: ``means [N, 3]``, ``log_scales [N, 3]``, ``opacity_logits [N]``, ``quats [N, 4]``,
    ``sh [N, K, 3]``."""
    binding: torch.Tensor
    """``[N]`` long, face index of every teacher point."""
    images: torch.Tensor
    """``[T, V, 3, H, W]`` in 0..1."""
    masks: torch.Tensor | None
    """``[T, V, 1, H, W]`` in 0..1, when the shards have masks."""
    cameras: Cameras
    """``Ks [V, 3, 3]``, ``viewmats [V, 4, 4]`` and the (possibly resized) frame size."""
    head: HeadParams
    """``[T, ...]`` head parameters of the drawn frames; ``shape [S]`` once per clip."""
    frame_index: torch.Tensor
    """``[T]`` long."""
    view_index: torch.Tensor
    """``[V]`` long."""
    background: torch.Tensor
    """``[3]`` the clip's background colour."""


def sample_to_item(raw: dict[str, bytes], cfg: StreamConfig, rng: np.random.Generator) -> ClipItem:
    """Decode one raw sample, drawing frames/views with ``rng`` (``meta.json`` is parsed once, here)."""
    shard = raw.get("__shard__", b"").decode() or None
    meta = decode_meta(raw, shard=shard)
    decode_frames = cfg.frames_per_sample > 0 and cfg.views_per_sample > 0
    fi = _choose(meta["frames"], cfg.frames_per_sample, rng)
    vi = _choose(meta["views"], cfg.views_per_sample, rng)
    s = decode_sample(raw, shard=shard, frame_index=fi, view_index=vi, decode_frames=decode_frames, meta=meta)
    H, W = meta["height"], meta["width"]
    background = torch.tensor(meta["background"], dtype=torch.float32)
    Ks = torch.from_numpy(s.cameras.Ks[vi]) if vi else torch.zeros(0, 3, 3)
    viewmats = torch.from_numpy(s.cameras.viewmats[vi]) if vi else torch.zeros(0, 4, 4)
    if s.frames is not None:
        images = _to_float(s.frames)  # [T, V, 3, H, W]
        masks = _to_float(s.masks[..., None]) if s.masks is not None else None  # [T, V, 1, H, W]
    else:
        images = torch.zeros(len(fi), len(vi), 3, H, W)
        masks = torch.zeros(len(fi), len(vi), 1, H, W) if meta["masks"] else None
    size = cfg.image_size
    if size is not None and (H, W) != (size, size):
        Ks = square_intrinsics(Ks, H, W, size)
        if images.numel():
            images = fit_square(images, size, background)
            masks = fit_square(masks, size, torch.zeros(1)) if masks is not None else None
        else:
            images = images.new_zeros(*images.shape[:2], 3, size, size)
            masks = masks.new_zeros(*masks.shape[:2], 1, size, size) if masks is not None else None
        H = W = size
    g = s.gaussians
    return ClipItem(
        key=s.key, subject=meta["subject"], head_model=meta["head_model"],
        portrait=_to_float(s.portrait),
        portrait_head=HeadParams(**{k: torch.from_numpy(s.portrait_head[k]) for k in HEAD_PARAM_FIELDS}),
        portrait_camera=Cameras(Ks=torch.from_numpy(s.portrait_camera.Ks),
                                viewmats=torch.from_numpy(s.portrait_camera.viewmats),
                                width=s.portrait_camera.width, height=s.portrait_camera.height),
        teacher={"means": torch.from_numpy(g.means), "log_scales": torch.from_numpy(g.log_scales),
                 "opacity_logits": torch.from_numpy(g.opacity_logits), "quats": torch.from_numpy(g.quats),
                 "sh": torch.from_numpy(g.sh)},
        binding=torch.from_numpy(g.binding.astype(np.int64)),
        images=images, masks=masks, cameras=Cameras(Ks=Ks, viewmats=viewmats, width=W, height=H),
        head=HeadParams(**{k: torch.from_numpy(s.head[k][fi] if k != "shape" else s.head[k])
                           for k in HEAD_PARAM_FIELDS}),
        frame_index=torch.tensor(fi, dtype=torch.long), view_index=torch.tensor(vi, dtype=torch.long),
        background=background,
    )


def _pad_stack(items: list[torch.Tensor], n: int, value: float) -> torch.Tensor:
    out = items[0].new_full((len(items), n, *items[0].shape[1:]), value)
    for i, t in enumerate(items):
        out[i, : t.shape[0]] = t
    return out


def collate(items: list[ClipItem], *, corrupt: tuple[int, list[str]] = (0, [])) -> AvatarBatch:
    """Stack items into an :class:`AvatarBatch`, padding teacher clouds to the largest ``N`` (``teacher.mask``)."""
    if not items:
        raise ValueError("collate needs at least one item")
    first = items[0]
    for it in items[1:]:
        for name in ("width", "height"):
            if getattr(it.cameras, name) != getattr(first.cameras, name):
                raise ValueError(f"sample {it.key!r} has frames of {name} {getattr(it.cameras, name)}, sample "
                                 f"{first.key!r} {getattr(first.cameras, name)}; set image_size to resize them to "
                                 "one size")
        if it.teacher["sh"].shape[1] != first.teacher["sh"].shape[1]:
            raise ValueError(f"samples {first.key!r} and {it.key!r} have different SH degrees")
        if it.head_model != first.head_model:
            raise ValueError(f"samples {first.key!r} and {it.key!r} come from different head models "
                             f"({first.head_model!r} vs {it.head_model!r})")
    n = max(it.binding.shape[0] for it in items)
    lengths = torch.tensor([it.binding.shape[0] for it in items])
    mask = torch.arange(n)[None] < lengths[:, None]
    quat_pad = torch.tensor([1.0, 0.0, 0.0, 0.0])
    quats = _pad_stack([it.teacher["quats"] for it in items], n, 0.0)
    quats[~mask] = quat_pad
    teacher = activate(
        means=_pad_stack([it.teacher["means"] for it in items], n, 0.0),
        log_scales=_pad_stack([it.teacher["log_scales"] for it in items], n, PAD_LOG_SCALE),
        opacity_logits=_pad_stack([it.teacher["opacity_logits"] for it in items], n, PAD_LOG_SCALE),
        quats=quats,
        sh=_pad_stack([it.teacher["sh"] for it in items], n, 0.0),
        mask=mask,
    )
    ps = {tuple(it.portrait.shape) for it in items}
    portraits = [it.portrait for it in items]
    if len(ps) > 1:  # different portrait sizes: resize to the first (the encoder resizes anyway)
        size = portraits[0].shape[-2:]
        portraits = [p if p.shape[-2:] == size else
                     F.interpolate(p[None], size=tuple(size), mode="bilinear", antialias=True)[0].clamp(0, 1)
                     for p in portraits]
    T = first.images.shape[0]
    head = HeadParams(**{name: torch.stack([getattr(it.head, name) for it in items]) for name in HEAD_PARAM_FIELDS})
    head.shape = head.shape[:, None].expand(-1, T, -1)  # [B, S] -> [B, T, S]: every field has the frame dimension
    portrait_head = HeadParams(**{name: torch.stack([getattr(it.portrait_head, name) for it in items])
                                  for name in HEAD_PARAM_FIELDS})
    has_masks = all(it.masks is not None for it in items)
    return AvatarBatch(
        subject=[it.subject for it in items],
        portrait=_stack(portraits),
        portrait_head=portrait_head,
        teacher=teacher,
        binding=_pad_stack([it.binding for it in items], n, 0),
        images=_stack([it.images for it in items]),
        cameras=Cameras(Ks=torch.stack([it.cameras.Ks for it in items]),
                        viewmats=torch.stack([it.cameras.viewmats for it in items]),
                        width=int(first.cameras.width), height=int(first.cameras.height)),
        head=head,
        masks=_stack([it.masks for it in items]) if has_masks else None,
        frame_index=torch.stack([it.frame_index for it in items]),
        view_index=torch.stack([it.view_index for it in items]),
        extras={
            "key": [it.key for it in items],
            "head_model": first.head_model,
            "n_points": lengths,
            "background": torch.stack([it.background for it in items]),
            "portrait_cameras": Cameras(Ks=torch.stack([it.portrait_camera.Ks for it in items]),
                                        viewmats=torch.stack([it.portrait_camera.viewmats for it in items]),
                                        width=int(first.portrait_camera.width),
                                        height=int(first.portrait_camera.height)),
            "corrupt_skipped": corrupt[0],
            "corrupt_errors": list(corrupt[1]),
        },
    )


class CorruptionMonitor:
    """Totals the skip counts that batches carry and fails the run past a fraction of corrupt samples.

    The fraction is measured against the larger of the samples seen so far and ``epoch_samples``, so a few corrupt
    samples at the start of a long run do not trip it; with ``max_fraction = 0`` any corrupt sample fails.
    """

    def __init__(self, max_fraction: float, epoch_samples: int) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_corrupt_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction, self.epoch_samples = max_fraction, epoch_samples
        self.seen = 0
        self.corrupt = 0
        self.errors: list[str] = []

    def update(self, batch: AvatarBatch) -> AvatarBatch:
        skipped = int(batch.extras.get("corrupt_skipped", 0))
        self.corrupt += skipped
        self.seen += batch.batch_size
        self.errors = (self.errors + list(batch.extras.get("corrupt_errors", [])))[-5:]
        batch.extras["corrupt_total"] = self.corrupt
        batch.extras["samples_total"] = self.seen
        denominator = max(self.seen + self.corrupt, self.epoch_samples)
        if skipped and self.corrupt > self.max_fraction * denominator:
            last = "\n  ".join(self.errors)
            raise RuntimeError(f"{self.corrupt} corrupt samples skipped out of {self.seen + self.corrupt} read, more "
                               f"than max_corrupt_fraction={self.max_fraction} of {denominator}; last errors:\n"
                               f"  {last}")
        return batch


# ------------------------------------------------------------------------------------------------------ streams

class ClipStream(IterableDataset):
    """Batches of one split (an ``IterableDataset`` yielding :class:`AvatarBatch`; use ``batch_size=None``).

    ``rank``/``world_size`` are fixed when the stream is built (in the main process); worker identity comes from
    ``torch.utils.data.get_worker_info()``. ``num_workers`` must equal the DataLoader's (it sizes the epoch).
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
        self.counts = [count_samples(s) for s in self.shards]
        self.total = sum(self.counts)
        if self.total == 0:
            raise ValueError(f"ClipStream: the shards hold no samples ({[s.name for s in self.shards]})")
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else self.total
        self.epoch = 0
        self._local_iterations = 0

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
    def __iter__(self) -> Iterator[AvatarBatch]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers != self._slots:
            raise RuntimeError(f"ClipStream was built for {self._slots} worker slots but runs in {n_workers}; "
                               "pass the DataLoader's num_workers")
        epoch = self.epoch + self._local_iterations
        self._local_iterations += 1
        counter = CorruptCounter(self.cfg.skip_corrupt)
        items = self._train_items(worker, epoch, counter) if self.train else self._eval_items(worker, counter)
        batch: list[ClipItem] = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield collate(batch, corrupt=counter.take())
                batch = []
        if batch:
            yield collate(batch, corrupt=counter.take())

    def _raw(self, refs: Sequence[ShardRef], counter: CorruptCounter) -> Iterator[dict[str, bytes]]:
        for ref in refs:
            try:
                yield from iter_raw_samples(ref)
            except ShardError as e:
                counter.handle(e)

    def _decode(self, raw: dict[str, bytes], rng: np.random.Generator, counter: CorruptCounter
                ) -> ClipItem | None:
        try:
            return sample_to_item(raw, self.cfg, rng)
        except ShardError as e:
            counter.handle(e)
            return None

    def _train_items(self, worker: int, epoch: int, counter: CorruptCounter) -> Iterator[ClipItem]:
        slots = self.world_size * self._slots
        shard_level = len(self.shards) >= slots
        if shard_level:
            mine = split_by_worker(split_by_node(self.shards, self.rank, self.world_size), worker, self._slots)
        else:
            mine = list(self.shards)
        slot = self.rank * self._slots + worker
        seed = _seed(self.cfg.seed, epoch, self.rank, worker)
        rng_py = random.Random(seed)
        rng = np.random.default_rng(seed)
        quota = self._train_quota()
        produced = 0
        while produced < quota:
            order = list(mine)
            rng_py.shuffle(order)
            if shard_level:
                stream: Iterator[dict[str, bytes]] = self._raw(order, counter)
            else:
                stream = (raw for i, raw in enumerate(self._raw(self.shards, counter)) if i % slots == slot)
            if self.cfg.shuffle_buffer > 1:
                # webdataset's shuffle stage with our seeded rng (a full buffer before the first draw)
                buffer = self.cfg.shuffle_buffer
                stream = wds.shuffle(bufsize=buffer, initial=buffer, rng=rng_py)(stream)
            got_any = False
            for raw in stream:
                item = self._decode(raw, rng, counter)
                if item is None:
                    continue
                got_any = True
                yield item
                produced += 1
                if produced >= quota:
                    return
            if not got_any:
                raise RuntimeError(f"rank {self.rank} worker {worker}: a full pass over its shards "
                                   f"{[s.name for s in mine]} gave no readable sample ({counter.total} corrupt)")

    def _eval_items(self, worker: int, counter: CorruptCounter) -> Iterator[ClipItem]:
        wanted = Counter(self._eval_indices(worker))
        if not wanted:
            return
        order = sorted(wanted)
        out: dict[int, ClipItem] = {}
        index = 0
        for raw in self._raw(self.shards, counter):
            if index in wanted:
                key = raw["__key__"].decode()
                rng = np.random.default_rng(_seed(self.cfg.seed, key))
                item = self._decode(raw, rng, counter)
                if item is not None:
                    out[index] = item
            index += 1
            while order and (order[0] in out or order[0] < index):
                i = order.pop(0)
                if i in out:
                    for _ in range(wanted[i]):
                        yield out[i]
                    del out[i]
            if not order:
                return


__all__ = ["ClipItem", "ClipStream", "CorruptCounter", "CorruptionMonitor", "StreamConfig", "collate",
           "distributed_info", "fit_square", "sample_to_item", "square_intrinsics", "split_by_node", "split_by_worker"]

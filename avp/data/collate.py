"""A list of :class:`~avp.data.item.ClipItem` -> one :class:`~avp.types.AvatarBatch`, and the corruption budget.

Collation pads teacher clouds to the batch's largest point count (``teacher.mask``; padded splats are invisible even
where the mask is ignored) and stacks everything else. :class:`CorruptionMonitor` runs in the main process on the
batches of all workers: it totals the skip counts each batch carries (:class:`SkipCounts`, by reason), fails the run
past ``max_corrupt_fraction``, and fails an evaluation pass that yields no sample.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from avp.data.item import ClipItem
from avp.data.schema import activate
from avp.types import HEAD_PARAM_FIELDS, AvatarBatch, Cameras, CorruptionCounts, HeadParams

PAD_LOG_SCALE = -20.0
"""Raw value of padded ``log_scales``/``opacity_logits``: padding is invisible even where a mask is ignored."""


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` for CPU tensors via numpy (single-threaded; see :func:`avp.data.item.to_float`)."""
    return torch.from_numpy(np.stack([t.numpy() for t in tensors]))


def _pad_stack(items: list[torch.Tensor], n: int, value: float) -> torch.Tensor:
    """``[len(items), n, ...]``: each ``[n_i, ...]`` tensor at the start of its row, ``value`` after it."""
    out = items[0].new_full((len(items), n, *items[0].shape[1:]), value)
    for i, t in enumerate(items):
        out[i, : t.shape[0]] = t
    return out


def _stack_cameras(cameras: list[Cameras]) -> Cameras:
    """Per-item cameras ``[V, ...]`` -> ``[B, V, ...]`` (collate has checked that their sizes agree)."""
    return Cameras(Ks=torch.stack([c.Ks for c in cameras]), viewmats=torch.stack([c.viewmats for c in cameras]),
                   width=int(cameras[0].width), height=int(cameras[0].height))


def _check_compatible(items: list[ClipItem]) -> None:
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
    with_offset = [it.key for it in items if it.static_offset is not None]
    if with_offset and len(with_offset) < len(items):
        without = [it.key for it in items if it.static_offset is None]
        raise ValueError(f"samples {with_offset} carry a static_offset (tracked per-vertex head offsets) but samples "
                         f"{without} do not; a batch poses all its subjects one way: keep shards converted with and "
                         "without static offsets (avp data convert --no-static-offset) in separate datasets")


def collate(items: list[ClipItem], *, corrupt: CorruptionCounts | None = None) -> AvatarBatch:
    """Stack items into an :class:`AvatarBatch`, padding teacher clouds to the largest ``N`` (``teacher.mask``).

    ``corrupt``: the samples the stream skipped since its previous batch, carried by this one. The identity stays
    per subject (``head.shape [B, S]``, ``static_offset [B, V, 3]`` or None when no sample has one; a batch mixing
    samples with and without is refused); every other head field gets the frame dimension ``[B, T, ...]``.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    _check_compatible(items)
    first = items[0]
    with_offset = first.static_offset is not None  # all or none (checked)
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
    head = HeadParams(**{name: torch.stack([getattr(it.head, name) for it in items]) for name in HEAD_PARAM_FIELDS})
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
        cameras=_stack_cameras([it.cameras for it in items]),
        head=head,
        static_offset=_stack([it.static_offset for it in items]) if with_offset else None,
        masks=_stack([it.masks for it in items]) if has_masks else None,
        frame_index=torch.stack([it.frame_index for it in items]),
        view_index=torch.stack([it.view_index for it in items]),
        background=torch.stack([it.background for it in items]),
        portrait_camera=_stack_cameras([it.portrait_camera for it in items]),
        keys=[it.key for it in items],
        head_model=first.head_model,
        n_points=lengths,
        corrupt=CorruptionCounts() if corrupt is None else corrupt,
    )


@dataclass
class SkipCounts(CorruptionCounts):
    """:class:`~avp.types.CorruptionCounts` by reason (:data:`avp.data.schema.REASONS`: ``checksum``, ``tar``,
    ``duplicate``, ``manifest``, ``missing``, ``format``, ``value``)."""

    reasons: dict[str, int] = field(default_factory=dict)
    """The skipped samples counted in ``skipped``, by reason."""
    reasons_total: dict[str, int] | None = None
    """Running totals by reason, set with ``total`` by the :class:`CorruptionMonitor`."""


class CorruptionMonitor:
    """Totals the skip counts that batches carry and fails the run past a fraction of corrupt samples.

    The fraction is measured against the larger of the samples seen so far and ``epoch_samples``, so a few corrupt
    samples at the start of a long run do not trip it; with ``max_fraction = 0`` any corrupt sample fails. Skips
    that no batch carries (a pass that produced no sample) arrive through :meth:`record`. With ``require_samples``
    (evaluation splits) a pass over the loader that yields no sample at all fails in :meth:`finish_pass` instead of
    ending quietly (which would turn validation, and the checkpoints that track it, off).
    """

    def __init__(self, max_fraction: float, epoch_samples: int, *, split: str = "train",
                 require_samples: bool = False) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_corrupt_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction, self.epoch_samples = max_fraction, epoch_samples
        self.split, self.require_samples = split, require_samples
        self.seen = 0
        self.corrupt = 0
        self.reasons: Counter[str] = Counter()
        self.errors: list[str] = []
        self.pass_seen = 0
        self.pass_corrupt = 0

    def start_pass(self) -> None:
        """A new pass over the loader (an epoch, a validation run) begins."""
        self.pass_seen = self.pass_corrupt = 0

    def _count(self, counts: CorruptionCounts) -> None:
        self.corrupt += counts.skipped
        self.pass_corrupt += counts.skipped
        reasons = getattr(counts, "reasons", None) or ({"unknown": counts.skipped} if counts.skipped else {})
        self.reasons.update(reasons)
        self.errors = (self.errors + list(counts.errors))[-5:]

    def _check(self, skipped: int) -> None:
        denominator = max(self.seen + self.corrupt, self.epoch_samples)
        if skipped and self.corrupt > self.max_fraction * denominator:
            last = "\n  ".join(self.errors)
            read = self.seen + self.corrupt
            raise RuntimeError(f"{self.split}: {self.corrupt} corrupt samples skipped out of {read} read (by reason: "
                               f"{dict(sorted(self.reasons.items()))}), more than "
                               f"max_corrupt_fraction={self.max_fraction} of {denominator}; last errors:\n  {last}")

    def update(self, batch: AvatarBatch) -> AvatarBatch:
        """Count ``batch``'s skips, record the running totals in ``batch.corrupt``; raise past the budget."""
        c = batch.corrupt
        self._count(c)
        self.seen += batch.batch_size
        self.pass_seen += batch.batch_size
        batch.corrupt = SkipCounts(skipped=c.skipped, errors=list(c.errors), total=self.corrupt,
                                   samples_total=self.seen, reasons=dict(getattr(c, "reasons", {}) or {}),
                                   reasons_total=dict(self.reasons))
        self._check(c.skipped)
        return batch

    def record(self, counts: CorruptionCounts) -> None:
        """Count skips that arrive without a batch; raise past the budget."""
        self._count(counts)
        self._check(counts.skipped)

    def finish_pass(self) -> None:
        """The pass ended: with ``require_samples``, fail if it yielded no sample."""
        if self.require_samples and self.pass_seen == 0:
            last = "\n  ".join(self.errors) or "(none)"
            raise RuntimeError(f"the {self.split!r} split yielded no sample: {self.pass_corrupt} corrupt samples were "
                               f"skipped (skip_corrupt) and none was left to evaluate; fix or remove the broken shards "
                               f"(`avp data validate`). Last errors:\n  {last}")


__all__ = ["PAD_LOG_SCALE", "CorruptionMonitor", "SkipCounts", "collate"]

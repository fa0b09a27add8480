"""One raw shard sample -> a typed :class:`ClipItem`: draw frames and views, decode them, fit images to a square.

Used by the stream (:mod:`avp.data.stream`), which batches items with :func:`avp.data.collate.collate`; the square
fitting is shared with evaluation and the dataset converters, which must frame images exactly as training does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avp.data.checks import STATIC_OFFSET
from avp.data.schema import ShardExpectation, decode_meta, decode_sample
from avp.types import HEAD_PARAM_FIELDS, Cameras, HeadParams


@dataclass
class ClipItem:
    """One decoded sample: the frames/views drawn from one clip, as tensors ready for
    :func:`avp.data.collate.collate`."""

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
    static_offset: torch.Tensor | None = None
    """``[V, 3]`` the subject's tracked per-vertex offsets (``head.npz``'s ``static_offset``), None when the shard has
    none."""


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


def to_float(img: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., H, W, C]`` -> float ``[..., C, H, W]`` in 0..1.

    Done in numpy (single-threaded): with ``num_workers=0`` this runs in the training process, where multi-threaded
    torch kernels on many small images contend with the training step for the cores.
    """
    out = np.moveaxis(img, -1, -3).astype(np.float32)
    out /= np.float32(255.0)
    return torch.from_numpy(out)


@functools.lru_cache(maxsize=1)
def _builtin_head() -> Any:
    from avp.head import load_head_model

    return load_head_model()


def resampled_teacher(meta: dict[str, Any], rng: np.random.Generator) -> Any:
    """A fresh surface sampling of a synthetic subject's teacher (:func:`avp.data.synthetic.generate.
    resample_teacher`, draw chosen with ``rng``; draw 1, the evaluation's resampled teacher, is never drawn).
    Needs a subject written by ``avp data synth`` with the built-in head; anything else raises ``ValueError``."""
    from avp.data.synthetic.generate import resample_teacher
    from avp.head import BUILTIN_NAME

    if meta.get("head_model") != BUILTIN_NAME:
        raise ValueError(f"data: resample_teacher needs synthetic subjects of the built-in head ({BUILTIN_NAME}); "
                         f"subject {meta.get('subject')!r} was written with {meta.get('head_model')!r}")
    try:
        return resample_teacher(meta, _builtin_head(), draw=int(rng.integers(2, 2**31)))
    except ValueError as e:
        raise ValueError(f"data: resample_teacher: {e}") from e


def sample_to_item(raw: dict[str, bytes], rng: np.random.Generator, *, frames_per_sample: int,
                   views_per_sample: int, image_size: int | None,
                   expect: ShardExpectation | None = None, resample_teacher: float = 0.0,
                   teacher_rng: np.random.Generator | None = None) -> ClipItem:
    """Decode one raw sample, drawing ``frames_per_sample`` frames and ``views_per_sample`` views with ``rng``
    (``meta.json`` is parsed once, here); ``image_size``: square size of the frames (pad to square with the clip's
    background, then resize), None keeps them. No frame is decoded when either count is 0. ``expect``: what the
    manifest says about the sample's shard (checked against ``meta.json``). Every member the item uses is validated
    (:func:`avp.data.schema.decode_sample`); a problem raises ``ShardError``. ``resample_teacher``: the probability
    that the item's teacher is a fresh surface sampling of the subject instead of the shard's
    (:func:`resampled_teacher`), drawn with ``teacher_rng`` (default ``rng``; a stream of its own leaves every other
    draw as it is without resampling)."""
    shard = raw.get("__shard__", b"").decode() or None
    meta = decode_meta(raw, shard=shard, expect=expect)
    decode_frames = frames_per_sample > 0 and views_per_sample > 0
    fi = _choose(meta["frames"], frames_per_sample, rng)
    vi = _choose(meta["views"], views_per_sample, rng)
    s = decode_sample(raw, shard=shard, frame_index=fi, view_index=vi, decode_frames=decode_frames, meta=meta)
    H, W = meta["height"], meta["width"]
    background = torch.tensor(meta["background"], dtype=torch.float32)
    Ks = torch.from_numpy(s.cameras.Ks[vi]) if vi else torch.zeros(0, 3, 3)
    viewmats = torch.from_numpy(s.cameras.viewmats[vi]) if vi else torch.zeros(0, 4, 4)
    if s.frames is not None:
        images = to_float(s.frames)  # [T, V, 3, H, W]
        masks = to_float(s.masks[..., None]) if s.masks is not None else None  # [T, V, 1, H, W]
    else:
        images = torch.zeros(len(fi), len(vi), 3, H, W)
        masks = torch.zeros(len(fi), len(vi), 1, H, W) if meta["masks"] else None
    size = image_size
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
    teacher_rng = rng if teacher_rng is None else teacher_rng
    if resample_teacher > 0 and teacher_rng.random() < resample_teacher:
        g = resampled_teacher(meta, teacher_rng)
    return ClipItem(
        key=s.key, subject=meta["subject"], head_model=meta["head_model"],
        portrait=to_float(s.portrait),
        portrait_head=HeadParams(**{k: torch.from_numpy(s.portrait_head[k]) for k in HEAD_PARAM_FIELDS}),
        portrait_camera=Cameras.from_arrays(s.portrait_camera),
        teacher={"means": torch.from_numpy(g.means), "log_scales": torch.from_numpy(g.log_scales),
                 "opacity_logits": torch.from_numpy(g.opacity_logits), "quats": torch.from_numpy(g.quats),
                 "sh": torch.from_numpy(g.sh)},
        binding=torch.from_numpy(g.binding.astype(np.int64)),
        images=images, masks=masks, cameras=Cameras(Ks=Ks, viewmats=viewmats, width=W, height=H),
        head=HeadParams(**{k: torch.from_numpy(s.head[k][fi] if k != "shape" else s.head[k])
                           for k in HEAD_PARAM_FIELDS}),
        frame_index=torch.tensor(fi, dtype=torch.long), view_index=torch.tensor(vi, dtype=torch.long),
        background=background,
        static_offset=torch.from_numpy(s.head[STATIC_OFFSET]) if STATIC_OFFSET in s.head else None,
    )


__all__ = ["ClipItem", "fit_square", "sample_to_item", "square_intrinsics", "to_float"]

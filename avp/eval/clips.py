"""A clip decoded for evaluation: the source (what avatarizing its subject needs: portrait, identity, teacher fit) and
the target (ground-truth or driving frames, masks, head parameters and cameras at the protocol's resolution, over the
protocol's background).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avp.eval.protocol import EvalProtocol, ProtocolError
from avp.types import HEAD_PARAM_FIELDS, Cameras, GaussianCloud, HeadParams


@dataclass
class SourceClip:
    """What avatarizing a clip's subject needs (no frames)."""

    key: str
    subject: str
    source: str
    """``meta["source"]``: ``synthetic`` or ``gaussian_avatars``."""
    head_model: str
    portrait: Tensor
    """``[3, Hp, Wp]`` in 0..1."""
    portrait_head: HeadParams
    """``[1]`` head parameters estimated for the portrait."""
    shape: Tensor
    """``[1, S]`` the clip's tracked identity."""
    teacher: GaussianCloud
    """``[1, N]`` the teacher fit in canonical space."""
    binding: Tensor
    """``[1, N]`` long faces of the teacher points."""
    portrait_camera: Cameras | None = None
    """The portrait's camera (``Ks [1, 1, 3, 3]``), for decoders that sample the portrait where points project."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The sample's ``meta.json`` (a synthetic subject's teacher can be resampled from it)."""
    static_offset: Tensor | None = None
    """``[1, V, 3]`` the clip's tracked per-vertex offsets (part of its neutral mesh with ``shape``), when the shard
    has them."""

    def to(self, device: torch.device) -> SourceClip:
        return dataclasses.replace(self, portrait=self.portrait.to(device), portrait_head=self.portrait_head.to(device),
                                   shape=self.shape.to(device), teacher=self.teacher.to(device),
                                   binding=self.binding.to(device),
                                   static_offset=None if self.static_offset is None else self.static_offset.to(device),
                                   portrait_camera=None if self.portrait_camera is None
                                   else self.portrait_camera.to(device))


@dataclass
class TargetClip:
    """The frames a clip contributes as targets (self) or driving frames (cross), at the protocol's resolution."""

    key: str
    subject: str
    frames: Tensor
    """``[T, V, 3, H, W]`` ground truth in 0..1 (re-composited over the protocol's background)."""
    masks: Tensor | None
    """``[T, V, 1, H, W]`` foreground masks in 0..1, when the shards have them."""
    head: HeadParams
    """``[T]`` head parameters of the frames (``shape``: the clip's identity)."""
    cameras: Cameras
    """``Ks [V, 3, 3]``, ``viewmats [V, 4, 4]`` at the protocol's resolution."""
    background: Tensor
    """``[3]`` what renders are composited over."""
    frame_index: list[int]
    view_index: list[int]


def background_colour(protocol: EvalProtocol, meta: dict[str, Any]) -> Tensor:
    """``[3]`` the renders' background for a clip."""
    bg = protocol.render.background
    if bg == "clip":
        return torch.tensor(meta["background"], dtype=torch.float32)
    if bg == "white":
        return torch.ones(3)
    if bg == "black":
        return torch.zeros(3)
    return torch.tensor(bg, dtype=torch.float32)


def _uint8_to_float(images: np.ndarray) -> Tensor:
    """uint8 ``[..., H, W, C]`` -> float ``[..., C, H, W]`` in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 255.0


def _head_params(arrays: dict[str, np.ndarray], rows: list[int] | None) -> HeadParams:
    """Head parameters from npz arrays: ``rows`` of the per-frame fields (``shape`` expanded), or one set."""
    if rows is None:
        return HeadParams(**{k: torch.from_numpy(np.asarray(arrays[k]))[None].float() for k in HEAD_PARAM_FIELDS})
    fields = {k: torch.from_numpy(np.asarray(arrays[k])[rows]).float() for k in HEAD_PARAM_FIELDS if k != "shape"}
    fields["shape"] = torch.from_numpy(np.asarray(arrays["shape"])).float().expand(len(rows), -1)
    return HeadParams(**fields)


def source_from_sample(sample: Any) -> SourceClip:
    """A :class:`SourceClip` from a decoded :class:`avp.data.schema.ClipSample`."""
    from avp.data.schema import teacher_cloud

    meta = sample.meta
    return SourceClip(
        key=sample.key, subject=meta["subject"], source=meta["source"], head_model=meta["head_model"],
        portrait=_uint8_to_float(sample.portrait), portrait_head=_head_params(sample.portrait_head, None),
        shape=torch.from_numpy(np.asarray(sample.head["shape"])).float()[None],
        teacher=teacher_cloud(sample.gaussians),
        binding=torch.from_numpy(sample.gaussians.binding.astype(np.int64))[None],
        portrait_camera=Cameras.from_arrays(sample.portrait_camera, batched=True),
        meta=meta,
        static_offset=torch.from_numpy(np.asarray(sample.head["static_offset"])).float()[None]
        if "static_offset" in sample.head else None,
    )


def target_from_sample(sample: Any, protocol: EvalProtocol) -> TargetClip:
    """A :class:`TargetClip` from a :class:`~avp.data.schema.ClipSample` decoded with the protocol's frames/views."""
    from avp.data.item import fit_square, square_intrinsics

    meta = sample.meta
    fi, vi = [int(i) for i in sample.frame_index], [int(i) for i in sample.view_index]
    H, W = int(meta["height"]), int(meta["width"])
    clip_bg = torch.tensor(meta["background"], dtype=torch.float32)
    frames = _uint8_to_float(sample.frames)  # [T, V, 3, H, W]
    masks = _uint8_to_float(sample.masks[..., None]) if sample.masks is not None else None  # [T, V, 1, H, W]
    Ks = torch.from_numpy(sample.cameras.Ks[vi]).float()
    viewmats = torch.from_numpy(sample.cameras.viewmats[vi]).float()
    size = protocol.render.resolution
    if (H, W) != (size, size):
        Ks = square_intrinsics(Ks, H, W, size)
        frames = fit_square(frames, size, clip_bg)
        masks = fit_square(masks, size, torch.zeros(1)) if masks is not None else None
    background = background_colour(protocol, meta)
    if not torch.allclose(background, clip_bg, atol=1 / 255):
        if masks is None:
            raise ProtocolError(f"render.background: {protocol.render.background!r} differs from clip {sample.key!r}'s "
                                f"background {meta['background']} and the shards have no masks to re-composite the "
                                "ground truth; use background: clip")
        # frames = fg * m + clip_bg * (1 - m): swap the background under the mask
        frames = (frames + (background - clip_bg).view(3, 1, 1) * (1 - masks)).clamp(0, 1)
    return TargetClip(key=sample.key, subject=meta["subject"], frames=frames, masks=masks,
                      head=_head_params(sample.head, fi), cameras=Cameras(Ks=Ks, viewmats=viewmats, width=size,
                                                                          height=size),
                      background=background, frame_index=fi, view_index=vi)

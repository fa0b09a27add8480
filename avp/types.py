"""Dataclasses that cross module boundaries.

Every field documents its shape. Leading dimensions written ``...`` are free batch dimensions (an avatar batch ``B``,
or ``B, T`` for a sequence); the trailing ones are fixed. All containers are plain dataclasses of tensors with a
``.to()`` so Lightning's ``transfer_batch_to_device`` and user code move them in one call.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
C = TypeVar("C")

HEAD_PARAM_FIELDS = ("shape", "expr", "global_rot", "neck_pose", "jaw_pose", "eyes_pose", "translation")


def _map_tensors(obj: T, fn: Callable[[Tensor], Tensor]) -> T:
    """Apply ``fn`` to every tensor field of a dataclass, recursing into nested dataclasses, lists and dicts."""

    def go(value: Any) -> Any:
        if isinstance(value, Tensor):
            return fn(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(value, **{f.name: go(getattr(value, f.name)) for f in fields(value)})
        if isinstance(value, dict):
            return {k: go(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
            return type(value)(go(v) for v in value)
        return value

    return go(obj)


class TensorContainer:
    """Mixin: device/dtype moves and detaching for tensor dataclasses."""

    def to(self: T, *args: Any, **kwargs: Any) -> T:
        """Same arguments as ``Tensor.to``; integer/bool tensors keep their dtype when a float dtype is given."""

        def move(t: Tensor) -> Tensor:
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            device = kwargs.get("device")
            for a in args:
                if isinstance(a, (torch.device, str)):
                    device = a
            return t.to(device=device, non_blocking=kwargs.get("non_blocking", False)) if device is not None else t

        return _map_tensors(self, move)

    def detach(self: T) -> T:
        return _map_tensors(self, lambda t: t.detach())

    def pin_memory(self: T) -> T:
        """Page-locked copies of every tensor (``DataLoader(pin_memory=True)`` calls this on custom batches)."""
        return _map_tensors(self, lambda t: t.pin_memory())

    def map(self: T, fn: Callable[[Tensor], Tensor]) -> T:
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t[0]`` or ``lambda t: t.flatten(0, 1)``)."""
        return _map_tensors(self, fn)


@dataclass
class HeadParams(TensorContainer):
    """Head-model parameters with FLAME's names; rotations are axis-angle (radians), translation in metres.

    Leading dims ``...`` are shared by every field (``[B]`` for one frame per avatar, ``[B, T]`` for sequences), except
    that a sequence of one subject may hold its identity once, ``shape [B, S]`` (as :attr:`AvatarBatch.head` does):
    posing reads the per-frame fields only.
    """

    shape: Tensor
    """``[..., S]`` identity (shape) coefficients."""
    expr: Tensor
    """``[..., E]`` expression coefficients."""
    global_rot: Tensor
    """``[..., 3]`` rotation of the root joint."""
    neck_pose: Tensor
    """``[..., 3]`` rotation of the neck joint."""
    jaw_pose: Tensor
    """``[..., 3]`` rotation of the jaw joint."""
    eyes_pose: Tensor
    """``[..., 6]`` left then right eye rotations."""
    translation: Tensor
    """``[..., 3]`` global translation applied after skinning."""

    @property
    def batch_shape(self) -> torch.Size:
        return self.global_rot.shape[:-1]

    @classmethod
    def zeros(
        cls,
        *batch_shape: int,
        n_shape: int,
        n_expr: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> HeadParams:
        """The neutral pose and mean identity for a batch of the given shape."""
        z = lambda n: torch.zeros(*batch_shape, n, device=device, dtype=dtype)
        return cls(z(n_shape), z(n_expr), z(3), z(3), z(3), z(6), z(3))

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in HEAD_PARAM_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadParams:
        missing = [k for k in HEAD_PARAM_FIELDS if k not in d]
        if missing:
            raise KeyError(f"head parameters are missing fields {missing}; expected {list(HEAD_PARAM_FIELDS)}")
        return cls(**{k: torch.as_tensor(d[k]) for k in HEAD_PARAM_FIELDS})

    def expand_shape(self, *batch_shape: int) -> HeadParams:
        """Broadcast every field to ``[*batch_shape, C]`` (e.g. one identity over ``T`` frames)."""
        return self.map(lambda t: t.expand(*batch_shape, t.shape[-1]))

    @staticmethod
    def cat(items: Iterable[HeadParams], dim: int = 0) -> HeadParams:
        items = list(items)
        return HeadParams(**{k: torch.cat([getattr(p, k) for p in items], dim) for k in HEAD_PARAM_FIELDS})


@dataclass
class Cameras(TensorContainer):
    """Pinhole cameras in OpenCV convention (x right, y down, z forward), pixel centres at +0.5 (as gsplat)."""

    Ks: Tensor
    """``[..., V, 3, 3]`` pixel intrinsics."""
    viewmats: Tensor
    """``[..., V, 4, 4]`` world-to-camera transforms."""
    width: int
    height: int

    @property
    def n_views(self) -> int:
        return self.Ks.shape[-3]

    def __post_init__(self) -> None:
        if self.Ks.shape[-2:] != (3, 3) or self.viewmats.shape[-2:] != (4, 4):
            raise ValueError(f"Cameras: Ks must be [..., 3, 3] and viewmats [..., 4, 4], got {tuple(self.Ks.shape)} "
                             f"and {tuple(self.viewmats.shape)}")
        if self.Ks.shape[:-2] != self.viewmats.shape[:-2]:
            raise ValueError(f"Cameras: Ks {tuple(self.Ks.shape)} and viewmats {tuple(self.viewmats.shape)} "
                             "disagree on their leading dimensions")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"Cameras: width and height must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_arrays(cls, arrays: Any, batched: bool = False) -> Cameras:
        """Cameras of a decoded shard sample's arrays (``Ks [V, 3, 3]``, ``viewmats [V, 4, 4]``, ``width``,
        ``height``: :class:`avp.data.layout.CameraArrays`), with a leading batch dimension of 1 when ``batched``."""
        Ks, viewmats = torch.as_tensor(arrays.Ks), torch.as_tensor(arrays.viewmats)
        if batched:
            Ks, viewmats = Ks[None], viewmats[None]
        return cls(Ks=Ks, viewmats=viewmats, width=int(arrays.width), height=int(arrays.height))

    def camera_centers(self) -> Tensor:
        """``[..., V, 3]`` camera centres in world coordinates."""
        R = self.viewmats[..., :3, :3]
        t = self.viewmats[..., :3, 3:]
        return -(R.transpose(-1, -2) @ t).squeeze(-1)


@dataclass
class GaussianCloud(TensorContainer):
    """Activated 3D Gaussians (what the renderer consumes), a batch of ``B`` avatars of up to ``N`` splats.

    Colours are spherical-harmonics coefficients in gsplat's convention: ``rgb = 0.5 + SH(dirs)``, clamped at 0;
    degree 0 (``K = 1``) is view-independent colour. Padding entries have ``mask = False`` and render as nothing.
    """

    means: Tensor
    """``[B, N, 3]`` centres in metres."""
    quats: Tensor
    """``[B, N, 4]`` rotations, wxyz, unit norm."""
    scales: Tensor
    """``[B, N, 3]`` standard deviations along the local axes, metres (positive)."""
    opacities: Tensor
    """``[B, N]`` in ``[0, 1]``."""
    sh: Tensor
    """``[B, N, K, 3]`` SH coefficients, ``K = (degree + 1) ** 2``."""
    mask: Tensor | None = None
    """``[B, N]`` bool, True for real splats; None means all are real."""

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def n_points(self) -> int:
        return self.means.shape[1]

    @property
    def sh_degree(self) -> int:
        k = self.sh.shape[-2]
        degree = int(round(k**0.5)) - 1
        if (degree + 1) ** 2 != k:
            raise ValueError(f"GaussianCloud.sh has {k} coefficients per channel; expected a square (1, 4, 9, 16)")
        return degree

    def valid_mask(self) -> Tensor:
        """``[B, N]`` bool mask (all True when ``mask`` is None)."""
        if self.mask is None:
            return torch.ones(self.means.shape[:2], dtype=torch.bool, device=self.means.device)
        return self.mask

    def __getitem__(self, index: int | slice | Tensor) -> GaussianCloud:
        """Select avatars along the batch dimension, keeping it (an int index gives a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.map(lambda t: t[index])


@dataclass
class RenderOutput(TensorContainer):
    """Rendered images of ``B`` avatars from ``V`` views, channel-first, values in 0..1."""

    rgb: Tensor
    """``[B, V, 3, H, W]`` colour composited over the background."""
    alpha: Tensor
    """``[B, V, 1, H, W]`` accumulated opacity ``1 - T``."""
    depth: Tensor | None = None
    """``[B, V, 1, H, W]`` alpha-weighted expected depth (camera z), when requested."""


@dataclass
class CorruptionCounts:
    """Corrupt samples the data stream skipped (``skip_corrupt=True``), carried by every :class:`AvatarBatch`."""

    skipped: int = 0
    """Samples skipped by the worker since its previous batch (each worker counts its own)."""
    errors: list[str] = field(default_factory=list)
    """The messages of those skips (shard, key and member)."""
    total: int | None = None
    """Running total of skipped samples over all workers, set in the main process by the DataModule's
    ``CorruptionMonitor`` (None before it saw the batch)."""
    samples_total: int | None = None
    """Running total of samples delivered, set alongside ``total``."""


@dataclass
class AvatarBatch(TensorContainer):
    """What the DataModule yields to both training stages: ``B`` subject clips.

    Per sample ``T`` frames and ``V`` views are drawn from the clip; ``N`` is the largest teacher point count in the
    batch (shorter clouds are padded, ``teacher.mask`` marks real points). Fields after ``head`` are optional so that
    batches built in memory (tests, benchmarks) need only what their consumer reads; the data pipeline fills them all.
    """

    subject: list[str]
    """``[B]`` subject ids."""
    portrait: Tensor
    """``[B, 3, Hp, Wp]`` conditioning image in 0..1."""
    portrait_head: HeadParams
    """``[B, ...]`` head parameters estimated for the portrait."""
    teacher: GaussianCloud
    """``[B, N]`` teacher Gaussians in canonical space (the subject's neutral head), with ``mask``."""
    binding: Tensor
    """``[B, N]`` long, head-model face index of every teacher point (0 on padding)."""
    images: Tensor
    """``[B, T, V, 3, H, W]`` target frames in 0..1."""
    cameras: Cameras
    """``Ks [B, V, 3, 3]``, ``viewmats [B, V, 4, 4]``: the views of ``images``."""
    head: HeadParams
    """Head parameters of the target frames: ``[B, T, ...]`` per frame, except the identity ``shape [B, S]``, which
    is the subject's and the same in every frame (animation reads the per-frame fields; the rig holds the shape)."""
    static_offset: Tensor | None = None
    """``[B, V, 3]`` the subjects' tracked per-vertex offsets of the head model's ``V`` vertices, metres (VHAP's and
    GaussianAvatars' FLAME ``static_offset``), part of each subject's neutral mesh like ``head.shape``: the rig poses
    and binds on ``canonical(shape) + static_offset``. None when no sample has one (synthetic data): zero offsets."""
    masks: Tensor | None = None
    """``[B, T, V, 1, H, W]`` foreground masks in 0..1, when the shards have them."""
    frame_index: Tensor | None = None
    """``[B, T]`` long, which clip frames were drawn."""
    view_index: Tensor | None = None
    """``[B, V]`` long, which clip cameras were drawn."""
    background: Tensor | None = None
    """``[B, 3]`` each clip's background colour in 0..1 (what its frames are composited over)."""
    portrait_camera: Cameras | None = None
    """``Ks [B, 1, 3, 3]``, ``viewmats [B, 1, 4, 4]`` and the portrait's size: the camera of each portrait's head fit
    (the decoder's ``appearance: pixel`` projects points with it)."""
    keys: list[str] | None = None
    """``[B]`` the shard sample keys (``subject__sequence``)."""
    head_model: str | None = None
    """The head model every sample of the batch was written with."""
    n_points: Tensor | None = None
    """``[B]`` long, real teacher points per sample (``teacher.mask.sum(1)``)."""
    corrupt: CorruptionCounts = field(default_factory=CorruptionCounts)
    """Corrupt samples skipped while this batch was read (plain numbers: never moved between devices)."""

    @property
    def batch_size(self) -> int:
        return self.portrait.shape[0]


def as_config(cls: type[C], value: C | dict[str, Any] | None) -> C:
    """``value`` as dataclass ``cls``: None -> defaults, a dict (e.g. from a checkpoint) -> built field by field."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__}: expected a {cls.__name__} or a dict, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; valid fields are {sorted(names)}")
    kwargs = {}
    for key, item in value.items():
        hint = hints[key]
        kwargs[key] = as_config(hint, item) if dataclasses.is_dataclass(hint) and isinstance(item, dict) else item
    return cls(**kwargs)

"""The shard layout: member names, ``meta.json`` fields, the error type and the in-memory sample.

Part of the schema (:mod:`avp.data.schema` documents it and re-exports everything here); the value rules live in
:mod:`avp.data.checks`, encoding and decoding in :mod:`avp.data.codec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
"""Bump when a member, key, dtype or meaning changes; readers refuse versions they do not know."""
SUPPORTED_VERSIONS = (1,)

META = "meta.json"
PORTRAIT_HEAD = "portrait_head.npz"
PORTRAIT_CAMERA = "portrait_camera.npz"
CAMERAS = "cameras.npz"
HEAD = "head.npz"
GAUSSIANS = "gaussians.npz"
IMAGE_FORMATS = ("png", "jpg")
SOURCES = ("synthetic", "gaussian_avatars")

META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int, "subject": str, "sequence": str, "split": str, "source": str, "head_model": str,
    "n_faces": int, "n_shape": int, "n_expr": int, "width": int, "height": int, "views": int, "frames": int,
    "frame_format": str, "masks": bool, "portrait_format": str, "portrait_width": int, "portrait_height": int,
    "n_points": int, "sh_degree": int, "background": list, "extra": dict,
}
HEAD_WIDTHS = {"global_rot": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
GAUSSIAN_FIELDS = ("means", "binding", "log_scales", "opacity_logits", "quats", "sh")

# Why a sample or shard was refused: the skip counts are kept per reason (``train/data_corrupt/<reason>``).
REASON_CHECKSUM = "checksum"
"""The shard's SHA-256 differs from the manifest's."""
REASON_TAR = "tar"
"""The shard cannot be opened, is truncated or is not a WebDataset tar."""
REASON_DUPLICATE = "duplicate"
"""A sample key (or a member of one sample) appears twice."""
REASON_MANIFEST = "manifest"
"""The sample disagrees with the manifest: split, subject, head model, sample count."""
REASON_MISSING = "missing"
"""A member, ``meta.json`` field or npz array is missing."""
REASON_FORMAT = "format"
"""Undecodable bytes, a wrong type, dtype or shape, an unknown schema version."""
REASON_VALUE = "value"
"""A value out of its range: non-finite numbers, bad cameras, bindings outside the head model, sizes that differ."""
REASONS = (REASON_CHECKSUM, REASON_TAR, REASON_DUPLICATE, REASON_MANIFEST, REASON_MISSING, REASON_FORMAT,
           REASON_VALUE)


def portrait_member(fmt: str) -> str:
    return f"portrait.{fmt}"


def frame_member(t: int, v: int, fmt: str) -> str:
    return f"t{t:04d}.v{v:02d}.{fmt}"


def mask_member(t: int, v: int) -> str:
    return f"t{t:04d}.v{v:02d}.mask.png"


class ShardError(ValueError):
    """A shard, sample, member or field that does not follow the schema; the message names each one known.

    ``reason`` is one of :data:`REASONS` (what skip counts are grouped by). ``ShardError(message)`` alone keeps a
    message that is already formatted: a ``DataLoader`` worker's exception is re-raised in the main process that way.
    """

    def __init__(self, shard: str | None, key: str | None = None, member: str | None = None,
                 problem: str | None = None, field: str | None = None, *, reason: str = REASON_FORMAT) -> None:
        self.shard, self.key, self.member, self.field = shard, key, member, field
        self.reason = reason
        if problem is None and key is None and member is None and field is None:
            self.problem = str(shard)
            super().__init__(self.problem)
            return
        self.problem = str(problem)
        where = [f"shard {shard!r}" if shard else "shard <unknown>"]
        if key is not None:
            where.append(f"sample {key!r}")
        if member is not None:
            where.append(f"member {member!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled across processes (multiprocessing, spawn): keep every attribute, not just the message
        return (_rebuild_shard_error, (self.shard, self.key, self.member, self.problem, self.field, self.reason))


def _rebuild_shard_error(shard: str | None, key: str | None, member: str | None, problem: str, field: str | None,
                         reason: str) -> ShardError:
    return ShardError(shard, key, member, problem, field, reason=reason)


@dataclass(frozen=True)
class Where:
    """The shard and sample being read, for error messages."""

    shard: str | None
    key: str | None

    def error(self, member: str | None, problem: str, field: str | None = None, *,
              reason: str = REASON_FORMAT) -> ShardError:
        return ShardError(self.shard, self.key, member, problem, field, reason=reason)


@dataclass
class CameraArrays:
    """Calibrated pinhole cameras of one clip (OpenCV, world-to-camera)."""

    Ks: np.ndarray
    """``[V, 3, 3]`` float32 pixel intrinsics."""
    viewmats: np.ndarray
    """``[V, 4, 4]`` float32 world-to-camera transforms."""
    width: int
    height: int


@dataclass
class TeacherGaussians:
    """The teacher fit, raw (pre-activation) attributes in the subject's canonical space."""

    means: np.ndarray
    """``[N, 3]`` float32 canonical centres, metres."""
    binding: np.ndarray
    """``[N]`` int32 head-model face index of every point."""
    log_scales: np.ndarray
    """``[N, 3]`` float32 log standard deviations (metres)."""
    opacity_logits: np.ndarray
    """``[N]`` float32 logits of opacity."""
    quats: np.ndarray
    """``[N, 4]`` float32 rotations, wxyz, unit norm."""
    sh: np.ndarray
    """``[N, K, 3]`` float32 SH coefficients, gsplat convention."""

    @property
    def n_points(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1


@dataclass
class ClipSample:
    """One decoded (or to-be-encoded) sample: a subject clip.

    ``frames``/``masks`` hold the decoded subset of timesteps/views named by ``frame_index``/``view_index``
    (all of them when encoding); ``None`` when frames were not decoded.
    """

    key: str
    """Sample key (tar member prefix, no dots)."""
    meta: dict[str, Any]
    """``meta.json`` (see :mod:`avp.data.schema`)."""
    portrait: np.ndarray
    """``[Hp, Wp, 3]`` uint8."""
    portrait_head: dict[str, np.ndarray]
    """Head-parameter name -> ``[C]`` float32."""
    portrait_camera: CameraArrays
    """The portrait's camera (``V = 1``)."""
    cameras: CameraArrays
    """All ``V`` cameras of the clip."""
    head: dict[str, np.ndarray]
    """``shape [S]`` and the other head fields ``[T, C]``, float32; optionally ``static_offset [V, 3]`` float32 (a
    tracked subject's per-vertex offsets, :data:`~avp.data.checks.STATIC_OFFSET`; absent for synthetic subjects)."""
    gaussians: TeacherGaussians
    frames: np.ndarray | None = None
    """``[T', V', H, W, 3]`` uint8 selected frames."""
    masks: np.ndarray | None = None
    """``[T', V', H, W]`` uint8 selected masks (when the clip has masks)."""
    frame_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """``[T']`` which timesteps ``frames`` holds."""
    view_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """``[V']`` which cameras ``frames`` holds."""


def make_meta(*, subject: str, sequence: str, split: str, source: str, head_model: str, n_faces: int,
              n_shape: int, n_expr: int, width: int, height: int, views: int, frames: int, frame_format: str,
              masks: bool, portrait_format: str, portrait_width: int, portrait_height: int, n_points: int,
              sh_degree: int, background: tuple[float, float, float] | list[float],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete ``meta.json`` of the current schema version."""
    return {
        "schema": SCHEMA_VERSION, "subject": subject, "sequence": sequence, "split": split, "source": source,
        "head_model": head_model, "n_faces": int(n_faces), "n_shape": int(n_shape), "n_expr": int(n_expr),
        "width": int(width), "height": int(height), "views": int(views), "frames": int(frames),
        "frame_format": frame_format, "masks": bool(masks), "portrait_format": portrait_format,
        "portrait_width": int(portrait_width), "portrait_height": int(portrait_height), "n_points": int(n_points),
        "sh_degree": int(sh_degree), "background": [float(c) for c in background], "extra": dict(extra or {}),
    }


def sample_key(subject: str, sequence: str) -> str:
    """A tar-safe key: WebDataset splits member names at the first dot, so keys carry none."""
    raw = f"{subject}__{sequence}"
    return "".join(c if (c.isalnum() or c in "-_") else "_" for c in raw)

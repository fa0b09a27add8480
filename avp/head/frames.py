"""Per-triangle frames as GaussianAvatars defines them, and the local <-> world maps of its ``point_cloud.ply``.

For a triangle ``(v0, v1, v2)`` (GaussianAvatars' ``compute_face_orientation``):

- centre ``c = (v0 + v1 + v2) / 3``;
- orientation ``R = [a0 | a1 | a2]`` (columns) with ``a0 = normalize(v1 - v0)`` (first edge),
  ``a1 = normalize(a0 x (v2 - v0))`` (the face normal) and ``a2 = -normalize(a1 x a0) = a0 x a1`` (in the plane,
  perpendicular to the first edge, on the side away from ``v2``); ``R`` is a proper rotation;
- scale ``s = (|v1 - v0| + |a2 . (v2 - v0)|) / 2`` (mean of the edge length and the height over that edge).

A Gaussian bound to the triangle stores face-local attributes; in world space (GaussianAvatars' ``get_xyz``,
``get_scaling``, ``get_rotation``)::

    xyz_world   = R @ xyz_local * s + c
    scale_world = exp(log_scale_local) * s          (log_scale_world = log_scale_local + log s)
    quat_world  = q(R) * quat_local                 (Hamilton product, wxyz; rotation R @ R_local)

The quaternion order is that of GaussianAvatars after its March 2024 fix (issue #23: ``r' = R r``); files written
before the fix composed ``quat_local * q(R)``, which the ply reader can select with ``legacy_order=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avp.rotations import matrix_to_quaternion, quaternion_conjugate, quaternion_multiply
from avp.types import TensorContainer

__all__ = [
    "FaceFrames",
    "face_frames",
    "local_to_world_log_scales",
    "local_to_world_points",
    "local_to_world_quats",
    "world_to_local_log_scales",
    "world_to_local_points",
    "world_to_local_quats",
]

# GaussianAvatars clamps squared lengths at 1e-20 before the square root (finite gradients on degenerate triangles).
_LENGTH_EPS = 1e-20


@dataclass
class FaceFrames(TensorContainer):
    """One frame per triangle: ``world = rotations @ local * scales + centers``."""

    centers: Tensor
    """``[..., F, 3]`` triangle centroids."""
    rotations: Tensor
    """``[..., F, 3, 3]`` orthonormal, determinant +1; columns are the frame axes (edge, normal, in-plane)."""
    scales: Tensor
    """``[..., F]`` isotropic frame scale (metres)."""

    def quaternions(self) -> Tensor:
        """``[..., F, 4]`` the orientations as unit quaternions (wxyz, ``w >= 0``)."""
        return matrix_to_quaternion(self.rotations)

    def gather(self, face_idx: Tensor) -> FaceFrames:
        """Frames of selected faces: ``face_idx [N]`` (shared) or ``[..., N]`` (broadcastable to the leading dims)."""
        if face_idx.dim() == 1:
            return FaceFrames(self.centers[..., face_idx, :], self.rotations[..., face_idx, :, :],
                              self.scales[..., face_idx])
        lead = self.centers.shape[:-2]
        idx = face_idx.expand(*lead, face_idx.shape[-1])
        c = self.centers.gather(-2, idx[..., None].expand(*idx.shape, 3))
        r = self.rotations.flatten(-2).gather(-2, idx[..., None].expand(*idx.shape, 9)).unflatten(-1, (3, 3))
        s = self.scales.gather(-1, idx)
        return FaceFrames(c, r, s)


def _length(v: Tensor) -> Tensor:
    return (v * v).sum(-1, keepdim=True).clamp_min(_LENGTH_EPS).sqrt()


def face_frames(vertices: Tensor, faces: Tensor) -> FaceFrames:
    """GaussianAvatars' per-face frames of a mesh: ``vertices [..., V, 3]``, ``faces [F, 3]`` -> ``FaceFrames``."""
    if vertices.shape[-1] != 3:
        raise ValueError(f"face_frames: vertices must be [..., V, 3], got {tuple(vertices.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"face_frames: faces must be [F, 3], got {tuple(faces.shape)}")
    faces = faces.long()
    v0 = vertices[..., faces[:, 0], :]
    v1 = vertices[..., faces[:, 1], :]
    v2 = vertices[..., faces[:, 2], :]
    e1 = v1 - v0
    e2 = v2 - v0
    a0 = e1 / _length(e1)
    n = torch.linalg.cross(a0, e2, dim=-1)
    a1 = n / _length(n)
    m = torch.linalg.cross(a1, a0, dim=-1)
    a2 = -m / _length(m)
    rotations = torch.stack([a0, a1, a2], dim=-1)
    s0 = _length(e1)
    s1 = (a2 * e2).sum(-1, keepdim=True).abs()
    scales = ((s0 + s1) / 2).squeeze(-1)
    centers = (v0 + v1 + v2) / 3
    return FaceFrames(centers=centers, rotations=rotations, scales=scales)


def local_to_world_points(local: Tensor, frames: FaceFrames) -> Tensor:
    """``local [..., N, 3]`` face-local positions -> world ``R @ local * s + c`` (frames already per point)."""
    return (frames.rotations @ local[..., None]).squeeze(-1) * frames.scales[..., None] + frames.centers


def world_to_local_points(world: Tensor, frames: FaceFrames) -> Tensor:
    """Inverse of :func:`local_to_world_points`: ``R^T (world - c) / s``."""
    d = (world - frames.centers) / frames.scales[..., None]
    return (frames.rotations.transpose(-1, -2) @ d[..., None]).squeeze(-1)


def local_to_world_log_scales(log_scales: Tensor, frames: FaceFrames) -> Tensor:
    """``log_scales [..., N, 3]`` (GaussianAvatars ``scale_*``) -> world log standard deviations."""
    return log_scales + frames.scales.log()[..., None]


def world_to_local_log_scales(log_scales: Tensor, frames: FaceFrames) -> Tensor:
    """Inverse of :func:`local_to_world_log_scales`."""
    return log_scales - frames.scales.log()[..., None]


def local_to_world_quats(quats: Tensor, frames: FaceFrames, *, legacy_order: bool = False) -> Tensor:
    """``quats [..., N, 4]`` wxyz (normalised here, as GaussianAvatars does) -> world ``q(R) * q_local``.

    ``legacy_order=True`` reproduces GaussianAvatars before its March 2024 fix (``q_local * q(R)``).
    """
    q = quats / quats.norm(dim=-1, keepdim=True)
    qf = frames.quaternions()
    return quaternion_multiply(q, qf) if legacy_order else quaternion_multiply(qf, q)


def world_to_local_quats(quats: Tensor, frames: FaceFrames, *, legacy_order: bool = False) -> Tensor:
    """Inverse of :func:`local_to_world_quats`."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    qf_inv = quaternion_conjugate(frames.quaternions())
    return quaternion_multiply(q, qf_inv) if legacy_order else quaternion_multiply(qf_inv, q)

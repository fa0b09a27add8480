"""Rotations: axis-angle, rotation matrices and unit quaternions (wxyz), batched over any leading dims.

The one implementation for the whole package: the head model (LBS, face frames, point rig), the renderer
(covariances), portrait fitting and the converters all use it. Everything is pure torch, differentiable and takes
device and dtype from its inputs. Quaternions follow the project convention ``(w, x, y, z)`` (as gsplat) and the
Hamilton product, so ``quaternion_to_matrix(quaternion_multiply(p, q)) == quaternion_to_matrix(p) @
quaternion_to_matrix(q)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "axis_angle_to_matrix",
    "axis_angle_to_quaternion",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "orthonormalize",
    "polar_entries",
    "quaternion_conjugate",
    "quaternion_multiply",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "standardize_quaternion",
]

# Below this squared angle the Rodrigues coefficients use their Taylor series (exact to float64 precision there),
# which keeps the value and the gradient finite at the zero rotation.
_SMALL_ANGLE_SQ = 1e-6


def _skew(v: Tensor) -> Tensor:
    """``[..., 3] -> [..., 3, 3]`` cross-product matrix ``K`` with ``K @ u == v x u``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula: ``axis_angle [..., 3]`` (direction = axis, norm = angle in radians) -> ``[..., 3, 3]``."""
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle must be [..., 3], got {tuple(axis_angle.shape)}")
    theta_sq = (axis_angle * axis_angle).sum(-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    theta_sq_safe = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = theta_sq_safe.sqrt()
    a = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta)) / theta_sq_safe)
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def axis_angle_to_quaternion(axis_angle: Tensor) -> Tensor:
    """``[..., 3]`` axis-angle -> ``[..., 4]`` unit quaternion wxyz."""
    theta_sq = (axis_angle * axis_angle).sum(-1, keepdim=True)
    small = theta_sq < _SMALL_ANGLE_SQ
    theta = torch.where(small, torch.ones_like(theta_sq), theta_sq).sqrt()
    half_sinc = torch.where(small, 0.5 - theta_sq / 48.0, torch.sin(theta / 2) / theta)
    w = torch.where(small, 1.0 - theta_sq / 8.0, torch.cos(theta / 2))
    return torch.cat([w, axis_angle * half_sinc], dim=-1)


def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """``[..., 4]`` quaternion wxyz (normalised here; gsplat's ``quat_to_rotmat``) -> ``[..., 3, 3]`` rotation matrix.

    A zero quaternion gives the identity (the renderer refuses zero quaternions before they get here).
    """
    if quaternion.shape[-1] != 4:
        raise ValueError(f"quaternion must be [..., 4] (wxyz), got {tuple(quaternion.shape)}")
    norm = torch.linalg.vector_norm(quaternion, dim=-1, keepdim=True)
    q = quaternion / norm.clamp_min(torch.finfo(quaternion.dtype).tiny)
    w, x, y, z = q.unbind(-1)
    # Every entry forms its own products (no shared ``y * y`` between entries): sharing them would sum their
    # gradients in another order and change the renderer's gradients, hence decoder training, in the last bits.
    entries = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(entries, dim=-1).unflatten(-1, (3, 3))


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """``[..., 3, 3]`` rotation matrix -> ``[..., 4]`` unit quaternion wxyz with ``w >= 0``.

    Shepperd's method: of the four algebraically equivalent formulas the one with the largest pivot is used, so the
    result is accurate for every rotation (including 180 degrees).
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must be [..., 3, 3], got {tuple(matrix.shape)}")
    m = matrix.flatten(-2)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    # 4 * (w^2, x^2, y^2, z^2)
    pivots = torch.stack([
        1 + m00 + m11 + m22,
        1 + m00 - m11 - m22,
        1 - m00 + m11 - m22,
        1 - m00 - m11 + m22,
    ], dim=-1)
    # Each row is 4 * q * q_k for the k-th pivot: dividing by 2 * sqrt(pivot_k) gives q.
    candidates = torch.stack([
        torch.stack([pivots[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, pivots[..., 1], m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, pivots[..., 2], m21 + m12], dim=-1),
        torch.stack([m10 - m01, m02 + m20, m21 + m12, pivots[..., 3]], dim=-1),
    ], dim=-2)
    best = pivots.argmax(dim=-1, keepdim=True)
    chosen = candidates.gather(-2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    denom = 2 * pivots.gather(-1, best).clamp_min(torch.finfo(matrix.dtype).tiny).sqrt()
    q = chosen / denom
    return standardize_quaternion(q / q.norm(dim=-1, keepdim=True))


def standardize_quaternion(quaternion: Tensor) -> Tensor:
    """Flip the sign so that ``w >= 0`` (``q`` and ``-q`` are the same rotation)."""
    return torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def quaternion_multiply(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product ``p * q`` of wxyz quaternions (broadcast): the rotation ``R(p) @ R(q)``."""
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack([
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    ], dim=-1)


def quaternion_conjugate(q: Tensor) -> Tensor:
    """The inverse rotation of a unit quaternion (wxyz)."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """``[..., 4]`` wxyz -> ``[..., 3]`` axis-angle with angle in ``[0, pi]``."""
    q = standardize_quaternion(quaternion / quaternion.norm(dim=-1, keepdim=True))
    xyz = q[..., 1:]
    sin_half = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    small = sin_half < 1e-6
    scale = torch.where(small, 2.0 / q[..., :1].clamp_min(1e-6), angle / torch.where(small, 1.0, sin_half))
    return xyz * scale


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """``[..., 3, 3]`` rotation -> ``[..., 3]`` axis-angle."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def orthonormalize(matrix: Tensor, iterations: int | None = None) -> Tensor:
    """The rotation nearest to ``matrix [..., 3, 3]`` (its orthogonal polar factor), by Newton's iteration.

    ``X <- (X + X^-T) / 2`` converges quadratically to the polar factor. Blended skinning matrices are close to
    rotations (singular values ~0.9..1 for joints a few tenths of a radian apart), where 3 iterations reach float32
    round-off and 5 float64's (the default picks by dtype). Matrices with a non-positive determinant are not near any
    rotation and come back as NaN.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must be [..., 3, 3], got {tuple(matrix.shape)}")
    rows = list(matrix.flatten(-2).movedim(-1, 0).contiguous().unbind(0))  # nine contiguous [...] tensors
    return torch.stack(polar_entries(rows, iterations), dim=-1).unflatten(-1, (3, 3))


def polar_entries(a: list[Tensor], iterations: int | None = None) -> list[Tensor]:
    """:func:`orthonormalize` on a matrix given as its nine entries (row-major), each a tensor of any shape.

    Working on separate contiguous entry tensors turns millions of 3x3 problems into a few dozen fused element-wise
    passes; the inverse transpose is the cofactor matrix over the determinant.
    """
    if len(a) != 9:
        raise ValueError(f"polar_entries takes the 9 entries of a 3x3 matrix, got {len(a)}")
    if iterations is None:
        iterations = 3 if a[0].dtype in (torch.float32, torch.float16, torch.bfloat16) else 5
    for _ in range(iterations):
        a00, a01, a02, a10, a11, a12, a20, a21, a22 = a
        c00 = a11 * a22 - a12 * a21
        c01 = a12 * a20 - a10 * a22
        c02 = a10 * a21 - a11 * a20
        det = a00 * c00 + a01 * c01 + a02 * c02
        half_inv = torch.where(det > 0, 0.5 / det, torch.full_like(det, float("nan")))
        c10 = a02 * a21 - a01 * a22
        c11 = a00 * a22 - a02 * a20
        c12 = a01 * a20 - a00 * a21
        c20 = a01 * a12 - a02 * a11
        c21 = a02 * a10 - a00 * a12
        c22 = a00 * a11 - a01 * a10
        # (A + A^-T) / 2 with (A^-T)_ij = C_ij / det, C the cofactor matrix
        a = [torch.addcmul(0.5 * x, c, half_inv) for x, c in zip(a, (c00, c01, c02, c10, c11, c12, c20, c21, c22))]
    return a

"""Real spherical harmonics up to degree 3, in gsplat's basis order and sign convention.

Colour of a splat seen along ``dir`` (from the camera centre to the splat) is ``0.5 + sum_k Y_k(dir) c_k``, clamped at
zero; degree 0 alone is a view-independent colour ``0.5 + C0 * c_0``. Both render backends evaluate colour here, so
the gsplat backend is handed post-activation colours and never evaluates SH itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
"""``Y_0^0``: the constant band."""
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_DEGREE = 3


def sh_degree_from_coeffs(k: int) -> int:
    """Degree of a set of ``k = (degree + 1) ** 2`` coefficients per channel."""
    degree = int(round(k**0.5)) - 1
    if (degree + 1) ** 2 != k or degree > MAX_DEGREE:
        raise ValueError(f"sh: {k} coefficients per channel; expected 1, 4, 9 or 16 (degree 0-{MAX_DEGREE})")
    return degree


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis at the (not necessarily unit) directions ``dirs [..., 3]`` -> ``[..., (degree + 1) ** 2]``."""
    if degree < 0 or degree > MAX_DEGREE:
        raise ValueError(f"sh: degree must be in 0..{MAX_DEGREE}, got {degree}")
    out = [torch.full_like(dirs[..., 0], C0)]
    if degree == 0:
        return torch.stack(out, -1)
    # Zero directions (a splat at the camera centre) give a zero vector rather than NaN.
    d = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            _C2[0] * xy,
            _C2[1] * yz,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * xz,
            _C2[4] * (xx - yy),
        ]
        if degree >= 3:
            out += [
                _C3[0] * y * (3.0 * xx - yy),
                _C3[1] * xy * z,
                _C3[2] * y * (4.0 * zz - xx - yy),
                _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                _C3[4] * x * (4.0 * zz - xx - yy),
                _C3[5] * z * (xx - yy),
                _C3[6] * x * (xx - 3.0 * yy),
            ]
    return torch.stack(out, -1)


def eval_sh(sh: Tensor, dirs: Tensor | None = None) -> Tensor:
    """Colour from SH coefficients: ``rgb = max(0, 0.5 + sum_k Y_k(dirs) * sh[..., k, :])``.

    Args:
        sh: ``[..., K, 3]`` coefficients, ``K`` in 1, 4, 9, 16.
        dirs: ``[..., 3]`` viewing directions (camera centre to splat; normalised here). May be None when ``K == 1``.

    Returns:
        ``[..., 3]`` colour, >= 0 (not clamped above, as gsplat).
    """
    degree = sh_degree_from_coeffs(sh.shape[-2])
    if degree == 0:
        return (sh[..., 0, :] * C0 + 0.5).clamp_min(0.0)
    if dirs is None:
        raise ValueError(f"eval_sh: degree {degree} needs viewing directions")
    basis = sh_basis(dirs, degree)  # [..., K]
    return (torch.einsum("...k,...kc->...c", basis, sh) + 0.5).clamp_min(0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Degree-0 coefficient ``[..., 3]`` whose colour is ``rgb`` (inverse of ``sh0_to_rgb``)."""
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """Colour ``[..., 3]`` of a degree-0 coefficient ``sh0 [..., 3]`` (before the clamp at zero)."""
    return sh0 * C0 + 0.5

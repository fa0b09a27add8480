"""EWA splatting of 3D Gaussians onto pinhole images with gsplat 1.5.3's semantics (shared by the torch backends).

Facts reproduced from gsplat 1.5.3 (``cuda/include/Utils.cuh``, ``cuda/csrc/ProjectionEWA3DGSFused.cu``):

- the covariance is ``R S S^T R^T`` with ``R`` from the normalised wxyz quaternion and ``S = diag(scales)``;
- a splat is kept only when its camera depth ``z`` satisfies ``near <= z <= far``;
- the Jacobian of the perspective map is evaluated at the centre with ``x/z`` and ``y/z`` clamped to 1.3x the
  half field of view on each side (the mean itself is not clamped);
- ``eps2d = 0.3`` pixels^2 is added to the diagonal of the 2D covariance (no opacity compensation: gsplat's
  ``rasterize_mode="classic"``), splats with a non-positive determinant are dropped;
- splats with ``opacity < 1/255`` are dropped; the screen footprint is opacity-aware: ``extend = min(3.33,
  sqrt(2 ln(255 opacity)))`` standard deviations, per axis ``radius = ceil(extend * sqrt(cov2d_ii))``, which is
  exactly the box where ``alpha >= 1/255`` can hold; splats whose box misses the image are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avp.rotations import quaternion_to_matrix

EPS2D = 0.3
"""Pixels^2 added to the 2D covariance diagonal (gsplat's ``eps2d``)."""
ALPHA_MIN = 1.0 / 255.0
"""Contributions with a smaller alpha are skipped (gsplat's ``ALPHA_THRESHOLD``)."""
ALPHA_MAX = 0.999
"""Alpha is clamped to this value."""
T_MIN = 1e-4
"""Compositing stops before the transmittance would fall to this value or below."""
EXTEND_MAX = 3.33
"""Upper bound of the footprint half-size in standard deviations."""
FOV_CLAMP = 0.3
"""The Jacobian's ``x/z``, ``y/z`` are clamped to the image edges plus this fraction of the half field of view."""


@dataclass
class Projected:
    """Per image (an avatar seen from one view) and splat: the 2D Gaussian. Leading dims ``[B, V, N]``."""

    means2d: Tensor
    """``[B, V, N, 2]`` pixel coordinates of the centre (pixel centres at +0.5)."""
    conics: Tensor
    """``[B, V, N, 3]`` upper triangle ``(a, b, c)`` of the inverse 2D covariance."""
    depths: Tensor
    """``[B, V, N]`` camera z of the centre."""
    radii: Tensor
    """``[B, V, N, 2]`` int32 footprint half-sizes in pixels (x, y); 0 where culled."""

    @property
    def visible(self) -> Tensor:
        """``[B, V, N]`` bool: the splat reaches the image."""
        return (self.radii > 0).all(-1)


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance ``R S S^T R^T``: quats ``[..., 4]`` wxyz, scales ``[..., 3]`` std devs -> ``[..., 3, 3]``."""
    M = quaternion_to_matrix(quats) * scales.unsqueeze(-2)  # columns of R scaled: R @ diag(s)
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    covars: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = EPS2D,
    valid: Tensor | None = None,
) -> Projected:
    """Project ``B`` clouds into their ``V`` views.

    Args:
        means: ``[B, N, 3]`` world centres.
        covars: ``[B, N, 3, 3]`` world covariances.
        opacities: ``[B, N]`` in [0, 1] (only used for culling and the footprint, as in gsplat).
        viewmats: ``[B, V, 4, 4]`` world-to-camera.
        Ks: ``[B, V, 3, 3]`` intrinsics (fx, fy, cx, cy are used).
        width, height: image size in pixels.
        valid: ``[B, N]`` bool, False for padding (always culled).

    Returns:
        ``Projected`` with ``[B, V, N, ...]`` fields; means2d, conics and depths are differentiable.
    """
    R = viewmats[..., :3, :3].unsqueeze(2)  # [B, V, 1, 3, 3]
    t = viewmats[..., :3, 3].unsqueeze(2)  # [B, V, 1, 3]
    mean_c = (R @ means.unsqueeze(1).unsqueeze(-1)).squeeze(-1) + t  # [B, V, N, 3]
    cov_c = R @ covars.unsqueeze(1) @ R.transpose(-1, -2)  # [B, V, N, 3, 3]
    x, y, z = mean_c.unbind(-1)

    fx = Ks[..., 0, 0].unsqueeze(-1)  # [B, V, 1]
    fy = Ks[..., 1, 1].unsqueeze(-1)
    cx = Ks[..., 0, 2].unsqueeze(-1)
    cy = Ks[..., 1, 2].unsqueeze(-1)
    # Culled splats (behind the camera) would divide by ~0; give them a safe depth so no NaN enters the graph.
    in_range = (z >= near) & (z <= far)
    zs = torch.where(in_range, z, torch.ones_like(z))
    rz = 1.0 / zs
    tan_x = 0.5 * width / fx
    tan_y = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FOV_CLAMP * tan_x
    lim_x_neg = cx / fx + FOV_CLAMP * tan_x
    lim_y_pos = (height - cy) / fy + FOV_CLAMP * tan_y
    lim_y_neg = cy / fy + FOV_CLAMP * tan_y
    tx = zs * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = zs * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(zs)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], -1)
    J = J.reshape(*zs.shape, 2, 3)  # [B, V, N, 2, 3]
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [B, V, N, 2, 2]
    c00 = cov2d[..., 0, 0] + eps2d
    c11 = cov2d[..., 1, 1] + eps2d
    c01 = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = c00 * c11 - c01 * c01
    ok_det = det > 0
    inv_det = 1.0 / torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c11 * inv_det, -c01 * inv_det, c00 * inv_det], -1)  # [B, V, N, 3]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)  # [B, V, N, 2]

    with torch.no_grad():
        o = opacities.unsqueeze(1).expand_as(z)
        keep = in_range & ok_det & (o >= ALPHA_MIN)
        if valid is not None:
            keep &= valid.unsqueeze(1)
        extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTEND_MAX)
        rx = torch.ceil(extend * torch.sqrt(c00.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c11.clamp_min(0)))
        keep &= (rx > 0) | (ry > 0)
        mx, my = means2d.unbind(-1)
        keep &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        keep &= torch.isfinite(rx) & torch.isfinite(ry)
        radii = torch.stack([rx, ry], -1).where(keep.unsqueeze(-1), 0.0).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii)


def camera_centers(viewmats: Tensor) -> Tensor:
    """``[..., 4, 4]`` world-to-camera -> ``[..., 3]`` camera centres in world coordinates."""
    R = viewmats[..., :3, :3]
    t = viewmats[..., :3, 3:]
    return -(R.transpose(-1, -2) @ t).squeeze(-1)


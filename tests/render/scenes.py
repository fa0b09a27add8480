"""Small random scenes for the renderer tests (shared by the test modules of this folder)."""

from __future__ import annotations

import torch

from avp.render import look_at, orbit_cameras
from avp.types import Cameras, GaussianCloud


def random_cloud(
    n: int,
    *,
    batch: int = 1,
    sh_degree: int = 0,
    scale: float = 0.012,
    opacity_logit: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> GaussianCloud:
    """``batch`` clouds of ``n`` anisotropic splats in a 0.2 m box around the origin, random rotations (non-unit)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(batch, n, 3, generator=g) - 0.5) * 0.2
    quats = torch.randn(batch, n, 4, generator=g) * 2.0
    scales = scale * torch.exp(0.4 * torch.randn(batch, n, 3, generator=g))
    opacities = torch.sigmoid(torch.randn(batch, n, generator=g) + opacity_logit)
    sh = torch.randn(batch, n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    sh[..., 0, :] = (torch.rand(batch, n, 3, generator=g) - 0.5) * 3.0
    return GaussianCloud(means.to(dtype), quats.to(dtype), scales.to(dtype), opacities.to(dtype), sh.to(dtype))


def cameras(n_views: int = 2, width: int = 40, height: int = 30, dtype: torch.dtype = torch.float64) -> Cameras:
    """Cameras 0.6 m from the origin, looking at it, over a range of yaws and pitches."""
    return orbit_cameras(n_views, 0.6, (-40.0, 40.0), (-15.0, 20.0), fov_y_deg=30.0, width=width, height=height,
                         dtype=dtype)


def frontal_camera(width: int, height: int, focal: float, distance: float = 1.0,
                   dtype: torch.dtype = torch.float64, cx: float | None = None, cy: float | None = None) -> Cameras:
    """One camera on +z at ``distance`` looking at the origin; principal point ``(cx, cy)`` (default the centre)."""
    view = look_at(torch.tensor([0.0, 0.0, distance], dtype=dtype), torch.zeros(3, dtype=dtype))
    K = torch.tensor([[focal, 0.0, width / 2 if cx is None else cx], [0.0, focal, height / 2 if cy is None else cy],
                      [0.0, 0.0, 1.0]], dtype=dtype)
    return Cameras(Ks=K[None], viewmats=view[None], width=width, height=height)


def requires_grad(cloud: GaussianCloud) -> list[torch.Tensor]:
    """Make every float field a leaf that requires grad; returns them (means, quats, scales, opacities, sh)."""
    leaves = []
    for name in ("means", "quats", "scales", "opacities", "sh"):
        t = getattr(cloud, name).detach().clone().requires_grad_(True)
        setattr(cloud, name, t)
        leaves.append(t)
    return leaves

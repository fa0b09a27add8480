"""Differentiable Gaussian splatting: one ``render()`` over gsplat (CUDA) and a pure-torch tile rasteriser (CPU).

Both follow gsplat 1.5.3's semantics (EWA projection, eps2d = 0.3, alpha = min(0.999, o exp(-sigma)), alpha >= 1/255,
front-to-back compositing stopped before T <= 1e-4), so images and gradients agree across devices.
"""

from __future__ import annotations

from avp.render.api import BACKENDS, choose_backend, render, splat_colors
from avp.render.cameras import focal_from_fov, intrinsics, look_at, orbit_cameras
from avp.render.projection import Projected, camera_centers, covariance_3d, project_gaussians
from avp.render.reference import composite_dense
from avp.render.sh import C0, eval_sh, rgb_to_sh0, sh0_to_rgb, sh_basis
from avp.render.torch_backend import composite_tiles

__all__ = [
    "BACKENDS",
    "C0",
    "Projected",
    "camera_centers",
    "choose_backend",
    "composite_dense",
    "composite_tiles",
    "covariance_3d",
    "eval_sh",
    "focal_from_fov",
    "intrinsics",
    "look_at",
    "orbit_cameras",
    "project_gaussians",
    "render",
    "rgb_to_sh0",
    "sh0_to_rgb",
    "sh_basis",
    "splat_colors",
]

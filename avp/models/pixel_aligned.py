"""Pixel-aligned portrait colours: what the portrait shows where each point projects (the decoder's ``pixel``
appearance input, an extension of ours; PAPER.md's decoder sees the portrait only through the generator).

A point posed to the portrait's head parameters is projected with the portrait's camera; the portrait is sampled
there (bilinearly) at ``levels`` scales of an average-pooled pyramid (sharp colour, then the colour of a wider
neighbourhood, which survives small projection errors), and a coarse depth test says whether the point is the
nearest one projecting into its cell (a point on the back of the head projects onto the face, and must not take its
colour at face value). Pure torch: no I/O, devices from the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_feature_dim(levels: int) -> int:
    """Channels of :func:`pixel_features`: RGB per level, plus *inside the image* and *front-most* flags."""
    return 3 * levels + 2


def project_points(points: Tensor, Ks: Tensor, viewmats: Tensor) -> tuple[Tensor, Tensor]:
    """World ``points [B, N, 3]`` through pinhole cameras ``Ks [B, 3, 3]``, ``viewmats [B, 4, 4]`` (OpenCV,
    world-to-camera) -> pixel coordinates ``uv [B, N, 2]`` (pixel centres at +0.5) and camera depth ``[B, N]``."""
    cam = points @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]  # [B, N, 3]
    depth = cam[..., 2]
    pix = cam @ Ks.transpose(1, 2)  # [B, N, 3]
    uv = pix[..., :2] / depth.clamp(min=1e-6)[..., None]
    return uv, depth


def front_most(uv: Tensor, depth: Tensor, mask: Tensor, width: int, height: int, cell: int,
               tolerance: float) -> Tensor:
    """``[B, N]`` bool: the point is within ``tolerance`` (metres) of the nearest real point whose projection falls
    in the same ``cell``-pixel square (a coarse z-buffer over the points themselves)."""
    B, N = depth.shape
    gw, gh = max(1, -(-width // cell)), max(1, -(-height // cell))
    cx = (uv[..., 0] / cell).floor().long().clamp(0, gw - 1)
    cy = (uv[..., 1] / cell).floor().long().clamp(0, gh - 1)
    index = cy * gw + cx  # [B, N]
    inf = torch.finfo(depth.dtype).max
    z = torch.where(mask, depth, torch.full_like(depth, inf))
    nearest = torch.full((B, gw * gh), inf, dtype=depth.dtype, device=depth.device)
    nearest = nearest.scatter_reduce(1, index, z, reduce="amin", include_self=True)
    return mask & (depth <= nearest.gather(1, index) + tolerance)


def pixel_features(portrait: Tensor, points: Tensor, mask: Tensor, Ks: Tensor, viewmats: Tensor,
                   levels: int = 3, cell: int = 4, tolerance: float = 0.02) -> Tensor:
    """Portrait colours at the points' projections.

    Args:
        portrait: ``[B, 3, H, W]`` in 0..1.
        points: ``[B, N, 3]`` points posed as in the portrait (world space of its camera).
        mask: ``[B, N]`` bool, real points.
        Ks, viewmats: ``[B, 3, 3]``, ``[B, 4, 4]`` the portrait's camera.
        levels: pyramid levels (level ``l`` is the portrait average-pooled by ``2^l``).
        cell: pixel size of the depth test's cells; tolerance: metres behind the front-most point still counted.

    Returns:
        ``[B, N, 3 * levels + 2]``: RGB per level (0 outside the image), inside flag, front-most flag; zeros on
        padding.
    """
    B, _, H, W = portrait.shape
    uv, depth = project_points(points.float(), Ks.float(), viewmats.float())
    inside = mask & (depth > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], dim=-1)[:, :, None]  # [B, N, 1, 2]
    image = portrait.float()
    colours = []
    for level in range(levels):
        if level:
            image = F.avg_pool2d(image, 2, ceil_mode=True)
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        colours.append(sampled[..., 0].transpose(1, 2))  # [B, N, 3]
    front = front_most(uv, depth, inside, W, H, cell, tolerance)
    rgb = torch.cat(colours, dim=-1) * inside[..., None]
    out = torch.cat([rgb, inside[..., None].float(), front[..., None].float()], dim=-1)
    return out * mask[..., None]

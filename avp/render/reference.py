"""Slow dense compositor: every visible splat at every pixel, depth-sorted, differentiated by autograd (test oracle).

Nothing here is clever on purpose: no tiles, no footprints beyond the projection's culling, no hand-written
gradients. Memory is bounded by evaluating rows of pixels at a time under activation checkpointing.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from avp.render.projection import ALPHA_MAX, ALPHA_MIN, T_MIN


def _composite_pixels(px: Tensor, py: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor):
    """Pixels ``px, py [P]`` against depth-sorted splats ``[S, ...]`` -> ``(acc [P, C], T [P])``."""
    dx = means2d[:, 0] - px[:, None]  # [P, S]
    dy = means2d[:, 1] - py[:, None]
    a, b, c = conics.unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp(opacities * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    T_after = torch.cumprod(1.0 - alpha, dim=-1)  # [P, S]
    live = T_after > T_MIN  # the splat that would take T to <= 1e-4 and everything behind it are dropped
    alpha = alpha * live
    T_before = torch.cat([torch.ones_like(T_after[:, :1]), torch.cumprod(1.0 - alpha, dim=-1)[:, :-1]], -1)
    weights = alpha * T_before
    return weights @ colors, torch.prod(1.0 - alpha, dim=-1)


def composite_dense(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    *,
    elements_per_step: int = 1 << 22,
) -> tuple[Tensor, Tensor]:
    """Same contract as ``torch_backend.composite_tiles``: ``acc [I, C, H, W]`` and ``T [I, 1, H, W]``.

    Args:
        means2d: ``[I, N, 2]``; conics: ``[I, N, 3]``; opacities: ``[I, N]``; colors: ``[I, N, C]``;
        radii: ``[I, N, 2]`` (only ``> 0`` is used, as the culling flag); depths: ``[I, N]``.
        elements_per_step: pixel-splat pairs evaluated at once (whole image rows; bounds the memory).
    """
    n_images = opacities.shape[0]
    n_ch = colors.shape[-1]
    dtype, device = means2d.dtype, means2d.device
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5
    accs, Ts = [], []
    for i in range(n_images):
        keep = torch.nonzero((radii[i] > 0).all(-1)).squeeze(1)
        keep = keep[torch.argsort(depths[i, keep].detach(), stable=True)]
        splats = (means2d[i, keep], conics[i, keep], opacities[i, keep], colors[i, keep])
        acc_rows, T_rows = [], []
        rows_per_step = max(1, elements_per_step // (width * max(1, keep.numel())))
        for y0 in range(0, height, rows_per_step):
            ys = torch.arange(y0, min(y0 + rows_per_step, height), dtype=dtype, device=device) + 0.5
            py, px = torch.meshgrid(ys, xs, indexing="ij")
            px, py = px.reshape(-1), py.reshape(-1)
            if torch.is_grad_enabled() and any(t.requires_grad for t in splats):
                acc, T = checkpoint(_composite_pixels, px, py, *splats, use_reentrant=False)
            else:
                acc, T = _composite_pixels(px, py, *splats)
            acc_rows.append(acc.reshape(len(ys), width, n_ch))
            T_rows.append(T.reshape(len(ys), width))
        accs.append(torch.cat(acc_rows, 0).permute(2, 0, 1))
        Ts.append(torch.cat(T_rows, 0).unsqueeze(0))
    return torch.stack(accs), torch.stack(Ts)

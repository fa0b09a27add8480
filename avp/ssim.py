"""SSIM (pure torch): the one implementation, used by the decoder loss (:mod:`avp.losses`) and the image metrics
(:mod:`avp.metrics.image`).

The definition is torchmetrics' (``structural_similarity_index_measure`` with ``gaussian_kernel=True``): a Gaussian
window with ``sigma = 1.5`` and ``2 * int(3.5 sigma + 0.5) + 1 = 11`` taps (scikit-image's ``gaussian_weights=True``
window, truncated at 3.5 sigma), ``K1 = 0.01``, ``K2 = 0.03``, population (biased) local variances, images
reflect-padded so the SSIM map covers every pixel, the mean of the map per image. (scikit-image instead averages only
the map's interior, away from a 5-pixel border.)

The window is applied as two 1-D passes (rows, then columns) rather than torchmetrics' one 11x11 kernel: the same
maths, so in float64 the two agree to ~1e-10; in float32 the different summation order, amplified where the local
variance ``E[x^2] - E[x]^2`` cancels (flat regions), moves values by up to ~5e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_images(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"{name}: pred and target must be [B, C, H, W] of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


def gaussian_window(sigma: float = 1.5, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian ``[2 * int(3.5 sigma + 0.5) + 1]`` (torchmetrics' and scikit-image's SSIM window)."""
    if sigma <= 0:
        raise ValueError(f"gaussian_window: sigma must be positive, got {sigma}")
    half = int(3.5 * sigma + 0.5)
    x = torch.arange(-half, half + 1, dtype=dtype, device=device)
    w = torch.exp(-(x / sigma) ** 2 / 2)
    return w / w.sum()


def ssim_map(pred: Tensor, target: Tensor, *, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
             data_range: float = 1.0) -> Tensor:
    """Local SSIM ``[B, C, H, W]`` of ``pred`` and ``target`` ``[B, C, H, W]`` (see the module docstring), in their
    dtype and on their device; differentiable."""
    _check_images(pred, target, "ssim")
    window = gaussian_window(sigma, dtype=pred.dtype, device=pred.device)
    pad = window.numel() // 2
    B, C, H, W = pred.shape
    if H <= pad or W <= pad:
        raise ValueError(f"ssim: images of {H}x{W} pixels are too small for the {window.numel()}-tap window "
                         f"(need more than {pad} pixels per side)")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target])  # [5B, C, H, W]
    stack = F.pad(stack, (pad, pad, pad, pad), mode="reflect")
    # separable Gaussian blur, one channel at a time (groups = C)
    wx = window.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    wy = window.view(1, 1, -1, 1).expand(C, 1, -1, 1)
    blurred = F.conv2d(F.conv2d(stack, wx, groups=C), wy, groups=C)  # [5B, C, H, W]
    mu_p, mu_t, e_pp, e_tt, e_pt = blurred.split(B)
    var_p = (e_pp - mu_p**2).clamp(min=0)
    var_t = (e_tt - mu_t**2).clamp(min=0)
    cov = e_pt - mu_p * mu_t
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))


def ssim(pred: Tensor, target: Tensor, *, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0) -> Tensor:
    """Per-image SSIM ``[B]`` of ``pred`` and ``target`` ``[B, C, H, W]`` (the mean of :func:`ssim_map`)."""
    return ssim_map(pred, target, sigma=sigma, k1=k1, k2=k2, data_range=data_range).flatten(1).mean(1)

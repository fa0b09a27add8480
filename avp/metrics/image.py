"""PSNR and SSIM per image, unmasked or masked, and their torchmetrics ``Metric`` accumulators.

Images are ``[B, 3, H, W]`` floats in ``0..data_range``; masks ``[B, 1, H, W]`` (or ``[B, H, W]``) weights in 0..1
(binary foreground masks, or soft ones). The dataset value is the mean over images of the per-image value.

- PSNR: ``10 log10(data_range^2 / MSE)``; masked, the MSE is the mask-weighted mean over the masked pixels and all
  channels. Identical images give ``+inf``.
- SSIM: the map of :func:`avp.ssim.ssim_map` (torchmetrics' definition: 11-tap Gaussian window, sigma 1.5, K1 0.01,
  K2 0.03, reflect padding so the map covers every pixel), the same function the decoder loss uses, in float32;
  unmasked the mean of the map, masked its mask-weighted mean. Identical images give 1. (It equals
  ``torchmetrics.functional.structural_similarity_index_measure`` to ~1e-10 in float64 and within ~5e-5 in float32,
  where the summation order differs; see :mod:`avp.ssim`.)

An image whose mask is empty has no value (NaN per image); the accumulators skip it and count it in ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from avp.metrics.unavailable import MetricValue, Unavailable
from avp.ssim import ssim_map


def _check(preds: Tensor, target: Tensor, mask: Tensor | None) -> Tensor | None:
    if preds.ndim != 4 or preds.shape != target.shape:
        raise ValueError(f"expected preds and target [B, C, H, W] of one shape; got {tuple(preds.shape)} and "
                         f"{tuple(target.shape)}")
    if mask is None:
        return None
    if mask.ndim == 3:
        mask = mask[:, None]  # [B, H, W] -> [B, 1, H, W]
    b, _, h, w = preds.shape
    if mask.shape != (b, 1, h, w):
        raise ValueError(f"expected a mask [B, 1, H, W] = {(b, 1, h, w)}; got {tuple(mask.shape)}")
    return mask.to(preds.dtype)


def psnr(preds: Tensor, target: Tensor, mask: Tensor | None = None, *, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB: ``preds``, ``target`` ``[B, C, H, W]``, ``mask`` ``[B, 1, H, W]`` or None -> ``[B]``."""
    mask = _check(preds, target, mask)
    err = (preds.float() - target.float()).square()  # [B, C, H, W]
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        weight = mask.float().expand_as(err)
        total = weight.flatten(1).sum(1)
        mse = (err * weight).flatten(1).sum(1) / total
        mse = torch.where(total > 0, mse, torch.full_like(mse, float("nan")))
    return 10 * torch.log10(data_range**2 / mse)


def ssim(preds: Tensor, target: Tensor, mask: Tensor | None = None, *, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM: ``preds``, ``target`` ``[B, C, H, W]``, ``mask`` ``[B, 1, H, W]`` or None -> ``[B]``."""
    mask = _check(preds, target, mask)
    local = ssim_map(preds.float(), target.float(), data_range=data_range)  # [B, C, H, W]
    if mask is None:
        return local.flatten(1).mean(1)
    weight = mask.float().expand_as(local)  # [B, C, H, W]
    total = weight.flatten(1).sum(1)
    value = (local * weight).flatten(1).sum(1) / total
    return torch.where(total > 0, value, torch.full_like(value, float("nan")))


class _MeanOverImages(Metric):
    """Mean of a per-image value (``per_image``, set by subclasses); images with no value (NaN: empty mask) are
    skipped and counted."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    per_image: Callable[..., Tensor]
    total: Tensor
    count: Tensor
    skipped: Tensor

    def __init__(self, masked: bool = False, data_range: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.masked = masked
        self.data_range = data_range
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """``preds``, ``target`` ``[B, 3, H, W]``; ``mask`` ``[B, 1, H, W]``, required iff ``masked``."""
        if self.masked and mask is None:
            raise ValueError(f"{type(self).__name__}(masked=True) needs a mask")
        if not self.masked and mask is not None:
            raise ValueError(f"{type(self).__name__}(masked=False) got a mask; use masked=True for masked values")
        values = type(self).per_image(preds, target, mask, data_range=self.data_range).double()
        valid = ~values.isnan()
        self.total += values[valid].sum()
        self.count += valid.sum()
        self.skipped += (~valid).sum()

    def compute(self) -> MetricValue | Tensor:
        if self.count == 0:
            return Unavailable("no image had a non-empty mask" if self.skipped > 0 else "no images")
        return (self.total / self.count).float()


class PSNR(_MeanOverImages):
    """Mean per-image PSNR (dB); ``masked=True`` takes a foreground mask in ``update``."""

    per_image = staticmethod(psnr)


class SSIM(_MeanOverImages):
    """Mean per-image SSIM; ``masked=True`` takes a foreground mask in ``update``."""

    per_image = staticmethod(ssim)

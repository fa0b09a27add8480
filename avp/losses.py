"""Losses of the decoder stage (pure torch): L1, SSIM, LPIPS, the splat regulariser and their weighted total.

``total = w_l1 * L1 + w_ssim * (1 - SSIM) + w_lpips * LPIPS + w_reg * Reg`` with the paper's weights
``1, 0.5, 0.1, 0.1`` by default (PAPER.md §5.2).

- **L1**: mean absolute error over pixels and channels.
- **SSIM**: :func:`avp.ssim.ssim` (torchmetrics' definition: 11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
  reflect padding), the one implementation, also behind the reported SSIM metric (:mod:`avp.metrics.image`).
- **LPIPS**: the mean of a given LPIPS module on images mapped to -1..1; the module must carry real pretrained
  weights (:func:`avp.metrics.lpips.load_lpips`): this file never builds one, and a non-zero weight without a module is
  an error, never a silent zero.
- **Reg** (the paper leaves it unspecified; ours, in the spirit of GaussianAvatars' position and scale losses):
  ``Reg = w_offset * mean_n (|d_n| / offset_scale)^2 + w_scale * mean_n sum_axes relu(s_n - scale_threshold) /
  scale_threshold`` over real points ``n``, where ``d_n`` is the decoder's position offset and ``s_n`` the splat's
  standard deviations (metres). The first keeps splats near the points the generator placed (the binding animates
  them from there); the second stops single splats from growing large to cover holes, which blurs under animation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from avp.ssim import ssim
from avp.types import TensorContainer


@dataclass
class LossWeights:
    """Weights of the total loss (the paper's: 1, 0.5, 0.1, 0.1)."""

    l1: float = 1.0
    """Weight of the L1 photometric term."""
    ssim: float = 0.5
    """Weight of ``1 - SSIM``."""
    lpips: float = 0.1
    """Weight of LPIPS; must be 0 unless real pretrained LPIPS weights are available."""
    reg: float = 0.1
    """Weight of the splat regulariser ``Reg``."""


@dataclass
class RegConfig:
    """The splat regulariser (see the module docstring)."""

    offset_weight: float = 1.0
    """Weight of the offset term inside ``Reg``."""
    offset_scale: float = 0.005
    """Offset (metres) at which the offset term of a point reaches 1."""
    scale_weight: float = 1.0
    """Weight of the scale term inside ``Reg``."""
    scale_threshold: float = 0.01
    """Standard deviation (metres) above which splats are penalised."""


@dataclass
class LossTerms(TensorContainer):
    """Every term of the total loss (scalars), for logging as ``train/loss_<name>``."""

    total: Tensor
    """The weighted sum."""
    l1: Tensor
    """Mean absolute error."""
    ssim: Tensor
    """``1 - SSIM`` (the SSIM loss term, not SSIM itself)."""
    lpips: Tensor
    """Mean LPIPS (0 when the weight is 0 and no module is given)."""
    reg: Tensor
    """``Reg``: weighted offset + scale terms."""
    reg_offset: Tensor
    """Offset term of ``Reg`` (unweighted)."""
    reg_scale: Tensor
    """Scale term of ``Reg`` (unweighted)."""

    def as_dict(self) -> dict[str, Tensor]:
        return {"loss": self.total, "loss_l1": self.l1, "loss_ssim": self.ssim, "loss_lpips": self.lpips,
                "loss_reg": self.reg, "loss_reg_offset": self.reg_offset, "loss_reg_scale": self.reg_scale}


def _check_images(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"{name}: pred and target must be [B, C, H, W] of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error of ``pred`` and ``target`` ``[B, C, H, W]`` (scalar)."""
    _check_images(pred, target, "l1_loss")
    return (pred - target).abs().mean()


def lpips_loss(pred: Tensor, target: Tensor, module: nn.Module | None) -> Tensor:
    """Mean LPIPS of ``pred`` and ``target`` ``[B, 3, H, W]`` in 0..1 under ``module`` (an ``lpips.LPIPS`` with
    pretrained weights, called on -1..1 images); a zero scalar when ``module`` is None."""
    _check_images(pred, target, "lpips_loss")
    if module is None:
        return pred.new_zeros(())
    return module(pred * 2 - 1, target * 2 - 1).mean()


def reg_terms(offsets: Tensor, scales: Tensor, mask: Tensor | None, config: RegConfig) -> tuple[Tensor, Tensor]:
    """The two terms of ``Reg`` (unweighted): offset ``mean_n (|d_n| / offset_scale)^2`` and scale
    ``mean_n sum_axes relu(s_n - t) / t`` over real points.

    Args:
        offsets: ``[B, N, 3]`` decoder position offsets (metres).
        scales: ``[B, N, 3]`` splat standard deviations (metres).
        mask: ``[B, N]`` bool, True for real points (None: all real).
    """
    if offsets.shape != scales.shape or offsets.ndim != 3 or offsets.shape[-1] != 3:
        raise ValueError(f"reg_terms: offsets and scales must be [B, N, 3], got {tuple(offsets.shape)} and "
                         f"{tuple(scales.shape)}")
    weight = offsets.new_ones(offsets.shape[:2]) if mask is None else mask.to(offsets.dtype)
    count = weight.sum().clamp(min=1)
    offset = ((offsets / config.offset_scale).square().sum(-1) * weight).sum() / count
    t = config.scale_threshold
    scale = ((scales - t).relu().sum(-1) / t * weight).sum() / count
    return offset, scale


def total_loss(pred: Tensor, target: Tensor, offsets: Tensor, scales: Tensor, mask: Tensor | None,
               weights: LossWeights, reg: RegConfig, lpips_module: nn.Module | None = None) -> LossTerms:
    """The decoder stage's loss.

    Args:
        pred, target: ``[B, 3, H, W]`` rendered and ground-truth images in 0..1 (any number of views and frames
            flattened into ``B``).
        offsets, scales, mask: the decoded splats, as :func:`reg_terms` takes them.
        weights: :class:`LossWeights`; ``weights.lpips > 0`` requires ``lpips_module``.
        reg: :class:`RegConfig`.
        lpips_module: LPIPS with real pretrained weights, or None.
    """
    if weights.lpips > 0 and lpips_module is None:
        raise ValueError(f"total_loss: the LPIPS weight is {weights.lpips} but no LPIPS module was given; LPIPS "
                         "needs real pretrained weights (set the weight to 0 where they are unavailable)")
    l1 = l1_loss(pred, target)
    ssim_term = 1 - ssim(pred, target).mean()
    lp = lpips_loss(pred, target, lpips_module if weights.lpips > 0 else None)
    reg_offset, reg_scale = reg_terms(offsets, scales, mask, reg)
    reg_total = reg.offset_weight * reg_offset + reg.scale_weight * reg_scale
    total = weights.l1 * l1 + weights.ssim * ssim_term + weights.lpips * lp + weights.reg * reg_total
    return LossTerms(total=total, l1=l1, ssim=ssim_term, lpips=lp, reg=reg_total, reg_offset=reg_offset,
                     reg_scale=reg_scale)

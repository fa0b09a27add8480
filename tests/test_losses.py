"""Decoder-stage losses: analytic L1 and Reg, the weighted total, LPIPS on signed images; the SSIM term is
:func:`avp.ssim.ssim` (tested against references in tests/test_ssim.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import avp.losses
import avp.ssim
from avp.losses import LossWeights, RegConfig, l1_loss, lpips_loss, reg_terms, total_loss
from avp.ssim import ssim


def _images(b: int = 2, c: int = 3, h: int = 32, w: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(b, c, h, w, dtype=torch.float64, generator=g)
    # correlated prediction (a blurred, noisy copy) so SSIM is neither ~0 nor ~1
    pred = (0.7 * target + 0.3 * torch.rand_like(target, generator=g)).clamp(0, 1)
    return pred, target


def test_the_ssim_term_is_the_one_ssim() -> None:
    """The loss takes its SSIM from :mod:`avp.ssim` (shared with the image metric), not a copy of its own."""
    assert avp.losses.ssim is avp.ssim.ssim
    pred, target = _images()
    terms = total_loss(pred, target, torch.zeros(2, 1, 3, dtype=pred.dtype), torch.zeros(2, 1, 3, dtype=pred.dtype),
                       None, LossWeights(l1=0, ssim=1, lpips=0, reg=0), RegConfig())
    assert torch.equal(terms.ssim, 1 - ssim(pred, target).mean())


def test_l1_analytic() -> None:
    pred = torch.zeros(1, 3, 4, 4)
    target = torch.zeros(1, 3, 4, 4)
    target[0, 0] = 0.5  # one channel of three off by 0.5
    assert float(l1_loss(pred, target)) == pytest.approx(0.5 / 3)


def test_reg_terms_analytic() -> None:
    cfg = RegConfig(offset_scale=0.01, scale_threshold=0.02)
    offsets = torch.tensor([[[0.01, 0.0, 0.0], [0.0, 0.02, 0.0], [5.0, 5.0, 5.0]]])
    scales = torch.tensor([[[0.01, 0.01, 0.01], [0.04, 0.01, 0.03], [9.0, 9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])  # the huge third point is padding
    offset, scale = reg_terms(offsets, scales, mask, cfg)
    assert float(offset) == pytest.approx((1.0 + 4.0) / 2)
    assert float(scale) == pytest.approx((0.0 + (0.02 + 0.01) / 0.02) / 2)


def test_total_is_the_weighted_sum() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = (t.float() for t in _images())
    offsets = torch.randn(2, 5, 3, generator=g) * 0.003
    scales = torch.rand(2, 5, 3, generator=g) * 0.03
    weights = LossWeights(l1=1.0, ssim=0.5, lpips=0.0, reg=0.1)
    reg = RegConfig(offset_weight=2.0, scale_weight=3.0)
    terms = total_loss(pred, target, offsets, scales, None, weights, reg)
    o, s = reg_terms(offsets, scales, None, reg)
    torch.testing.assert_close(terms.reg, 2.0 * o + 3.0 * s)
    expected = l1_loss(pred, target) + 0.5 * (1 - ssim(pred, target).mean()) + 0.1 * terms.reg
    torch.testing.assert_close(terms.total, expected)
    assert float(terms.lpips) == 0.0
    assert set(terms.as_dict()) >= {"loss", "loss_l1", "loss_ssim", "loss_lpips", "loss_reg"}


def test_lpips_weight_without_module_is_an_error() -> None:
    pred, target = _images()
    with pytest.raises(ValueError, match="LPIPS"):
        total_loss(pred, target, torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), None,
                   LossWeights(lpips=0.1), RegConfig())


class _MeanDistance(torch.nn.Module):
    """Stands in for an LPIPS network: records its inputs, returns a per-image distance ``[B, 1, 1, 1]``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.seen = (a.detach(), b.detach())
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_term_uses_the_module_on_signed_images() -> None:
    pred, target = _images()
    module = _MeanDistance()
    value = lpips_loss(pred, target, module)
    a, b = module.seen
    assert float(a.min()) >= -1 and float(a.max()) <= 1 and float(a.min()) < -0.5
    torch.testing.assert_close(a, pred * 2 - 1)
    torch.testing.assert_close(value, (2 * (pred - target)).abs().mean())
    terms = total_loss(pred, target, torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), None,
                       LossWeights(l1=0, ssim=0, lpips=0.5, reg=0), RegConfig(), lpips_module=module)
    torch.testing.assert_close(terms.total, 0.5 * value)
    assert np.isfinite(float(terms.total))

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torchmetrics import MetricCollection
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from avp.metrics import PSNR, SSIM, Unavailable, psnr, ssim
from avp.ssim import ssim as one_ssim
from tests.face.photos import as_tensor, astronaut

C1, C2 = 0.01**2, 0.03**2
BORDER = 5  # radius of the 11x11 Gaussian window (sigma 1.5)


def _pair(b: int = 3, h: int = 40, w: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, h, w, generator=g)
    preds = (target + 0.1 * torch.randn_like(target, generator=g)).clamp(0, 1)
    return preds, target


def test_identical_images_hit_the_bounds() -> None:
    image = as_tensor(astronaut())[None]
    assert torch.isinf(psnr(image, image)).all() and psnr(image, image).item() > 0
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-6)
    mask = torch.ones(1, 1, 512, 512)
    assert torch.isinf(psnr(image, image, mask)).all()
    assert ssim(image, image, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_unmasked_values_match_torchmetrics_and_skimage() -> None:
    preds, target = _pair()
    ours = psnr(preds, target)
    ref = peak_signal_noise_ratio(preds, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(ours, ref)
    for i in range(3):
        sk = sk_psnr(target[i].numpy().astype(np.float64), preds[i].numpy().astype(np.float64), data_range=1.0)
        assert ours[i].item() == pytest.approx(sk, abs=1e-3)
    # float32 rounding alone separates the two (another summation order; see tests/test_ssim.py)
    torch.testing.assert_close(ssim(preds, target),
                               structural_similarity_index_measure(preds, target, data_range=1.0, reduction="none"),
                               rtol=0, atol=1e-4)


def test_ssim_is_the_one_ssim_in_float32() -> None:
    """The metric evaluates :func:`avp.ssim.ssim_map` (the decoder loss's SSIM) on float32 images: unmasked it is
    exactly :func:`avp.ssim.ssim`, and a full mask gives the same value."""
    preds, target = _pair()
    expected = one_ssim(preds, target)
    assert torch.equal(ssim(preds, target), expected)
    assert torch.equal(ssim(preds.double(), target.double()), expected)  # evaluated in float32 whatever comes in
    torch.testing.assert_close(ssim(preds, target, torch.ones(3, 1, 40, 48)), expected, rtol=0, atol=1e-6)
    metric = SSIM()
    metric.update(preds, target)
    assert metric.compute().item() == pytest.approx(expected.double().mean().item(), abs=1e-7)


def test_ssim_map_is_the_standard_one_where_the_window_fits() -> None:
    """Inside the border (where padding plays no part) our map equals scikit-image's Gaussian SSIM map: a mask of
    the interior makes our masked SSIM the mean of skimage's map over the interior."""
    preds, target = _pair(b=2)
    interior = torch.zeros(2, 1, 40, 48)
    interior[:, :, BORDER:-BORDER, BORDER:-BORDER] = 1
    ours = ssim(preds, target, interior)
    for i in range(2):
        _, full = sk_ssim(target[i].double().numpy(), preds[i].double().numpy(), data_range=1.0, channel_axis=0,
                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
        expected = full[:, BORDER:-BORDER, BORDER:-BORDER].mean()
        assert ours[i].item() == pytest.approx(expected, abs=1e-5)


def test_masked_psnr_analytic() -> None:
    """Inside the mask the images differ by exactly 0.1 (MSE 0.01, 20 dB); outside they are unrelated."""
    g = torch.Generator().manual_seed(0)
    preds = torch.rand(2, 3, 32, 32, generator=g) * 0.8
    target = torch.rand(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 4:20, 8:30] = 1
    target = torch.where(mask.bool(), preds + 0.1, target)
    torch.testing.assert_close(psnr(preds, target, mask), torch.full((2,), 20.0), atol=1e-3, rtol=0)
    # a constant soft weight over the same region gives the same weighted mean
    torch.testing.assert_close(psnr(preds, target, 0.5 * mask), torch.full((2,), 20.0), atol=1e-3, rtol=0)
    # [B, H, W] masks are accepted
    torch.testing.assert_close(psnr(preds, target, mask[:, 0]), torch.full((2,), 20.0), atol=1e-3, rtol=0)
    assert psnr(preds, target).min() < 15  # the unmasked value sees the unrelated part


def test_masked_ssim_analytic() -> None:
    """Constant a against constant b on the left, noise on the right; a mask on the left that keeps the window away
    from the noise gives the luminance term alone: (2ab + C1) / (a^2 + b^2 + C1)."""
    g = torch.Generator().manual_seed(0)
    a, b = 0.3, 0.5
    preds = torch.full((1, 3, 32, 64), a)
    target = torch.full((1, 3, 32, 64), b)
    preds[..., 32:] = torch.rand(1, 3, 32, 32, generator=g)
    target[..., 32:] = torch.rand(1, 3, 32, 32, generator=g)
    mask = torch.zeros(1, 1, 32, 64)
    mask[..., : 32 - BORDER - 1] = 1
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert ssim(preds, target, mask).item() == pytest.approx(expected, abs=1e-5)
    assert abs(ssim(preds, target).item() - expected) > 0.01


def test_empty_masks_are_skipped_and_counted() -> None:
    preds, target = _pair(b=2)
    mask = torch.ones(2, 1, 40, 48)
    mask[1] = 0
    values = psnr(preds, target, mask)
    assert math.isfinite(values[0].item()) and math.isnan(values[1].item())
    metric = PSNR(masked=True)
    metric.update(preds, target, mask)
    assert metric.skipped.item() == 1 and metric.count.item() == 1
    assert metric.compute().item() == pytest.approx(values[0].item(), abs=1e-4)
    empty = SSIM(masked=True)
    empty.update(preds, target, torch.zeros(2, 1, 40, 48))
    result = empty.compute()
    assert isinstance(result, Unavailable) and "non-empty mask" in result.reason


def test_accumulators_average_per_image_values_over_updates() -> None:
    batches = [_pair(b=2, seed=1), _pair(b=3, seed=2)]
    metric = MetricCollection({"psnr": PSNR(), "ssim": SSIM()})
    for preds, target in batches:
        metric.update(preds, target)
    result = metric.compute()
    all_psnr = torch.cat([psnr(p, t) for p, t in batches])
    all_ssim = torch.cat([ssim(p, t) for p, t in batches])
    assert result["psnr"].item() == pytest.approx(all_psnr.mean().item(), abs=1e-4)
    assert result["ssim"].item() == pytest.approx(all_ssim.mean().item(), abs=1e-5)
    metric.reset()
    preds, target = batches[0]
    # forward gives the batch's own value (as in a validation_step) and accumulates
    batch_value = metric(preds, target)
    assert batch_value["psnr"].item() == pytest.approx(psnr(preds, target).mean().item(), abs=1e-4)


def test_mask_mode_is_explicit() -> None:
    preds, target = _pair()
    with pytest.raises(ValueError, match="needs a mask"):
        PSNR(masked=True).update(preds, target)
    with pytest.raises(ValueError, match="got a mask"):
        SSIM().update(preds, target, torch.ones(3, 1, 40, 48))
    with pytest.raises(ValueError, match=r"mask \[B, 1, H, W\]"):
        psnr(preds, target, torch.ones(3, 2, 40, 48))
    with pytest.raises(ValueError, match="of one shape"):
        ssim(preds, target[:, :, :20])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert isinstance(PSNR().compute(), Unavailable)

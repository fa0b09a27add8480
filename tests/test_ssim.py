"""The one SSIM (:mod:`avp.ssim`, behind the decoder loss and the image metric): analytic values, torchmetrics and
scikit-image as references, gradients, bad input."""

from __future__ import annotations

import pytest
import torch
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import structural_similarity_index_measure

from avp.ssim import gaussian_window, ssim, ssim_map
from tests.face.photos import as_tensor, astronaut

C1, C2 = 0.01**2, 0.03**2


def _images(b: int = 2, c: int = 3, h: int = 32, w: int = 40,
            dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(b, c, h, w, dtype=dtype, generator=g)
    # correlated prediction (a blurred, noisy copy) so SSIM is neither ~0 nor ~1
    pred = (0.7 * target + 0.3 * torch.rand_like(target, generator=g)).clamp(0, 1)
    return pred, target


# ---------------------------------------------------------------------------------------------------- analytic
def test_an_image_against_itself_is_one() -> None:
    image = as_tensor(astronaut())[None].double()
    torch.testing.assert_close(ssim(image, image), torch.ones(1, dtype=torch.float64), rtol=0, atol=1e-12)
    pred, target = _images()
    torch.testing.assert_close(ssim_map(target, target), torch.ones_like(target), rtol=0, atol=1e-12)


def test_constant_images_give_the_luminance_term() -> None:
    """Two constant images ``a`` and ``b``: no variance and no covariance, so the contrast-structure factor is
    ``(0 + C2) / (0 + C2) = 1`` and every pixel's SSIM is the luminance term ``(2ab + C1) / (a^2 + b^2 + C1)``; with
    ``data_range`` r both constants are r times larger and ``C1`` is r^2 times larger, which gives the same value."""
    a, b = 0.3, 0.5
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    for r in (1.0, 255.0):
        pred = torch.full((2, 3, 20, 24), a * r, dtype=torch.float64)
        target = torch.full((2, 3, 20, 24), b * r, dtype=torch.float64)
        torch.testing.assert_close(ssim_map(pred, target, data_range=r), torch.full_like(pred, expected),
                                   rtol=0, atol=1e-12)


def test_ssim_is_symmetric_and_below_one_for_different_images() -> None:
    pred, target = _images()
    torch.testing.assert_close(ssim(pred, target), ssim(target, pred), rtol=0, atol=1e-12)
    assert bool((ssim(pred, target) < 0.99).all())


# ---------------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize(("h", "w", "data_range"), [(32, 40, 1.0), (17, 64, 1.0), (24, 24, 2.0)])
def test_float64_equals_torchmetrics(h: int, w: int, data_range: float) -> None:
    """Same definition: in float64 only rounding separates the two."""
    pred, target = _images(h=h, w=w)
    pred, target = pred * data_range, target * data_range
    ours = ssim(pred, target, data_range=data_range)
    ref = structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_float32_parity_with_torchmetrics() -> None:
    """What the metric and the loss see: float32 images, a photo on a flat background among them.

    The two differ by float32 rounding alone: we blur with two 1-D 11-tap passes, torchmetrics with one 11x11 kernel,
    so the sums are taken in another order, and the local variance ``E[x^2] - E[x]^2`` is a difference of nearly equal
    numbers wherever the image is flat, where ``C2`` (9e-4) is all that damps the error. Typically ~1e-6 apart, up to
    ~5e-5 on images with large flat regions (and each is that far from the float64 value, on either side)."""
    photo = as_tensor(astronaut())[None].float()
    inside = torch.zeros(1, 1, 512, 512)
    inside[..., 100:420, 120:400] = 1
    target = photo * inside + (1 - inside)  # the head on a white background, as renders are composited
    g = torch.Generator().manual_seed(0)
    pred = torch.roll((target + 0.03 * torch.randn(target.shape, generator=g) * inside).clamp(0, 1), 2, dims=-1)
    pairs = [(pred, target), _images(b=3, h=48, w=64, dtype=torch.float32)]
    for p, t in pairs:
        ours = ssim(p, t)
        ref = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)


def test_the_interior_matches_scikit_image() -> None:
    """scikit-image (Gaussian weights, population covariance) averages the map away from a 5-pixel border."""
    pred, target = _images(b=1, h=40, w=48)
    ours = ssim_map(pred, target)[..., 5:-5, 5:-5].mean()
    ref = structural_similarity(pred[0].numpy(), target[0].numpy(), channel_axis=0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert abs(float(ours) - ref) < 1e-10


# ---------------------------------------------------------------------------------------------------- use as a loss
def test_gradients_are_finite() -> None:
    pred, target = _images()
    x = pred.clone().requires_grad_(True)
    (1 - ssim(x, target).mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_tiny_or_mismatched_images_are_refused() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="too small"):
        ssim(torch.rand(1, 3, 4, 32, generator=g), torch.rand(1, 3, 4, 32, generator=g))
    with pytest.raises(ValueError, match="of one shape"):
        ssim(torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 17, generator=g))


def test_gaussian_window() -> None:
    w = gaussian_window(1.5, dtype=torch.float64)
    assert w.numel() == 11
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(w, w.flip(0))
    with pytest.raises(ValueError, match="positive"):
        gaussian_window(0.0)

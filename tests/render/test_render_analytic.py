"""Closed-form cases every backend must reproduce (gsplat 1.5.3 rules)."""

from __future__ import annotations

import math

import pytest
import torch

from avp.render import render, rgb_to_sh0
from avp.types import GaussianCloud
from tests.render.scenes import frontal_camera

BACKENDS = ["torch", "reference"]
F64 = torch.float64


def splats(means, scales, opacities, rgb, quats=None) -> GaussianCloud:
    means = torch.as_tensor(means, dtype=F64).reshape(1, -1, 3)
    n = means.shape[1]
    scales = torch.as_tensor(scales, dtype=F64).reshape(-1, 1).expand(n, 3).reshape(1, n, 3)  # isotropic
    q = torch.tensor([1.0, 0, 0, 0], dtype=F64).expand(1, n, 4) if quats is None else torch.as_tensor(quats, dtype=F64)
    opacities = torch.as_tensor(opacities, dtype=F64).expand(n).reshape(1, n)
    return GaussianCloud(means, q.clone(), scales.clone(), opacities,
                         rgb_to_sh0(torch.as_tensor(rgb, dtype=F64).reshape(1, n, 1, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_isotropic_gaussian_profile(backend: str) -> None:
    """Peak at the principal point is opacity * colour; the profile is exp(-d^2 / 2(s^2 + 0.3)) (eps2d blur)."""
    f, z, s = 40.0, 1.0, 0.05  # 2 px standard deviation on screen
    cam = frontal_camera(33, 33, f, z, cx=16.5, cy=16.5)  # principal point on the centre of pixel (16, 16)
    rgb = torch.tensor([0.9, 0.5, 0.2], dtype=F64)
    out = render(splats([0, 0, 0], s, 0.8, rgb), cam, backend=backend)
    assert out.rgb.shape == (1, 1, 3, 33, 33)
    torch.testing.assert_close(out.rgb[0, 0, :, 16, 16], 0.8 * rgb)
    torch.testing.assert_close(out.alpha[0, 0, 0, 16, 16], torch.tensor(0.8, dtype=F64))
    var = (f * s / z) ** 2 + 0.3
    ys, xs = torch.meshgrid(torch.arange(33, dtype=F64), torch.arange(33, dtype=F64), indexing="ij")
    d2 = (xs - 16) ** 2 + (ys - 16) ** 2
    alpha = 0.8 * torch.exp(-d2 / (2 * var))
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    torch.testing.assert_close(out.alpha[0, 0, 0], alpha)
    torch.testing.assert_close(out.rgb[0, 0], alpha * rgb[:, None, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_gaussians_composite_front_to_back(backend: str) -> None:
    """Front red over back blue at one pixel: o1 red + (1 - o1) o2 blue, whatever the order in the arrays."""
    cam = frontal_camera(9, 9, 50.0, 1.0, cx=4.5, cy=4.5)
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    front_first = splats([[0, 0, 0.2], [0, 0, -0.2]], 0.01, [0.6, 0.7], [red, blue])
    back_first = splats([[0, 0, -0.2], [0, 0, 0.2]], 0.01, [0.7, 0.6], [blue, red])
    for cloud in (front_first, back_first):
        out = render(cloud, cam, backend=backend)
        torch.testing.assert_close(out.rgb[0, 0, :, 4, 4], torch.tensor([0.6, 0.0, 0.4 * 0.7], dtype=F64))
        torch.testing.assert_close(out.alpha[0, 0, 0, 4, 4], torch.tensor(1 - 0.4 * 0.3, dtype=F64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_background_composes_as_one_minus_alpha(backend: str) -> None:
    cam = frontal_camera(20, 16, 30.0, 1.0)
    cloud = splats([[0.05, 0.02, 0.0], [-0.1, 0.0, 0.1]], [0.06, 0.04], [0.7, 0.9], [[0.2, 0.4, 0.6], [1.0, 1, 0]])
    black = render(cloud, cam, backend=backend)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    for background in (bg, bg.expand(1, 1, 3), 0.25):
        out = render(cloud, cam, background=background, backend=backend)
        expected_bg = torch.as_tensor(background, dtype=F64).reshape(-1)[:3].expand(3) if isinstance(
            background, torch.Tensor) else torch.full((3,), background, dtype=F64)
        torch.testing.assert_close(out.rgb, black.rgb + (1 - black.alpha) * expected_bg[:, None, None])
        torch.testing.assert_close(out.alpha, black.alpha)
    assert (black.alpha > 0.5).any() and (black.alpha == 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_culling_behind_camera_and_near_plane(backend: str) -> None:
    cam = frontal_camera(16, 16, 20.0, 1.0)
    behind = splats([0, 0, 1.5], 0.05, 0.9, [1, 1, 1])  # camera at z = 1 looks towards -z: this is behind it
    assert render(behind, cam, backend=backend).alpha.abs().max() == 0
    close = splats([0, 0, 0.95], 0.001, 0.9, [1, 1, 1])  # 5 cm in front of the camera
    assert render(close, cam, backend=backend, near=0.1).alpha.max() == 0
    assert render(close, cam, backend=backend, near=0.01).alpha.max() > 0.5
    far = splats([0, 0, -1.0], 0.05, 0.9, [1, 1, 1])  # 2 m away
    assert render(far, cam, backend=backend, far=1.5).alpha.max() == 0
    assert render(far, cam, backend=backend).alpha.max() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_opacity_clamp_and_early_stop(backend: str) -> None:
    """alpha <= 0.999; a pixel stops before the splat that would take T to <= 1e-4 (which then adds nothing)."""
    cam = frontal_camera(5, 5, 50.0, 1.0, cx=2.5, cy=2.5)
    one = render(splats([0, 0, 0], 0.01, 1.0, [1, 1, 1]), cam, backend=backend)
    assert one.alpha[0, 0, 0, 2, 2].item() == pytest.approx(0.999, abs=1e-12)
    colours = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]
    # o = 0.995: T = 0.005 after the first; the second would give 2.5e-5 <= 1e-4, so only the first counts
    out = render(splats([[0, 0, 0.3], [0, 0, 0.2], [0, 0, 0.1], [0, 0, 0.0]], 0.01, 0.995, colours), cam,
                 backend=backend)
    torch.testing.assert_close(out.rgb[0, 0, :, 2, 2], torch.tensor([0.995, 0, 0], dtype=F64))
    torch.testing.assert_close(out.alpha[0, 0, 0, 2, 2], torch.tensor(0.995, dtype=F64))
    # o = 0.95: T = 0.05, 0.0025, 1.25e-4 after three; the fourth (6.25e-6) is dropped
    out = render(splats([[0, 0, 0.3], [0, 0, 0.2], [0, 0, 0.1], [0, 0, 0.0]], 0.01, 0.95, colours), cam,
                 backend=backend)
    expected = torch.tensor([0.95, 0.05 * 0.95, 0.0025 * 0.95], dtype=F64)
    torch.testing.assert_close(out.rgb[0, 0, :, 2, 2], expected)
    torch.testing.assert_close(out.alpha[0, 0, 0, 2, 2], torch.tensor(1 - 1.25e-4, dtype=F64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_faint_contributions_are_skipped(backend: str) -> None:
    """A splat with opacity < 1/255 is invisible; a visible splat's tail below alpha 1/255 adds exactly zero."""
    cam = frontal_camera(32, 32, 40.0, 1.0, cx=16.5, cy=16.5)
    faint = render(splats([0, 0, 0], 0.1, 0.9 / 255, [1, 1, 1]), cam, backend=backend)
    assert faint.alpha.max() == 0
    out = render(splats([0, 0, 0], 0.05, 0.5, [1, 1, 1]), cam, backend=backend)
    var = 4.0 + 0.3
    cutoff = math.sqrt(2 * var * math.log(0.5 * 255))  # distance where alpha = 1/255: ~6.5 px
    ys, xs = torch.meshgrid(torch.arange(32, dtype=F64), torch.arange(32, dtype=F64), indexing="ij")
    d = ((xs - 16) ** 2 + (ys - 16) ** 2).sqrt()
    a = out.alpha[0, 0, 0]
    assert (a[d > cutoff + 1e-6] == 0).all()
    assert (a[d < cutoff - 1e-6] >= 1 / 255).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_depth_is_alpha_normalised_camera_z(backend: str) -> None:
    cam = frontal_camera(9, 9, 50.0, 1.0, cx=4.5, cy=4.5)
    out = render(splats([[0, 0, 0.2], [0, 0, -0.3]], 0.01, [0.5, 0.5], [[1, 1, 1]] * 2), cam, backend=backend,
                 return_depth=True)
    w1, w2 = 0.5, 0.25
    assert out.depth[0, 0, 0, 4, 4].item() == pytest.approx((w1 * 0.8 + w2 * 1.3) / (w1 + w2))
    assert out.depth[0, 0, 0, 0, 0].item() == 0.0  # empty pixel

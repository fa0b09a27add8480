"""SH colour: gsplat's basis (against its pure-torch reference), the +0.5 offset and the clamp at zero."""

from __future__ import annotations

import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics

from avp.render.sh import C0, eval_sh, rgb_to_sh0, sh0_to_rgb, sh_basis


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_gsplat_reference(degree: int) -> None:
    g = torch.Generator().manual_seed(0)
    k = (degree + 1) ** 2
    dirs = torch.randn(500, 3, dtype=torch.float64, generator=g) * 3.0  # not unit: both normalise
    coeffs = torch.randn(500, k, 3, dtype=torch.float64, generator=g)
    expected = torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)  # as gsplat.rasterization
    torch.testing.assert_close(eval_sh(coeffs, dirs), expected, rtol=1e-12, atol=1e-12)


def test_basis_is_orthonormal_on_the_sphere() -> None:
    """Monte Carlo: the 16 real SH functions integrate to the identity Gram matrix over the unit sphere."""
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    Y = sh_basis(dirs, 3)  # [M, 16]
    gram = 4 * torch.pi * (Y.T @ Y) / dirs.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_degree_zero_round_trip_and_clamp() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(10, 3, generator=g)
    sh0 = rgb_to_sh0(rgb)
    torch.testing.assert_close(sh0_to_rgb(sh0), rgb)
    torch.testing.assert_close(eval_sh(sh0[:, None, :]), rgb)
    assert rgb_to_sh0(torch.full((3,), 0.5)).abs().max() == 0
    very_dark = torch.full((1, 1, 3), -10.0)
    assert torch.equal(eval_sh(very_dark), torch.zeros(1, 3))  # clamped at zero, as gsplat
    assert C0 == pytest.approx(0.5 / (torch.pi**0.5))


def test_view_dependence_needs_directions_and_valid_sizes() -> None:
    with pytest.raises(ValueError, match="viewing directions"):
        eval_sh(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="coefficients"):
        eval_sh(torch.zeros(2, 5, 3), torch.ones(2, 3))


def test_zero_direction_gives_finite_colour() -> None:
    g = torch.Generator().manual_seed(0)
    out = eval_sh(torch.randn(3, 9, 3, generator=g), torch.zeros(3, 3))
    assert torch.isfinite(out).all()

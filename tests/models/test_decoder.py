"""GaussianDecoder: shapes, parameterisations, the inputs switch, padding and gradients (random inputs)."""

from __future__ import annotations

import math

import pytest
import torch

from avp.models.decoder import DecoderConfig, GaussianDecoder
from avp.models.gaussian_activation import (
    RawSplats,
    SplatParameterisation,
    activate,
    activate_splats,
    bounded_offset,
    colour_to_sh,
)
from avp.render.sh import sh0_to_rgb

BOUNDS = torch.tensor([[-0.15, -0.2, -0.15], [0.15, 0.2, 0.15]])
D = 24


def _decoder(**kw) -> GaussianDecoder:
    cfg = DecoderConfig(**{"width": 32, "n_layers": 2, "n_heads": 4, "feature_hidden": 48, "n_frequencies": 4,
                           **kw})
    return GaussianDecoder(cfg, feature_dim=D, bounds=BOUNDS, condition_dim=16)


def _inputs(B: int = 2, N: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    points = (torch.rand(B, N, 3, generator=g) * 2 - 1) * BOUNDS[1] * 0.8
    features = torch.randn(B, N, 4, D, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 5:] = False
    condition = torch.randn(B, 5, 16, generator=g)
    return points, features, mask, condition


@pytest.mark.parametrize("sh_degree", [0, 3])
@pytest.mark.parametrize("cross_attention", [False, True])
def test_shapes_and_valid_splats(sh_degree: int, cross_attention: bool) -> None:
    dec = _decoder(sh_degree=sh_degree, cross_attention=cross_attention)
    points, features, mask, condition = _inputs()
    out = dec(points, features, mask, condition)
    c = out.cloud
    B, N = points.shape[:2]
    K = (sh_degree + 1) ** 2
    assert c.means.shape == (B, N, 3) and c.quats.shape == (B, N, 4) and c.scales.shape == (B, N, 3)
    assert c.opacities.shape == (B, N) and c.sh.shape == (B, N, K, 3) and c.sh_degree == sh_degree
    assert torch.equal(c.mask, mask)
    assert out.offsets.shape == (B, N, 3)
    torch.testing.assert_close(c.quats.norm(dim=-1), torch.ones(B, N))
    p = dec.config.splat
    assert bool((c.scales >= p.min_scale * (1 - 1e-6)).all() and (c.scales <= p.max_scale * (1 + 1e-6)).all())
    assert bool((out.offsets.abs() < p.max_offset).all())
    torch.testing.assert_close(c.means, points + out.offsets)


def test_initial_splats_follow_the_documented_init() -> None:
    """Identity-biased rotations, init_scale, opacity near 0.1, grey colour, small offsets at initialisation."""
    splat = SplatParameterisation(init_scale=0.004, init_opacity=0.1, max_offset=0.01)
    dec = _decoder(splat=splat, sh_degree=1)
    points, features, mask, _ = _inputs(B=2, N=64)
    with torch.no_grad():
        c = dec(points, features).cloud
    assert float(c.quats[..., 0].min()) > 0.95  # close to (1, 0, 0, 0)
    assert abs(float(c.opacities.mean()) - 0.1) < 0.02
    assert abs(math.log(float(c.scales.mean())) - math.log(0.004)) < 0.2
    rgb = sh0_to_rgb(c.sh[..., 0, :])
    assert abs(float(rgb.mean()) - 0.5) < 0.05
    assert float(c.sh[..., 1:, :].abs().max()) < 0.5
    assert float((c.means - points).abs().max()) < 0.5 * splat.max_offset


def test_parameterisation_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    big = torch.full((1, 1, 3), 50.0)
    assert torch.allclose(bounded_offset(big, 0.01), torch.full_like(big, 0.01))
    assert torch.allclose(bounded_offset(-big, 0.01), torch.full_like(big, -0.01))
    cloud = activate(torch.zeros(1, 2, 3), torch.tensor([[[-50.0] * 3, [50.0] * 3]]), torch.zeros(1, 2),
                     torch.tensor([[[2.0, 0, 0, 0], [0, 0, 3.0, 0]]]), torch.zeros(1, 2, 1, 3),
                     min_scale=1e-3, max_scale=0.02)
    torch.testing.assert_close(cloud.scales, torch.tensor([[[1e-3] * 3, [0.02] * 3]]))
    torch.testing.assert_close(cloud.quats, torch.tensor([[[1.0, 0, 0, 0], [0, 0, 1.0, 0]]]))
    torch.testing.assert_close(cloud.opacities, torch.full((1, 2), 0.5))
    # the DC row holds RGB logits: a logit of 0 is grey, +-large saturates at 1 / 0
    sh = colour_to_sh(torch.tensor([[[[0.0, 20.0, -20.0]]]]))
    torch.testing.assert_close(sh0_to_rgb(sh[..., 0, :]), torch.tensor([[[0.5, 1.0, 0.0]]]), atol=1e-6, rtol=0)
    # teacher-style activation (no bounds) is plain exp / sigmoid / normalise
    log_s = torch.randn(1, 3, 3, generator=g)
    torch.testing.assert_close(activate(torch.zeros(1, 3, 3), log_s, torch.zeros(1, 3), torch.ones(1, 3, 4),
                                        torch.zeros(1, 3, 1, 3)).scales, log_s.exp())


def test_activate_splats_offsets_move_the_means() -> None:
    g = torch.Generator().manual_seed(0)
    raw = RawSplats(offset=torch.full((1, 2, 3), 0.3), log_scales=torch.zeros(1, 2, 3), quats=torch.ones(1, 2, 4),
                    opacity_logits=torch.zeros(1, 2), colour=torch.zeros(1, 2, 1, 3))
    p = SplatParameterisation(max_offset=0.02)
    points = torch.randn(1, 2, 3, generator=g)
    cloud, offsets = activate_splats(points, raw, p)
    torch.testing.assert_close(offsets, torch.full((1, 2, 3), 0.02 * math.tanh(0.3)))
    torch.testing.assert_close(cloud.means, points + offsets)


def test_position_only_ignores_ar_features() -> None:
    g = torch.Generator().manual_seed(0)
    dec = _decoder(inputs="position").eval()
    points, features, mask, _ = _inputs()
    a = dec(points, features, mask)
    b = dec(points, features + 5 * torch.randn_like(features, generator=g), mask)
    c = dec(points, None, mask)
    for other in (b, c):
        torch.testing.assert_close(a.cloud.means, other.cloud.means, rtol=0, atol=0)
        torch.testing.assert_close(a.cloud.sh, other.cloud.sh, rtol=0, atol=0)
    # ...while positions matter
    d = dec(points + 0.01 * torch.randn_like(points, generator=g), features, mask)
    assert not torch.allclose(a.cloud.sh, d.cloud.sh)


def test_feature_only_ignores_positions() -> None:
    g = torch.Generator().manual_seed(0)
    dec = _decoder(inputs="ar_feature").eval()
    points, features, mask, _ = _inputs()
    a = dec(points, features, mask)
    shift = 0.02 * torch.randn_like(points, generator=g)
    b = dec(points + shift, features, mask)
    for name in ("offset", "log_scales", "quats", "opacity_logits", "colour"):
        torch.testing.assert_close(getattr(a.raw, name), getattr(b.raw, name), rtol=0, atol=0)
    # the splats sit at the (moved) points with the same offsets
    torch.testing.assert_close(b.cloud.means, a.cloud.means + shift)
    # ...while features matter
    c = dec(points, features + torch.randn_like(features, generator=g), mask)
    assert not torch.allclose(a.cloud.sh, c.cloud.sh)
    with pytest.raises(ValueError, match="hidden states"):
        dec(points, None, mask)


def test_both_uses_positions_and_features() -> None:
    g = torch.Generator().manual_seed(0)
    dec = _decoder(inputs="both").eval()
    points, features, mask, _ = _inputs()
    a = dec(points, features, mask)
    other_features = features + torch.randn_like(features, generator=g)
    other_points = points + 0.02 * torch.randn_like(points, generator=g)
    assert not torch.allclose(a.raw.colour, dec(points, other_features, mask).raw.colour)
    assert not torch.allclose(a.raw.colour, dec(other_points, features, mask).raw.colour)


def test_padding_does_not_leak_into_real_points() -> None:
    """Real points' outputs do not depend on padded entries (masked out of attention)."""
    g = torch.Generator().manual_seed(0)
    dec = _decoder(cross_attention=True).eval()
    points, features, mask, condition = _inputs()
    a = dec(points, features, mask, condition)
    p2, f2 = points.clone(), features.clone()
    p2[1, 5:] = torch.randn(2, 3, generator=g)
    f2[1, 5:] = torch.randn(2, 4, D, generator=g) * 10
    b = dec(p2, f2, mask, condition)
    torch.testing.assert_close(a.cloud.sh[1, :5], b.cloud.sh[1, :5])
    torch.testing.assert_close(a.cloud.means[1, :5], b.cloud.means[1, :5])
    # a sample alone gives the same result as inside a padded batch
    alone = dec(points[1:, :5], features[1:, :5], None, condition[1:])
    torch.testing.assert_close(alone.cloud.sh[0], a.cloud.sh[1, :5], atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter_and_the_features() -> None:
    dec = _decoder(cross_attention=True, sh_degree=1)
    points, features, mask, condition = _inputs()
    features.requires_grad_(True)
    out = dec(points, features, mask, condition)
    c = out.cloud
    loss = (c.means.sum() + c.scales.sum() + c.quats[..., 1:].sum() + c.opacities.sum() + c.sh.sum())
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"
    assert features.grad is not None and bool(features.grad.abs().sum() > 0)


def test_bad_inputs() -> None:
    dec = _decoder()
    points, features, mask, _ = _inputs()
    with pytest.raises(ValueError, match=r"features must be \[B, N, 4, D\]"):
        dec(points, features[..., :-1], mask)
    with pytest.raises(ValueError, match="points must be"):
        dec(points[0], features, mask)
    with pytest.raises(ValueError, match="inputs must be one of"):
        _decoder(inputs="nope")
    with pytest.raises(ValueError, match="sh_degree"):
        _decoder(sh_degree=4)
    with pytest.raises(ValueError, match="condition tokens"):
        _decoder(cross_attention=True)(points, features, mask)

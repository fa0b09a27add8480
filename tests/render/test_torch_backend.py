"""The tiled torch rasteriser against the dense reference (forward and gradients) and torch.autograd.gradcheck.

Tolerances: in float64 both compute the same maths in a different order (tiles and chunks, the exponent as a quadratic
in the pixel offset from the tile centre, a hand-written backward), so they agree to ~1e-12. In float32 the same
differences are rounding-level (~1e-6 relative); a threshold decision (alpha >= 1/255, T <= 1e-4) can flip on a rare
pixel, so float32 comparisons bound the median and a high quantile rather than every pixel.
"""

from __future__ import annotations

import pytest
import torch

from avp.render import render
from avp.render.torch_backend import composite_tiles
from tests.render.scenes import cameras, random_cloud, requires_grad


def _loss_and_grads(cloud, cams, backend, bg, weights):
    leaves = requires_grad(cloud)
    bg = bg.clone().requires_grad_(True)
    out = render(cloud, cams, backend=backend, background=bg, return_depth=True)
    loss = (out.rgb * weights[0]).sum() + (out.alpha * weights[1]).sum() + 0.1 * (out.depth * weights[2]).sum()
    grads = torch.autograd.grad(loss, [*leaves, bg])
    return out, grads


@pytest.mark.parametrize(("sh_degree", "opacity_logit"), [(0, 0.0), (3, 3.0)])
def test_matches_dense_reference_float64(sh_degree: int, opacity_logit: float) -> None:
    """Two avatars x two views, per-avatar cameras, SH up to degree 3, opaque scenes where pixels stop early."""
    gen = torch.Generator().manual_seed(0)
    cloud = random_cloud(150, batch=2, sh_degree=sh_degree, opacity_logit=opacity_logit, scale=0.015)
    cams = cameras(2, 36, 28)
    cams.Ks = cams.Ks.expand(2, -1, -1, -1).clone()
    cams.viewmats = torch.stack([cams.viewmats, cams.viewmats.flip(0)])
    bg = torch.rand(2, 2, 3, dtype=torch.float64, generator=gen)
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(2, 2, c, 28, 36, generator=g, dtype=torch.float64) for c in (3, 1, 1)]
    fast, g_fast = _loss_and_grads(cloud, cams, "torch", bg, weights)
    ref, g_ref = _loss_and_grads(cloud, cams, "reference", bg, weights)
    assert 0.2 < fast.alpha.mean() < 0.95
    torch.testing.assert_close(fast.rgb, ref.rgb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.alpha, ref.alpha, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.depth, ref.depth, rtol=1e-10, atol=1e-9)
    for name, a, b in zip(["means", "quats", "scales", "opacities", "sh", "background"], g_fast, g_ref):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9 * b.abs().max().item(), msg=name)


def test_early_stop_happens_in_the_opaque_scene() -> None:
    """The opaque case above exercises the T <= 1e-4 stop (otherwise it would not test it)."""
    cloud = random_cloud(150, batch=2, sh_degree=3, opacity_logit=3.0, scale=0.015)
    out = render(cloud, cameras(2, 36, 28), backend="torch")
    assert (out.alpha > 1 - 2e-4).float().mean() > 0.05


def test_matches_dense_reference_float32() -> None:
    cloud = random_cloud(600, sh_degree=1, scale=0.01, dtype=torch.float32)
    cams = cameras(2, 64, 48, dtype=torch.float32)
    bg = torch.tensor([0.2, 0.5, 0.7])
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(1, 2, c, 48, 64, generator=g) for c in (3, 1, 1)]
    fast, g_fast = _loss_and_grads(cloud, cams, "torch", bg, weights)
    ref, g_ref = _loss_and_grads(cloud, cams, "reference", bg, weights)
    diff = (fast.rgb - ref.rgb).abs()
    assert diff.median() < 1e-6 and diff.quantile(0.999) < 1e-4 and diff.max() < 1e-2
    for name, a, b in zip(["means", "quats", "scales", "opacities", "sh", "background"], g_fast, g_ref):
        rel = (a - b).norm() / b.norm()
        assert rel < 1e-3, (name, rel.item())


def test_gradcheck_compositing() -> None:
    """Finite differences of the hand-written backward on a tiny float64 scene (every input, every output)."""
    g = torch.Generator().manual_seed(0)
    cloud = random_cloud(6, scale=0.03, opacity_logit=1.0)
    cams = cameras(1, 20, 18)
    from avp.render.projection import covariance_3d, project_gaussians

    p = project_gaussians(cloud.means, covariance_3d(cloud.quats, cloud.scales), cloud.opacities,
                          cams.viewmats[None], cams.Ks[None], 20, 18)
    assert p.visible.sum() >= 4
    radii, depths = p.radii[0], p.depths[0].detach()
    colors = torch.rand(1, 6, 4, dtype=torch.float64, generator=g)

    def f(means2d, conics, opacities, colors):
        acc, T = composite_tiles(means2d, conics, opacities, colors, radii, depths, 20, 18, chunk=2)
        return acc, T

    inputs = (p.means2d[0].detach(), p.conics[0].detach(), cloud.opacities.detach(), colors)
    inputs = tuple(t.clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradcheck_full_render() -> None:
    """Through projection, SH and compositing: every cloud field."""
    cloud = random_cloud(5, sh_degree=1, scale=0.03, opacity_logit=1.0)
    cams = cameras(1, 16, 14)
    leaves = [t.detach().clone().requires_grad_(True) for t in (cloud.means, cloud.quats, cloud.scales,
                                                                cloud.opacities, cloud.sh)]

    def f(means, quats, scales, opacities, sh):
        c = type(cloud)(means, quats, scales, opacities, sh)
        out = render(c, cams, backend="torch", background=0.3)
        return out.rgb, out.alpha

    assert torch.autograd.gradcheck(f, leaves, eps=1e-7, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_chunk_and_budget_do_not_change_the_result() -> None:
    g = torch.Generator().manual_seed(0)
    cloud = random_cloud(300, scale=0.012, opacity_logit=2.0)
    cams = cameras(1, 50, 40)
    from avp.render.projection import covariance_3d, project_gaussians

    p = project_gaussians(cloud.means, covariance_3d(cloud.quats, cloud.scales), cloud.opacities,
                          cams.viewmats[None], cams.Ks[None], 50, 40)
    colours = torch.rand(1, 300, 3, dtype=torch.float64, generator=g)
    args = (p.means2d[0], p.conics[0], cloud.opacities, colours, p.radii[0], p.depths[0], 50, 40)
    acc0, T0 = composite_tiles(*args)
    for chunk, budget in [(3, 1 << 20), (7, 256 * 7 * 2), (64, 1 << 22)]:
        acc, T = composite_tiles(*args, chunk=chunk, budget=budget)
        torch.testing.assert_close(acc, acc0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(T, T0, rtol=1e-12, atol=1e-12)

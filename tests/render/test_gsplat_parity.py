"""Parity with gsplat 1.5.3 on a GPU: projection footprints, images and gradients (gsplat's own test style).

Skipped without CUDA. gsplat's first ``rasterization`` call JIT-compiles its extension (minutes), so the warm-up
call comes before anything is compared.

Tolerances: gsplat runs float32 with fast-math ``__expf`` and atomic (unordered) gradient sums, we run float32 torch;
both apply the same threshold rules, so images agree to ~1e-6 except rare pixels where a threshold decision
(alpha >= 1/255, T <= 1e-4) flips, and gradients agree to ~1e-3 relative.
"""

from __future__ import annotations

import pytest
import torch

from avp.device import select_device
from avp.render import render
from avp.render.projection import covariance_3d, project_gaussians
from tests.render.scenes import cameras, random_cloud

FIELDS = ("means", "quats", "scales", "opacities", "sh")


def _scene(device: torch.device):
    cloud = random_cloud(3000, batch=2, sh_degree=1, scale=0.008, opacity_logit=1.0, dtype=torch.float32)
    cloud.mask = torch.ones(2, 3000, dtype=torch.bool)
    cloud.mask[1, 2500:] = False  # a shorter second avatar: padded
    cloud = cloud.to(device)
    cams = cameras(3, 96, 80, dtype=torch.float32).to(device)
    bg = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(1)).to(device)
    return cloud, cams, bg


@pytest.mark.gpu
def test_projection_radii_match_gsplat_kernel() -> None:
    from gsplat import fully_fused_projection

    device = select_device("auto")
    cloud, cams, _ = _scene(device)
    opac = torch.where(cloud.mask, cloud.opacities, torch.zeros_like(cloud.opacities))
    viewmats = cams.viewmats.expand(2, -1, -1, -1).contiguous()
    Ks = cams.Ks.expand(2, -1, -1, -1).contiguous()
    radii, means2d, depths, conics, _ = fully_fused_projection(
        cloud.means, None, cloud.quats, cloud.scales, viewmats, Ks, 96, 80, eps2d=0.3, packed=False,
        near_plane=0.01, far_plane=1e3, opacities=opac,
    )
    ours = project_gaussians(cloud.means, covariance_3d(cloud.quats, cloud.scales), opac, viewmats, Ks, 96, 80,
                             near=0.01, far=1e3)
    vis = (radii > 0).all(-1)
    assert vis.sum() > 1000
    assert (vis != ours.visible).float().mean() < 1e-3
    both = vis & ours.visible
    assert (radii[both] != ours.radii[both]).any(-1).float().mean() < 1e-3  # ceil() of float32 ulp differences
    torch.testing.assert_close(ours.means2d[both], means2d[both], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.conics[both], conics[both], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(ours.depths[both], depths[both])


@pytest.mark.gpu
def test_torch_backend_matches_gsplat_forward_and_gradients() -> None:
    device = select_device("auto")
    cloud, cams, bg = _scene(device)
    render(cloud, cams, backend="gsplat")  # JIT-compiles gsplat's extension on first use
    torch.cuda.synchronize()

    outputs, grads = {}, {}
    g = torch.Generator().manual_seed(7)
    v_rgb = torch.randn(2, 3, 3, 80, 96, generator=g).to(device)
    v_alpha = torch.randn(2, 3, 1, 80, 96, generator=g).to(device)
    v_depth = torch.randn(2, 3, 1, 80, 96, generator=g).to(device)
    for backend in ("gsplat", "torch"):
        leaves = [getattr(cloud, f).detach().clone().requires_grad_(True) for f in FIELDS]
        c = type(cloud)(*leaves, mask=cloud.mask)
        out = render(c, cams, backend=backend, background=bg, return_depth=True)
        outputs[backend] = out
        if backend == "gsplat":  # depth cotangent only where coverage is solid (ED divides by alpha)
            v_depth = v_depth * (out.alpha.detach() > 0.5)
        grads[backend] = torch.autograd.grad([out.rgb, out.alpha, out.depth], leaves,
                                             grad_outputs=[v_rgb, v_alpha, v_depth])

    ref, ours = outputs["gsplat"], outputs["torch"]
    assert 0.1 < ref.alpha.mean() < 0.9
    for name in ("rgb", "alpha"):
        diff = (getattr(ours, name) - getattr(ref, name)).abs()
        assert diff.median() < 1e-5, name
        assert (diff > 1e-3).float().mean() < 1e-3, name
        assert diff.max() < 0.05, name
    solid = ref.alpha > 0.5
    depth_diff = (ours.depth - ref.depth).abs()[solid]
    assert depth_diff.median() < 1e-5 and (depth_diff > 1e-3).float().mean() < 1e-3
    for name, a, b in zip(FIELDS, grads["torch"], grads["gsplat"]):
        assert torch.isfinite(a).all(), name
        assert b.abs().max() > 0, name
        rel = ((a - b).norm() / b.norm()).item()
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        assert rel < 1e-2 and cos > 0.9999, (name, rel, cos)
        assert a[1, 2500:].abs().max() == 0 and b[1, 2500:].abs().max() == 0, name

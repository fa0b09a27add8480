"""render(): backend choice, batching and padding, camera broadcasting, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from avp.render import choose_backend, render
from avp.types import Cameras, GaussianCloud
from tests.render.scenes import cameras, random_cloud


def test_auto_is_torch_on_the_cpu_and_gsplat_needs_cuda() -> None:
    assert choose_backend("auto", torch.device("cpu"), torch.float32) == "torch"
    with pytest.raises(ValueError, match="gsplat"):
        choose_backend("gsplat", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("opengl", torch.device("cpu"), torch.float32)


def test_shapes_and_value_ranges() -> None:
    cloud = random_cloud(200, batch=3, sh_degree=2, dtype=torch.float32)
    out = render(cloud, cameras(4, 30, 20, dtype=torch.float32), return_depth=True)
    assert out.rgb.shape == (3, 4, 3, 20, 30) and out.alpha.shape == (3, 4, 1, 20, 30)
    assert out.depth.shape == (3, 4, 1, 20, 30) and out.rgb.dtype == torch.float32
    assert out.alpha.min() >= 0 and out.alpha.max() < 1 and out.rgb.min() >= 0
    assert render(cloud, cameras(4, 30, 20, dtype=torch.float32)).depth is None


def test_batch_items_and_views_are_independent() -> None:
    """Rendering a batch equals rendering each avatar (with its own cameras) alone."""
    cloud = random_cloud(120, batch=2, sh_degree=1)
    cams = cameras(3)
    per_avatar = Cameras(Ks=cams.Ks.expand(2, -1, -1, -1), viewmats=torch.stack([cams.viewmats, cams.viewmats.flip(0)]),
                         width=cams.width, height=cams.height)
    both = render(cloud, per_avatar)
    first = render(cloud[0], cams)
    second = render(cloud[1], Cameras(cams.Ks, cams.viewmats.flip(0), cams.width, cams.height))
    torch.testing.assert_close(both.rgb[0], first.rgb[0])
    torch.testing.assert_close(both.rgb[1], second.rgb[0])
    torch.testing.assert_close(render(cloud, cams).rgb[1, 2], render(cloud, per_avatar).rgb[1, 0])


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_padding_renders_as_nothing_and_gets_no_gradient(backend: str) -> None:
    cloud = random_cloud(50)
    padded = random_cloud(80, seed=1)
    for name in ("means", "quats", "scales", "opacities", "sh"):
        t = getattr(padded, name).clone()
        t[:, :50] = getattr(cloud, name)
        if name in ("means", "scales"):
            t[:, 50:] = float("nan")  # garbage in padding must not leak
        setattr(padded, name, t.requires_grad_(True))
    padded.mask = torch.arange(80)[None] < 50
    cams = cameras(2)
    out = render(padded, cams, backend=backend, background=0.5)
    torch.testing.assert_close(out.rgb, render(cloud, cams, backend=backend, background=0.5).rgb)
    out.rgb.sum().backward()
    for name in ("means", "quats", "scales", "opacities", "sh"):
        grad = getattr(padded, name).grad
        assert torch.isfinite(grad).all(), name
        assert grad[:, 50:].abs().max() == 0, name
        assert grad[:, :50].abs().max() > 0, name


def test_quaternions_are_normalised() -> None:
    cloud = random_cloud(60)
    scaled = GaussianCloud(cloud.means, cloud.quats * 7.5, cloud.scales, cloud.opacities, cloud.sh)
    torch.testing.assert_close(render(scaled, cameras()).rgb, render(cloud, cameras()).rgb)


def test_empty_clouds_render_the_background() -> None:
    g = torch.Generator().manual_seed(0)
    empty = GaussianCloud(torch.zeros(2, 0, 3), torch.zeros(2, 0, 4), torch.zeros(2, 0, 3), torch.zeros(2, 0),
                          torch.zeros(2, 0, 1, 3))
    bg = torch.rand(2, 3, 3, generator=g)
    out = render(empty, cameras(3, dtype=torch.float32), background=bg, return_depth=True)
    torch.testing.assert_close(out.rgb, bg[..., None, None].expand(2, 3, 3, 30, 40))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0
    all_padding = random_cloud(10, dtype=torch.float32)
    all_padding.mask = torch.zeros(1, 10, dtype=torch.bool)
    out = render(all_padding, cameras(1, dtype=torch.float32), background=0.25)
    assert torch.all(out.rgb == 0.25) and out.alpha.abs().max() == 0
    off_screen = random_cloud(10, dtype=torch.float32)
    off_screen.means = off_screen.means + torch.tensor([0.0, 0.0, 5.0])  # all behind the cameras
    assert render(off_screen, cameras(1, dtype=torch.float32)).alpha.abs().max() == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("means", float("nan"), "cloud.means is not finite"),
        ("means", float("inf"), "cloud.means is not finite"),
        ("scales", float("nan"), "cloud.scales is not finite"),
        ("scales", -0.01, "cloud.scales has negative"),
        ("quats", 0.0, "cloud.quats has zero-norm"),
        ("opacities", 1.5, "cloud.opacities must lie in"),
        ("sh", float("inf"), "cloud.sh is not finite"),
    ],
)
def test_bad_values_are_named(field: str, value: float, message: str) -> None:
    cloud = random_cloud(20)
    t = getattr(cloud, field).clone()
    t[0, 7] = value
    setattr(cloud, field, t)
    with pytest.raises(ValueError, match=message):
        render(cloud, cameras())


def test_value_checks_sync_the_host_only_where_that_is_free_or_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The value checks read one flag tensor back to the host: free on the CPU (kept, with their clear errors), a sync
    per call on accelerators (skipped by default there; ``check_values=True`` or ``AVP_RENDER_CHECKS=1`` turn them
    on, ``check_values=False`` off everywhere)."""
    from avp.render import api

    monkeypatch.delenv(api.CHECKS_ENV, raising=False)
    assert api.wants_value_checks(None, torch.device("cpu"))
    assert not api.wants_value_checks(None, torch.device("cuda"))
    assert api.wants_value_checks(True, torch.device("cuda")) and not api.wants_value_checks(False, torch.device("cpu"))
    monkeypatch.setenv(api.CHECKS_ENV, "1")
    assert api.wants_value_checks(None, torch.device("cuda"))
    monkeypatch.delenv(api.CHECKS_ENV)

    reads: list[int] = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or original(self))
    cloud, cams = random_cloud(20), cameras()
    unchecked = render(cloud, cams, check_values=False)  # what the accelerator default does: nothing read back
    assert reads == []
    checked = render(cloud, cams)  # the CPU default: checked, one read
    assert len(reads) == 1 and torch.equal(unchecked.rgb, checked.rgb)
    bad = random_cloud(20)
    bad.opacities[0, 3] = 1.5
    render(bad, cams, check_values=False)  # not checked when told so
    with pytest.raises(ValueError, match="cloud.opacities must lie in"):
        render(bad, cams)


def test_mismatched_shapes_are_named() -> None:
    cloud = random_cloud(20, batch=2)
    cams = cameras(2)
    with pytest.raises(ValueError, match=r"cameras\.Ks has batch size 3"):
        render(cloud, Cameras(cams.Ks.expand(3, -1, -1, -1), cams.viewmats.expand(3, -1, -1, -1), 40, 30))
    bad = GaussianCloud(cloud.means, cloud.quats, cloud.scales, cloud.opacities[:1], cloud.sh)
    with pytest.raises(ValueError, match=r"cloud\.opacities has shape \(1, 20\)"):
        render(bad, cams)
    bad = GaussianCloud(cloud.means, cloud.quats[:, :10], cloud.scales, cloud.opacities, cloud.sh)
    with pytest.raises(ValueError, match=r"cloud\.quats"):
        render(bad, cams)
    bad = GaussianCloud(cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.sh.expand(2, 20, 5, 3))
    with pytest.raises(ValueError, match=r"cloud\.sh"):
        render(bad, cams)
    bad = GaussianCloud(cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.sh, mask=torch.ones(2, 19) > 0)
    with pytest.raises(ValueError, match=r"cloud\.mask"):
        render(bad, cams)
    with pytest.raises(ValueError, match="background"):
        render(cloud, cams, background=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="near"):
        render(cloud, cams, near=0.0)
    with pytest.raises(ValueError, match=r"cloud\.means"):
        render(GaussianCloud(cloud.means[0], cloud.quats, cloud.scales, cloud.opacities, cloud.sh), cams)


def test_background_gradient_is_transmittance() -> None:
    cloud = random_cloud(40)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    out = render(cloud, cameras(1), background=bg)
    out.rgb.sum().backward()
    T_sum = (1 - out.alpha).sum().item()
    torch.testing.assert_close(bg.grad, torch.full((3,), T_sum, dtype=torch.float64))
    assert math.isfinite(T_sum)


def test_half_precision_and_mixed_dtypes_render_in_float32() -> None:
    cloud = random_cloud(40, dtype=torch.float32)
    ref = render(cloud, cameras(1, dtype=torch.float32)).rgb
    half = GaussianCloud(cloud.means.bfloat16(), cloud.quats.bfloat16(), cloud.scales.bfloat16(),
                         cloud.opacities.bfloat16(), cloud.sh.double())
    out = render(half, cameras(1)).rgb
    assert out.dtype == torch.float32
    assert (out - ref).abs().mean() < 0.02  # only the bfloat16 rounding of the inputs differs

"""render() with cameras of several leading dims ``[*L, V, ...]``: exactly the flattened ``[B, V, ...]`` render."""

from __future__ import annotations

import pytest
import torch

from avp.render import render
from avp.types import Cameras
from tests.render.scenes import cameras, random_cloud


def _per_frame_cameras(subjects: int, frames: int, views: int) -> Cameras:
    """``[subjects, frames, views]`` cameras, all different (each subject/frame gets its own orbit offset)."""
    base = cameras(subjects * frames * views)
    return Cameras(Ks=base.Ks.unflatten(0, (subjects, frames, views)),
                   viewmats=base.viewmats.unflatten(0, (subjects, frames, views)), width=base.width,
                   height=base.height)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_leading_dims_equal_the_flattened_render_exactly(backend: str) -> None:
    subjects, frames, views = 2, 3, 2
    cloud = random_cloud(60, batch=subjects * frames, sh_degree=1)  # b-major frames, as animate_gaussians emits
    cams = _per_frame_cameras(subjects, frames, views)
    flat = Cameras(Ks=cams.Ks.flatten(0, 1), viewmats=cams.viewmats.flatten(0, 1), width=cams.width,
                   height=cams.height)
    bg = torch.rand(subjects, frames, views, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lead = render(cloud, cams, background=bg, backend=backend, return_depth=True)
    want = render(cloud, flat, background=bg.flatten(0, 1), backend=backend, return_depth=True)
    assert lead.rgb.shape == (subjects * frames, views, 3, 30, 40)
    for name in ("rgb", "alpha", "depth"):
        assert torch.equal(getattr(lead, name), getattr(want, name)), name


def test_per_subject_cameras_expanded_over_frames_equal_tiled_cameras_exactly() -> None:
    """The training render: ``[B, V]`` cameras and ``[B, 3]`` backgrounds expanded (a view) to ``[B, T, V]`` give
    exactly what cameras tiled by hand to ``[B * T, V]`` give."""
    subjects, frames = 2, 3
    cloud = random_cloud(60, batch=subjects * frames, sh_degree=0)
    per_subject = _per_frame_cameras(subjects, 1, 2)
    Ks, viewmats = per_subject.Ks[:, 0], per_subject.viewmats[:, 0]  # [B, V, ...]
    V = Ks.shape[1]
    expanded = Cameras(Ks=Ks[:, None].expand(subjects, frames, V, 3, 3),
                       viewmats=viewmats[:, None].expand(subjects, frames, V, 4, 4), width=40, height=30)
    tiled = Cameras(Ks=Ks.repeat_interleave(frames, 0), viewmats=viewmats.repeat_interleave(frames, 0), width=40,
                    height=30)
    colour = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.25, 1.0]], dtype=torch.float64)  # [B, 3]
    got = render(cloud, expanded, background=colour[:, None, None].expand(subjects, frames, V, 3))
    want = render(cloud, tiled, background=colour.repeat_interleave(frames, 0)[:, None].expand(-1, V, 3))
    assert torch.equal(got.rgb, want.rgb) and torch.equal(got.alpha, want.alpha)


def test_leading_dims_that_do_not_multiply_to_the_batch_are_named() -> None:
    cloud = random_cloud(20, batch=4)
    cams = _per_frame_cameras(2, 3, 1)
    with pytest.raises(ValueError, match=r"cameras\.Ks has leading dims \(2, 3\) \(= 6 avatars\).*4 avatars"):
        render(cloud, cams)
    cloud = random_cloud(20, batch=6)
    with pytest.raises(ValueError, match="background"):
        render(cloud, cams, background=torch.zeros(3, 2, 1, 3))

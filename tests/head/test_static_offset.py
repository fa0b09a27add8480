"""A tracked subject's static offset (VHAP/GaussianAvatars ``static_offset [V, 3]``) is part of its mesh everywhere:
posing, the neutral head and binding all use the offset mesh, as GaussianAvatars' FLAME does."""

from __future__ import annotations

import pytest
import torch

from avp.head import HeadModel, face_frames, lbs, local_to_world_points, world_to_local_points
from avp.types import HeadParams
from tests.head.params import random_params


def _offset(m: HeadModel, *batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, m.n_vertices, 3, generator=g, dtype=torch.float64) * 0.004  # a few millimetres


def test_canonical_head_and_rest_joints_include_the_offset(flame_model: HeadModel) -> None:
    m = flame_model
    shape = torch.randn(2, m.n_shape, dtype=torch.float64)
    offset = _offset(m, 2)
    assert torch.allclose(m.canonical(shape, offset), m.canonical(shape) + offset)
    neutral = HeadParams.zeros(2, n_shape=m.n_shape, n_expr=m.n_expr, dtype=torch.float64)
    neutral.shape = shape
    out = m(neutral, static_offset=offset)
    J = m.J_regressor.double()
    assert torch.allclose(out.vertices, m.canonical(shape, offset), atol=1e-10)
    assert torch.allclose(out.joints, J @ m.canonical(shape, offset), atol=1e-10)  # regressed from the offset mesh
    assert torch.allclose(out.v_shaped, m.canonical(shape, offset), atol=1e-10)


def test_offsets_broadcast_over_frames_and_are_checked(flame_model: HeadModel) -> None:
    m = flame_model
    B, T = 2, 3
    p = random_params(m, B, T, dtype=torch.float64, seed=1)
    offset = _offset(m, B)
    out = m(p, static_offset=offset[:, None])  # [B, 1, V, 3] against [B, T] frames
    for b in range(B):
        one = m(p.map(lambda t, b=b: t[b]), static_offset=offset[b])
        assert torch.allclose(out.vertices[b], one.vertices, atol=1e-10)
    with pytest.raises(ValueError, match="static_offset must be"):
        m(p, static_offset=torch.zeros(B, 1, m.n_vertices - 120, 3))
    with pytest.raises(ValueError, match="static_offset must be"):
        lbs(torch.zeros(4, 3), torch.eye(3).expand(5, 3, 3), J_regressor=torch.zeros(5, 4), parents=[-1, 0, 1, 1, 1],
            weights=torch.full((4, 5), 0.2), static_offset=torch.zeros(5, 3))


def test_bound_points_are_posed_on_the_tracked_mesh(flame_model: HeadModel) -> None:
    """Points at triangle corners of the offset mesh follow the offset mesh's posed vertices (pose correctives and
    joints included); without the offset in the rig they would follow a different mesh."""
    m = flame_model
    B, N, T = 2, 50, 3
    g = torch.Generator().manual_seed(0)
    face = torch.randint(0, m.n_faces, (B, N), generator=g)
    shape = torch.randn(B, m.n_shape, generator=g, dtype=torch.float64)
    offset = _offset(m, B, seed=5)
    corner = m.faces[face][..., 1]
    batch = torch.arange(B)[:, None]
    points = m.canonical(shape, offset)[batch, corner]
    rig = m.rig(face, points, shape, static_offset=offset)
    assert torch.allclose(rig.offsets, torch.zeros_like(rig.offsets), atol=1e-12)  # on the tracked surface
    assert rig.static_offset is not None and torch.equal(rig.static_offset, offset)
    p = random_params(m, B, T, dtype=torch.float64, seed=2)
    p.shape = shape[:, None].expand(B, T, m.n_shape)
    posed = m(p, static_offset=offset[:, None]).vertices
    expected = posed[batch[..., None], torch.arange(T)[None, :, None], corner[:, None, :]]
    assert torch.allclose(rig.deform(p).means, expected, atol=1e-10)
    ignored = m(p).vertices[batch[..., None], torch.arange(T)[None, :, None], corner[:, None, :]]
    assert (expected - ignored).abs().max() > 1e-4  # the offset matters at this size


def test_face_frame_mode_follows_the_posed_offset_mesh(flame_model: HeadModel) -> None:
    """GaussianAvatars' rigid attachment: face-local coordinates on the tracked neutral mesh, mapped through the frames
    of the tracked posed mesh."""
    m = flame_model
    B, N, T = 1, 40, 2
    g = torch.Generator().manual_seed(3)
    face = torch.randint(0, m.n_faces, (B, N), generator=g)
    shape = torch.randn(B, m.n_shape, generator=g, dtype=torch.float64)
    offset = _offset(m, B, seed=6)
    rest = m.canonical(shape, offset)
    frames0 = face_frames(rest, m.faces).gather(face)
    local = torch.randn(B, N, 3, generator=g, dtype=torch.float64) * 0.3
    points = local_to_world_points(local, frames0)
    rig = m.rig(face, points, shape, static_offset=offset)
    p = random_params(m, B, T, dtype=torch.float64, seed=4)
    p.shape = shape[:, None].expand(B, T, m.n_shape)
    posed = m(p, static_offset=offset[:, None]).vertices  # [B, T, V, 3]
    frames_t = face_frames(posed, m.faces).gather(face[:, None])
    expected = local_to_world_points(local[:, None], frames_t)
    out = rig.deform(p, mode="face_frame")
    assert torch.allclose(out.means, expected, atol=1e-9)
    assert torch.allclose(world_to_local_points(points, rig.frames), local, atol=1e-9)
    # the rig keeps its offset through device/dtype moves and per-avatar slicing
    assert rig.to(torch.float32).static_offset.dtype == torch.float32
    assert rig.map(lambda t: t[:1]).static_offset.shape == (1, m.n_vertices, 3)


def test_a_shared_offset_and_bad_offsets(flame_model: HeadModel) -> None:
    m = flame_model
    face = torch.zeros(2, 3, dtype=torch.long)
    shape = torch.zeros(2, m.n_shape)
    points = m.canonical(shape)[:, :3]
    rig = m.rig(face, points, shape, static_offset=torch.zeros(m.n_vertices, 3))
    assert rig.static_offset is not None and rig.static_offset.shape == (2, m.n_vertices, 3)
    with pytest.raises(ValueError, match=r"static_offset must be \[B=2, V, 3\]"):
        m.rig(face, points, shape, static_offset=torch.zeros(3, m.n_vertices, 3))
    with pytest.raises(ValueError, match="floating point"):
        m.rig(face, points, shape, static_offset=torch.zeros(2, m.n_vertices, 3, dtype=torch.long))

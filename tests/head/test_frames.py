from __future__ import annotations

import math

import torch

from avp.head.frames import (
    face_frames,
    local_to_world_log_scales,
    local_to_world_points,
    local_to_world_quats,
    world_to_local_log_scales,
    world_to_local_points,
    world_to_local_quats,
)
from avp.rotations import axis_angle_to_matrix, axis_angle_to_quaternion, quaternion_to_matrix


def _triangles(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n * 3, 3, generator=g, dtype=torch.float64)
    return v, torch.arange(n * 3).view(n, 3)


def test_frames_follow_gaussian_avatars_definition_on_a_known_triangle() -> None:
    v = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0.5, 1.0, 0]], dtype=torch.float64)
    f = face_frames(v, torch.tensor([[0, 1, 2]]))
    # a0 = first edge, a1 = normal (+z for this counter-clockwise triangle), a2 = a0 x a1 = -y
    expected = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64)  # columns a0 a1 a2
    assert torch.allclose(f.rotations[0], expected, atol=1e-12)
    assert torch.allclose(f.centers[0], v.mean(0), atol=1e-12)
    assert torch.allclose(f.scales[0], torch.tensor(1.5, dtype=torch.float64))  # (|e1| + height) / 2 = (2 + 1) / 2


def test_frames_are_orthonormal_right_handed() -> None:
    v, faces = _triangles(500)
    R = face_frames(v, faces).rotations
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=torch.float64), atol=1e-10)


def test_frames_are_equivariant_under_similarity_transforms() -> None:
    v, faces = _triangles(100, seed=1)
    G = axis_angle_to_matrix(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    t = torch.tensor([0.5, -0.1, 2.0], dtype=torch.float64)
    a, b = face_frames(v, faces), face_frames(2.0 * v @ G.T + t, faces)
    assert torch.allclose(b.rotations, G @ a.rotations, atol=1e-10)
    assert torch.allclose(b.centers, 2.0 * a.centers @ G.T + t, atol=1e-10)
    assert torch.allclose(b.scales, 2.0 * a.scales, atol=1e-10)


def test_local_world_maps_are_inverse_and_match_the_ply_convention() -> None:
    v, faces = _triangles(64, seed=2)
    frames = face_frames(v, faces)
    g = torch.Generator().manual_seed(3)
    local = torch.randn(64, 3, generator=g, dtype=torch.float64)
    world = local_to_world_points(local, frames)
    manual = (frames.rotations @ local[..., None]).squeeze(-1) * frames.scales[:, None] + frames.centers
    assert torch.allclose(world, manual, atol=1e-12)
    assert torch.allclose(world_to_local_points(world, frames), local, atol=1e-10)
    log_s = torch.randn(64, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(local_to_world_log_scales(log_s, frames).exp(), log_s.exp() * frames.scales[:, None])
    assert torch.allclose(world_to_local_log_scales(local_to_world_log_scales(log_s, frames), frames), log_s)
    q = axis_angle_to_quaternion(torch.randn(64, 3, generator=g, dtype=torch.float64)) * 3.0  # unnormalised
    qw = local_to_world_quats(q, frames)
    assert torch.allclose(quaternion_to_matrix(qw), frames.rotations @ quaternion_to_matrix(q), atol=1e-10)
    assert torch.allclose(quaternion_to_matrix(world_to_local_quats(qw, frames)), quaternion_to_matrix(q),
                          atol=1e-10)
    legacy = local_to_world_quats(q, frames, legacy_order=True)
    assert torch.allclose(quaternion_to_matrix(legacy), quaternion_to_matrix(q) @ frames.rotations, atol=1e-10)


def test_frames_of_degenerate_triangles_stay_finite() -> None:
    v = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [0.0, 0, 0]], dtype=torch.float64, requires_grad=True)
    f = face_frames(v, torch.tensor([[0, 1, 2], [0, 3, 1]]))
    (f.rotations.sum() + f.scales.sum()).backward()
    assert torch.isfinite(f.rotations).all() and torch.isfinite(v.grad).all()
    assert math.isfinite(float(f.scales.detach().sum()))

from __future__ import annotations

import math

import torch

from avp.head.lbs import blend_shapes, forward_kinematics, lbs, pose_feature, skin
from avp.rotations import axis_angle_to_matrix

PARENTS = [-1, 0, 1, 1, 1]


def test_forward_kinematics_chains_rotations_down_the_tree() -> None:
    joints = torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 2, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float64)
    rot = torch.eye(3, dtype=torch.float64).repeat(5, 1, 1)
    rot[1] = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))  # neck turns 90 deg
    posed, T = forward_kinematics(rot, joints, PARENTS)
    # the jaw (child of the neck, one unit above it) swings to the neck's -x side
    assert torch.allclose(posed[2], torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(posed[3], torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64), atol=1e-12)
    # a point rigidly attached to joint j moves with T_j
    point = torch.tensor([0.0, 2.5, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose((T[2] @ point)[:3], torch.tensor([-1.5, 1.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_lbs_is_the_identity_at_rest_and_blends_linearly() -> None:
    g = torch.Generator().manual_seed(0)
    V = 40
    v = torch.randn(V, 3, generator=g, dtype=torch.float64)
    W = torch.rand(V, 5, generator=g, dtype=torch.float64)
    W /= W.sum(1, keepdim=True)
    Jr = torch.rand(5, V, generator=g, dtype=torch.float64)
    Jr /= Jr.sum(1, keepdim=True)
    posedirs = torch.randn(36, V * 3, generator=g, dtype=torch.float64)
    rest = lbs(v, torch.eye(3, dtype=torch.float64).repeat(5, 1, 1), J_regressor=Jr, parents=PARENTS, weights=W,
               posedirs=posedirs)
    assert torch.allclose(rest.vertices, v, atol=1e-12)  # pose feature R - I vanishes at rest
    aa = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.4
    t = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    out = lbs(v, axis_angle_to_matrix(aa), J_regressor=Jr, parents=PARENTS, weights=W, posedirs=posedirs,
              translation=t)
    v_posed = v + (pose_feature(axis_angle_to_matrix(aa)) @ posedirs).view(V, 3)
    manual = sum(W[:, j:j + 1] * ((out.transforms[j, :3, :3] @ v_posed.T).T + out.transforms[j, :3, 3])
                 for j in range(5))
    assert torch.allclose(out.vertices, manual, atol=1e-12)
    assert torch.allclose(skin(v_posed, W, out.transforms), out.vertices, atol=1e-12)
    assert torch.allclose(out.joints[0], Jr[0] @ v + t, atol=1e-12)  # the root does not move, then translates


def test_blend_shapes_is_a_linear_map() -> None:
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(7, 3, 4, generator=g, dtype=torch.float64)
    c = torch.randn(2, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(blend_shapes(c, dirs), torch.einsum("vck,bk->bvc", dirs, c), atol=1e-12)

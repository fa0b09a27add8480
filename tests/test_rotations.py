from __future__ import annotations

import math

import pytest
import torch

from avp.rotations import (
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    orthonormalize,
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
)


def _random_axis_angle(n: int, max_angle: float = math.pi * 0.999, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    return axis * torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle


def test_rodrigues_matches_a_known_rotation_and_is_a_rotation() -> None:
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                          torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    Rs = axis_angle_to_matrix(_random_axis_angle(200))
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(Rs @ Rs.transpose(-1, -2), eye.expand_as(Rs), atol=1e-12)
    assert torch.allclose(torch.linalg.det(Rs), torch.ones(200, dtype=torch.float64), atol=1e-12)


def test_round_trips_between_axis_angle_matrix_and_quaternion() -> None:
    aa = _random_axis_angle(500)
    R = axis_angle_to_matrix(aa)
    assert torch.allclose(matrix_to_axis_angle(R), aa, atol=1e-9)
    q = axis_angle_to_quaternion(aa)
    assert torch.allclose(quaternion_to_matrix(q), R, atol=1e-12)
    assert torch.allclose(quaternion_to_axis_angle(q), aa, atol=1e-9)
    q2 = matrix_to_quaternion(R)
    assert torch.allclose(quaternion_to_matrix(q2), R, atol=1e-12)
    assert (q2[:, 0] >= 0).all()


def test_matrix_to_quaternion_is_accurate_near_180_degrees() -> None:
    g = torch.Generator().manual_seed(0)
    aa = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64, generator=g), dim=-1) * (math.pi - 1e-7)
    R = axis_angle_to_matrix(aa)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-10)


def test_quaternion_product_composes_rotations_in_matrix_order() -> None:
    p, q = axis_angle_to_quaternion(_random_axis_angle(100, seed=1)), axis_angle_to_quaternion(_random_axis_angle(100))
    assert torch.allclose(quaternion_to_matrix(quaternion_multiply(p, q)),
                          quaternion_to_matrix(p) @ quaternion_to_matrix(q), atol=1e-12)
    identity = quaternion_multiply(q, quaternion_conjugate(q))
    assert torch.allclose(identity, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand_as(q), atol=1e-12)


def test_rodrigues_has_finite_gradients_at_the_zero_rotation() -> None:
    aa = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()
    # the derivative of R(w) at 0 is the cross-product matrix: d/dw (R v) = -[v]x
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda w: axis_angle_to_matrix(w) @ v, w)
    expected = torch.tensor([[0.0, v[2], -v[1]], [-v[2], 0.0, v[0]], [v[1], -v[0], 0.0]], dtype=torch.float64)
    assert torch.allclose(J, expected, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orthonormalize_returns_the_polar_factor_of_blended_rotations(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    R = axis_angle_to_matrix(_random_axis_angle(300, max_angle=0.8, seed=2))
    R2 = axis_angle_to_matrix(_random_axis_angle(300, max_angle=0.8, seed=3))
    w = torch.rand(300, 1, 1, generator=g, dtype=torch.float64)
    M = w * R + (1 - w) * R2  # what linear blend skinning produces
    U, _, Vh = torch.linalg.svd(M)
    polar = U @ Vh
    out = orthonormalize(M.to(dtype)).double()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(out, polar, atol=tol)
    # a rotation is its own polar factor
    assert torch.allclose(orthonormalize(R.to(dtype)).double(), R, atol=tol)

"""Binding and animation of points and Gaussians."""

from __future__ import annotations

import pytest
import torch

from avp.head import HeadModel, animate_gaussians, closest_point_on_triangle
from avp.rotations import axis_angle_to_matrix, quaternion_to_matrix
from avp.types import GaussianCloud, HeadParams
from tests.head.params import random_params


def _points_near_surface(m: HeadModel, B: int, N: int, seed: int = 0, offset: float = 0.004,
                         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random faces, random points near them on each subject's neutral head: (face_idx, points, shape)."""
    g = torch.Generator().manual_seed(seed)
    face = torch.randint(0, m.n_faces, (B, N), generator=g)
    shape = torch.randn(B, m.n_shape, generator=g, dtype=dtype)
    tri = m.canonical(shape)[torch.arange(B)[:, None, None], m.faces[face]]  # [B, N, 3, 3]
    w = torch.rand(B, N, 3, generator=g, dtype=dtype)
    w = w / w.sum(-1, keepdim=True)
    points = (w[..., None] * tri).sum(-2) + offset * torch.randn(B, N, 3, generator=g, dtype=dtype)
    return face, points, shape


def _rigid(params: HeadParams, seed: int = 7) -> HeadParams:
    """The same frames with only a global rotation and translation (identity pose, neutral expression)."""
    g = torch.Generator().manual_seed(seed)
    dtype = params.global_rot.dtype
    batch = params.global_rot.shape[:-1]
    p = HeadParams.zeros(*batch, n_shape=params.shape.shape[-1], n_expr=params.expr.shape[-1], dtype=dtype)
    p.global_rot = torch.randn(*batch, 3, generator=g, dtype=torch.float64).to(dtype)
    p.translation = 0.1 * torch.randn(*batch, 3, generator=g, dtype=torch.float64).to(dtype)
    return p


def test_closest_point_barycentrics_are_clamped_and_closest() -> None:
    g = torch.Generator().manual_seed(0)
    tri = torch.randn(400, 3, 3, generator=g, dtype=torch.float64)
    p = torch.randn(400, 3, generator=g, dtype=torch.float64) * 2
    bary = closest_point_on_triangle(p, tri)
    assert (bary >= 0).all() and torch.allclose(bary.sum(-1), torch.ones(400, dtype=torch.float64))
    q = (bary[..., None] * tri).sum(-2)
    # no point of a dense sampling of the triangle is closer
    u = torch.linspace(0, 1, 41, dtype=torch.float64)
    a, b = torch.meshgrid(u, u, indexing="ij")
    keep = (a + b) <= 1
    w = torch.stack([1 - a[keep] - b[keep], a[keep], b[keep]], -1)  # [S, 3]
    samples = torch.einsum("sk,nkc->nsc", w, tri)
    best = (samples - p[:, None]).norm(dim=-1).min(1).values
    assert ((q - p).norm(dim=-1) <= best + 1e-12).all()
    # points on the triangle keep their own coordinates
    inside = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64).expand(400, 3)
    on = (inside[..., None] * tri).sum(-2)
    assert torch.allclose(closest_point_on_triangle(on, tri), inside, atol=1e-9)


def test_a_point_at_a_corner_moves_exactly_like_that_vertex(builtin_model: HeadModel) -> None:
    m = builtin_model
    B, T, N = 2, 4, 64
    face, _, shape = _points_near_surface(m, B, N, dtype=torch.float64)
    corner = m.faces[face][..., 1]  # [B, N]
    points = m.canonical(shape)[torch.arange(B)[:, None], corner]
    rig = m.rig(face, points, shape)
    assert torch.allclose(rig.bary, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(B, N, 3))
    p = random_params(m, B, T, dtype=torch.float64, seed=3)
    p.shape = shape[:, None].expand(B, T, m.n_shape)
    out = rig.deform(p)
    full = m(p).vertices  # [B, T, V, 3]
    expected = full[torch.arange(B)[:, None, None], torch.arange(T)[None, :, None], corner[:, None, :]]
    assert torch.allclose(out.means, expected, atol=1e-10)


def test_zero_parameters_leave_points_in_place(builtin_model: HeadModel) -> None:
    m = builtin_model
    face, points, shape = _points_near_surface(m, 2, 100)
    rig = m.rig(face, points, shape)
    zero = HeadParams.zeros(2, 3, n_shape=m.n_shape, n_expr=m.n_expr)
    for mode in ("lbs", "face_frame"):
        out = rig.deform(zero, mode=mode)
        assert torch.allclose(out.means, points[:, None].expand(2, 3, 100, 3), atol=1e-6), mode
        assert torch.allclose(out.rotations, torch.eye(3).expand(2, 3, 100, 3, 3), atol=1e-5), mode


@pytest.mark.parametrize("mode", ["lbs", "face_frame"])
def test_global_motion_moves_bound_points_rigidly(builtin_model: HeadModel, mode: str) -> None:
    m = builtin_model
    B, T, N = 2, 3, 80
    face, points, shape = _points_near_surface(m, B, N, seed=1, dtype=torch.float64)
    rig = m.rig(face, points, shape)
    p = random_params(m, B, T, dtype=torch.float64, seed=2)
    p.global_rot.zero_()
    p.translation.zero_()
    base = rig.deform(p, mode=mode)
    moved_params = HeadParams(p.shape, p.expr, _rigid(p).global_rot, p.neck_pose, p.jaw_pose, p.eyes_pose,
                              _rigid(p).translation)
    moved = rig.deform(moved_params, mode=mode)
    R = axis_angle_to_matrix(moved_params.global_rot)[:, :, None]  # [B, T, 1, 3, 3]
    root = (m.J_regressor.double() @ m.canonical(shape))[:, None, None, 0]  # the root joint never moves
    expected = ((base.means - root)[..., None, :] @ R.transpose(-1, -2)).squeeze(-2) + root \
        + moved_params.translation[:, :, None]
    assert torch.allclose(moved.means, expected, atol=1e-9)
    assert torch.allclose(moved.rotations, R @ base.rotations, atol=1e-9)


def test_lbs_and_face_frames_agree_on_rigid_motion(builtin_model: HeadModel) -> None:
    m = builtin_model
    B, T, N = 2, 3, 120
    face, points, shape = _points_near_surface(m, B, N, seed=3, dtype=torch.float64)
    rig = m.rig(face, points, shape)
    p = _rigid(random_params(m, B, T, dtype=torch.float64))
    a, b = rig.deform(p, mode="lbs"), rig.deform(p, mode="face_frame")
    assert torch.allclose(a.means, b.means, atol=1e-9)
    assert torch.allclose(a.rotations, b.rotations, atol=1e-9)
    assert torch.allclose(b.scale_factors, torch.ones_like(b.scale_factors), atol=1e-9)


def test_rotations_are_orthonormal_and_follow_the_skin(builtin_model: HeadModel) -> None:
    m = builtin_model
    B, T, N = 1, 2, 200
    face, points, shape = _points_near_surface(m, B, N, seed=4, offset=0.0)
    rig = m.rig(face, points, shape)
    p = random_params(m, B, T, seed=5)
    R = rig.deform(p).rotations
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(B, T, N), atol=1e-5)
    # the skinning rotation of a point on a rigid part (eyeball) is its joint's rotation
    eyeball = m.face_regions["left_eyeball"][:5]
    rig_eye = m.rig(eyeball[None], m.canonical(shape)[0, m.faces[eyeball, 0]][None], shape)
    out = rig_eye.deform(p)
    posed = m(HeadParams(shape[:, None].expand(B, T, -1), p.expr, p.global_rot, p.neck_pose, p.jaw_pose,
                         p.eyes_pose, p.translation))
    assert torch.allclose(out.rotations, posed.transforms[:, :, None, 3, :3, :3].expand_as(out.rotations), atol=1e-5)


def test_decoder_offsets_are_animated_and_differentiable(builtin_model: HeadModel) -> None:
    m = builtin_model
    face, points, shape = _points_near_surface(m, 2, 50, seed=6)
    rig = m.rig(face, points, shape)
    means = (points + 0.001).requires_grad_(True)
    p = random_params(m, 2, 3, seed=7)
    for mode in ("lbs", "face_frame"):
        out = rig.deform(p, means=means, mode=mode)
        (g,) = torch.autograd.grad(out.means.sum(), means)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    # moving the canonical point by d moves the posed point by the blended skinning transform, close to R d
    d = torch.zeros_like(points)
    d[..., 0] = 1e-4
    a, b = rig.deform(p, means=points), rig.deform(p, means=points + d)
    assert torch.allclose(b.means - a.means, (a.rotations @ d[:, None, :, :, None]).squeeze(-1), atol=1e-5)


def test_animate_gaussians_rotates_quaternions_and_flattens_b_major(builtin_model: HeadModel) -> None:
    m = builtin_model
    B, T, N = 2, 3, 40
    face, points, shape = _points_near_surface(m, B, N, seed=8)
    g = torch.Generator().manual_seed(9)
    quats = torch.nn.functional.normalize(torch.randn(B, N, 4, generator=g), dim=-1)
    cloud = GaussianCloud(means=points, quats=quats, scales=torch.rand(B, N, 3, generator=g) * 0.01,
                          opacities=torch.rand(B, N, generator=g), sh=torch.rand(B, N, 1, 3, generator=g),
                          mask=torch.rand(B, N, generator=g) > 0.1)
    rig = m.rig(face, points, shape)
    p = random_params(m, B, T, seed=10)
    for mode in ("lbs", "face_frame"):
        out = animate_gaussians(rig, cloud, p, mode=mode)
        assert out.means.shape == (B * T, N, 3) and out.quats.shape == (B * T, N, 4)
        d = rig.deform(p, mode=mode)
        b, t = 1, 2
        assert torch.allclose(out.means[b * T + t], d.means[b, t])
        assert torch.equal(out.mask[b * T + t], cloud.mask[b]) and torch.equal(out.sh[b * T + t], cloud.sh[b])
        assert torch.allclose(quaternion_to_matrix(out.quats[b * T + t]),
                              d.rotations[b, t] @ quaternion_to_matrix(quats[b]), atol=1e-5)
        expected_scales = cloud.scales[b] * (1 if d.scale_factors is None else d.scale_factors[b, t, :, None])
        assert torch.allclose(out.scales[b * T + t], expected_scales)


def test_bad_input_is_named(builtin_model: HeadModel) -> None:
    m = builtin_model
    face, points, shape = _points_near_surface(m, 1, 10)
    with pytest.raises(ValueError, match="face_idx"):
        m.rig(face + m.n_faces, points, shape)
    with pytest.raises(ValueError, match="face_idx"):
        m.rig(face - 2 * m.n_faces, points, shape)
    with pytest.raises(ValueError, match="points"):
        m.rig(face, points[..., :2], shape)
    with pytest.raises(ValueError, match="shape"):
        m.rig(face, points, shape[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        m.rig(face, points * float("nan"), shape)
    rig = m.rig(face, points, shape)
    with pytest.raises(ValueError, match="HeadParams"):
        rig.deform(HeadParams.zeros(1, n_shape=m.n_shape, n_expr=m.n_expr))  # missing the T dimension
    with pytest.raises(ValueError, match="means"):
        rig.deform(HeadParams.zeros(1, 2, n_shape=m.n_shape, n_expr=m.n_expr), means=points[:, :5])
    with pytest.raises(ValueError, match="mode"):
        rig.deform(HeadParams.zeros(1, 2, n_shape=m.n_shape, n_expr=m.n_expr), mode="dqs")


def test_float64_rigs(builtin_model: HeadModel) -> None:
    m = builtin_model
    face, points, shape = _points_near_surface(m, 1, 30, dtype=torch.float64)
    rig = m.rig(face, points, shape)
    out = rig.deform(random_params(m, 1, 2, dtype=torch.float64))
    assert out.means.dtype == torch.float64 and rig.blend_dirs.dtype == torch.float64


@pytest.mark.gpu
def test_rig_on_the_inputs_device(builtin_model: HeadModel) -> None:
    m = builtin_model
    face, points, shape = _points_near_surface(m, 2, 100)
    cpu = m.rig(face, points, shape).deform(random_params(m, 2, 3))
    rig = m.rig(face.to("cuda"), points.to("cuda"), shape.to("cuda"))
    out = rig.deform(random_params(m, 2, 3).to(device="cuda"))
    assert out.means.is_cuda
    assert torch.allclose(out.means.cpu(), cpu.means, atol=1e-5)

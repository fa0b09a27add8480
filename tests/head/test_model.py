"""HeadModel properties on the built-in head (the FLAME loader has its own file)."""

from __future__ import annotations

import pytest
import torch

from avp.head import HeadConfig, HeadModel, load_head_model
from avp.rotations import axis_angle_to_matrix
from avp.types import HeadParams
from tests.head.params import random_params


def test_zero_parameters_give_the_template(builtin_model: HeadModel) -> None:
    m = builtin_model
    out = m(HeadParams.zeros(2, n_shape=m.n_shape, n_expr=m.n_expr))
    assert out.vertices.shape == (2, m.n_vertices, 3)
    assert torch.allclose(out.vertices, m.v_template.expand(2, -1, -1), atol=1e-7)
    assert torch.allclose(out.transforms, torch.eye(4).expand(2, m.n_joints, 4, 4), atol=1e-7)
    assert torch.equal(m.canonical(torch.zeros(m.n_shape)), m.v_template)


def test_gradients_reach_every_parameter(builtin_model: HeadModel) -> None:
    m = builtin_model
    p = random_params(m, 2, dtype=torch.float64)
    for name in p.as_dict():
        getattr(p, name).requires_grad_(True)
    out = m(p)
    (out.vertices.square().sum() + out.joints.sum()).backward()
    for name, value in p.as_dict().items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
        assert value.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_float64_and_batch_dims(builtin_model: HeadModel) -> None:
    p = random_params(builtin_model, 2, 3, dtype=torch.float64)
    out = builtin_model(p)
    assert out.vertices.dtype == torch.float64 and out.vertices.shape[:2] == (2, 3)
    flat = builtin_model(p.map(lambda t: t.flatten(0, 1)))
    assert torch.allclose(out.vertices.flatten(0, 1), flat.vertices, atol=1e-12)
    out32 = builtin_model(p.map(lambda t: t.float()))
    assert (out32.vertices.double() - out.vertices).abs().max() < 1e-5


def test_global_rotation_and_translation_move_the_mesh_rigidly(builtin_model: HeadModel) -> None:
    m = builtin_model
    p = random_params(m, 3, dtype=torch.float64, seed=1)
    p.global_rot.zero_()
    p.translation.zero_()
    base = m(p)
    g = torch.Generator().manual_seed(5)
    rot = torch.randn(3, 3, generator=g, dtype=torch.float64)
    t = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.1
    moved = m(HeadParams(p.shape, p.expr, rot, p.neck_pose, p.jaw_pose, p.eyes_pose, t))
    R = axis_angle_to_matrix(rot)
    root = base.joints[:, :1]  # the global rotation turns about the root joint
    expected = ((base.vertices - root) @ R.transpose(-1, -2)) + root + t[:, None]
    assert torch.allclose(moved.vertices, expected, atol=1e-10)
    assert torch.allclose(moved.joints, ((base.joints - root) @ R.transpose(-1, -2)) + root + t[:, None], atol=1e-10)


def _region_vertices(m: HeadModel, region: str) -> torch.Tensor:
    return torch.unique(m.faces[m.face_regions[region]])


def test_jaw_opens_the_lower_lip_and_chin_but_not_the_forehead(builtin_model: HeadModel) -> None:
    m = builtin_model
    p = HeadParams.zeros(1, n_shape=m.n_shape, n_expr=m.n_expr)
    rest = m(p).vertices[0]
    p.jaw_pose[0, 0] = 0.3
    opened = m(p).vertices[0]
    moved = (opened - rest).norm(dim=-1)
    lips = _region_vertices(m, "lips")
    central = lips[rest[lips, 0].abs() < 0.015]
    lower_lip = central[rest[central, 1] < -0.058]
    upper_lip = central[rest[central, 1] > -0.05]
    assert moved[lower_lip].mean() > 0.01  # about a centimetre for 0.3 rad
    assert moved[upper_lip].max() < 1e-3
    assert moved[_region_vertices(m, "chin")].mean() > 0.015
    assert moved[_region_vertices(m, "forehead")].max() == 0
    assert moved[_region_vertices(m, "lower_teeth")].min() > 0.005
    assert moved[_region_vertices(m, "upper_teeth")].max() == 0
    # the lower lip moves down, and the mouth really opens: the rim copies separate
    assert (opened[lower_lip, 1] - rest[lower_lip, 1]).mean() < -0.005


def test_eye_pose_moves_only_eyeball_vertices(builtin_model: HeadModel) -> None:
    m = builtin_model
    p = HeadParams.zeros(1, n_shape=m.n_shape, n_expr=m.n_expr)
    rest = m(p).vertices[0]
    p.eyes_pose[0] = torch.tensor([0.1, 0.3, 0.0, -0.2, 0.25, 0.0])
    moved = (m(p).vertices[0] - rest).norm(dim=-1) > 0
    eyeballs = torch.zeros(m.n_vertices, dtype=torch.bool)
    eyeballs[_region_vertices(m, "eyeballs")] = True
    assert moved[eyeballs].all() and not moved[~eyeballs].any()
    # each eyeball turns rigidly about its centre (the eye joint)
    left = _region_vertices(m, "left_eyeball")
    center = (m.J_regressor @ m.v_template)[3]
    assert torch.allclose((rest[left] - center).norm(dim=-1), (m(p).vertices[0][left] - center).norm(dim=-1),
                          atol=1e-6)


def test_expressions_leave_the_skull_teeth_and_eyeballs_alone(builtin_model: HeadModel) -> None:
    m = builtin_model
    still = torch.cat([_region_vertices(m, r) for r in ("ears", "teeth", "eyeballs")])
    back = torch.nonzero(m.v_template[:, 2] < -0.01).flatten()
    low_neck = torch.nonzero(m.v_template[:, 1] < -0.13).flatten()
    assert m.exprdirs[torch.cat([still, back, low_neck])].abs().max() == 0
    assert m.exprdirs[_region_vertices(m, "lips")].abs().max() > 2e-3


def test_n_shape_and_n_expr_truncate_the_bases() -> None:
    full = load_head_model()
    small = load_head_model(HeadConfig(n_shape=5, n_expr=3))
    assert (small.n_shape, small.n_expr) == (5, 3)
    assert torch.equal(small.shapedirs, full.shapedirs[..., :5])
    with pytest.raises(ValueError, match="n_shape"):
        load_head_model(HeadConfig(n_shape=full.n_shape + 1))


def test_wrong_parameter_shapes_are_named(builtin_model: HeadModel) -> None:
    p = HeadParams.zeros(2, n_shape=builtin_model.n_shape, n_expr=builtin_model.n_expr + 1)
    with pytest.raises(ValueError, match="HeadParams.expr"):
        builtin_model(p)
    with pytest.raises(ValueError, match="shape"):
        builtin_model.canonical(torch.zeros(3))


def test_canonical_bounds_hold_plausible_heads(builtin_model: HeadModel) -> None:
    m = builtin_model
    lo, hi = m.canonical_bounds()
    g = torch.Generator().manual_seed(0)
    heads = m.canonical(torch.randn(64, m.n_shape, generator=g).clamp(-3, 3))
    assert (heads >= lo).all() and (heads <= hi).all()
    # room for hair: well above the crown and behind the skull
    assert hi[1] - m.v_template[:, 1].max() > 0.05 and m.v_template[:, 2].min() - lo[2] > 0.08


def test_the_model_moves_to_another_dtype_and_inputs_pick_the_buffers(builtin_model: HeadModel) -> None:
    m = load_head_model().to(torch.float64)
    assert m.v_template.dtype == torch.float64
    p = random_params(m, 1, dtype=torch.float32)
    assert m(p).vertices.dtype == torch.float32  # buffers follow the inputs' dtype


@pytest.mark.gpu
def test_runs_on_the_inputs_device() -> None:
    m = load_head_model()
    p = random_params(m, 2).to(device="cuda")
    out = m(p)
    assert out.vertices.is_cuda
    assert torch.allclose(out.vertices.cpu(), m(random_params(m, 2)).vertices, atol=1e-5)

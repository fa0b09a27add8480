"""Camera construction: OpenCV axes, look-at geometry, intrinsics and orbits."""

from __future__ import annotations

import math

import pytest
import torch

from avp.render import intrinsics, look_at, orbit_cameras


def _project(view: torch.Tensor, K: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    pc = view[:3, :3] @ p + view[:3, 3]
    uvw = K @ pc
    return uvw[:2] / uvw[2]


def test_frontal_camera_axes() -> None:
    """A camera on +z looking at the origin: world +x is image right, world +y is image up, depth is positive."""
    view = look_at(torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    K = intrinsics(focal=100.0, width=64, height=48, dtype=torch.float64)
    R = view[:3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64))
    assert torch.linalg.det(R) == pytest.approx(1.0)
    centre = _project(view, K, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(centre, torch.tensor([32.0, 24.0], dtype=torch.float64))
    right = _project(view, K, torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64))
    up = _project(view, K, torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64))
    assert right[0] > 32.0 and right[1] == pytest.approx(24.0)
    assert up[1] < 24.0 and up[0] == pytest.approx(32.0)
    assert (view[:3, :3] @ torch.zeros(3, dtype=torch.float64) + view[:3, 3])[2] == pytest.approx(2.0)


def test_look_at_straight_down_is_still_a_rotation() -> None:
    view = look_at(torch.tensor([0.0, 3.0, 0.0]), torch.zeros(3))
    R = view[:3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(R[2], torch.tensor([0.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="coincide"):
        look_at(torch.zeros(3), torch.zeros(3))


def test_intrinsics_fov() -> None:
    K = intrinsics(fov_y_deg=90.0, width=200, height=100)
    assert K[1, 1].item() == pytest.approx(50.0)
    assert K[0, 2].item() == 100.0 and K[1, 2].item() == 50.0
    with pytest.raises(ValueError, match="exactly one"):
        intrinsics(30.0, 10, 10, focal=5.0)


def test_orbit_cameras_look_at_target_from_radius() -> None:
    target = torch.tensor([0.1, -0.05, 0.02], dtype=torch.float64)
    cams = orbit_cameras(5, 0.7, (-60, 60), (-10, 30), target, 25.0, 80, 60, dtype=torch.float64)
    assert cams.Ks.shape == (5, 3, 3) and cams.viewmats.shape == (5, 4, 4)
    centres = cams.camera_centers()
    torch.testing.assert_close((centres - target).norm(dim=-1), torch.full((5,), 0.7, dtype=torch.float64))
    for view, K in zip(cams.viewmats, cams.Ks):
        torch.testing.assert_close(_project(view, K, target), torch.tensor([40.0, 30.0], dtype=torch.float64))
    # the middle camera is frontal (+z side) at zero yaw, raised by the mid pitch of 10 degrees
    c = centres[2] - target
    assert c[0].item() == pytest.approx(0.0, abs=1e-12)
    assert math.degrees(math.asin(c[1].item() / 0.7)) == pytest.approx(10.0)
    g = torch.Generator().manual_seed(0)
    random = orbit_cameras(4, 0.5, (-30, 30), (0, 0), generator=g)
    assert random.Ks.shape == (4, 3, 3)

"""Landmarks, blendshapes and head pose on real photos.

Pose tests use transformations whose effect on the true pose is known exactly, so they test the estimate without a
ground-truth pose: mirroring negates yaw and roll and keeps pitch; rotating the image about its centre is a camera
roll, which adds the angle to roll and nothing else (with R = Rz(roll) Ry(yaw) Rx(pitch)); a 3D turn of the face's own
landmark surface about the vertical axis (tests/face/mesh_render.py) changes yaw.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avp.face import detect_landmarks, pose_from_matrix
from avp.face.landmarks import N_BLENDSHAPES, N_LANDMARKS
from tests.face.mesh_render import render_turned
from tests.face.photos import as_tensor, astronaut, brick, coffee, grace_hopper, rotate_in_plane, rotate_points

NOSE_TIP = 1


def _face(image: np.ndarray):
    faces = detect_landmarks(image)
    assert len(faces) == 1
    return faces[0]


@pytest.mark.parametrize("photo", [astronaut, grace_hopper])
def test_landmarks_blendshapes_and_pose_on_a_portrait(photo) -> None:
    image = photo()
    face = _face(image)
    h, w = image.shape[:2]
    assert face.points.shape == (N_LANDMARKS, 3) and face.image_size == (h, w)
    assert (face.xy >= 0).all() and (face.xy[:, 0] < w).all() and (face.xy[:, 1] < h).all()
    assert len(face.blendshapes) == N_BLENDSHAPES and "jawOpen" in face.blendshapes
    assert all(0.0 <= v <= 1.0 for v in face.blendshapes.values())
    assert face.blendshape_array().shape == (N_BLENDSHAPES,)
    # both are near-frontal portraits
    assert abs(face.pose.yaw) < 20 and abs(face.pose.roll) < 15 and abs(face.pose.pitch) < 30
    assert face.pose.matrix.shape == (4, 4)
    box = face.box
    assert box.x0 < face.xy[NOSE_TIP, 0] < box.x1 and box.source == "mediapipe"


def test_tensor_and_array_inputs_agree() -> None:
    a = _face(astronaut())
    t = _face(as_tensor(astronaut()))
    np.testing.assert_allclose(a.points, t.points)


@pytest.mark.parametrize("photo", [coffee, brick])
def test_non_faces_have_no_landmarks(photo) -> None:
    assert detect_landmarks(photo()) == []


def test_mirroring_negates_yaw_and_roll_and_keeps_pitch() -> None:
    image = astronaut()
    face, mirrored = _face(image), _face(image[:, ::-1])
    assert mirrored.pose.yaw == pytest.approx(-face.pose.yaw, abs=2.5)
    assert mirrored.pose.roll == pytest.approx(-face.pose.roll, abs=2.5)
    assert mirrored.pose.pitch == pytest.approx(face.pose.pitch, abs=2.5)
    width = image.shape[1]
    assert mirrored.xy[NOSE_TIP, 0] == pytest.approx(width - face.xy[NOSE_TIP, 0], abs=3)


@pytest.mark.parametrize("degrees", [-15.0, 20.0])
def test_rotating_the_image_changes_roll_by_the_angle(degrees: float) -> None:
    image = astronaut()
    face = _face(image)
    turned = _face(rotate_in_plane(image, degrees))
    # measured: +20.1 for 20, -14.8 for -15; yaw and pitch within 1.2
    assert turned.pose.roll - face.pose.roll == pytest.approx(degrees, abs=2.0)
    assert turned.pose.yaw == pytest.approx(face.pose.yaw, abs=2.5)
    assert turned.pose.pitch == pytest.approx(face.pose.pitch, abs=2.5)
    expected_nose = rotate_points(face.xy[[NOSE_TIP]], degrees, *image.shape[:2])[0]
    assert np.linalg.norm(turned.xy[NOSE_TIP] - expected_nose) < 4


@pytest.mark.parametrize("degrees", [-20.0, 20.0])
def test_turning_the_face_in_3d_changes_yaw_towards_the_applied_angle(degrees: float) -> None:
    image = astronaut()
    points = _face(image).points
    # the reference is the same surface rendered unturned, so texture and background artefacts cancel
    front = _face(render_turned(image, points, 0.0)).pose
    turned = _face(render_turned(image, points, degrees)).pose
    change = turned.yaw - front.yaw
    # measured: -15.8 for -20 and +14.3 for +20 (mediapipe's relative depth flattens the surface, see mesh_render.py)
    assert np.sign(change) == np.sign(degrees)
    assert 0.5 * abs(degrees) < abs(change) < 1.25 * abs(degrees)
    assert abs(turned.pitch - front.pitch) < 5 and abs(turned.roll - front.roll) < 5


def test_pose_angles_of_known_rotations() -> None:
    yaw, pitch, roll = 25.0, -10.0, 7.0
    rot = (Rotation.from_euler("z", roll, degrees=True) * Rotation.from_euler("y", yaw, degrees=True)
           * Rotation.from_euler("x", pitch, degrees=True)).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = 1.03 * rot  # mediapipe's matrices carry a slight scale
    matrix[:3, 3] = [1.0, 2.0, -50.0]
    pose = pose_from_matrix(matrix)
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=1e-6)
    np.testing.assert_allclose(pose.angles(), [yaw, pitch, roll], atol=1e-6)
    # a camera roll by a (left-multiplying Rz) adds a to roll only
    rolled = pose_from_matrix(Rotation.from_euler("z", 12, degrees=True).as_matrix() @ rot)
    assert (rolled.yaw, rolled.pitch, rolled.roll) == pytest.approx((yaw, pitch, roll + 12), abs=1e-6)
    # a mirror (conjugation by diag(-1, 1, 1)) negates yaw and roll
    flip = np.diag([-1.0, 1.0, 1.0])
    mirrored = pose_from_matrix(flip @ rot @ flip)
    assert (mirrored.yaw, mirrored.pitch, mirrored.roll) == pytest.approx((-yaw, pitch, -roll), abs=1e-6)

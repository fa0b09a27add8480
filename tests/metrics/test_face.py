"""Identity, AKD and APD on real photos, with transformations whose effect is known (see tests/face)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avp.face import FaceToolsUnavailable, _models, detect_landmarks
from avp.metrics import (
    IdentitySimilarity,
    KeypointPoseDistance,
    Unavailable,
    identity_scores,
    keypoint_pose_scores,
)
from tests.face.mesh_render import render_turned
from tests.face.photos import as_tensor, astronaut, brick, grace_hopper, rescale, rotate_in_plane


def _batch(*images: np.ndarray) -> torch.Tensor:
    return torch.stack([as_tensor(i) for i in images])


def test_identity_of_mirror_is_high_of_another_face_low_and_detection_rate_counts_misses() -> None:
    source = as_tensor(astronaut())
    renders = _batch(astronaut(), astronaut()[:, ::-1], grace_hopper()[:512], brick())
    scores = identity_scores(renders, source)
    assert scores.render_detected.tolist() == [True, True, True, False]
    assert scores.source_detected.all()
    cos = scores.cosine.tolist()
    assert cos[0] == pytest.approx(1.0, abs=1e-5) and cos[1] > 0.97 and cos[2] < cos[1] - 0.05
    assert np.isnan(cos[3]) and np.isnan(scores.distance[3].item())
    metric = IdentitySimilarity()
    metric.update(renders[:2], source)
    metric.update(renders[2:], source[None])
    out = metric.compute()
    assert out["face_detection_rate"].item() == pytest.approx(3 / 4)
    assert out["identity_cosine"].item() == pytest.approx(np.mean(cos[:3]), abs=1e-5)
    assert out["identity_distance"].item() == pytest.approx(scores.distance[:3].mean().item(), abs=1e-5)
    assert out["identity_same_rate"].item() == pytest.approx(2 / 3)  # Grace Hopper is a different person


def test_identity_with_no_face_anywhere_is_unavailable_but_the_rate_is_zero() -> None:
    metric = IdentitySimilarity()
    metric.update(_batch(brick()), as_tensor(astronaut()))
    out = metric.compute()
    assert out["face_detection_rate"].item() == 0.0
    assert isinstance(out["identity_cosine"], Unavailable) and "detected face" in out["identity_cosine"].reason


def test_akd_is_zero_for_the_same_frame_and_follows_a_known_shift() -> None:
    image = astronaut()
    shifted = np.pad(image, ((0, 0), (12, 0), (0, 0)), mode="edge")[:, :512]  # content moves 12 px right
    scores = keypoint_pose_scores(_batch(image, shifted), _batch(image, image))
    assert scores.akd[0].item() == pytest.approx(0.0, abs=1e-6)
    assert scores.akd[1].item() == pytest.approx(12.0, abs=1.5)
    assert scores.apd[1].item() < 3  # a shift hardly changes the estimated pose


def test_akd_is_measured_at_the_fixed_resolution() -> None:
    g = torch.Generator().manual_seed(0)
    image = astronaut()
    half = rescale(image, 0.5)  # the same frame at 256x256
    direct = keypoint_pose_scores(_batch(image), _batch(image), resolution=512).akd.item()
    across = keypoint_pose_scores(as_tensor(half)[None], _batch(image), resolution=512).akd.item()
    assert direct == 0.0 and across < 2.5  # detection jitter only; unscaled it would be ~100 px
    shifted = np.pad(image, ((0, 0), (12, 0), (0, 0)), mode="edge")[:, :512]
    at_256 = keypoint_pose_scores(_batch(shifted), _batch(image), resolution=256).akd.item()
    assert at_256 == pytest.approx(6.0, abs=1.0)
    with pytest.raises(ValueError, match="aspect ratio"):
        keypoint_pose_scores(torch.rand(1, 3, 64, 32, generator=g), torch.rand(1, 3, 64, 64, generator=g))


def test_apd_of_an_in_plane_rotation_is_the_angle() -> None:
    image = astronaut()
    metric = KeypointPoseDistance()
    metric.update(_batch(rotate_in_plane(image, 20.0), brick()), _batch(image, image))
    out = metric.compute()
    # a camera roll changes roll by exactly the angle and nothing else (tests/face/test_landmarks.py)
    assert out["apd_roll"].item() == pytest.approx(20.0, abs=2.0)
    assert out["apd"].item() == pytest.approx(20.0, abs=3.5)
    assert out["apd_yaw"].item() < 2.5 and out["apd_pitch"].item() < 2.5
    assert out["keypoint_pair_rate"].item() == pytest.approx(0.5)  # the brick has no face


def test_apd_of_a_face_turned_in_3d_follows_the_applied_yaw() -> None:
    image = astronaut()
    points = detect_landmarks(image)[0].points
    front = render_turned(image, points, 0.0)
    scores = keypoint_pose_scores(_batch(render_turned(image, points, 20.0), front), _batch(front, front))
    # mediapipe sees ~70% of the applied turn on this flattened surface (tests/face/mesh_render.py)
    assert 10.0 < scores.pose_diff[0, 0].item() < 25.0
    assert scores.apd[0].item() < scores.pose_diff[0, 0].item() + 6.0
    assert scores.apd[1].item() == pytest.approx(0.0, abs=1e-6)


def test_metrics_report_missing_face_tools_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_: object) -> None:
        raise FaceToolsUnavailable("dlib-bin", "import dlib failed: No module named 'dlib'")

    monkeypatch.setattr(_models, "import_dlib", missing)
    metric = IdentitySimilarity()
    assert not metric.available
    metric.update(_batch(astronaut()), as_tensor(astronaut()))
    out = metric.compute()
    assert all(isinstance(v, Unavailable) and "'dlib-bin'" in v.reason for v in out.values())
    monkeypatch.setattr(_models, "import_mediapipe", lambda: (_ for _ in ()).throw(FaceToolsUnavailable("mediapipe")))
    pose = KeypointPoseDistance()
    pose.update(_batch(astronaut()), _batch(astronaut()))
    assert all(isinstance(v, Unavailable) and "'mediapipe'" in v.reason for v in pose.compute().values())

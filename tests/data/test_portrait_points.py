"""``avp data synth --portrait-points N``: the portrait of an independent N-point sampling of the subject (a sharp,
photo-like portrait) instead of a render of the teacher; everything else about the subject stays as it was."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avp.data.synthetic import SynthConfig, make_subject
from avp.head import HeadConfig, load_head_model

TINY = SynthConfig(subjects=1, views=1, frames=1, size=16, portrait_size=96, points=(100, 100), hair_volume=2.5)


@pytest.fixture(scope="module")
def head():
    return load_head_model(HeadConfig())


def _sharpness(image: np.ndarray) -> float:
    """Mean absolute difference of horizontally adjacent pixels: edges and texture, which blur removes."""
    return float(np.abs(np.diff(image.astype(np.float64), axis=1)).mean())


@pytest.mark.parametrize("index", [0, 1])
def test_a_dense_portrait_changes_only_the_portrait_and_is_sharper(head, index: int) -> None:
    teacher_render = make_subject(TINY, index, "train", head)
    photo = make_subject(dataclasses.replace(TINY, portrait_points=3000), index, "train", head)
    # the subject, its clips and the portrait's camera and head fit are the same draws
    assert np.array_equal(teacher_render.gaussians.means, photo.gaussians.means)
    assert np.array_equal(teacher_render.frames, photo.frames)
    assert np.array_equal(teacher_render.portrait_camera.viewmats, photo.portrait_camera.viewmats)
    for k, v in teacher_render.portrait_head.items():
        assert np.array_equal(v, photo.portrait_head[k]), k
    assert photo.meta["extra"]["portrait_points"] == 3000 and teacher_render.meta["extra"]["portrait_points"] == 0
    # a render of 3,000 small splats, not 100 large ones: the same picture, sharper
    assert not np.array_equal(teacher_render.portrait, photo.portrait)
    assert _sharpness(photo.portrait) > 1.2 * _sharpness(teacher_render.portrait)
    corr = np.corrcoef(teacher_render.portrait.reshape(-1).astype(float), photo.portrait.reshape(-1).astype(float))
    assert corr[0, 1] > 0.5  # same subject, pose, camera and background


def test_a_negative_point_count_is_refused() -> None:
    with pytest.raises(ValueError, match="portrait_points"):
        SynthConfig(portrait_points=-1)

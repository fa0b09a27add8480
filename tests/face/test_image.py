from __future__ import annotations

import numpy as np
import pytest
import torch

from avp.face import detect_faces, to_uint8_rgb, to_uint8_rgb_batch
from tests.face.photos import as_tensor, astronaut


def test_float_tensor_round_trips_to_the_same_uint8_pixels() -> None:
    image = astronaut()
    assert np.array_equal(to_uint8_rgb(as_tensor(image)), image)
    assert np.array_equal(to_uint8_rgb(as_tensor(image)[None]), image)


def test_values_are_clamped_and_rounded() -> None:
    x = torch.tensor([-0.5, 0.0, 0.5, 1 / 255 * 0.49, 1 / 255 * 0.51, 1.0, 2.0]).view(1, 1, 7).expand(3, 1, 7)
    assert to_uint8_rgb(x)[0, :, 0].tolist() == [0, 0, 128, 0, 1, 255, 255]


def test_negative_stride_views_become_contiguous_and_still_show_a_face() -> None:
    flipped = astronaut()[:, ::-1]
    assert not flipped.flags["C_CONTIGUOUS"]
    converted = to_uint8_rgb(flipped)
    assert converted.flags["C_CONTIGUOUS"] and np.array_equal(converted, flipped)
    assert detect_faces(flipped)[0].score > 0.5
    # the tensor path too: flip() then the channel-last permute is a strided view underneath
    assert detect_faces(as_tensor(astronaut()).flip(-1))[0].score > 0.5


def test_batch_conversion_matches_single_images() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 8, 6, generator=g)
    arrays = to_uint8_rgb_batch(images)
    assert len(arrays) == 3
    for a, t in zip(arrays, images):
        assert a.shape == (8, 6, 3) and a.flags["C_CONTIGUOUS"]
        assert np.array_equal(a, to_uint8_rgb(t))


@pytest.mark.parametrize("bad", [torch.full((4, 8, 8), 0.5), torch.full((2, 3, 8, 8), 0.5), np.zeros((8, 8), np.uint8),
                                 np.zeros((8, 8, 3), np.int32), [1, 2, 3]])
def test_bad_images_are_refused_with_their_shape_or_type(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="expected"):
        to_uint8_rgb(bad)  # type: ignore[arg-type]

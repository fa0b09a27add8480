"""Pixel-aligned portrait colours: projection, sampling and the depth test on analytic cases; the decoder switch."""

from __future__ import annotations

import pytest
import torch

from avp.models.decoder import DecoderConfig, GaussianDecoder
from avp.models.pixel_aligned import pixel_feature_dim, pixel_features, project_points


def _camera(f: float = 100.0, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A camera at the origin looking down +z (OpenCV), principal point at the image centre."""
    Ks = torch.tensor([[[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]]])
    return Ks, torch.eye(4)[None]


def test_projection_matches_the_pinhole_formula() -> None:
    Ks, view = _camera()
    view = view.clone()
    view[0, :3, 3] = torch.tensor([0.1, -0.2, 0.5])  # world-to-camera translation
    points = torch.tensor([[[0.0, 0.0, 1.0], [0.2, 0.1, 2.0]]])
    uv, depth = project_points(points, Ks, view)
    cam = points + torch.tensor([0.1, -0.2, 0.5])
    expected = 100 * cam[..., :2] / cam[..., 2:] + 32
    torch.testing.assert_close(uv, expected)
    torch.testing.assert_close(depth, cam[..., 2])


def test_colours_come_from_where_the_point_projects() -> None:
    size = 64
    portrait = torch.zeros(1, 3, size, size)
    portrait[:, 0, :, : size // 2] = 1.0  # left half red
    portrait[:, 2, :, size // 2 :] = 1.0  # right half blue
    Ks, view = _camera(size=size)
    # u = 100 x / z + 32: x = -0.16 -> u = 16 (red), x = +0.16 -> u = 48 (blue); one point behind the camera
    points = torch.tensor([[[-0.16, 0.0, 1.0], [0.16, 0.0, 1.0], [0.0, 0.0, -1.0]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    feats = pixel_features(portrait, points, mask, Ks, view, levels=1)
    assert feats.shape == (1, 3, pixel_feature_dim(1))
    torch.testing.assert_close(feats[0, 0, :3], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(feats[0, 1, :3], torch.tensor([0.0, 0.0, 1.0]))
    assert feats[0, :2, 3].tolist() == [1.0, 1.0]  # inside
    assert feats[0, 2].abs().sum() == 0  # behind the camera: no colour, not inside, not front-most


def test_coarser_levels_average_the_neighbourhood() -> None:
    size = 64
    portrait = torch.zeros(1, 3, size, size)
    portrait[:, :, :, 30:34] = 1.0  # a thin white stripe around u = 32
    Ks, view = _camera(size=size)
    points = torch.tensor([[[0.0, 0.0, 1.0]]])  # projects to u = 32, the stripe's middle
    feats = pixel_features(portrait, points, torch.ones(1, 1, dtype=torch.bool), Ks, view, levels=4)
    levels = feats[0, 0, :12].view(4, 3)[:, 0]
    assert levels[0] > 0.99 and levels[-1] < levels[0]  # the sharp level sees the stripe, coarse ones dilute it


def test_the_depth_test_keeps_the_nearer_of_two_points_on_a_ray() -> None:
    Ks, view = _camera()
    points = torch.tensor([[[0.05, 0.0, 1.0], [0.10, 0.0, 2.0], [-0.2, 0.1, 1.5]]])  # 0 and 1 share a ray
    feats = pixel_features(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), points,
                           torch.ones(1, 3, dtype=torch.bool), Ks, view, levels=1, tolerance=0.05)
    assert feats[0, :, -1].tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(feats[0, 0, :3], feats[0, 1, :3])  # same pixel, same colour


def test_padding_is_ignored_by_the_depth_test_and_zeroed() -> None:
    Ks, view = _camera()
    points = torch.tensor([[[0.05, 0.0, 1.0], [0.05, 0.0, 0.5]]])  # the padded point would occlude the real one
    mask = torch.tensor([[True, False]])
    feats = pixel_features(torch.ones(1, 3, 64, 64), points, mask, Ks, view, levels=2)
    assert feats[0, 0, -1] == 1.0 and feats[0, 1].abs().sum() == 0


def test_pixel_appearance_changes_the_splats_only_when_switched_on() -> None:
    torch.manual_seed(0)
    bounds = torch.tensor([[-0.2, -0.3, -0.2], [0.2, 0.2, 0.2]])
    points = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(1)) * 0.2 - 0.1
    features = torch.randn(2, 5, 4, 16, generator=torch.Generator().manual_seed(2))
    pixel_a = torch.rand(2, 5, pixel_feature_dim(3), generator=torch.Generator().manual_seed(3))
    pixel_b = torch.rand(2, 5, pixel_feature_dim(3), generator=torch.Generator().manual_seed(4))
    for appearance in ("none", "pixel"):
        torch.manual_seed(0)
        dec = GaussianDecoder(DecoderConfig(width=32, n_layers=1, n_heads=4, feature_hidden=32,
                                            appearance=appearance), feature_dim=16, bounds=bounds)
        dec.heads["colour"].weight.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
        a = dec(points, features, pixel=pixel_a).cloud.sh
        b = dec(points, features, pixel=pixel_b).cloud.sh
        assert (a - b).abs().max() > 1e-4 if appearance == "pixel" else torch.equal(a, b)


def test_pixel_appearance_without_pixel_features_is_refused() -> None:
    bounds = torch.tensor([[-0.2, -0.3, -0.2], [0.2, 0.2, 0.2]])
    dec = GaussianDecoder(DecoderConfig(width=32, n_layers=1, n_heads=4, feature_hidden=32, appearance="pixel"),
                          feature_dim=16, bounds=bounds)
    with pytest.raises(ValueError, match="appearance='pixel' needs pixel features"):
        dec(torch.zeros(1, 3, 3), torch.zeros(1, 3, 4, 16))

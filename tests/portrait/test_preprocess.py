"""Portrait preprocessing on real photos: the astronaut is found, aligned to the training framing and fitted with a
small residual; non-faces and several faces are refused; the geometry of the crop is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from avp.face import MultipleFacesFound, NoFaceFound
from avp.portrait.fit import project
from avp.portrait.preprocess import (
    PortraitFraming,
    align_transform,
    load_image,
    preprocess_portrait,
    warp_image,
)
from avp.types import HeadParams


@pytest.fixture(scope="module")
def astronaut(builtin_head):
    return preprocess_portrait(data.astronaut(), builtin_head, what="astronaut")


def test_astronaut_is_found_aligned_and_fitted(astronaut, builtin_head, builtin_embedding):
    p = astronaut
    assert len(p.analysis.boxes) == 1
    assert p.image.shape == (3, 512, 512) and 0 <= float(p.image.min()) and float(p.image.max()) <= 1
    report = p.report()
    # the residual of the fit, in the 512 px crop and in the photo's own pixels (the face is ~60 px across there)
    assert report["fit_crop_px"]["rms_px"] < 12.0
    assert report["fit_original_px"]["rms_px"] < 4.0
    assert report["fit_crop_px"]["rms_over_face_size"] < 0.07
    # without the loose face oval and brows, the features themselves fit to a few pixels
    fine = [g for g in report["fit_crop_px"]["rms_px_by_group"] if g not in ("jaw", "brows")]
    assert max(report["fit_crop_px"]["rms_px_by_group"][g] for g in fine) < 8.0
    # aligned to the training framing: the eyes land where the mean head's eyes are in a training portrait
    camera = PortraitFraming().camera()
    rest = builtin_head(HeadParams.zeros(1, n_shape=builtin_head.n_shape, n_expr=builtin_head.n_expr)).vertices
    template, _ = project(builtin_embedding.points(rest, builtin_head.faces), camera.Ks, camera.viewmats)
    ids = builtin_embedding.landmark_indices.tolist()
    for i in (33, 263, 61, 291):
        assert torch.dist(p.landmarks[i, :2], template[0, ids.index(i)]) < 0.06 * 512
    # crop landmarks are the photo's landmarks through the crop transform
    photo = p.analysis.landmarks[:, :2]
    np.testing.assert_allclose(photo @ p.transform[:, :2].T + p.transform[:, 2], p.landmarks[:, :2].numpy(),
                               atol=1e-3)
    assert p.head.global_rot.shape == (1, 3) and torch.isfinite(p.head.shape).all()


def test_crop_pixels_match_the_transform(astronaut):
    """The crop really is the photo warped by ``transform``: sampled colours agree at the landmarks."""
    photo = data.astronaut().astype(np.float32) / 255
    crop = astronaut.image.permute(1, 2, 0).numpy()
    src = astronaut.analysis.landmarks[:, :2]
    dst = astronaut.landmarks[:, :2].numpy()
    a = photo[np.floor(src[:, 1]).astype(int), np.floor(src[:, 0]).astype(int)]
    b = crop[np.floor(dst[:, 1]).astype(int).clip(0, 511), np.floor(dst[:, 0]).astype(int).clip(0, 511)]
    assert np.median(np.abs(a - b)) < 0.06


def test_in_plane_rotation_is_removed(builtin_head):
    import cv2

    img = data.astronaut()
    rotated = cv2.warpAffine(img, cv2.getRotationMatrix2D((256, 256), 25, 1.0), (512, 512),
                             borderMode=cv2.BORDER_REPLICATE)
    p = preprocess_portrait(rotated, builtin_head, what="rotated astronaut")
    eye_r, eye_l = p.landmarks[33, :2], p.landmarks[263, :2]
    tilt = math.degrees(math.atan2(float(eye_l[1] - eye_r[1]), float(eye_l[0] - eye_r[0])))
    assert abs(tilt) < 5  # eyes level again, as in the training portraits
    assert p.fit.report(pixel_scale=1 / p.scale)["rms_px"] < 5.0


def test_non_face_is_refused(builtin_head):
    with pytest.raises(NoFaceFound, match=r"no face found in coffee \(400x600 image\): use a photo"):
        preprocess_portrait(data.coffee(), builtin_head, what="coffee")
    with pytest.raises(NoFaceFound, match="no face found in bricks"):
        preprocess_portrait(np.stack([data.brick()] * 3, -1), builtin_head, what="bricks")


def test_several_faces_need_a_choice(builtin_head):
    face = data.astronaut()[:300, 100:400]
    small = np.asarray(Image.fromarray(face).resize((200, 200)))
    pair = np.full((300, 560, 3), 200, np.uint8)
    pair[:, :300] = face
    pair[50:250, 340:540] = small
    with pytest.raises(MultipleFacesFound, match='2 faces found in two people.*choose="largest"'):
        preprocess_portrait(pair, builtin_head, what="two people")
    p = preprocess_portrait(pair, builtin_head, what="two people", choose="largest")
    assert p.analysis.box.x1 <= 300  # the larger face, on the left


def test_grabcut_background(astronaut, builtin_head):
    p = preprocess_portrait(data.astronaut(), builtin_head, background="grabcut", background_color=(0.0, 1.0, 0.0))
    assert p.mask is not None and p.mask.shape == (1, 512, 512)
    nose = p.landmarks[4, :2].long()
    assert float(p.mask[0, nose[1], nose[0]]) > 0.99
    assert float(p.mask[0, :8, :8].mean()) < 0.01  # the corner is background: replaced by the colour
    torch.testing.assert_close(p.image[:, 2, 2], torch.tensor([0.0, 1.0, 0.0]), atol=0.02, rtol=0)
    assert p.report()["background"] == "grabcut"


def test_align_transform_and_warp_are_exact():
    g = np.random.default_rng(0)
    src = g.uniform(0, 400, (20, 2))
    angle, scale, shift = 0.3, 0.37, np.array([12.0, -30.0])
    R = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    M = align_transform(src, src @ (scale * R).T + shift)
    np.testing.assert_allclose(M, np.concatenate([scale * R, shift[:, None]], 1), atol=1e-9)
    # a bright square in the photo ends up where the transform sends its centre, also when strongly reduced
    for s in (0.9, 0.2):
        img = np.zeros((400, 400, 3), np.uint8)
        img[180:220, 100:140] = 255  # centre (120, 200) in pixel-edge coordinates
        T = np.array([[s, 0, 10.0], [0, s, 5.0]])
        out = warp_image(img, T, 256).astype(float)[..., 0]
        ys, xs = np.nonzero(out > 0)
        w = out[ys, xs]
        centre = np.array([(xs + 0.5) @ w / w.sum(), (ys + 0.5) @ w / w.sum()])
        np.testing.assert_allclose(centre, T[:, :2] @ [120.0, 200.0] + T[:, 2], atol=0.3)


def test_load_image(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    array, name = load_image(tmp_path / "a.png")
    assert name.endswith("a.png") and array.dtype == np.uint8 and array.shape == (8, 8, 3)
    assert tuple(array[0, 0]) == (255, 0, 0) and tuple(array[7, 7]) == (255, 255, 255)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.jpg: cannot read as an image"):
        load_image(tmp_path / "bad.jpg")


def test_given_head_parameters_skip_detection_and_fit() -> None:
    import numpy as np

    from avp.portrait.preprocess import PortraitFraming, portrait_from_parameters
    from avp.types import HeadParams

    framing = PortraitFraming(size=64)
    head = HeadParams.zeros(1, n_shape=4, n_expr=3)
    head.shape[0, 0] = 1.5
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8:24, 8:24] = 255
    portrait = portrait_from_parameters(image, head, framing)
    assert portrait.image.shape == (3, 64, 64) and portrait.fit is None and portrait.analysis is None
    assert torch.equal(portrait.head.shape, head.shape)
    assert torch.equal(portrait.camera.Ks, framing.camera().Ks)
    assert portrait.image[:, 32, 32].min() > 0.99 and portrait.image[:, 2, 2].max() < 0.01
    report = portrait.report()
    assert report["head_source"].startswith("given") and report["head"]["shape"][0] == 1.5
    with pytest.raises(ValueError, match="must be square"):
        portrait_from_parameters(np.zeros((32, 40, 3), dtype=np.uint8), head, framing)

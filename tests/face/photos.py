"""Real photographs that ship inside installed packages, for face tests (loaded once per process).

- scikit-image's ``astronaut`` (Eileen Collins, NASA; public domain), 512x512 frontal portrait;
- matplotlib's ``grace_hopper`` sample (US Navy photograph; public domain), 600x512 portrait;
- scikit-image's ``lfw_subset`` (the first 100 of its 200 25x25 grey crops are faces of various people), upscaled;
- non-faces: scikit-image's ``coffee`` and ``brick`` texture.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image
from torch import Tensor


@functools.cache
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@functools.cache
def grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.array(Image.open(f).convert("RGB"))


@functools.cache
def lfw_faces(n: int = 10, size: int = 150) -> tuple[np.ndarray, ...]:
    """The first ``n`` LFW-subset face crops, upscaled (bicubic) to ``size`` and made RGB."""
    from skimage import data

    crops = data.lfw_subset()[:n]  # [n, 25, 25] float in 0..1; the first 100 are faces
    out = []
    for crop in crops:
        grey = Image.fromarray(np.round(crop * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        out.append(np.ascontiguousarray(np.repeat(np.asarray(grey)[:, :, None], 3, axis=2)))
    return tuple(out)


@functools.cache
def coffee() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.coffee())


@functools.cache
def brick() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(np.repeat(data.brick()[:, :, None], 3, axis=2))


def as_tensor(image: np.ndarray) -> Tensor:
    """uint8 ``[H, W, 3]`` -> float ``[3, H, W]`` in 0..1 (the package's image convention)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # a writable copy


def rotate_in_plane(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise (as displayed) about the image centre, same size, edges replicated."""
    from skimage.transform import rotate

    return np.round(rotate(image, degrees, resize=False, mode="edge", order=1) * 255).astype(np.uint8)


def rotate_points(xy: np.ndarray, degrees: float, height: int, width: int) -> np.ndarray:
    """Where pixel coordinates ``[N, 2]`` go under :func:`rotate_in_plane` (y points down in images)."""
    a = np.deg2rad(degrees)
    centre = np.array([width / 2, height / 2])
    d = xy - centre
    # counter-clockwise on screen with y down: x' = x cos + y sin, y' = -x sin + y cos
    return centre + np.stack([d[:, 0] * np.cos(a) + d[:, 1] * np.sin(a), -d[:, 0] * np.sin(a) + d[:, 1] * np.cos(a)],
                             axis=1)


def side_by_side(*images: np.ndarray, gap: int = 20, fill: int = 200) -> np.ndarray:
    """Images placed left to right on a grey canvas, vertically centred."""
    height = max(i.shape[0] for i in images) + 2 * gap
    width = sum(i.shape[1] for i in images) + gap * (len(images) + 1)
    canvas = np.full((height, width, 3), fill, np.uint8)
    x = gap
    for image in images:
        y = (height - image.shape[0]) // 2
        canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
        x += image.shape[1] + gap
    return canvas


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * factor), round(h * factor)), Image.BICUBIC))

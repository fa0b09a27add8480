"""A face turned in 3D, for testing head-pose estimates: the face's own landmark mesh, textured with the photo and
re-rendered after a known rotation about the vertical axis.

The mesh is mediapipe's 478 landmarks of the photo (x, y in pixels, z relative depth in the same pixel scale),
triangulated by Delaunay in the image plane (a height field: the face seen from the front). Rotating it by ``degrees``
about the vertical axis through its centroid and projecting orthographically, with a z-buffer and the original
pixels as texture, gives a real 3D turn of that surface: the only approximation is the surface itself (mediapipe's
relative depth is flatter than a real face, so an estimator sees a somewhat smaller turn than applied).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import Delaunay


def render_turned(image: np.ndarray, points: np.ndarray, degrees: float, background: int = 128) -> np.ndarray:
    """``image`` uint8 ``[H, W, 3]``, ``points`` ``[N, 3]`` landmarks in its pixels; positive ``degrees`` turns the face
    towards the image's right. Returns uint8 ``[H, W, 3]``: only the landmark surface, on a flat background."""
    height, width = image.shape[:2]
    triangles = Delaunay(points[:, :2]).simplices  # [F, 3]
    a = np.deg2rad(degrees)
    centre = points.mean(0)
    # landmark frame: x right, y down, z away from the camera; the face looks along -z. This rotation about the
    # y axis takes the viewing direction (0, 0, -1) to (sin a, 0, -cos a): towards the image's right for a > 0.
    rot = np.array([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]])
    moved = (points - centre) @ rot.T + centre
    source = np.full((height, width, 2), np.nan)
    depth = np.full((height, width), np.inf)
    for tri in triangles:
        p = moved[tri]  # [3, 3]
        lo = np.maximum(np.floor(p[:, :2].min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(p[:, :2].max(0)).astype(int), [width - 1, height - 1])
        if (hi < lo).any():
            continue
        edge = np.array([[p[0, 0] - p[2, 0], p[1, 0] - p[2, 0]], [p[0, 1] - p[2, 1], p[1, 1] - p[2, 1]]])
        if abs(np.linalg.det(edge)) < 1e-9:
            continue
        ys, xs = np.mgrid[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
        rel = np.stack([xs + 0.5 - p[2, 0], ys + 0.5 - p[2, 1]])  # [2, h, w] pixel centres
        b01 = np.einsum("ij,jhw->ihw", np.linalg.inv(edge), rel)
        bary = np.concatenate([b01, 1 - b01.sum(0, keepdims=True)])  # [3, h, w]
        z = np.einsum("i,ihw->hw", p[:, 2], bary)
        hit = (bary >= -1e-6).all(0) & (z < depth[ys, xs])
        depth[ys[hit], xs[hit]] = z[hit]
        source[ys[hit], xs[hit]] = np.einsum("ik,ihw->hwk", points[tri, :2], bary)[hit]
    out = np.full((height, width, 3), background, np.float64)
    covered = ~np.isnan(source[..., 0])
    coords = [source[covered][:, 1] - 0.5, source[covered][:, 0] - 0.5]  # texture lookup at the source pixel
    for c in range(3):
        out[..., c][covered] = ndimage.map_coordinates(image[..., c].astype(np.float64), coords, order=1)
    return np.round(out).astype(np.uint8)

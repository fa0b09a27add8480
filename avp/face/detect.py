"""Face detection with dlib: the HOG detector (fast, frontal to moderately turned faces) or the MMOD CNN detector
(slower, ~1.5 s for 512x512 on 2 CPU cores, more tolerant of pose); both models ship in the face extra's wheels."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from avp.face._models import dlib_model_file, import_dlib
from avp.face.image import ImageLike, to_uint8_rgb

Method = Literal["hog", "cnn"]


@dataclass(frozen=True)
class FaceBox:
    """A detected face: an axis-aligned box in pixels of the image it was found in."""

    x0: float
    """left edge (pixels)"""
    y0: float
    """top edge (pixels)"""
    x1: float
    """right edge (pixels, exclusive)"""
    y1: float
    """bottom edge (pixels, exclusive)"""
    score: float
    """detector confidence (HOG: SVM margin, ~0 at the threshold, >1 for a clear face; CNN: MMOD confidence)"""
    source: str = "hog"
    """which detector produced it: ``hog``, ``cnn`` or ``mediapipe``"""

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def to_dlib(self) -> Any:
        dlib = import_dlib()
        return dlib.rectangle(int(round(self.x0)), int(round(self.y0)), int(round(self.x1)) - 1,
                              int(round(self.y1)) - 1)


@functools.cache
def _hog_detector() -> Any:
    return import_dlib().get_frontal_face_detector()


@functools.cache
def _cnn_detector() -> Any:
    dlib = import_dlib()
    return dlib.cnn_face_detection_model_v1(str(dlib_model_file("mmod_human_face_detector.dat")))


def _box(rect: Any, score: float, source: str) -> FaceBox:
    # dlib rectangles are inclusive on both ends
    return FaceBox(float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1),
                   float(score), source)


def detect_faces_array(image: np.ndarray, *, method: Method = "hog", upsample: int = 1,
                       min_score: float = 0.0) -> list[FaceBox]:
    """:func:`detect_faces` on an already converted contiguous ``uint8`` array ``[H, W, 3]``."""
    if method == "hog":
        rects, scores, _ = _hog_detector().run(image, upsample, min_score)
        boxes = [_box(r, s, "hog") for r, s in zip(rects, scores)]
    elif method == "cnn":
        boxes = [_box(d.rect, d.confidence, "cnn") for d in _cnn_detector()(image, upsample)]
        boxes = [b for b in boxes if b.score >= min_score]
    else:
        raise ValueError(f"unknown face detector {method!r}; expected 'hog' or 'cnn'")
    return sorted(boxes, key=lambda b: -b.score)


def detect_faces(image: ImageLike, *, method: Method = "hog", upsample: int = 1,
                 min_score: float = 0.0) -> list[FaceBox]:
    """Faces in one image (float tensor ``[3, H, W]`` in 0..1 or uint8 array ``[H, W, 3]``), best score first.

    ``upsample`` doubles the image that many times first (finds faces down to ~40 px with 1). ``min_score`` is the
    detector threshold. HOG with upsampling can return weak false positives (a 0.12-score box on scikit-image's
    astronaut beside the real face at 1.16): callers wanting one face take the first box.
    """
    return detect_faces_array(to_uint8_rgb(image), method=method, upsample=upsample, min_score=min_score)

"""One call for portrait preprocessing: find the face, its landmarks, head pose and blendshapes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from avp.face.detect import FaceBox, detect_faces_array
from avp.face.errors import MultipleFacesFound, NoFaceFound
from avp.face.image import ImageLike, to_uint8_rgb
from avp.face.landmarks import FaceLandmarks, HeadPose, detect_landmarks_array

HOG_MIN_SCORE = 0.5
"""dlib HOG detections at or above this score count as faces (a 0.12 false positive appears on the astronaut)"""
RETRY_CROP = 3.0
"""Side of the square crop, in dlib box sizes, in which the landmarker looks again for a face that is too small for
it in the whole image (its detector misses faces narrower than about a tenth of the image)."""


@dataclass(frozen=True)
class FaceAnalysis:
    """Every face found in an image and the analysis of the chosen one."""

    boxes: list[FaceBox]
    """every face found: the landmarker's faces first (``source="mediapipe"``, boxes of their landmarks), then faces
    only dlib's HOG detector found (``source="hog"``; typically small ones)"""
    chosen: int
    """index into ``boxes`` of the analysed face"""
    face: FaceLandmarks
    """landmarks, blendshapes and head pose of the chosen face"""
    image_size: tuple[int, int]
    """(H, W) of the analysed image"""

    @property
    def box(self) -> FaceBox:
        return self.boxes[self.chosen]

    @property
    def landmarks(self) -> np.ndarray:
        """[478, 3] landmarks of the chosen face (x, y pixels, z relative depth)."""
        return self.face.points

    @property
    def pose(self) -> HeadPose:
        return self.face.pose

    @property
    def blendshapes(self) -> dict[str, float]:
        return self.face.blendshapes


def _centre_inside(box: FaceBox, other: FaceBox) -> bool:
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return other.x0 <= cx <= other.x1 and other.y0 <= cy <= other.y1


def _landmarks_in_box(array: np.ndarray, box: FaceBox, min_detection_confidence: float) -> FaceLandmarks | None:
    """The landmarker's face in a square crop around ``box``, in the coordinates of the whole image, or None."""
    height, width = array.shape[:2]
    side = RETRY_CROP * max(box.width, box.height)
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x1, y1 = min(width, int(np.ceil(cx + side / 2))), min(height, int(np.ceil(cy + side / 2)))
    found = detect_landmarks_array(np.ascontiguousarray(array[y0:y1, x0:x1]), max_faces=1,
                                   min_detection_confidence=min_detection_confidence)
    if not found:
        return None
    points = found[0].points + np.array([x0, y0, 0.0])
    return dataclasses.replace(found[0], points=points, image_size=(height, width))


def analyze(image: ImageLike, *, choose: Literal["largest"] | None = None, max_faces: int = 4,
            what: str = "the image", min_detection_confidence: float = 0.5,
            hog_min_score: float = HOG_MIN_SCORE) -> FaceAnalysis:
    """Analyse the face in a portrait (float tensor ``[3, H, W]`` in 0..1 or uint8 array ``[H, W, 3]``).

    Faces are counted by two detectors: mediapipe's FaceLandmarker (up to ``max_faces``; it gives the landmarks,
    pose and blendshapes but misses faces smaller than about a tenth of the image) and dlib's HOG detector (boxes
    scoring ``hog_min_score`` or more whose centre lies in no landmarker face count as further faces). When the
    landmarker finds no face but dlib does (a small face, a group photo), the landmarker looks again in a crop around
    the (largest) dlib box.

    Several faces policy: with ``choose=None`` (the default) an image with more than one face is refused with
    :class:`~avp.face.errors.MultipleFacesFound`, because guessing which person the user meant would silently build
    the wrong avatar; ``choose="largest"`` analyses the landmarker face with the largest box. ``what`` names the
    input in error messages (pass the file name).

    Raises :class:`~avp.face.errors.NoFaceFound` ("no face found in <what> (<H>x<W> image): use a photo in which one
    face is clearly visible, …") when no face has landmarks (even if dlib found a box: without landmarks there is
    nothing to fit; the message then says so), and :class:`~avp.face.errors.FaceToolsUnavailable` when the face
    extra is missing.
    """
    if choose not in (None, "largest"):
        raise ValueError(f"choose must be None or 'largest'; got {choose!r}")
    array = to_uint8_rgb(image)
    height, width = array.shape[:2]
    faces = detect_landmarks_array(array, max_faces=max_faces, min_detection_confidence=min_detection_confidence)
    hog = detect_faces_array(array, method="hog", upsample=1, min_score=hog_min_score)
    if not faces:
        if len(hog) > 1 and choose is None:
            raise MultipleFacesFound(what, [b.as_tuple() for b in hog])
        target = max(hog, key=lambda b: b.area, default=None)
        found = _landmarks_in_box(array, target, min_detection_confidence) if target is not None else None
        if found is None:
            detail = "" if target is None else (
                f"; dlib found {len(hog)} face box(es), the largest {target.width:.0f} px wide at "
                f"x0,y0 = {target.x0:.0f},{target.y0:.0f}, but no landmarks could be found there")
            raise NoFaceFound(what, height, width, detail)
        faces = [found]
    boxes = [f.box for f in faces]
    boxes += [b for b in hog if not any(_centre_inside(b, m) for m in boxes[: len(faces)])]
    if len(boxes) > 1 and choose is None:
        raise MultipleFacesFound(what, [b.as_tuple() for b in boxes])
    chosen = int(np.argmax([f.box.area for f in faces]))
    return FaceAnalysis(boxes=boxes, chosen=chosen, face=faces[chosen], image_size=(height, width))

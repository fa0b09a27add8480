"""Head model: FLAME (user-supplied, with GaussianAvatars' teeth) or the built-in procedural head, behind one API.

``load_head_model(HeadConfig(...)) -> HeadModel``; ``HeadModel.rig(face_idx, points, shape) -> PointRig``;
``PointRig.deform(params, means, mode)``; ``animate_gaussians``; GaussianAvatars' ``face_frames`` and the local/world
maps of its ``point_cloud.ply`` attributes. Pure torch (numpy only while building the model), no file I/O beyond
reading the FLAME pickle.
"""

from __future__ import annotations

import functools
import os

from avp.head.builtin import BUILTIN_NAME, EXPRESSION_COMPONENTS, SHAPE_COMPONENTS, builtin_assets
from avp.head.config import HeadConfig
from avp.head.flame import FlameFileError, add_teeth, load_flame_assets, read_flame_pickle, teeth_faces
from avp.head.frames import (
    FaceFrames,
    face_frames,
    local_to_world_log_scales,
    local_to_world_points,
    local_to_world_quats,
    world_to_local_log_scales,
    world_to_local_points,
    world_to_local_quats,
)
from avp.head.lbs import HeadOutput, blend_shapes, forward_kinematics, lbs, pose_feature, skin
from avp.head.model import HAIR_MARGIN, JOINT_NAMES, HeadAssets, HeadModel
from avp.head.rig import DeformOutput, PointRig, animate_gaussians, bind_points, closest_point_on_triangle

__all__ = [
    "BUILTIN_NAME",
    "EXPRESSION_COMPONENTS",
    "HAIR_MARGIN",
    "JOINT_NAMES",
    "SHAPE_COMPONENTS",
    "DeformOutput",
    "FaceFrames",
    "FlameFileError",
    "HeadAssets",
    "HeadConfig",
    "HeadModel",
    "HeadOutput",
    "PointRig",
    "add_teeth",
    "animate_gaussians",
    "bind_points",
    "blend_shapes",
    "builtin_assets",
    "closest_point_on_triangle",
    "face_frames",
    "forward_kinematics",
    "lbs",
    "load_flame_assets",
    "load_head_model",
    "local_to_world_log_scales",
    "local_to_world_points",
    "local_to_world_quats",
    "pose_feature",
    "read_flame_pickle",
    "skin",
    "teeth_faces",
    "world_to_local_log_scales",
    "world_to_local_points",
    "world_to_local_quats",
]


def load_head_model(config: HeadConfig | None = None) -> HeadModel:
    """Build the head model a config selects (deterministic; the built-in head's arrays are built once per process).

    A new module is returned on every call, so callers may move it to their device freely.
    """
    config = HeadConfig() if config is None else config
    if config.flame_path is None:
        assets = builtin_assets()
    else:
        assets = _flame_assets(config.flame_path, _stamp(config.flame_path), config.teeth, config.flame_masks_path,
                               _stamp(config.flame_masks_path), config.flame_version)
    return HeadModel(assets, n_shape=config.n_shape, n_expr=config.n_expr)


def _stamp(path: str | None) -> tuple[int, int] | None:
    """Size and modification time: a file rewritten in place is read again."""
    if path is None or not os.path.isfile(path):
        return None
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _flame_assets(path: str, stamp: tuple[int, int] | None, teeth: bool, masks_path: str | None,
                  masks_stamp: tuple[int, int] | None, version: str | None) -> HeadAssets:
    return load_flame_assets(path, teeth=teeth, masks_path=masks_path, version=version)

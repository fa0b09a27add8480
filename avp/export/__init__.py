"""Taking an avatar elsewhere: its own folder (:func:`save_avatar` / :func:`load_avatar`), GaussianAvatars'
``point_cloud.ply`` + ``flame_param.npz``, world-space 3DGS ``.ply`` files that splat viewers open, INRIA 3DGS model
folders (``cfg_args``, ``cameras.json``, ``point_cloud/iteration_N/point_cloud.ply``) that the SIBR viewer opens, and
mp4 videos."""

from __future__ import annotations

from avp.export.avatar import AVATAR_FORMAT, AVATAR_VERSION, load_avatar, save_avatar
from avp.export.inria import (
    INRIA_ITERATION,
    cameras_json,
    cfg_args_line,
    read_cfg_args,
    read_inria_cameras,
    write_inria_model,
)
from avp.export.ply import (
    FLAME_PARAM_NAMES,
    PlyError,
    PlySplats,
    cloud_from_splats,
    from_gaussian_avatars,
    gaussian_avatars_fields,
    read_flame_param_npz,
    read_gaussian_avatars_ply,
    read_splat_ply,
    splat_fields,
    splats_from_cloud,
    to_gaussian_avatars,
    write_flame_param_npz,
    write_gaussian_avatars_ply,
    write_splat_ply,
)
from avp.export.video import VideoInfo, VideoWriter, read_video, video_info, write_video

__all__ = [
    "AVATAR_FORMAT",
    "AVATAR_VERSION",
    "FLAME_PARAM_NAMES",
    "INRIA_ITERATION",
    "PlyError",
    "PlySplats",
    "VideoInfo",
    "VideoWriter",
    "cameras_json",
    "cfg_args_line",
    "cloud_from_splats",
    "from_gaussian_avatars",
    "gaussian_avatars_fields",
    "load_avatar",
    "read_flame_param_npz",
    "read_cfg_args",
    "read_gaussian_avatars_ply",
    "read_inria_cameras",
    "read_splat_ply",
    "read_video",
    "save_avatar",
    "splat_fields",
    "splats_from_cloud",
    "to_gaussian_avatars",
    "video_info",
    "write_flame_param_npz",
    "write_gaussian_avatars_ply",
    "write_inria_model",
    "write_splat_ply",
    "write_video",
]

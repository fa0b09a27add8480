"""The shard schema: the only code that names shard members.

A shard is a POSIX tar in WebDataset layout; one **sample is one subject clip** (``V`` calibrated cameras x ``T``
timesteps) stored as members ``<key>.<member>``. Schema version :data:`SCHEMA_VERSION` (in ``meta.json["schema"]``):

========================  =================================================================================
member                    content
========================  =================================================================================
``meta.json``             ``schema``, ``subject``, ``sequence``, ``split``, ``source``, ``head_model``,
                          ``n_faces``, ``n_shape``, ``n_expr``, ``width``, ``height``, ``views``, ``frames``,
                          ``frame_format`` (``png``/``jpg``), ``masks`` (bool), ``portrait_format``,
                          ``portrait_width``, ``portrait_height``, ``n_points``, ``sh_degree``,
                          ``background`` ([3] floats in 0..1), ``extra`` (free-form dict)
``portrait.png|jpg``      the conditioning image, 8-bit RGB ``[Hp, Wp, 3]``
``portrait_head.npz``     head parameters estimated for the portrait: ``shape [S]``, ``expr [E]``,
                          ``global_rot [3]``, ``neck_pose [3]``, ``jaw_pose [3]``, ``eyes_pose [6]``,
                          ``translation [3]`` (float32)
``portrait_camera.npz``   the portrait's camera: ``Ks [1, 3, 3]``, ``viewmats [1, 4, 4]`` (float32),
                          ``width``, ``height`` (int64 scalars)
``cameras.npz``           ``Ks [V, 3, 3]``, ``viewmats [V, 4, 4]`` (float32, OpenCV world-to-camera),
                          ``width``, ``height`` (int64 scalars)
``head.npz``              per-timestep head parameters: ``shape [S]`` (the subject's identity) and
                          ``expr [T, E]``, ``global_rot [T, 3]``, ``neck_pose [T, 3]``, ``jaw_pose [T, 3]``,
                          ``eyes_pose [T, 6]``, ``translation [T, 3]`` (float32); optional
                          ``static_offset [V, 3]`` float32 metres, the subject's tracked per-vertex offsets
                          (VHAP/GaussianAvatars; ``V`` the head model's vertices), posing and binding use it
``gaussians.npz``         the teacher fit in the subject's canonical space (its own neutral head):
                          ``means [N, 3]`` metres, ``binding [N]`` int32 face ids, ``log_scales [N, 3]``,
                          ``opacity_logits [N]``, ``quats [N, 4]`` (wxyz, unit), ``sh [N, K, 3]`` (gsplat
                          convention: ``rgb = 0.5 + SH``), all float32 except ``binding``
``tTTTT.vVV.png|jpg``     frame of timestep ``t`` seen by camera ``v`` (8-bit RGB ``[H, W, 3]``)
``tTTTT.vVV.mask.png``    its foreground mask (8-bit grey ``[H, W]``), present when ``meta["masks"]``
========================  =================================================================================

Synthetic shards use lossless PNG; real data may use JPEG for frames and portraits. "Exact round trip" means that
the 8-bit images and the float32/int arrays come back bit-identical through encode -> tar -> decode (the
DataModule turns images into float ``k / 255``). Every array leaves this module already validated, values included
(finite, in range, sane cameras, bindings inside the head model, and against the manifest when the reader has one):
a problem raises :class:`ShardError` naming the shard, the sample key, the member and the field, with a ``reason``.

Raw Gaussian attributes name their space (``log_scales``, ``opacity_logits``); :func:`activate` is the one place
that turns them into an activated :class:`avp.types.GaussianCloud`.

This module is the schema's one entry point; the code is split by concern: :mod:`avp.data.layout` (member names,
``meta.json`` fields, :class:`ShardError`, the sample dataclasses), :mod:`avp.data.checks` (the value rules: the one
validation that the reader, ``avp data validate`` and training share) and :mod:`avp.data.codec` (encoding and
decoding through those rules).
"""

from __future__ import annotations

import numpy as np
import torch

from avp.activation import activate
from avp.data.checks import ShardExpectation
from avp.data.codec import check_sample, decode_meta, decode_sample, encode_sample, image_bytes, npz_bytes
from avp.data.layout import (
    CAMERAS,
    GAUSSIAN_FIELDS,
    GAUSSIANS,
    HEAD,
    HEAD_WIDTHS,
    IMAGE_FORMATS,
    META,
    META_FIELDS,
    PORTRAIT_CAMERA,
    PORTRAIT_HEAD,
    REASONS,
    SCHEMA_VERSION,
    SOURCES,
    SUPPORTED_VERSIONS,
    CameraArrays,
    ClipSample,
    ShardError,
    TeacherGaussians,
    Where,
    frame_member,
    make_meta,
    mask_member,
    portrait_member,
    sample_key,
)
from avp.types import GaussianCloud


def teacher_cloud(g: TeacherGaussians) -> GaussianCloud:
    """One teacher fit as an activated ``GaussianCloud`` with ``B = 1``."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]
    return activate(t(g.means), t(g.log_scales), t(g.opacity_logits), t(g.quats), t(g.sh))


def raw_gaussian_arrays(g: TeacherGaussians) -> dict[str, np.ndarray]:
    return {name: getattr(g, name) for name in GAUSSIAN_FIELDS}


__all__ = [
    "CAMERAS", "GAUSSIANS", "GAUSSIAN_FIELDS", "HEAD", "HEAD_WIDTHS", "IMAGE_FORMATS", "META", "META_FIELDS",
    "PORTRAIT_CAMERA", "PORTRAIT_HEAD", "REASONS", "SCHEMA_VERSION", "SOURCES", "SUPPORTED_VERSIONS", "CameraArrays",
    "ClipSample", "ShardError", "ShardExpectation", "TeacherGaussians", "Where", "activate", "check_sample",
    "decode_meta", "decode_sample", "encode_sample", "frame_member", "image_bytes", "make_meta", "mask_member",
    "npz_bytes", "portrait_member", "raw_gaussian_arrays", "sample_key", "teacher_cloud",
]

"""Shards and data: the shard schema, manifest, atomic writer, streaming reader, the sample -> batch stream
(``item``, ``collate``, ``stream``), the synthetic subject generator and the GaussianAvatars/NeRSemble converter
(``avp data …``; the DataModule is ``avp.lit.data``)."""

from __future__ import annotations

from avp.data.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from avp.data.schema import (
    SCHEMA_VERSION,
    CameraArrays,
    ClipSample,
    ShardError,
    TeacherGaussians,
    activate,
    decode_sample,
    encode_sample,
    teacher_cloud,
)

__all__ = [
    "MANIFEST_NAME", "SCHEMA_VERSION", "CameraArrays", "ClipSample", "Manifest", "ShardError", "TeacherGaussians",
    "activate", "decode_sample", "encode_sample", "read_manifest", "teacher_cloud", "write_manifest",
]

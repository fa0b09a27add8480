"""Random but valid clip samples, tiny datasets of them (no head model or renderer needed), and edits of written
shards."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avp.data.manifest import Manifest, write_manifest
from avp.data.schema import (
    CameraArrays,
    ClipSample,
    TeacherGaussians,
    encode_sample,
    make_meta,
    npz_bytes,
    sample_key,
)
from avp.data.writer import ShardInfo, write_shards
from avp.types import HEAD_PARAM_FIELDS

N_FACES, N_SHAPE, N_EXPR = 50, 4, 3
HEAD_MODEL = "test-head"


def _head(rng: np.random.Generator, lead: tuple[int, ...]) -> dict[str, np.ndarray]:
    widths = {"shape": N_SHAPE, "expr": N_EXPR, "global_rot": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6,
              "translation": 3}
    out = {k: rng.normal(size=(*lead, widths[k])).astype(np.float32) for k in HEAD_PARAM_FIELDS}
    out["shape"] = rng.normal(size=N_SHAPE).astype(np.float32)
    return out


def _cameras(rng: np.random.Generator, n: int, size: int) -> CameraArrays:
    Ks = np.tile(np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float32), (n, 1, 1))
    viewmats = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    viewmats[:, :3, 3] = rng.normal(size=(n, 3)).astype(np.float32)
    return CameraArrays(Ks=Ks, viewmats=viewmats, width=size, height=size)


def make_sample(subject: str, *, seed: int, n_points: int = 40, frames: int = 2, views: int = 3, size: int = 16,
                masks: bool = True, frame_format: str = "png", split: str = "train", sh_degree: int = 1,
                sequence: str = "seq") -> ClipSample:
    rng = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2
    quats = rng.normal(size=(n_points, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    g = TeacherGaussians(
        means=rng.normal(scale=0.1, size=(n_points, 3)).astype(np.float32),
        binding=rng.integers(0, N_FACES, size=n_points).astype(np.int32),
        log_scales=rng.normal(-5, 0.5, size=(n_points, 3)).astype(np.float32),
        opacity_logits=rng.normal(size=n_points).astype(np.float32),
        quats=quats,
        sh=rng.normal(scale=0.3, size=(n_points, k, 3)).astype(np.float32),
    )
    meta = make_meta(subject=subject, sequence=sequence, split=split, source="synthetic", head_model=HEAD_MODEL,
                     n_faces=N_FACES, n_shape=N_SHAPE, n_expr=N_EXPR, width=size, height=size, views=views,
                     frames=frames, frame_format=frame_format, masks=masks, portrait_format=frame_format,
                     portrait_width=size + 4, portrait_height=size + 4, n_points=n_points, sh_degree=sh_degree,
                     background=(1.0, 1.0, 1.0))
    return ClipSample(
        key=sample_key(subject, sequence), meta=meta,
        portrait=rng.integers(0, 256, size=(size + 4, size + 4, 3), dtype=np.uint8),
        portrait_head=_head(rng, ()), portrait_camera=_cameras(rng, 1, size + 4), cameras=_cameras(rng, views, size),
        head=_head(rng, (frames,)), gaussians=g,
        frames=rng.integers(0, 256, size=(frames, views, size, size, 3), dtype=np.uint8),
        masks=rng.integers(0, 256, size=(frames, views, size, size), dtype=np.uint8) if masks else None,
    )


def write_dataset(root: Path, splits: dict[str, int], *, per_shard: int = 1, seed: int = 0,
                  **sample_kwargs) -> tuple[Manifest, dict[str, ClipSample]]:
    """``splits``: split -> number of subjects; point counts vary per subject. Returns the manifest and samples."""
    samples: dict[str, ClipSample] = {}
    split_of: dict[str, str] = {}
    i = 0
    for split, n in splits.items():
        for _ in range(n):
            s = make_sample(f"subj{i:03d}", seed=seed + i, n_points=20 + 7 * i, split=split, **sample_kwargs)
            samples[s.key] = s
            split_of[s.key] = split
            i += 1
    infos: list[ShardInfo] = write_shards((encode_sample(s) for s in samples.values()), root, split_of=split_of,
                                          max_samples=per_shard)
    manifest = Manifest(root=root, head_model=HEAD_MODEL, n_faces=N_FACES, shards=infos)
    write_manifest(root, manifest)
    return manifest, samples


# ------------------------------------------------------------------------------------------- editing written shards

def rewrite_shard(root: Path, shard: str, edit: Callable[[dict[str, bytes]], None], *, update_sha: bool = True,
                  index: int = 0) -> str:
    """Re-write one shard of a dataset with ``edit`` applied to its ``index``-th sample (a writer bug, when the
    manifest's checksum is updated; tampering, when it is not); returns that sample's key."""
    from avp.data.manifest import read_manifest
    from avp.data.reader import ShardRef, file_sha256, iter_raw_samples
    from avp.data.writer import TarShardWriter

    path = root / shard
    raws = list(iter_raw_samples(ShardRef(path=str(path), name=shard), verify=False))
    key = raws[index]["__key__"].decode()
    edit(raws[index])
    with TarShardWriter(path, split="train") as w:
        for raw in raws:
            w.add({k: v for k, v in raw.items() if k != "__shard__"})
    if update_sha:
        m = read_manifest(root)
        for s in m.shards:
            if s.path == shard:
                s.sha256, s.bytes = file_sha256(path), path.stat().st_size
        write_manifest(root, m)
    return key


def npz_edit(member: str, array: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, bytes]], None]:
    """An edit that replaces ``array`` of the npz ``member`` by ``fn(array)``."""

    def edit(raw: dict[str, bytes]) -> None:
        with np.load(io.BytesIO(raw[member])) as z:
            arrays = {k: z[k] for k in z.files}
        arrays[array] = fn(arrays[array])
        raw[member] = npz_bytes(arrays)

    return edit


def meta_edit(**changes: Any) -> Callable[[dict[str, bytes]], None]:
    """An edit that sets fields of ``meta.json`` (``json.dumps`` writes NaN as ``NaN``, as a buggy writer would)."""

    def edit(raw: dict[str, bytes]) -> None:
        meta = json.loads(raw["meta.json"])
        meta.update(changes)
        raw["meta.json"] = json.dumps(meta).encode()

    return edit

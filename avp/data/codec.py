"""Encoding samples into member bytes and decoding them back, every value checked (:mod:`avp.data.checks`).

Part of the schema (:mod:`avp.data.schema` documents it and re-exports everything here). Decoding is the one
validation every reader shares: :func:`decode_meta` checks ``meta.json`` (and, given the manifest's
:class:`~avp.data.checks.ShardExpectation`, the sample's head model, split and subject), :func:`decode_sample` every
member; :func:`check_sample` applies the same rules to a sample about to be written.

``head.npz`` may also hold the optional ``static_offset [V, 3]`` (:data:`~avp.data.checks.STATIC_OFFSET`): written
when ``sample.head`` has it, decoded into ``sample.head`` when the member has it; shards without it read as before.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
from PIL import Image

from avp.data.checks import (
    HEAD_OPTIONAL,
    ShardExpectation,
    check_against_manifest,
    check_cameras,
    check_gaussians,
    check_head,
    check_meta,
    check_sizes,
)
from avp.data.layout import (
    CAMERAS,
    GAUSSIANS,
    HEAD,
    IMAGE_FORMATS,
    META,
    PORTRAIT_CAMERA,
    PORTRAIT_HEAD,
    REASON_FORMAT,
    REASON_MISSING,
    REASON_VALUE,
    CameraArrays,
    ClipSample,
    TeacherGaussians,
    Where,
    frame_member,
    mask_member,
    portrait_member,
)
from avp.types import HEAD_PARAM_FIELDS

# ----------------------------------------------------------------------------------------------------- encoding


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` whose bytes depend only on the arrays (numpy's savez stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def image_bytes(image: np.ndarray, fmt: str, *, quality: int = 95) -> bytes:
    """Encode ``[H, W, 3]`` or ``[H, W]`` uint8 as PNG (lossless) or JPEG."""
    if image.dtype != np.uint8:
        raise TypeError(f"images are stored as uint8, got {image.dtype}")
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "png":
        pil.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        pil.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {IMAGE_FORMATS}")
    return buf.getvalue()


def _camera_arrays(cams: CameraArrays) -> dict[str, np.ndarray]:
    return {"Ks": np.asarray(cams.Ks).astype(np.float32), "viewmats": np.asarray(cams.viewmats).astype(np.float32),
            "width": np.int64(cams.width), "height": np.int64(cams.height)}


def _gaussian_arrays(g: TeacherGaussians) -> dict[str, np.ndarray]:
    return {"means": g.means.astype(np.float32), "binding": g.binding.astype(np.int32),
            "log_scales": g.log_scales.astype(np.float32), "opacity_logits": g.opacity_logits.astype(np.float32),
            "quats": g.quats.astype(np.float32), "sh": g.sh.astype(np.float32)}


def _head_arrays(head: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of ``head.npz`` as stored (float32): the head fields, then the optional ones ``head`` has."""
    return {k: np.asarray(head[k]).astype(np.float32)
            for k in (*HEAD_PARAM_FIELDS, *(o for o in HEAD_OPTIONAL if o in head))}


def encode_sample(sample: ClipSample, *, jpeg_quality: int = 95) -> dict[str, bytes]:
    """Member name -> bytes (plus ``__key__``) for one clip; validates before encoding.

    ``sample.frames`` must hold all ``T x V`` frames (``[T, V, H, W, 3]`` uint8) and ``masks`` all masks or None.
    """
    check_sample(sample, shard=None, full=True)
    meta = sample.meta
    out: dict[str, bytes] = {"__key__": sample.key.encode()}
    out[META] = json.dumps(meta, sort_keys=True).encode()
    out[portrait_member(meta["portrait_format"])] = image_bytes(sample.portrait, meta["portrait_format"],
                                                                quality=jpeg_quality)
    out[PORTRAIT_HEAD] = npz_bytes({k: sample.portrait_head[k].astype(np.float32) for k in HEAD_PARAM_FIELDS})
    out[PORTRAIT_CAMERA] = npz_bytes(_camera_arrays(sample.portrait_camera))
    out[CAMERAS] = npz_bytes(_camera_arrays(sample.cameras))
    out[HEAD] = npz_bytes(_head_arrays(sample.head))
    out[GAUSSIANS] = npz_bytes(_gaussian_arrays(sample.gaussians))
    assert sample.frames is not None
    fmt = meta["frame_format"]
    for t in range(meta["frames"]):
        for v in range(meta["views"]):
            out[frame_member(t, v, fmt)] = image_bytes(sample.frames[t, v], fmt, quality=jpeg_quality)
            if meta["masks"]:
                assert sample.masks is not None
                out[mask_member(t, v)] = image_bytes(sample.masks[t, v], "png")
    return out


# ----------------------------------------------------------------------------------------------------- decoding

def _key_of(raw: dict[str, Any]) -> str | None:
    key = raw.get("__key__")
    return key.decode() if isinstance(key, bytes) else (None if key is None else str(key))


def _need(raw: dict[str, bytes], member: str, where: Where) -> bytes:
    if member not in raw:
        present = sorted(k for k in raw if not k.startswith("__"))
        raise where.error(member, f"missing member (present: {present})", reason=REASON_MISSING)
    return raw[member]


def _load_npz(data: bytes, member: str, where: Where) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/numpy raise many types on corrupt bytes
        raise where.error(member, f"cannot read npz ({type(e).__name__}: {e})") from e


def _decode_image(data: bytes, member: str, where: Where, *, mode: str, width: int, height: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if mode == "RGB" and im.mode == "RGBA":
                raise ValueError("RGBA image; frames are stored as RGB (composite on meta['background'])")
            arr = np.array(im.convert(mode))
    except Exception as e:  # PIL raises many types on corrupt bytes
        raise where.error(member, f"cannot decode image ({type(e).__name__}: {e})") from e
    if arr.shape[:2] != (height, width):
        raise where.error(member, f"image is {arr.shape[1]}x{arr.shape[0]}, meta.json says {width}x{height}",
                          reason=REASON_VALUE)
    return arr


def decode_meta(raw: dict[str, bytes], *, shard: str | None = None,
                expect: ShardExpectation | None = None) -> dict[str, Any]:
    """Parse and check ``meta.json`` (:func:`~avp.data.checks.check_meta`); with ``expect`` (what the manifest says
    about the shard) also the sample's head model, split and subject."""
    where = Where(shard, _key_of(raw))
    data = _need(raw, META, where)
    try:
        meta = json.loads(data)
    except Exception as e:  # bad UTF-8 or JSON
        raise where.error(META, f"invalid JSON ({e})") from e
    check_meta(meta, where)
    if expect is not None:
        check_against_manifest(meta, expect, where)
    return meta


def decode_sample(raw: dict[str, bytes], *, shard: str | None = None, frame_index: list[int] | None = None,
                  view_index: list[int] | None = None, decode_frames: bool = True,
                  meta: dict[str, Any] | None = None, expect: ShardExpectation | None = None) -> ClipSample:
    """Validate and decode one raw sample (member name -> bytes, with ``__key__``).

    ``frame_index``/``view_index`` choose which timesteps/cameras to decode (all by default); with
    ``decode_frames=False`` (or an empty index) no frame is decoded. The members of frames that are not decoded are
    only checked for presence. ``meta``: what :func:`decode_meta` returned for this ``raw`` when the caller has
    parsed (and checked) it already, so ``meta.json`` is parsed once per sample; ``expect``: the manifest's view of
    the shard, checked when ``meta`` is parsed here.
    """
    if meta is None:
        meta = decode_meta(raw, shard=shard, expect=expect)
    key = _key_of(raw) or "?"
    where = Where(shard, key)
    T, V, W, H = meta["frames"], meta["views"], meta["width"], meta["height"]
    fmt = meta["frame_format"]
    portrait_name = portrait_member(meta["portrait_format"])
    portrait = _decode_image(_need(raw, portrait_name, where), portrait_name, where, mode="RGB",
                             width=meta["portrait_width"], height=meta["portrait_height"])
    arrays = {m: _load_npz(_need(raw, m, where), m, where)
              for m in (PORTRAIT_HEAD, PORTRAIT_CAMERA, CAMERAS, HEAD, GAUSSIANS)}
    sample = ClipSample(
        key=key, meta=meta, portrait=portrait,
        portrait_head=check_head(arrays[PORTRAIT_HEAD], PORTRAIT_HEAD, meta, None, where),
        portrait_camera=check_cameras(arrays[PORTRAIT_CAMERA], PORTRAIT_CAMERA, 1, where),
        cameras=check_cameras(arrays[CAMERAS], CAMERAS, V, where),
        head=check_head(arrays[HEAD], HEAD, meta, T, where),
        gaussians=check_gaussians(arrays[GAUSSIANS], meta, where),
    )
    check_sizes(meta, sample.cameras, sample.portrait_camera, portrait.shape, where)
    for t in range(T):
        for v in range(V):
            _need(raw, frame_member(t, v, fmt), where)
            if meta["masks"]:
                _need(raw, mask_member(t, v), where)
    fi = list(range(T)) if frame_index is None else [int(i) for i in frame_index]
    vi = list(range(V)) if view_index is None else [int(i) for i in view_index]
    for name, idx, n in (("frame", fi, T), ("view", vi, V)):
        if any(i < 0 or i >= n for i in idx):
            raise where.error(None, f"requested {name} indices {idx} outside [0, {n})", reason=REASON_VALUE)
    sample.frame_index = np.asarray(fi if decode_frames else [], dtype=np.int64)
    sample.view_index = np.asarray(vi if decode_frames else [], dtype=np.int64)
    if decode_frames and fi and vi:
        sample.frames = np.stack([np.stack([
            _decode_image(raw[frame_member(t, v, fmt)], frame_member(t, v, fmt), where, mode="RGB", width=W,
                          height=H)
            for v in vi]) for t in fi])
        if meta["masks"]:
            sample.masks = np.stack([np.stack([
                _decode_image(raw[mask_member(t, v)], mask_member(t, v), where, mode="L", width=W, height=H)
                for v in vi]) for t in fi])
    return sample


def check_sample(sample: ClipSample, *, shard: str | None = None, full: bool = False) -> None:
    """Validate an in-memory sample (what :func:`encode_sample` is about to write) with the decoding rules.

    Arrays are checked as they will be stored (float32, int32 bindings); ``full`` also checks that every frame (and
    mask) is there as uint8 of the right size.
    """
    where = Where(shard, sample.key)
    if not sample.key or any(c in sample.key for c in "./"):
        raise where.error(None, "sample keys must be non-empty and contain neither '.' nor '/'")
    # through JSON, as a reader will see it (tuples become lists, NaN stays NaN)
    meta = check_meta(json.loads(json.dumps(sample.meta)), where)
    T, V, H, W = meta["frames"], meta["views"], meta["height"], meta["width"]

    def as_float32(obj: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v).astype(np.float32) if k in (*HEAD_PARAM_FIELDS, *HEAD_OPTIONAL) else np.asarray(v)
                for k, v in obj.items()}

    check_head(as_float32(sample.portrait_head), PORTRAIT_HEAD, meta, None, where)
    check_head(as_float32(sample.head), HEAD, meta, T, where)
    g = sample.gaussians
    if g.n_points != meta["n_points"] or g.sh_degree != meta["sh_degree"]:
        raise where.error(GAUSSIANS, f"{g.n_points} points of SH degree {g.sh_degree}; meta.json says "
                                     f"{meta['n_points']} / {meta['sh_degree']}", "n_points", reason=REASON_VALUE)
    check_gaussians(_gaussian_arrays(g), meta, where)
    cameras = check_cameras(_camera_arrays(sample.cameras), CAMERAS, V, where)
    portrait_camera = check_cameras(_camera_arrays(sample.portrait_camera), PORTRAIT_CAMERA, 1, where)
    portrait_name = portrait_member(meta["portrait_format"])
    if sample.portrait.dtype != np.uint8 or sample.portrait.shape != (meta["portrait_height"],
                                                                      meta["portrait_width"], 3):
        raise where.error(portrait_name, f"portrait must be uint8 [{meta['portrait_height']}, "
                                         f"{meta['portrait_width']}, 3], got {sample.portrait.dtype} "
                                         f"{list(sample.portrait.shape)}", reason=REASON_FORMAT)
    check_sizes(meta, cameras, portrait_camera, sample.portrait.shape, where)
    if full:
        if sample.frames is None or sample.frames.dtype != np.uint8 or sample.frames.shape != (T, V, H, W, 3):
            got = None if sample.frames is None else (sample.frames.dtype, list(sample.frames.shape))
            raise where.error(frame_member(0, 0, meta["frame_format"]),
                              f"frames must be uint8 [{T}, {V}, {H}, {W}, 3], got {got}")
        if meta["masks"] and (sample.masks is None or sample.masks.dtype != np.uint8
                              or sample.masks.shape != (T, V, H, W)):
            raise where.error(mask_member(0, 0), f"masks must be uint8 [{T}, {V}, {H}, {W}]")


__all__ = ["check_sample", "decode_meta", "decode_sample", "encode_sample", "image_bytes",
           "npz_bytes"]

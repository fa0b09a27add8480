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
                          ``eyes_pose [T, 6]``, ``translation [T, 3]`` (float32)
``gaussians.npz``         the teacher fit in the subject's canonical space (its own neutral head):
                          ``means [N, 3]`` metres, ``binding [N]`` int32 face ids, ``log_scales [N, 3]``,
                          ``opacity_logits [N]``, ``quats [N, 4]`` (wxyz, unit), ``sh [N, K, 3]`` (gsplat
                          convention: ``rgb = 0.5 + SH``), all float32 except ``binding``
``tTTTT.vVV.png|jpg``     frame of timestep ``t`` seen by camera ``v`` (8-bit RGB ``[H, W, 3]``)
``tTTTT.vVV.mask.png``    its foreground mask (8-bit grey ``[H, W]``), present when ``meta["masks"]``
========================  =================================================================================

Synthetic shards use lossless PNG; real data may use JPEG for frames and portraits. "Exact round trip" means that
the 8-bit images and the float32/int arrays come back bit-identical through encode -> tar -> decode (the
DataModule turns images into float ``k / 255``). Every array leaves this module already validated: a problem raises
:class:`ShardError` naming the shard, the sample key and the member.

Raw Gaussian attributes name their space (``log_scales``, ``opacity_logits``); :func:`activate` is the one place
that turns them into an activated :class:`avp.types.GaussianCloud`.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from avp.activation import activate
from avp.types import HEAD_PARAM_FIELDS, GaussianCloud

SCHEMA_VERSION = 1
"""Bump when a member, key, dtype or meaning changes; readers refuse versions they do not know."""
SUPPORTED_VERSIONS = (1,)

META = "meta.json"
PORTRAIT_HEAD = "portrait_head.npz"
PORTRAIT_CAMERA = "portrait_camera.npz"
CAMERAS = "cameras.npz"
HEAD = "head.npz"
GAUSSIANS = "gaussians.npz"
IMAGE_FORMATS = ("png", "jpg")
SOURCES = ("synthetic", "gaussian_avatars")

META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int, "subject": str, "sequence": str, "split": str, "source": str, "head_model": str,
    "n_faces": int, "n_shape": int, "n_expr": int, "width": int, "height": int, "views": int, "frames": int,
    "frame_format": str, "masks": bool, "portrait_format": str, "portrait_width": int, "portrait_height": int,
    "n_points": int, "sh_degree": int, "background": list, "extra": dict,
}
HEAD_WIDTHS = {"global_rot": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
GAUSSIAN_FIELDS = ("means", "binding", "log_scales", "opacity_logits", "quats", "sh")


def portrait_member(fmt: str) -> str:
    return f"portrait.{fmt}"


def frame_member(t: int, v: int, fmt: str) -> str:
    return f"t{t:04d}.v{v:02d}.{fmt}"


def mask_member(t: int, v: int) -> str:
    return f"t{t:04d}.v{v:02d}.mask.png"


class ShardError(ValueError):
    """A shard, sample or member that does not follow the schema; the message names all three."""

    def __init__(self, shard: str | None, key: str | None, member: str | None, problem: str) -> None:
        self.shard, self.key, self.member, self.problem = shard, key, member, problem
        where = [f"shard {shard!r}" if shard else "shard <unknown>"]
        if key is not None:
            where.append(f"sample {key!r}")
        if member is not None:
            where.append(f"member {member!r}")
        super().__init__(f"{', '.join(where)}: {problem}")


@dataclass
class CameraArrays:
    """Calibrated pinhole cameras of one clip (OpenCV, world-to-camera)."""

    Ks: np.ndarray
    """``[V, 3, 3]`` float32 pixel intrinsics."""
    viewmats: np.ndarray
    """``[V, 4, 4]`` float32 world-to-camera transforms."""
    width: int
    height: int


@dataclass
class TeacherGaussians:
    """The teacher fit, raw (pre-activation) attributes in the subject's canonical space."""

    means: np.ndarray
    """``[N, 3]`` float32 canonical centres, metres."""
    binding: np.ndarray
    """``[N]`` int32 head-model face index of every point."""
    log_scales: np.ndarray
    """``[N, 3]`` float32 log standard deviations (metres)."""
    opacity_logits: np.ndarray
    """``[N]`` float32 logits of opacity."""
    quats: np.ndarray
    """``[N, 4]`` float32 rotations, wxyz, unit norm."""
    sh: np.ndarray
    """``[N, K, 3]`` float32 SH coefficients, gsplat convention."""

    @property
    def n_points(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1


@dataclass
class ClipSample:
    """One decoded (or to-be-encoded) sample: a subject clip.

    ``frames``/``masks`` hold the decoded subset of timesteps/views named by ``frame_index``/``view_index``
    (all of them when encoding); ``None`` when frames were not decoded.
    """

    key: str
    """Sample key (tar member prefix, no dots)."""
    meta: dict[str, Any]
    """``meta.json`` (see the module docstring)."""
    portrait: np.ndarray
    """``[Hp, Wp, 3]`` uint8."""
    portrait_head: dict[str, np.ndarray]
    """Head-parameter name -> ``[C]`` float32."""
    portrait_camera: CameraArrays
    """The portrait's camera (``V = 1``)."""
    cameras: CameraArrays
    """All ``V`` cameras of the clip."""
    head: dict[str, np.ndarray]
    """``shape [S]`` and the other head fields ``[T, C]``, float32."""
    gaussians: TeacherGaussians
    frames: np.ndarray | None = None
    """``[T', V', H, W, 3]`` uint8 selected frames."""
    masks: np.ndarray | None = None
    """``[T', V', H, W]`` uint8 selected masks (when the clip has masks)."""
    frame_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """``[T']`` which timesteps ``frames`` holds."""
    view_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """``[V']`` which cameras ``frames`` holds."""


def make_meta(*, subject: str, sequence: str, split: str, source: str, head_model: str, n_faces: int,
              n_shape: int, n_expr: int, width: int, height: int, views: int, frames: int, frame_format: str,
              masks: bool, portrait_format: str, portrait_width: int, portrait_height: int, n_points: int,
              sh_degree: int, background: tuple[float, float, float] | list[float],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete ``meta.json`` of the current schema version."""
    return {
        "schema": SCHEMA_VERSION, "subject": subject, "sequence": sequence, "split": split, "source": source,
        "head_model": head_model, "n_faces": int(n_faces), "n_shape": int(n_shape), "n_expr": int(n_expr),
        "width": int(width), "height": int(height), "views": int(views), "frames": int(frames),
        "frame_format": frame_format, "masks": bool(masks), "portrait_format": portrait_format,
        "portrait_width": int(portrait_width), "portrait_height": int(portrait_height), "n_points": int(n_points),
        "sh_degree": int(sh_degree), "background": [float(c) for c in background], "extra": dict(extra or {}),
    }


def sample_key(subject: str, sequence: str) -> str:
    """A tar-safe key: WebDataset splits member names at the first dot, so keys carry none."""
    raw = f"{subject}__{sequence}"
    return "".join(c if (c.isalnum() or c in "-_") else "_" for c in raw)


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
    return {"Ks": cams.Ks.astype(np.float32), "viewmats": cams.viewmats.astype(np.float32),
            "width": np.int64(cams.width), "height": np.int64(cams.height)}


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
    out[HEAD] = npz_bytes({k: sample.head[k].astype(np.float32) for k in HEAD_PARAM_FIELDS})
    g = sample.gaussians
    out[GAUSSIANS] = npz_bytes({
        "means": g.means.astype(np.float32), "binding": g.binding.astype(np.int32),
        "log_scales": g.log_scales.astype(np.float32), "opacity_logits": g.opacity_logits.astype(np.float32),
        "quats": g.quats.astype(np.float32), "sh": g.sh.astype(np.float32),
    })
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

class _Ctx:
    """Where we are, for error messages."""

    def __init__(self, shard: str | None, key: str | None) -> None:
        self.shard, self.key = shard, key

    def error(self, member: str | None, problem: str) -> ShardError:
        return ShardError(self.shard, self.key, member, problem)


def _need(raw: dict[str, bytes], member: str, ctx: _Ctx) -> bytes:
    if member not in raw:
        present = sorted(k for k in raw if not k.startswith("__"))
        raise ctx.error(member, f"missing member (present: {present})")
    return raw[member]


def _load_npz(data: bytes, member: str, ctx: _Ctx) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/numpy raise many types on corrupt bytes
        raise ctx.error(member, f"cannot read npz ({type(e).__name__}: {e})") from e


def _array(arrays: dict[str, np.ndarray], name: str, member: str, ctx: _Ctx, *, shape: tuple[int | None, ...],
           kind: str = "float32") -> np.ndarray:
    """Check presence, dtype, shape (None = any) and finiteness of ``arrays[name]``."""
    if name not in arrays:
        raise ctx.error(member, f"missing array {name!r} (has {sorted(arrays)})")
    a = arrays[name]
    if kind == "float32" and a.dtype != np.float32:
        raise ctx.error(member, f"array {name!r} has dtype {a.dtype}, expected float32")
    if kind == "int" and a.dtype not in (np.int32, np.int64):
        raise ctx.error(member, f"array {name!r} has dtype {a.dtype}, expected int32")
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ctx.error(member, f"array {name!r} has shape {list(a.shape)}, expected {want}")
    if kind == "float32" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ctx.error(member, f"array {name!r} has {bad} non-finite values (NaN/inf)")
    return a


def _decode_image(data: bytes, member: str, ctx: _Ctx, *, mode: str, width: int, height: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if mode == "RGB" and im.mode == "RGBA":
                raise ValueError("RGBA image; frames are stored as RGB (composite on meta['background'])")
            arr = np.array(im.convert(mode))
    except ShardError:
        raise
    except Exception as e:
        raise ctx.error(member, f"cannot decode image ({type(e).__name__}: {e})") from e
    if arr.shape[:2] != (height, width):
        raise ctx.error(member, f"image is {arr.shape[1]}x{arr.shape[0]}, meta.json says {width}x{height}")
    return arr


def decode_meta(raw: dict[str, bytes], *, shard: str | None = None) -> dict[str, Any]:
    """Parse and check ``meta.json`` (version first, so an unknown version is reported as such)."""
    ctx = _Ctx(shard, raw.get("__key__", b"?").decode() if isinstance(raw.get("__key__"), bytes)
               else raw.get("__key__"))
    data = _need(raw, META, ctx)
    try:
        meta = json.loads(data)
    except Exception as e:
        raise ctx.error(META, f"invalid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ctx.error(META, "meta.json must be an object")
    version = meta.get("schema")
    if version not in SUPPORTED_VERSIONS:
        raise ctx.error(META, f"unknown schema version {version!r} (this avp reads {list(SUPPORTED_VERSIONS)})")
    for name, typ in META_FIELDS.items():
        if name not in meta:
            raise ctx.error(META, f"missing field {name!r}")
        value = meta[name]
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ctx.error(META, f"field {name!r} must be an integer, got {value!r}")
        if not isinstance(value, typ):
            raise ctx.error(META, f"field {name!r} must be {getattr(typ, '__name__', typ)}, got {value!r}")
    for name in ("width", "height", "views", "frames", "n_faces", "portrait_width", "portrait_height",
                 "n_points"):
        if meta[name] <= 0:
            raise ctx.error(META, f"field {name!r} must be positive, got {meta[name]}")
    for name in ("frame_format", "portrait_format"):
        if meta[name] not in IMAGE_FORMATS:
            raise ctx.error(META, f"field {name!r} is {meta[name]!r}, expected one of {IMAGE_FORMATS}")
    if len(meta["background"]) != 3:
        raise ctx.error(META, f"field 'background' must hold 3 numbers, got {meta['background']!r}")
    return meta


def _decode_cameras(raw: dict[str, bytes], member: str, n: int, ctx: _Ctx) -> CameraArrays:
    arrays = _load_npz(_need(raw, member, ctx), member, ctx)
    Ks = _array(arrays, "Ks", member, ctx, shape=(n, 3, 3))
    viewmats = _array(arrays, "viewmats", member, ctx, shape=(n, 4, 4))
    size = []
    for name in ("width", "height"):
        a = _array(arrays, name, member, ctx, shape=(), kind="int")
        if int(a) <= 0:
            raise ctx.error(member, f"{name} must be positive, got {int(a)}")
        size.append(int(a))
    if not np.allclose(viewmats[:, 3], [0, 0, 0, 1]):
        raise ctx.error(member, "viewmats must be rigid 4x4 transforms (last row 0 0 0 1)")
    return CameraArrays(Ks=Ks, viewmats=viewmats, width=size[0], height=size[1])


def _decode_head(raw: dict[str, bytes], member: str, meta: dict[str, Any], frames: int | None,
                 ctx: _Ctx) -> dict[str, np.ndarray]:
    arrays = _load_npz(_need(raw, member, ctx), member, ctx)
    lead = () if frames is None else (frames,)
    out = {"shape": _array(arrays, "shape", member, ctx, shape=(meta["n_shape"],)),
           "expr": _array(arrays, "expr", member, ctx, shape=(*lead, meta["n_expr"]))}
    for name, width in HEAD_WIDTHS.items():
        out[name] = _array(arrays, name, member, ctx, shape=(*lead, width))
    return out


def _decode_gaussians(raw: dict[str, bytes], meta: dict[str, Any], ctx: _Ctx) -> TeacherGaussians:
    arrays = _load_npz(_need(raw, GAUSSIANS, ctx), GAUSSIANS, ctx)
    n, k = meta["n_points"], (meta["sh_degree"] + 1) ** 2
    g = TeacherGaussians(
        means=_array(arrays, "means", GAUSSIANS, ctx, shape=(n, 3)),
        binding=_array(arrays, "binding", GAUSSIANS, ctx, shape=(n,), kind="int"),
        log_scales=_array(arrays, "log_scales", GAUSSIANS, ctx, shape=(n, 3)),
        opacity_logits=_array(arrays, "opacity_logits", GAUSSIANS, ctx, shape=(n,)),
        quats=_array(arrays, "quats", GAUSSIANS, ctx, shape=(n, 4)),
        sh=_array(arrays, "sh", GAUSSIANS, ctx, shape=(n, k, 3)),
    )
    if g.binding.size and (g.binding.min() < 0 or g.binding.max() >= meta["n_faces"]):
        raise ctx.error(GAUSSIANS, f"binding values span [{g.binding.min()}, {g.binding.max()}], outside the "
                                   f"head model's faces [0, {meta['n_faces']})")
    norms = np.linalg.norm(g.quats, axis=-1)
    if (norms < 1e-6).any():
        raise ctx.error(GAUSSIANS, f"{int((norms < 1e-6).sum())} quaternions have zero norm")
    return g


def decode_sample(raw: dict[str, bytes], *, shard: str | None = None, frame_index: list[int] | None = None,
                  view_index: list[int] | None = None, decode_frames: bool = True,
                  meta: dict[str, Any] | None = None) -> ClipSample:
    """Validate and decode one raw sample (member name -> bytes, with ``__key__``).

    ``frame_index``/``view_index`` choose which timesteps/cameras to decode (all by default); with
    ``decode_frames=False`` (or an empty index) no frame is decoded. The members of frames that are not decoded are
    only checked for presence. ``meta``: what :func:`decode_meta` returned for this ``raw`` when the caller has
    parsed it already (to choose the indices), so ``meta.json`` is parsed once per sample.
    """
    if meta is None:
        meta = decode_meta(raw, shard=shard)
    key = raw["__key__"].decode() if isinstance(raw["__key__"], bytes) else str(raw["__key__"])
    ctx = _Ctx(shard, key)
    T, V, W, H = meta["frames"], meta["views"], meta["width"], meta["height"]
    fmt = meta["frame_format"]
    portrait_name = portrait_member(meta["portrait_format"])
    portrait = _decode_image(_need(raw, portrait_name, ctx), portrait_name, ctx, mode="RGB",
                             width=meta["portrait_width"], height=meta["portrait_height"])
    sample = ClipSample(
        key=key, meta=meta, portrait=portrait,
        portrait_head=_decode_head(raw, PORTRAIT_HEAD, meta, None, ctx),
        portrait_camera=_decode_cameras(raw, PORTRAIT_CAMERA, 1, ctx),
        cameras=_decode_cameras(raw, CAMERAS, V, ctx),
        head=_decode_head(raw, HEAD, meta, T, ctx),
        gaussians=_decode_gaussians(raw, meta, ctx),
    )
    if (sample.cameras.width, sample.cameras.height) != (W, H):
        raise ctx.error(CAMERAS, f"cameras are {sample.cameras.width}x{sample.cameras.height}, meta says {W}x{H}")
    if (sample.portrait_camera.width, sample.portrait_camera.height) != portrait.shape[1::-1]:
        raise ctx.error(PORTRAIT_CAMERA, "portrait camera size differs from the portrait image")
    for t in range(T):
        for v in range(V):
            _need(raw, frame_member(t, v, fmt), ctx)
            if meta["masks"]:
                _need(raw, mask_member(t, v), ctx)
    fi = list(range(T)) if frame_index is None else [int(i) for i in frame_index]
    vi = list(range(V)) if view_index is None else [int(i) for i in view_index]
    for name, idx, n in (("frame", fi, T), ("view", vi, V)):
        if any(i < 0 or i >= n for i in idx):
            raise ctx.error(None, f"requested {name} indices {idx} outside [0, {n})")
    sample.frame_index = np.asarray(fi if decode_frames else [], dtype=np.int64)
    sample.view_index = np.asarray(vi if decode_frames else [], dtype=np.int64)
    if decode_frames and fi and vi:
        sample.frames = np.stack([np.stack([
            _decode_image(raw[frame_member(t, v, fmt)], frame_member(t, v, fmt), ctx, mode="RGB", width=W, height=H)
            for v in vi]) for t in fi])
        if meta["masks"]:
            sample.masks = np.stack([np.stack([
                _decode_image(raw[mask_member(t, v)], mask_member(t, v), ctx, mode="L", width=W, height=H)
                for v in vi]) for t in fi])
    return sample


def check_sample(sample: ClipSample, *, shard: str | None = None, full: bool = False) -> None:
    """Validate an in-memory sample (what :func:`encode_sample` is about to write)."""
    ctx = _Ctx(shard, sample.key)
    if "." in sample.key or "/" in sample.key or not sample.key:
        raise ctx.error(None, "sample keys must be non-empty and contain neither '.' nor '/'")
    raw = {"__key__": sample.key.encode(), META: json.dumps(sample.meta).encode()}
    meta = decode_meta(raw, shard=shard)
    T, V, H, W = meta["frames"], meta["views"], meta["height"], meta["width"]

    def arrays(obj: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in obj.items()}

    for member, head, lead in ((HEAD, sample.head, (T,)), (PORTRAIT_HEAD, sample.portrait_head, ())):
        a = {k: v.astype(np.float32) if k in HEAD_PARAM_FIELDS else v for k, v in arrays(head).items()}
        _array(a, "shape", member, ctx, shape=(meta["n_shape"],))
        _array(a, "expr", member, ctx, shape=(*lead, meta["n_expr"]))
        for name, width in HEAD_WIDTHS.items():
            _array(a, name, member, ctx, shape=(*lead, width))
    g = sample.gaussians
    if g.n_points != meta["n_points"] or g.sh_degree != meta["sh_degree"]:
        raise ctx.error(GAUSSIANS, f"{g.n_points} points of SH degree {g.sh_degree}; meta.json says "
                                   f"{meta['n_points']} / {meta['sh_degree']}")
    graw = {"__key__": raw["__key__"], META: raw[META], GAUSSIANS: npz_bytes({
        "means": g.means.astype(np.float32), "binding": g.binding.astype(np.int32),
        "log_scales": g.log_scales.astype(np.float32), "opacity_logits": g.opacity_logits.astype(np.float32),
        "quats": g.quats.astype(np.float32), "sh": g.sh.astype(np.float32)})}
    _decode_gaussians(graw, meta, ctx)
    for member, cams, n in ((CAMERAS, sample.cameras, V), (PORTRAIT_CAMERA, sample.portrait_camera, 1)):
        _decode_cameras({member: npz_bytes(_camera_arrays(cams))}, member, n, ctx)
    if sample.portrait.dtype != np.uint8 or sample.portrait.shape != (meta["portrait_height"],
                                                                      meta["portrait_width"], 3):
        raise ctx.error(portrait_member(meta["portrait_format"]),
                        f"portrait must be uint8 [{meta['portrait_height']}, {meta['portrait_width']}, 3], got "
                        f"{sample.portrait.dtype} {list(sample.portrait.shape)}")
    if full:
        if sample.frames is None or sample.frames.dtype != np.uint8 or sample.frames.shape != (T, V, H, W, 3):
            got = None if sample.frames is None else (sample.frames.dtype, list(sample.frames.shape))
            raise ctx.error(frame_member(0, 0, meta["frame_format"]),
                            f"frames must be uint8 [{T}, {V}, {H}, {W}, 3], got {got}")
        if meta["masks"] and (sample.masks is None or sample.masks.dtype != np.uint8
                              or sample.masks.shape != (T, V, H, W)):
            raise ctx.error(mask_member(0, 0), f"masks must be uint8 [{T}, {V}, {H}, {W}]")


# ------------------------------------------------------------------------------------------------ to torch

def teacher_cloud(g: TeacherGaussians) -> GaussianCloud:
    """One teacher fit as an activated ``GaussianCloud`` with ``B = 1``."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]
    return activate(t(g.means), t(g.log_scales), t(g.opacity_logits), t(g.quats), t(g.sh))


def raw_gaussian_arrays(g: TeacherGaussians) -> dict[str, np.ndarray]:
    return {name: getattr(g, name) for name in GAUSSIAN_FIELDS}

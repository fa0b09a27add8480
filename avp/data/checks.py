"""The value rules of the schema: the one validation that the reader, ``avp data validate`` and training share.

Every check raises :class:`~avp.data.layout.ShardError` naming the shard, the sample, the member and the field, with
a ``reason`` (:data:`~avp.data.layout.REASONS`) that skip counts are grouped by. Presence, type, dtype and shape are
checked first, then values: finite numbers, ranges, camera sanity (pinhole intrinsics with positive focal lengths,
rigid world-to-camera transforms), bindings inside the head model, the optional ``static_offset`` of ``head.npz``
(one finite offset per vertex of the head model, where its vertex count is known: :func:`head_vertex_count`) and,
when the shard comes from a manifest, the sample's head model, split and subject against it
(:class:`ShardExpectation`).

The ranges are wide on purpose: they refuse what cannot be a head captured in metres (a unit mix-up, garbage bytes
that decode to huge numbers, a scale whose exponential overflows in the renderer), never a plausible fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avp.data.layout import (
    CAMERAS,
    GAUSSIANS,
    HEAD_WIDTHS,
    IMAGE_FORMATS,
    META,
    META_FIELDS,
    PORTRAIT_CAMERA,
    REASON_MANIFEST,
    REASON_MISSING,
    REASON_VALUE,
    SUPPORTED_VERSIONS,
    CameraArrays,
    TeacherGaussians,
    Where,
)
from avp.head.flame import FLAME_N_FACES, FLAME_N_VERTICES, N_TEETH_FACES, N_TEETH_VERTICES
from avp.render.sh import MAX_DEGREE

FLOAT_MAX_ABS = 1e6
"""Bound on the magnitude of every stored float (finite but absurd values overflow later, in float32 maths)."""
HEAD_MAX_ABS = 100.0
"""Bound on head-model coefficients, axis-angle rotations (radians) and translations (metres)."""
MEANS_MAX_ABS = 10.0
"""Bound on canonical teacher centres, metres: a head is ~0.3 m; millimetres stored as metres fail here."""
LOG_SCALE_RANGE = (-30.0, 10.0)
"""Range of teacher ``log_scales``: ``exp(2 * 10)`` still fits a float32 covariance, ``exp(-30)`` is ~1e-13 m."""
MIN_QUAT_NORM = 1e-6
"""Shorter quaternions cannot be normalised reliably."""
MAX_META_INT = 2**31 - 1
"""Bound on the sizes and counts of ``meta.json``."""
RIGID_ATOL = 1e-3
"""Tolerance of ``R R^T = I`` for the rotation part of ``viewmats`` (float32 storage of a float64 rotation)."""

STATIC_OFFSET = "static_offset"
"""Optional array of ``head.npz``: the subject's tracked per-vertex offsets ``[V, 3]`` float32, metres (VHAP's and
GaussianAvatars' FLAME ``static_offset``, part of the subject's neutral mesh like ``shape``)."""
HEAD_OPTIONAL = (STATIC_OFFSET,)
"""Optional arrays of the head members (absent in synthetic shards and in shards written before they existed)."""
FLAME_VERTEX_COUNTS = {FLAME_N_FACES: FLAME_N_VERTICES,
                       FLAME_N_FACES + N_TEETH_FACES: FLAME_N_VERTICES + N_TEETH_VERTICES}
"""FLAME's fixed topology: faces -> vertices, without and with GaussianAvatars' teeth."""

POSITIVE_META = ("width", "height", "views", "frames", "n_faces", "portrait_width", "portrait_height", "n_points")
NON_NEGATIVE_META = ("n_shape", "n_expr")
NAMES_META = ("subject", "sequence", "split", "source", "head_model")


@dataclass(frozen=True, eq=False)
class ShardExpectation:
    """What the manifest says about the samples of one shard (checked against every ``meta.json``)."""

    split: str
    """The shard's split."""
    head_model: str
    n_faces: int
    subjects: frozenset[str] | None = None
    """The subjects the manifest lists for this shard (None: it lists none, as hand-written manifests may)."""
    subject_splits: Mapping[str, str] = field(default_factory=dict)
    """Every subject of the manifest -> its split (to name the split a leaked subject belongs to)."""


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------------- meta.json

def check_meta(meta: Any, where: Where) -> dict[str, Any]:
    """Check a parsed ``meta.json``: version first (so an unknown version is reported as such), then every field's
    presence, type and value. Returns ``meta``."""
    if not isinstance(meta, dict):
        raise where.error(META, f"meta.json must be a JSON object, got {type(meta).__name__}")
    version = meta.get("schema")
    if not _int(version) or version not in SUPPORTED_VERSIONS:
        raise where.error(META, f"unknown schema version {version!r} (this avp reads {list(SUPPORTED_VERSIONS)})",
                          "schema")
    for name, typ in META_FIELDS.items():
        if name not in meta:
            raise where.error(META, "missing from meta.json", name, reason=REASON_MISSING)
        value = meta[name]
        if typ is int and not _int(value):
            raise where.error(META, f"must be an integer, got {value!r}", name)
        if not isinstance(value, typ):
            raise where.error(META, f"must be {getattr(typ, '__name__', typ)}, got {value!r}", name)
    for name in NAMES_META:
        if not meta[name].strip():
            raise where.error(META, "must be a non-empty string", name, reason=REASON_VALUE)
    for name in POSITIVE_META:
        if meta[name] <= 0:
            raise where.error(META, f"must be positive, got {meta[name]}", name, reason=REASON_VALUE)
    for name in NON_NEGATIVE_META:
        if meta[name] < 0:
            raise where.error(META, f"must be >= 0, got {meta[name]}", name, reason=REASON_VALUE)
    for name in (*POSITIVE_META, *NON_NEGATIVE_META):
        if meta[name] > MAX_META_INT:  # JSON integers are unbounded; sizes and counts this large are garbage
            raise where.error(META, f"is {meta[name]}, more than {MAX_META_INT}", name, reason=REASON_VALUE)
    if not 0 <= meta["sh_degree"] <= MAX_DEGREE:
        raise where.error(META, f"is {meta['sh_degree']}, expected 0..{MAX_DEGREE}", "sh_degree",
                          reason=REASON_VALUE)
    for name in ("frame_format", "portrait_format"):
        if meta[name] not in IMAGE_FORMATS:
            raise where.error(META, f"is {meta[name]!r}, expected one of {IMAGE_FORMATS}", name)
    background = meta["background"]
    if len(background) != 3 or not all(_number(c) for c in background):
        raise where.error(META, f"must hold 3 numbers, got {background!r}", "background")
    if not all(0.0 <= c <= 1.0 for c in background):  # False for NaN, infinities and huge integers alike
        raise where.error(META, f"must hold 3 finite numbers in 0..1, got {background!r}",
                          "background", reason=REASON_VALUE)
    return meta


def check_against_manifest(meta: dict[str, Any], expect: ShardExpectation, where: Where) -> None:
    """The sample's head model, split and subject agree with the manifest (no leakage between splits)."""
    if (meta["head_model"], meta["n_faces"]) != (expect.head_model, expect.n_faces):
        field_name = "head_model" if meta["head_model"] != expect.head_model else "n_faces"
        raise where.error(META, f"head model {meta['head_model']!r} ({meta['n_faces']} faces) differs from the "
                                f"manifest's {expect.head_model!r} ({expect.n_faces} faces)", field_name,
                          reason=REASON_MANIFEST)
    if meta["split"] != expect.split:
        raise where.error(META, f"split {meta['split']!r}, but the manifest lists this shard under "
                                f"{expect.split!r}", "split", reason=REASON_MANIFEST)
    subject = meta["subject"]
    elsewhere = expect.subject_splits.get(subject)
    if elsewhere is not None and elsewhere != expect.split:
        raise where.error(META, f"subject {subject!r} belongs to split {elsewhere!r} in the manifest but is in a "
                                f"{expect.split!r} shard: the splits leak", "subject", reason=REASON_MANIFEST)
    if expect.subjects is not None and subject not in expect.subjects:
        raise where.error(META, f"subject {subject!r} is not among the manifest's subjects of this shard "
                                f"({sorted(expect.subjects)})", "subject", reason=REASON_MANIFEST)


# ---------------------------------------------------------------------------------------------------------- arrays

def check_array(arrays: Mapping[str, np.ndarray], name: str, member: str, where: Where, *,
                shape: tuple[int | None, ...], kind: str = "float32", max_abs: float = FLOAT_MAX_ABS) -> np.ndarray:
    """Presence, dtype, shape (None = any), then (floats) finite values with ``|x| <= max_abs``."""
    if name not in arrays:
        raise where.error(member, f"missing array {name!r} (has {sorted(arrays)})", name, reason=REASON_MISSING)
    a = arrays[name]
    if kind == "float32" and a.dtype != np.float32:
        raise where.error(member, f"array {name!r} has dtype {a.dtype}, expected float32", name)
    if kind == "int" and a.dtype not in (np.int32, np.int64):
        raise where.error(member, f"array {name!r} has dtype {a.dtype}, expected int32", name)
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise where.error(member, f"array {name!r} has shape {list(a.shape)}, expected {want}", name)
    if kind == "float32":
        finite = np.isfinite(a)
        if not finite.all():
            raise where.error(member, f"array {name!r} has {int((~finite).sum())} non-finite values (NaN/inf)", name,
                              reason=REASON_VALUE)
        if a.size and float(np.abs(a).max()) > max_abs:
            raise where.error(member, f"array {name!r} has values up to {float(np.abs(a).max()):.4g} in magnitude, "
                                      f"more than {max_abs:g}", name, reason=REASON_VALUE)
    return a


def check_cameras(arrays: Mapping[str, np.ndarray], member: str, n: int, where: Where) -> CameraArrays:
    """``Ks [n, 3, 3]`` pinhole intrinsics with positive focal lengths, ``viewmats [n, 4, 4]`` rigid transforms,
    positive ``width``/``height``."""
    Ks = check_array(arrays, "Ks", member, where, shape=(n, 3, 3))
    viewmats = check_array(arrays, "viewmats", member, where, shape=(n, 4, 4))
    size = []
    for name in ("width", "height"):
        a = check_array(arrays, name, member, where, shape=(), kind="int")
        if int(a) <= 0:
            raise where.error(member, f"{name} must be positive, got {int(a)}", name, reason=REASON_VALUE)
        size.append(int(a))
    K = Ks.astype(np.float64)
    bad = np.flatnonzero((K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0))
    if bad.size:
        i = int(bad[0])
        raise where.error(member, f"camera {i} has focal lengths fx={K[i, 0, 0]:g}, fy={K[i, 1, 1]:g}; both must be "
                                  f"positive ({bad.size} of {n} cameras are bad)", "Ks", reason=REASON_VALUE)
    if not (np.allclose(K[:, 2], [0.0, 0.0, 1.0]) and np.allclose(K[:, 1, 0], 0.0)):
        raise where.error(member, "Ks must be pinhole intrinsics [[fx, s, cx], [0, fy, cy], [0, 0, 1]]", "Ks",
                          reason=REASON_VALUE)
    M = viewmats.astype(np.float64)
    if not np.allclose(M[:, 3], [0.0, 0.0, 0.0, 1.0]):
        raise where.error(member, "viewmats must be rigid 4x4 transforms (last row 0 0 0 1)", "viewmats",
                          reason=REASON_VALUE)
    R = M[:, :3, :3]
    orth = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max(axis=(-2, -1))
    det = np.linalg.det(R)
    bad = np.flatnonzero((orth > RIGID_ATOL) | (det <= 0))
    if bad.size:
        i = int(bad[0])
        raise where.error(member, f"viewmats[{i}] is not rigid: its rotation part has |R R^T - I| = {orth[i]:.3g} "
                                  f"and det {det[i]:.3g} (a rotation has 0 and +1)", "viewmats",
                          reason=REASON_VALUE)
    return CameraArrays(Ks=Ks, viewmats=viewmats, width=size[0], height=size[1])


def head_vertex_count(meta: dict[str, Any]) -> int | None:
    """The vertex count of the sample's head model where ``meta.json`` tells it (FLAME, with or without teeth, by its
    fixed topology), else None."""
    if str(meta["head_model"]).startswith("flame"):
        return FLAME_VERTEX_COUNTS.get(meta["n_faces"])
    return None


def check_head(arrays: Mapping[str, np.ndarray], member: str, meta: dict[str, Any], frames: int | None,
               where: Where) -> dict[str, np.ndarray]:
    """Head parameters: ``shape [S]`` and the other fields ``[frames, C]`` (``[C]`` when ``frames`` is None), plus
    the optional ``static_offset [V, 3]`` float32 (finite, ``V`` the head model's vertex count where known), returned
    only when present."""
    lead = () if frames is None else (frames,)
    out = {"shape": check_array(arrays, "shape", member, where, shape=(meta["n_shape"],), max_abs=HEAD_MAX_ABS),
           "expr": check_array(arrays, "expr", member, where, shape=(*lead, meta["n_expr"]), max_abs=HEAD_MAX_ABS)}
    for name, width in HEAD_WIDTHS.items():
        out[name] = check_array(arrays, name, member, where, shape=(*lead, width), max_abs=HEAD_MAX_ABS)
    if STATIC_OFFSET in arrays:
        offset = check_array(arrays, STATIC_OFFSET, member, where, shape=(None, 3), max_abs=MEANS_MAX_ABS)
        n_vertices = head_vertex_count(meta)
        if n_vertices is not None and offset.shape[0] != n_vertices:
            raise where.error(member, f"array {STATIC_OFFSET!r} has {offset.shape[0]} vertices, but head model "
                                      f"{meta['head_model']!r} ({meta['n_faces']} faces) has {n_vertices}",
                              STATIC_OFFSET)
        out[STATIC_OFFSET] = offset
    return out


def check_gaussians(arrays: Mapping[str, np.ndarray], meta: dict[str, Any], where: Where) -> TeacherGaussians:
    """The teacher fit: shapes from ``meta`` (``n_points``, ``sh_degree``), values in range, bindings inside the
    head model's faces, quaternions that can be normalised."""
    n, k = meta["n_points"], (meta["sh_degree"] + 1) ** 2
    g = TeacherGaussians(
        means=check_array(arrays, "means", GAUSSIANS, where, shape=(n, 3), max_abs=MEANS_MAX_ABS),
        binding=check_array(arrays, "binding", GAUSSIANS, where, shape=(n,), kind="int"),
        log_scales=check_array(arrays, "log_scales", GAUSSIANS, where, shape=(n, 3)),
        opacity_logits=check_array(arrays, "opacity_logits", GAUSSIANS, where, shape=(n,)),
        quats=check_array(arrays, "quats", GAUSSIANS, where, shape=(n, 4)),
        sh=check_array(arrays, "sh", GAUSSIANS, where, shape=(n, k, 3)),
    )
    lo, hi = LOG_SCALE_RANGE
    if g.log_scales.size and (g.log_scales.min() < lo or g.log_scales.max() > hi):
        raise where.error(GAUSSIANS, f"log_scales span [{g.log_scales.min():.4g}, {g.log_scales.max():.4g}], outside "
                                     f"[{lo:g}, {hi:g}]", "log_scales", reason=REASON_VALUE)
    if g.binding.size and (g.binding.min() < 0 or g.binding.max() >= meta["n_faces"]):
        raise where.error(GAUSSIANS, f"binding values span [{g.binding.min()}, {g.binding.max()}], outside the "
                                     f"head model's faces [0, {meta['n_faces']})", "binding", reason=REASON_VALUE)
    norms = np.linalg.norm(g.quats.astype(np.float64), axis=-1)
    if (norms < MIN_QUAT_NORM).any():
        raise where.error(GAUSSIANS, f"{int((norms < MIN_QUAT_NORM).sum())} quaternions have zero norm", "quats",
                          reason=REASON_VALUE)
    return g


def check_sizes(meta: dict[str, Any], cameras: CameraArrays, portrait_camera: CameraArrays,
                portrait_shape: tuple[int, ...], where: Where) -> None:
    """The cameras' image sizes agree with ``meta.json`` and the portrait image (``[Hp, Wp, ...]``)."""
    W, H = meta["width"], meta["height"]
    if (cameras.width, cameras.height) != (W, H):
        raise where.error(CAMERAS, f"cameras are {cameras.width}x{cameras.height}, meta says {W}x{H}", "width",
                          reason=REASON_VALUE)
    if (portrait_camera.width, portrait_camera.height) != (portrait_shape[1], portrait_shape[0]):
        raise where.error(PORTRAIT_CAMERA, f"portrait camera is {portrait_camera.width}x{portrait_camera.height}, the "
                                           f"portrait image {portrait_shape[1]}x{portrait_shape[0]}", "width",
                          reason=REASON_VALUE)


__all__ = [
    "FLAME_VERTEX_COUNTS", "FLOAT_MAX_ABS", "HEAD_MAX_ABS", "HEAD_OPTIONAL", "LOG_SCALE_RANGE", "MAX_META_INT",
    "MEANS_MAX_ABS", "RIGID_ATOL", "STATIC_OFFSET", "ShardExpectation", "check_against_manifest", "check_array",
    "check_cameras", "check_gaussians", "check_head", "check_meta", "check_sizes", "head_vertex_count",
]

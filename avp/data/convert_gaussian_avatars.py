"""Convert a GaussianAvatars fit of a NeRSemble clip (plus the VHAP export it was trained on) into a shard.

Inputs (formats of ShenhanQian/GaussianAvatars and ShenhanQian/VHAP; see ``datasets/README.md``):

- the GaussianAvatars model folder (or the ``iteration_<k>`` folder inside it): ``point_cloud.ply`` with face-local
  ``x y z``, ``f_dc_*``, ``f_rest_*``, ``opacity`` (logit), ``scale_*`` (face-relative log scales), ``rot_*``
  (wxyz), ``binding_0`` (face index), and ``flame_param.npz`` beside it (the fit's fine-tuned FLAME parameters);
- the VHAP export folder: ``transforms_{train,val,test}.json`` (or ``transforms.json``), ``images/``,
  ``fg_masks/``, ``flame_param/<t>.npz``; or a combined ("UNION") export made by VHAP's
  ``combine_nerf_datasets.py``, with ``source_sequence`` naming the sequence to convert.

Cameras. VHAP's export writes ``transform_matrix`` (camera-to-world) and ``cy`` in OpenGL convention: its data
config defaults to ``camera_convention_conversion = "opencv->opengl"``, which flips the principal point to
``H - cy`` (``vhap/config/base.py``, ``vhap/util/camera.py`` in ShenhanQian/VHAP). GaussianAvatars reads only
``camera_angle_x`` and renders with ``fy = fx`` and a centred principal point (``readCamerasFromTransforms`` in
``scene/dataset_readers.py``): the teacher was fitted under that camera. ``principal_point="centred"`` (default) gives
the frames that camera, so the teacher renders onto them as GaussianAvatars trained it; ``"calibrated"`` keeps VHAP's
calibrated principal point (converted back to OpenCV: ``H - cy``) and ``fl_y``, for the true projective geometry.

Combined exports. ``combine_nerf_datasets.py`` renumbers ``timestep_index`` across the sequences it lists in
``sequences_trainval.txt`` then ``sequences_test.txt`` and points ``file_path`` at ``../<sequence folder>/``; a
GaussianAvatars fit trained on it stores one ``flame_param.npz`` row per *combined* timestep. Its rows pair with a
sequence's frames only through the combined numbering, so: convert a UNION fit with the UNION export (and
``source_sequence``); a fit whose row count differs from the export's timesteps is never paired with it (``auto``
uses VHAP's per-frame parameters and says why; ``ga`` refuses).

Canonical teacher (PAPER §2.3). A GaussianAvatars Gaussian lives in the frame of its triangle:
``world = R_f @ xyz_local * s_f + c_f``, ``scale_world = exp(scale_local) * s_f``, ``q_world = q(R_f) * q_local``.
Evaluating these on the subject's **own neutral head** (``head.canonical(shape)`` plus the fit's FLAME static
offset, zero expression and pose) gives the canonical cloud the shard stores; that is the canonical space of the
whole project. Frames are the real (VHAP-processed) photos with their calibrated cameras and per-timestep FLAME
parameters; the portrait is one real frame from the most frontal camera, with its tracked FLAME parameters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from avp.data.item import fit_square, square_intrinsics
from avp.data.schema import CameraArrays, ClipSample, TeacherGaussians, make_meta, sample_key
from avp.types import HEAD_PARAM_FIELDS

# GaussianAvatars/VHAP name -> avp (FLAME) name
FLAME_NAMES = {"shape": "shape", "expr": "expr", "rotation": "global_rot", "neck_pose": "neck_pose",
               "jaw_pose": "jaw_pose", "eyes_pose": "eyes_pose", "translation": "translation"}
WHITE = (1.0, 1.0, 1.0)  # VHAP exports composite foregrounds on white (GaussianAvatars trains with --white_background)
PrincipalPoint = Literal["centred", "calibrated"]
UNION_LISTS = ("sequences_trainval.txt", "sequences_test.txt")
"""Files of a combined VHAP export naming its sequences, in the order their timesteps are numbered."""


class ConversionError(ValueError):
    """An input file that does not have the expected format; the message names the file and the key."""


# ------------------------------------------------------------------------------------------- GaussianAvatars

@dataclass
class GaussianAvatarsFit:
    """The contents of a GaussianAvatars ``point_cloud.ply`` (face-local attributes)."""

    xyz: np.ndarray
    """``[N, 3]`` face-local positions."""
    sh: np.ndarray
    """``[N, K, 3]`` SH coefficients (DC first), gsplat/3DGS convention."""
    opacity: np.ndarray
    """``[N]`` logits."""
    scale: np.ndarray
    """``[N, 3]`` face-relative log scales."""
    rot: np.ndarray
    """``[N, 4]`` wxyz, unnormalised."""
    binding: np.ndarray
    """``[N]`` int64 face indices."""


def find_point_cloud(ga_dir: str | Path) -> Path:
    """``point_cloud.ply`` in ``ga_dir`` itself, else in the highest ``point_cloud/iteration_<k>/``."""
    ga_dir = Path(ga_dir)
    if (ga_dir / "point_cloud.ply").exists():
        return ga_dir / "point_cloud.ply"
    iterations = []
    for p in (ga_dir / "point_cloud").glob("iteration_*/point_cloud.ply"):
        m = re.fullmatch(r"iteration_(\d+)", p.parent.name)
        if m:
            iterations.append((int(m.group(1)), p))
    if not iterations:
        raise FileNotFoundError(f"{ga_dir}: no point_cloud.ply (looked in the folder and point_cloud/iteration_*/)")
    return max(iterations)[1]


def read_point_cloud_ply(path: str | Path) -> GaussianAvatarsFit:
    """Parse a GaussianAvatars ``point_cloud.ply`` (the layout :mod:`avp.export.ply` reads and writes); errors
    name the file and the property."""
    from avp.export.ply import PlyError, read_gaussian_avatars_ply

    path = Path(path)
    try:
        splats = read_gaussian_avatars_ply(path)
    except PlyError as e:
        raise ConversionError(str(e)) from e
    n, k_rest = splats.n_points, splats.f_rest.shape[1] // 3
    sh = np.concatenate([splats.f_dc[:, None, :],
                         splats.f_rest.reshape(n, 3, k_rest).transpose(0, 2, 1)], axis=1)  # [N, K, 3]
    f64 = lambda a: np.asarray(a, dtype=np.float64)
    fit = GaussianAvatarsFit(xyz=f64(splats.xyz), sh=f64(sh), opacity=f64(splats.opacity), scale=f64(splats.scale),
                             rot=f64(splats.rot), binding=splats.binding)
    for name in ("xyz", "sh", "opacity", "scale", "rot"):
        if not np.isfinite(getattr(fit, name)).all():
            raise ConversionError(f"{path}: non-finite values in {name}")
    if (np.linalg.norm(fit.rot, axis=-1) < 1e-12).any():
        raise ConversionError(f"{path}: some rot_* quaternions are zero")
    return fit


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(str(path), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ConversionError(f"{path}: cannot read npz ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------------------------ VHAP

@dataclass
class VhapFrame:
    """One image of a VHAP export."""

    timestep: int
    camera: int
    camera_id: str
    K: np.ndarray
    """``[3, 3]`` OpenCV pixel intrinsics of the chosen principal-point model."""
    c2w_gl: np.ndarray
    """``[4, 4]`` camera-to-world in OpenGL axes (as in ``transform_matrix``)."""
    width: int
    height: int
    image: Path
    mask: Path | None
    flame: Path | None
    sequence: str | None
    """The per-sequence folder of a combined export's frame (``file_path`` = ``../<sequence>/…``), else None."""


def union_sequences(export_dir: str | Path) -> list[str] | None:
    """The sequence folders of a combined (UNION) VHAP export in timestep order, or None for a single sequence."""
    lists = [Path(export_dir) / name for name in UNION_LISTS]
    if not any(f.is_file() for f in lists):
        return None
    return [line.strip() for f in lists if f.is_file() for line in f.read_text().splitlines() if line.strip()]


def _intrinsics(fr: dict, db: dict, w: int, h: int, principal_point: PrincipalPoint) -> np.ndarray:
    """OpenCV ``K [3, 3]`` of one exported frame (see the module docstring for the two models)."""
    if principal_point == "centred":
        angle_x = fr.get("camera_angle_x", db.get("camera_angle_x"))
        fx = w / (2 * np.tan(float(angle_x) / 2)) if angle_x is not None else float(fr.get("fl_x", db.get("fl_x")))
        return np.array([[fx, 0, w / 2], [0, fx, h / 2], [0, 0, 1]])
    if principal_point != "calibrated":
        raise ValueError(f"principal_point must be 'centred' or 'calibrated', got {principal_point!r}")
    fx, fy = float(fr.get("fl_x", db.get("fl_x"))), float(fr.get("fl_y", db.get("fl_y")))
    cx, cy_gl = float(fr.get("cx", db.get("cx"))), float(fr.get("cy", db.get("cy")))
    return np.array([[fx, 0, cx], [0, fy, h - cy_gl], [0, 0, 1]])


def read_vhap_export(export_dir: str | Path, *, principal_point: PrincipalPoint = "centred",
                     sequence: str | None = None) -> list[VhapFrame]:
    """All frames listed by ``transforms_{train,val,test}.json`` (or ``transforms.json``), deduplicated; of a
    combined export, only ``sequence``'s frames when it is given (their timesteps keep the combined numbering)."""
    export_dir = Path(export_dir)
    files = [export_dir / f"transforms_{d}.json" for d in ("train", "val", "test")]
    files = [f for f in files if f.exists()] or [export_dir / "transforms.json"]
    if not files[0].exists():
        raise FileNotFoundError(f"{export_dir}: no transforms_*.json or transforms.json (a VHAP export folder?)")
    frames: dict[tuple[int, int], VhapFrame] = {}
    for f in files:
        try:
            db = json.loads(f.read_text())
        except Exception as e:
            raise ConversionError(f"{f}: not valid JSON ({e})") from e
        if not isinstance(db.get("frames"), list):
            raise ConversionError(f"{f}: missing list 'frames'")
        for i, fr in enumerate(db["frames"]):
            where = f"{f}: frames[{i}]"
            try:
                key = (int(fr["timestep_index"]), int(fr["camera_index"]))
                w = int(fr.get("w", db.get("w")))
                h = int(fr.get("h", db.get("h")))
                K = _intrinsics(fr, db, w, h, principal_point)
                c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
                image = export_dir / fr["file_path"]
                parts = Path(fr["file_path"]).parts
            except (KeyError, TypeError, ValueError) as e:
                raise ConversionError(f"{where}: missing or malformed field ({type(e).__name__}: {e})") from e
            frame_sequence = parts[1] if len(parts) > 2 and parts[0] == ".." else None
            if sequence is not None and frame_sequence != sequence:
                continue
            if c2w.shape != (4, 4):
                raise ConversionError(f"{where}: 'transform_matrix' must be 4x4, got {list(c2w.shape)}")
            if not image.suffix:
                image = image.with_suffix(".png")
            frames[key] = VhapFrame(
                timestep=key[0], camera=key[1], camera_id=str(fr.get("camera_id", key[1])),
                K=K, c2w_gl=c2w, width=w, height=h, image=image,
                mask=export_dir / fr["fg_mask_path"] if fr.get("fg_mask_path") else None,
                flame=export_dir / fr["flame_param_path"] if fr.get("flame_param_path") else None,
                sequence=frame_sequence)
    return [frames[k] for k in sorted(frames)]


def opencv_viewmat(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world -> OpenCV world-to-camera (flip the camera's y and z axes, then invert)."""
    c2w = np.array(c2w_gl, dtype=np.float64)
    c2w[:3, 1:3] *= -1
    return np.linalg.inv(c2w)


# -------------------------------------------------------------------------------------------- FLAME params

def _fit_width(values: np.ndarray, n: int, where: str) -> np.ndarray:
    """Pad with zeros to ``n`` trailing components, or drop components that are all (numerically) zero."""
    have = values.shape[-1]
    if have < n:
        return np.concatenate([values, np.zeros((*values.shape[:-1], n - have))], -1)
    if have > n and np.abs(values[..., n:]).max() > 1e-6:
        raise ConversionError(f"{where}: {have} coefficients but the head model takes {n}; the dropped ones are "
                              "not zero (build the head model with n_shape/n_expr to match)")
    return values[..., :n]


def flame_to_head(arrays: dict[str, np.ndarray], rows: list[int] | None, *, n_shape: int, n_expr: int,
                  where: str) -> dict[str, np.ndarray]:
    """GaussianAvatars/VHAP FLAME arrays -> avp head fields (``shape [S]``; others ``[T, C]`` at ``rows``)."""
    out = {}
    for src, dst in FLAME_NAMES.items():
        if src not in arrays:
            raise ConversionError(f"{where}: missing key {src!r} (has {sorted(arrays)})")
        a = np.asarray(arrays[src], dtype=np.float64)
        if dst == "shape":
            out[dst] = _fit_width(a.reshape(-1), n_shape, f"{where} key 'shape'")
            continue
        a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a[None]
        if rows is not None:
            if max(rows) >= a.shape[0]:
                raise ConversionError(f"{where}: key {src!r} has {a.shape[0]} rows, timestep {max(rows)} needed")
            a = a[rows]
        if dst == "expr":
            a = _fit_width(a, n_expr, f"{where} key 'expr'")
        out[dst] = a
    return {k: v.astype(np.float32) for k, v in out.items()}


# ------------------------------------------------------------------------------------------- canonicalise

def canonical_teacher(head: Any, fit: GaussianAvatarsFit, shape: np.ndarray, static_offset: np.ndarray | None,
                      *, legacy_quat_order: bool = False, where: str = "point_cloud.ply") -> TeacherGaussians:
    """Evaluate GaussianAvatars' face-local Gaussians on the subject's neutral head (PAPER §2.3).

    ``shape [S]``; ``static_offset [V, 3]`` or None (added to the neutral mesh as FLAME does).
    """
    from avp.head.frames import face_frames, local_to_world_log_scales, local_to_world_points, local_to_world_quats

    if fit.binding.max(initial=0) >= head.n_faces:
        raise ConversionError(f"{where}: binding_0 reaches face {int(fit.binding.max())} but the head model "
                              f"{head.name!r} has {head.n_faces} faces (GaussianAvatars binds to FLAME with teeth: "
                              "10,144 faces; build the head with teeth=True)")
    with torch.no_grad():
        verts = head.canonical(torch.as_tensor(shape, dtype=torch.float64)[None].float())[0].double()  # [V, 3]
        if static_offset is not None:
            verts = verts + torch.as_tensor(static_offset, dtype=torch.float64)
        frames = face_frames(verts, head.faces).gather(torch.as_tensor(fit.binding))
        xyz = torch.as_tensor(fit.xyz, dtype=torch.float64)
        means = local_to_world_points(xyz, frames)
        log_scales = local_to_world_log_scales(torch.as_tensor(fit.scale, dtype=torch.float64), frames)
        quats = local_to_world_quats(torch.as_tensor(fit.rot, dtype=torch.float64), frames,
                                     legacy_order=legacy_quat_order)
    return TeacherGaussians(
        means=means.float().numpy(), binding=fit.binding.astype(np.int32), log_scales=log_scales.float().numpy(),
        opacity_logits=fit.opacity.astype(np.float32), quats=quats.float().numpy(), sh=fit.sh.astype(np.float32))


def reduce_points(g: TeacherGaussians, max_points: int | None) -> TeacherGaussians:
    """Keep the ``max_points`` Gaussians that contribute most (opacity x area of their two largest axes).

    GaussianAvatars fits hold ~10^5 Gaussians; the AR model emits a few thousand to tens of thousands (PAPER §5.1).
    The kept points stay in their original order.
    """
    if max_points is None or g.n_points <= max_points:
        return g
    opacity = 1 / (1 + np.exp(-g.opacity_logits.astype(np.float64)))
    s = np.sort(g.log_scales.astype(np.float64), axis=-1)
    score = np.log(opacity + 1e-12) + s[:, 1] + s[:, 2]
    keep = np.sort(np.argsort(-score, kind="stable")[:max_points])
    return TeacherGaussians(**{name: getattr(g, name)[keep] for name in
                               ("means", "binding", "log_scales", "opacity_logits", "quats", "sh")})


# --------------------------------------------------------------------------------------------------- images

def _load_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA"):
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
                rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # over white, as GaussianAvatars does
                return np.round(rgb * 255).astype(np.uint8)
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image listed in the VHAP export does not exist") from None
    except Exception as e:
        raise ConversionError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def _load_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mask listed in the VHAP export does not exist") from None


def _square(img: np.ndarray, size: int, background: tuple[float, ...]) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> uint8 ``[size, size, C]`` (pad to square with ``background``, resize)."""
    t = torch.from_numpy(img).float().div(255).movedim(-1, 0)
    out = fit_square(t, size, torch.tensor(background, dtype=torch.float32))
    return out.mul(255).round().clamp(0, 255).to(torch.uint8).movedim(0, -1).numpy()


# -------------------------------------------------------------------------------------------------- convert

def default_ids(export_dir: Path) -> tuple[str, str]:
    """Subject and sequence from a VHAP export folder name (``074_EMO-1_v16_DS4_...`` -> ``074``, ``EMO-1``)."""
    parts = export_dir.name.split("_")
    return parts[0], parts[1] if len(parts) > 1 else "seq"


def _evenly(items: list[int], n: int | None) -> list[int]:
    if n is None or n >= len(items):
        return items
    idx = np.round(np.linspace(0, len(items) - 1, n)).astype(int)
    return [items[i] for i in idx]


def build_sample(head: Any, ga_dir: str | Path, export_dir: str | Path, *, subject: str | None = None,
                 sequence: str | None = None, split: str = "train", size: int = 512, portrait_size: int = 512,
                 max_frames: int | None = None, cameras: list[int] | None = None, frame_format: str = "jpg",
                 max_points: int | None = None, portrait_camera: int | None = None,
                 portrait_timestep: int | None = None, flame_source: str = "auto", static_offset: bool = True,
                 legacy_quat_order: bool = False, principal_point: PrincipalPoint = "centred",
                 source_sequence: str | None = None) -> ClipSample:
    """Read one GaussianAvatars fit + VHAP export into a :class:`ClipSample` (see the module docstring).

    ``source_sequence``: of a combined (UNION) export, the sequence folder to convert (required there, refused for
    a single-sequence export).
    """
    ga_dir, export_dir = Path(ga_dir), Path(export_dir)
    sequences = union_sequences(export_dir)
    if sequences is not None and source_sequence is None:
        raise ConversionError(f"{export_dir} is a combined (UNION) VHAP export of {len(sequences)} sequences "
                              f"({', '.join(sequences[:3])}{', …' if len(sequences) > 3 else ''}); name the one to "
                              "convert with source_sequence (avp data convert --source-sequence FOLDER)")
    if sequences is None and source_sequence is not None:
        raise ConversionError(f"{export_dir} is a single-sequence VHAP export (no {' or '.join(UNION_LISTS)}); "
                              f"source_sequence={source_sequence!r} applies to combined exports only")
    if sequences is not None and source_sequence not in sequences:
        raise ConversionError(f"{export_dir}: sequence {source_sequence!r} is not one of its sequences "
                              f"({', '.join(sequences)})")
    d_subject, d_sequence = default_ids(Path(source_sequence) if source_sequence else export_dir)
    subject, sequence = subject or d_subject, sequence or d_sequence
    ply = find_point_cloud(ga_dir)
    fit = read_point_cloud_ply(ply)
    ga_flame_path = ply.parent / "flame_param.npz"
    every_frame = read_vhap_export(export_dir, principal_point=principal_point)
    if not every_frame:
        raise ConversionError(f"{export_dir}: the transforms list no frames")
    n_export_timesteps = max(f.timestep for f in every_frame) + 1  # one fit row per timestep, as GaussianAvatars
    frames = [f for f in every_frame if source_sequence is None or f.sequence == source_sequence]
    if not frames:
        raise ConversionError(f"{export_dir}: no frame of sequence {source_sequence!r} "
                              f"(file_path ../{source_sequence}/…)")

    all_cams = sorted({f.camera for f in frames})
    cams = all_cams if cameras is None else list(cameras)
    unknown = sorted(set(cams) - set(all_cams))
    if unknown:
        raise ConversionError(f"{export_dir}: cameras {unknown} not in the export (has {all_cams})")
    by_key = {(f.timestep, f.camera): f for f in frames}
    complete = sorted(t for t in {f.timestep for f in frames} if all((t, c) in by_key for c in cams))
    if not complete:
        raise ConversionError(f"{export_dir}: no timestep has images from all cameras {cams}")
    timesteps = _evenly(complete, max_frames)
    T, V = len(timesteps), len(cams)

    # cameras must be fixed over the clip (a combined multi-sequence export relocates each sequence differently)
    Ks, viewmats = [], []
    for c in cams:
        ref = by_key[(timesteps[0], c)]
        for t in timesteps[1:]:
            other = by_key[(t, c)]
            if not np.allclose(other.c2w_gl, ref.c2w_gl, atol=1e-6) or not np.allclose(other.K, ref.K):
                raise ConversionError(f"{export_dir}: camera {c} moves between timesteps {timesteps[0]} and {t} "
                                      "(a combined VHAP dataset?); convert each sequence's export separately")
        Ks.append(square_intrinsics(torch.from_numpy(ref.K), ref.height, ref.width, size).numpy())
        viewmats.append(opencv_viewmat(ref.c2w_gl))
    sizes = {(by_key[(timesteps[0], c)].width, by_key[(timesteps[0], c)].height) for c in cams}

    # FLAME parameters: the fit's own (fine-tuned) ones when they cover the clip, else VHAP's per-frame files
    n_shape, n_expr = head.n_shape, head.n_expr
    ga_flame = load_npz(ga_flame_path) if ga_flame_path.exists() else None
    ga_rows = np.asarray(ga_flame["expr"]).shape[0] if ga_flame is not None and "expr" in ga_flame else 0
    if flame_source == "ga" and ga_flame is None:
        raise FileNotFoundError(f"{ga_flame_path}: --flame-source ga but the fit has no flame_param.npz")
    mismatch = None
    if ga_flame is not None and ga_rows != n_export_timesteps:
        mismatch = (f"{ga_flame_path} has {ga_rows} timesteps but {export_dir} numbers {n_export_timesteps}: the fit "
                    "was trained on another export (a combined UNION one renumbers timesteps across its sequences), "
                    "so its rows do not pair with these frames")
        if flame_source == "ga":
            raise ConversionError(f"{mismatch}; convert with the export the fit was trained on (for a UNION fit: the "
                                  "UNION folder and --source-sequence) or use --flame-source vhap")
    use_ga = flame_source == "ga" or (flame_source == "auto" and ga_flame is not None and mismatch is None)
    if use_ga:
        assert ga_flame is not None
        head_arrays = flame_to_head(ga_flame, timesteps, n_shape=n_shape, n_expr=n_expr, where=str(ga_flame_path))
        offset_src: dict[str, np.ndarray] = ga_flame
        offset_where = str(ga_flame_path)
    else:
        rows = []
        for t in timesteps:
            path = by_key[(t, cams[0])].flame
            if path is None:
                raise ConversionError(f"{export_dir}: timestep {t} has no flame_param_path")
            rows.append(flame_to_head(load_npz(path), None, n_shape=n_shape, n_expr=n_expr, where=str(path)))
        head_arrays = {k: (rows[0][k] if k == "shape" else np.concatenate([r[k] for r in rows])) for k in rows[0]}
        offset_path = by_key[(timesteps[0], cams[0])].flame
        assert offset_path is not None
        offset_src, offset_where = load_npz(offset_path), str(offset_path)

    offset = None
    if static_offset and "static_offset" in offset_src:
        offset = np.asarray(offset_src["static_offset"], dtype=np.float64).reshape(-1, 3)
        if offset.shape[0] < head.n_vertices:  # GaussianAvatars pads FLAME's offsets for the teeth vertices
            offset = np.concatenate([offset, np.zeros((head.n_vertices - offset.shape[0], 3))])
        if offset.shape[0] != head.n_vertices:
            raise ConversionError(f"{offset_where}: static_offset has {offset.shape[0]} vertices, the head model "
                                  f"{head.name!r} {head.n_vertices}")

    teacher = canonical_teacher(head, fit, head_arrays["shape"], offset, legacy_quat_order=legacy_quat_order,
                                where=str(ply))
    teacher = reduce_points(teacher, max_points)

    images = np.zeros((T, V, size, size, 3), np.uint8)
    has_masks = all(by_key[(t, c)].mask is not None for t in timesteps for c in cams)
    masks = np.zeros((T, V, size, size), np.uint8) if has_masks else None
    for i, t in enumerate(timesteps):
        for j, c in enumerate(cams):
            fr = by_key[(t, c)]
            rgb = _load_rgb(fr.image)
            if rgb.shape[:2] != (fr.height, fr.width):
                raise ConversionError(f"{fr.image}: image is {rgb.shape[1]}x{rgb.shape[0]}, the transforms say "
                                      f"{fr.width}x{fr.height}")
            images[i, j] = _square(rgb, size, WHITE)
            if masks is not None:
                assert fr.mask is not None
                masks[i, j] = _square(_load_mask(fr.mask)[..., None], size, (0.0,))[..., 0]

    # portrait: the most frontal camera (facing the head's +z after its global rotation) at the first timestep
    pt = timesteps[0] if portrait_timestep is None else int(portrait_timestep)
    if pt not in timesteps:
        raise ConversionError(f"portrait timestep {pt} is not among the converted timesteps {timesteps}")
    ti = timesteps.index(pt)
    if portrait_camera is None:
        from avp.rotations import axis_angle_to_matrix

        R = axis_angle_to_matrix(torch.from_numpy(head_arrays["global_rot"][ti]).double()).numpy()
        forward, centre = R[:, 2], head_arrays["translation"][ti]
        scores = []
        for c in cams:
            cam_centre = by_key[(pt, c)].c2w_gl[:3, 3]
            d = cam_centre - centre
            scores.append(float(forward @ d / (np.linalg.norm(d) + 1e-12)))
        portrait_camera = cams[int(np.argmax(scores))]
    if portrait_camera not in cams:
        raise ConversionError(f"portrait camera {portrait_camera} is not among the converted cameras {cams}")
    pf = by_key[(pt, portrait_camera)]
    portrait = _square(_load_rgb(pf.image), portrait_size, WHITE)
    portrait_K = square_intrinsics(torch.from_numpy(pf.K), pf.height, pf.width, portrait_size).numpy()
    portrait_head = {k: (head_arrays[k] if k == "shape" else head_arrays[k][ti]) for k in HEAD_PARAM_FIELDS}

    meta = make_meta(
        subject=subject, sequence=sequence, split=split, source="gaussian_avatars", head_model=head.name,
        n_faces=head.n_faces, n_shape=n_shape, n_expr=n_expr, width=size, height=size, views=V, frames=T,
        frame_format=frame_format, masks=has_masks, portrait_format=frame_format, portrait_width=portrait_size,
        portrait_height=portrait_size, n_points=teacher.n_points, sh_degree=teacher.sh_degree, background=WHITE,
        extra={"point_cloud": str(ply), "export": str(export_dir), "timesteps": timesteps,
               "camera_indices": cams, "camera_ids": [by_key[(timesteps[0], c)].camera_id for c in cams],
               "source_sizes": sorted(sizes), "flame_source": "gaussian_avatars" if use_ga else "vhap",
               "flame_source_note": mismatch, "principal_point": principal_point,
               "union_sequence": source_sequence,
               "static_offset": offset is not None, "portrait": {"timestep": pt, "camera": portrait_camera},
               "legacy_quat_order": legacy_quat_order, "points_in_fit": int(fit.xyz.shape[0])})
    return ClipSample(
        key=sample_key(subject, sequence), meta=meta, portrait=portrait,
        portrait_head={k: v.astype(np.float32) for k, v in portrait_head.items()},
        portrait_camera=CameraArrays(Ks=portrait_K[None].astype(np.float32),
                                     viewmats=opencv_viewmat(pf.c2w_gl)[None].astype(np.float32),
                                     width=portrait_size, height=portrait_size),
        cameras=CameraArrays(Ks=np.stack(Ks).astype(np.float32), viewmats=np.stack(viewmats).astype(np.float32),
                             width=size, height=size),
        head=head_arrays, gaussians=teacher, frames=images, masks=masks)


def convert(head: Any, ga_dir: str | Path, export_dir: str | Path, out_dir: str | Path, *, index: bool = True,
            jpeg_quality: int = 95, **kwargs: Any) -> Path:
    """Convert one clip into ``out_dir/<split>-<key>.tar`` (atomic) and re-index ``out_dir`` unless ``index=False``
    (parallel conversions: run ``avp data index OUT`` once at the end). Returns the shard path."""
    from avp.data.manifest import index_directory
    from avp.data.schema import encode_sample
    from avp.data.writer import TarShardWriter

    sample = build_sample(head, ga_dir, export_dir, **kwargs)
    out_dir = Path(out_dir)
    path = out_dir / f"{sample.meta['split']}-{sample.key}.tar"
    with TarShardWriter(path, split=sample.meta["split"], relative_to=out_dir) as w:
        w.add(encode_sample(sample, jpeg_quality=jpeg_quality))
    if index:
        index_directory(out_dir, created_by={"converter": "avp.data.convert_gaussian_avatars"})
    return path

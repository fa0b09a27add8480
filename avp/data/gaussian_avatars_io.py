"""Readers of the inputs of :mod:`avp.data.convert_gaussian_avatars`: a GaussianAvatars fit and its VHAP export.

Formats of ShenhanQian/GaussianAvatars and ShenhanQian/VHAP (see ``datasets/README.md``):

- the GaussianAvatars model folder (or the ``iteration_<k>`` folder inside it): ``point_cloud.ply`` with face-local
  ``x y z``, ``f_dc_*``, ``f_rest_*``, ``opacity`` (logit), ``scale_*`` (face-relative log scales), ``rot_*``
  (wxyz), ``binding_0`` (face index), and ``flame_param.npz`` beside it (the fit's fine-tuned FLAME parameters,
  with ``static_offset [1, V, 3]``);
- the VHAP export folder: ``transforms_{train,val,test}.json`` (or ``transforms.json``), ``images/``,
  ``fg_masks/``, ``flame_param/<t>.npz`` (each with the tracked ``static_offset [1, V, 3]``); or a combined ("UNION")
  export made by VHAP's ``combine_nerf_datasets.py``, with ``source_sequence`` naming the sequence to convert.

``V`` is 5,143 in both (FLAME's 5,023 vertices plus the 120 teeth vertices both add; VHAP's ``add_teeth`` is on by
default).

Cameras. VHAP's export writes ``transform_matrix`` (camera-to-world) and ``cy`` in OpenGL convention: its data
config defaults to ``camera_convention_conversion = "opencv->opengl"``, which flips the principal point to
``H - cy`` (``vhap/config/base.py``, ``vhap/util/camera.py`` in ShenhanQian/VHAP). GaussianAvatars reads only
``camera_angle_x`` and renders with ``fy = fx`` and a centred principal point (``readCamerasFromTransforms`` in
``scene/dataset_readers.py``): the teacher was fitted under that camera. ``principal_point="centred"`` (default) gives
the frames that camera, so the teacher renders onto them as GaussianAvatars trained it; ``"calibrated"`` keeps VHAP's
calibrated principal point (converted back to OpenCV: ``H - cy``) and ``fl_y``, for the true projective geometry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["FLAME_NAMES", "UNION_LISTS", "ConversionError", "GaussianAvatarsFit", "PrincipalPoint", "VhapFrame",
           "find_point_cloud", "flame_to_head", "load_npz", "opencv_viewmat", "read_point_cloud_ply",
           "read_static_offset", "read_vhap_export", "union_sequences"]

# GaussianAvatars/VHAP name -> avp (FLAME) name
FLAME_NAMES = {"shape": "shape", "expr": "expr", "rotation": "global_rot", "neck_pose": "neck_pose",
               "jaw_pose": "jaw_pose", "eyes_pose": "eyes_pose", "translation": "translation"}
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


def read_static_offset(arrays: dict[str, np.ndarray], n_vertices: int, where: str) -> np.ndarray | None:
    """The ``static_offset`` of a GaussianAvatars/VHAP parameter file as ``[n_vertices, 3]`` float64, or None.

    Files hold ``[1, V, 3]`` with ``V = 5143`` (FLAME plus teeth); a shorter array (FLAME's 5,023 only) is padded with
    zeros for the teeth vertices, which both append after FLAME's.
    """
    if "static_offset" not in arrays:
        return None
    offset = np.asarray(arrays["static_offset"], dtype=np.float64)
    if offset.ndim < 2 or offset.shape[-1] != 3 or (offset.ndim == 3 and offset.shape[0] != 1) or offset.ndim > 3:
        raise ConversionError(f"{where}: static_offset must be [1, V, 3] or [V, 3], got {list(offset.shape)}")
    offset = offset.reshape(-1, 3)
    if offset.shape[0] < n_vertices:
        offset = np.concatenate([offset, np.zeros((n_vertices - offset.shape[0], 3))])
    if offset.shape[0] != n_vertices:
        raise ConversionError(f"{where}: static_offset has {offset.shape[0]} vertices, the head model {n_vertices}")
    if not np.isfinite(offset).all():
        raise ConversionError(f"{where}: static_offset holds non-finite values")
    return offset

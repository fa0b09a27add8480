"""Convert a GaussianAvatars fit of a NeRSemble clip (plus the VHAP export it was trained on) into a shard.

The inputs and their formats (ShenhanQian/GaussianAvatars, ShenhanQian/VHAP; cameras and the principal-point choice)
are read by :mod:`avp.data.gaussian_avatars_io`; see also ``datasets/README.md``.

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

Static offsets. VHAP and GaussianAvatars pose the tracked mesh, template plus blendshapes plus ``static_offset``
(:mod:`avp.head.lbs`), so the offset is part of the subject: the sample carries it as ``head["static_offset"]``
``[V, 3]`` float32 (beside ``shape``), for posing and binding on the same mesh the frames were tracked on
(``HeadModel.forward/canonical/rig(..., static_offset)``).

FLAME release. A fit is only meaningful on the FLAME release it was tracked with, and no GaussianAvatars or VHAP file
records it: ``fit_flame_version`` states it (default ``"2023"``: GaussianAvatars' pre-processed data relies on FLAME
2023, its ``doc/download.md``, and VHAP loads ``flame2023.pkl`` by default). A head model of another (or an unknown)
release is refused, naming the FLAME file and both releases (:func:`avp.head.flame.check_flame_version`); the sample
records both in ``meta["extra"]`` (``flame_version``, ``fit_flame_version``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from avp.data.gaussian_avatars_io import (
    FLAME_NAMES,
    UNION_LISTS,
    ConversionError,
    GaussianAvatarsFit,
    PrincipalPoint,
    VhapFrame,
    find_point_cloud,
    flame_to_head,
    load_npz,
    opencv_viewmat,
    read_point_cloud_ply,
    read_static_offset,
    read_vhap_export,
    union_sequences,
)
from avp.data.item import fit_square, square_intrinsics
from avp.data.schema import CameraArrays, ClipSample, TeacherGaussians, make_meta, sample_key
from avp.head.flame import FlameVersionError, check_flame_version
from avp.types import HEAD_PARAM_FIELDS

__all__ = ["FLAME_NAMES", "UNION_LISTS", "WHITE", "ConversionError", "GaussianAvatarsFit", "PrincipalPoint",
           "VhapFrame", "build_sample", "canonical_teacher", "convert", "default_ids", "find_point_cloud",
           "flame_to_head", "load_npz", "opencv_viewmat", "read_point_cloud_ply", "read_vhap_export", "reduce_points",
           "union_sequences"]

WHITE = (1.0, 1.0, 1.0)  # VHAP exports composite foregrounds on white (GaussianAvatars trains with --white_background)


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
                 source_sequence: str | None = None, fit_flame_version: str | None = "2023") -> ClipSample:
    """Read one GaussianAvatars fit + VHAP export into a :class:`ClipSample` (see the module docstring).

    ``source_sequence``: of a combined (UNION) export, the sequence folder to convert (required there, refused for
    a single-sequence export). ``static_offset``: carry the fit's FLAME static offset (canonical teacher and
    ``head["static_offset"]``). ``fit_flame_version``: the FLAME release the fit was tracked with (``"2020"`` or
    ``"2023"``), checked against the head model's; None skips the check.
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
    try:
        check_flame_version(head, fit_flame_version, what=f"the GaussianAvatars/VHAP fit {ply}")
    except FlameVersionError as e:
        raise FlameVersionError(f"{e} (the fit's release is fit_flame_version={fit_flame_version!r}, GaussianAvatars' "
                                "and VHAP's default; give the release the fit was tracked with if it is "
                                "another)") from e
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

    offset = read_static_offset(offset_src, head.n_vertices, f"{offset_where} (head model {head.name!r})") \
        if static_offset else None
    if offset is not None:
        head_arrays["static_offset"] = offset.astype(np.float32)  # [V, 3], the subject's, as its shape

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
               "flame_version": getattr(head, "flame_version", None), "fit_flame_version": fit_flame_version,
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

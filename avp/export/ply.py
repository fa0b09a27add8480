"""Gaussian ``.ply`` files: GaussianAvatars' ``point_cloud.ply`` (face-local, with ``binding_0``) and the INRIA 3DGS
layout in world space that ordinary splat viewers open.

Both layouts are one ``vertex`` element of little-endian ``float`` (f4) properties, in this order (GaussianAvatars'
``GaussianModel.construct_list_of_attributes`` / ``save_ply``, which extends INRIA's by the last one):

``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 … f_rest_{3(K-1)-1} opacity scale_0 scale_1 scale_2
rot_0 rot_1 rot_2 rot_3 [binding_0]``

- ``nx ny nz`` are written as zeros (both writers do so);
- ``f_dc_c`` is the SH DC coefficient of channel ``c``; ``f_rest`` is channel-major: ``f_rest_{c (K-1) + k - 1}`` is
  coefficient ``k >= 1`` of channel ``c`` (``K = (degree + 1)^2``); colour is ``0.5 + SH`` as in gsplat;
- ``opacity`` is a logit, ``scale_*`` are log standard deviations, ``rot_*`` a wxyz quaternion;
- GaussianAvatars only: ``x y z``, ``scale_*`` and ``rot_*`` are relative to the frame of the bound triangle
  (:mod:`avp.head.frames`), and ``binding_0`` holds the triangle index as a float.

Beside a GaussianAvatars ply goes ``flame_param.npz`` (``np.savez``, every array float32 because GaussianAvatars'
motion loader keeps only float32 arrays): ``shape [S]``, ``expr [T, E]``, ``rotation``, ``neck_pose``,
``jaw_pose``, ``translation [T, 3]``, ``eyes_pose [T, 6]``, ``static_offset [1, V, 3]`` (the avatar's, for a tracked
subject; else zeros) and ``dynamic_offset [T, V, 3]`` (zeros here). A tracked subject's splats are face-local on its
neutral head *plus* that static offset (GaussianAvatars' mesh), so the ply and the npz belong together.

Every file is written atomically (a temporary file renamed over the target).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avp.atomic import atomic_open
from avp.head.frames import (
    face_frames,
    local_to_world_log_scales,
    local_to_world_points,
    local_to_world_quats,
    world_to_local_log_scales,
    world_to_local_points,
    world_to_local_quats,
)
from avp.types import GaussianCloud, HeadParams

__all__ = [
    "FLAME_PARAM_NAMES",
    "PlyError",
    "PlySplats",
    "cloud_from_splats",
    "gaussian_avatars_fields",
    "read_flame_param_npz",
    "read_gaussian_avatars_ply",
    "read_splat_ply",
    "splat_fields",
    "splats_from_cloud",
    "to_gaussian_avatars",
    "from_gaussian_avatars",
    "write_flame_param_npz",
    "write_gaussian_avatars_ply",
    "write_splat_ply",
]

OPACITY_EPS = 1e-6
"""Opacities are clamped into ``[eps, 1 - eps]`` before the logit (an opacity of exactly 1 has no finite logit)."""
SCALE_MIN = 1e-12
"""Scales are clamped at this before the log."""

FLAME_PARAM_NAMES = {"rotation": "global_rot", "neck_pose": "neck_pose", "jaw_pose": "jaw_pose",
                     "eyes_pose": "eyes_pose", "translation": "translation", "expr": "expr"}
"""GaussianAvatars / VHAP ``flame_param`` key -> :class:`~avp.types.HeadParams` field (``shape`` is shared)."""


class PlyError(ValueError):
    """A ply file that does not have the expected layout; the message names the file and the property."""


def splat_fields(sh_degree: int) -> list[str]:
    """The INRIA 3DGS property names for SH ``sh_degree``, in file order."""
    if not 0 <= sh_degree <= 3:
        raise ValueError(f"ply: sh_degree must be in 0..3, got {sh_degree}")
    k = (sh_degree + 1) ** 2
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(3 * (k - 1))] + ["opacity"] + [f"scale_{i}" for i in range(3)]
            + [f"rot_{i}" for i in range(4)])


def gaussian_avatars_fields(sh_degree: int) -> list[str]:
    """GaussianAvatars' property names for SH ``sh_degree``, in file order (INRIA's plus ``binding_0``)."""
    return splat_fields(sh_degree) + ["binding_0"]


@dataclass
class PlySplats:
    """Gaussians as a ply stores them (raw, pre-activation), ``N`` of them; float32 arrays."""

    xyz: np.ndarray
    """``[N, 3]`` positions (world, or face-local for GaussianAvatars)."""
    f_dc: np.ndarray
    """``[N, 3]`` SH DC coefficient per channel."""
    f_rest: np.ndarray
    """``[N, 3 (K - 1)]`` higher SH coefficients, channel-major."""
    opacity: np.ndarray
    """``[N]`` logits."""
    scale: np.ndarray
    """``[N, 3]`` log standard deviations."""
    rot: np.ndarray
    """``[N, 4]`` wxyz quaternions."""
    binding: np.ndarray | None = None
    """``[N]`` int64 head-model face index (GaussianAvatars only)."""

    @property
    def n_points(self) -> int:
        return self.xyz.shape[0]

    @property
    def sh_degree(self) -> int:
        k = self.f_rest.shape[1] // 3 + 1
        return int(round(math.sqrt(k))) - 1

    def columns(self, binding: bool = True) -> np.ndarray:
        """``[N, C]`` float32 in file order (normals zero; the binding last when present and asked for)."""
        parts = [self.xyz, np.zeros_like(self.xyz), self.f_dc, self.f_rest, self.opacity[:, None], self.scale,
                 self.rot]
        if binding and self.binding is not None:
            parts.append(self.binding[:, None].astype(np.float64))
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- conversions

def _cloud_rows(cloud: GaussianCloud) -> GaussianCloud:
    """One avatar's real splats as a ``[N]`` view: ``[1, N]`` clouds drop their padding."""
    if cloud.means.dim() == 3:
        if cloud.means.shape[0] != 1:
            raise ValueError(f"ply: write one avatar at a time; got a batch of {cloud.means.shape[0]}")
        keep = cloud.valid_mask()[0]
        return GaussianCloud(means=cloud.means[0][keep], quats=cloud.quats[0][keep], scales=cloud.scales[0][keep],
                             opacities=cloud.opacities[0][keep], sh=cloud.sh[0][keep])
    return cloud


def splats_from_cloud(cloud: GaussianCloud, *, sh_degree: int | None = None) -> PlySplats:
    """Activated Gaussians (``[N]`` fields, or ``[1, N]`` with padding dropped) -> raw ply arrays.

    ``sh_degree`` pads (with zeros) or truncates the SH coefficients; None keeps the cloud's degree.
    """
    c = _cloud_rows(cloud)
    sh = c.sh.detach().double().cpu()
    n, k = sh.shape[0], sh.shape[1]
    if sh_degree is not None:
        k_out = (sh_degree + 1) ** 2
        sh = torch.cat([sh, sh.new_zeros(n, max(k_out - k, 0), 3)], 1)[:, :k_out]
        k = k_out
    opacity = c.opacities.detach().double().cpu().clamp(OPACITY_EPS, 1 - OPACITY_EPS)
    quats = c.quats.detach().double().cpu()
    return PlySplats(
        xyz=c.means.detach().double().cpu().numpy().astype(np.float32),
        f_dc=sh[:, 0].numpy().astype(np.float32),
        f_rest=sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1)).numpy().astype(np.float32),  # [N, 3, K-1] flat
        opacity=torch.logit(opacity).numpy().astype(np.float32),
        scale=c.scales.detach().double().cpu().clamp_min(SCALE_MIN).log().numpy().astype(np.float32),
        rot=(quats / quats.norm(dim=-1, keepdim=True)).numpy().astype(np.float32),
    )


def cloud_from_splats(splats: PlySplats, *, dtype: torch.dtype = torch.float32) -> GaussianCloud:
    """Raw ply arrays -> an activated ``[1, N]`` cloud (quaternions normalised, as both projects do on load)."""
    n = splats.n_points
    k = splats.f_rest.shape[1] // 3 + 1
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
    rest = t(splats.f_rest).reshape(n, 3, k - 1).transpose(1, 2)  # channel-major -> [N, K-1, 3]
    sh = torch.cat([t(splats.f_dc)[:, None], rest], 1)
    quats = t(splats.rot)
    cloud = GaussianCloud(means=t(splats.xyz), quats=quats / quats.norm(dim=-1, keepdim=True),
                          scales=t(splats.scale).exp(), opacities=torch.sigmoid(t(splats.opacity)), sh=sh)
    return cloud.map(lambda x: x.to(dtype)[None])


def _as_offset(static_offset: Tensor | np.ndarray | None, n_vertices: int) -> Tensor | None:
    """A static offset ``[V, 3]`` or ``[1, V, 3]`` (tensor or array) -> float64 CPU ``[1, V, 3]``, or None."""
    if static_offset is None:
        return None
    offset = torch.as_tensor(static_offset).detach().double().cpu()
    if offset.dim() == 2:
        offset = offset[None]
    if offset.dim() != 3 or tuple(offset.shape) != (1, n_vertices, 3):
        raise ValueError(f"ply: static_offset must be [V, 3] or [1, V, 3] with V = {n_vertices}, got "
                         f"{list(offset.shape)}")
    return offset


def _neutral_frames(head_model: torch.nn.Module, shape: Tensor, binding: Tensor,
                    static_offset: Tensor | np.ndarray | None = None):
    offset = _as_offset(static_offset, head_model.n_vertices)
    if offset is None:
        verts = head_model.canonical(shape.reshape(1, -1).double())[0]  # [V, 3]
    else:
        verts = head_model.canonical(shape.reshape(1, -1).double(), offset)[0]  # the tracked neutral mesh
    faces = head_model.tensors(verts)["faces"]
    return face_frames(verts, faces).gather(binding.to(faces.device))


def to_gaussian_avatars(cloud: GaussianCloud, binding: Tensor, head_model: torch.nn.Module, shape: Tensor, *,
                        sh_degree: int | None = None,
                        static_offset: Tensor | np.ndarray | None = None) -> PlySplats:
    """Canonical Gaussians (the subject's neutral head space) bound to faces -> GaussianAvatars' face-local arrays.

    Positions, log scales and rotations are expressed in the frames of the bound triangles of the neutral head
    ``head_model.canonical(shape, static_offset)``; so GaussianAvatars' ``world = R local s + c`` on that mesh gives
    back the canonical cloud exactly, and its viewer animates the splats rigidly with their triangles.

    Args:
        cloud: ``[N]`` fields or ``[1, N]`` (padding dropped together with its ``binding`` entries).
        binding: ``[N]`` (or ``[1, N]``) long face indices.
        shape: ``[S]`` the subject's identity coefficients.
        static_offset: ``[V, 3]`` (or ``[1, V, 3]``) a tracked subject's per-vertex offsets (e.g.
            :attr:`Avatar.static_offset <avp.models.avatar.Avatar.static_offset>`), or None (zero); write the same
            offset into ``flame_param.npz`` (:func:`write_flame_param_npz`).
    """
    if binding.dim() == 2:
        binding = binding[0][cloud.valid_mask()[0]] if cloud.means.dim() == 3 else binding[0]
    c = _cloud_rows(cloud)
    if binding.shape != (c.means.shape[0],):
        raise ValueError(f"ply: binding has {tuple(binding.shape)} entries for {c.means.shape[0]} splats")
    binding = binding.long().cpu()
    if binding.numel() and (int(binding.min()) < 0 or int(binding.max()) >= head_model.n_faces):
        raise ValueError(f"ply: binding must index faces of {head_model.name} in [0, {head_model.n_faces})")
    frames = _neutral_frames(head_model, shape.detach().cpu(), binding, static_offset)
    means = c.means.detach().double().cpu()
    local = GaussianCloud(means=world_to_local_points(means, frames),
                          quats=world_to_local_quats(c.quats.detach().double().cpu(), frames),
                          scales=world_to_local_log_scales(c.scales.detach().double().cpu().clamp_min(SCALE_MIN).log(),
                                                           frames).exp(),
                          opacities=c.opacities.detach().double().cpu(), sh=c.sh.detach().double().cpu())
    splats = splats_from_cloud(local, sh_degree=sh_degree)
    splats.binding = binding.numpy().astype(np.int64)
    return splats


def from_gaussian_avatars(splats: PlySplats, head_model: torch.nn.Module, shape: Tensor, *,
                          legacy_order: bool = False,
                          static_offset: Tensor | np.ndarray | None = None) -> tuple[GaussianCloud, Tensor]:
    """Inverse of :func:`to_gaussian_avatars`: ``(cloud [1, N] canonical, binding [1, N])``.

    ``legacy_order`` reads files written before GaussianAvatars' March 2024 quaternion fix. ``static_offset``
    (``[1, V, 3]`` as ``flame_param.npz`` holds it, or ``[V, 3]``; None: zero) puts the splats on the tracked neutral
    mesh they were written on; the cloud is then canonical on that mesh (bind it with the same offset).
    """
    if splats.binding is None:
        raise PlyError("ply: these splats have no binding_0 (not a GaussianAvatars point_cloud.ply)")
    binding = torch.as_tensor(splats.binding, dtype=torch.long)
    if binding.numel() and int(binding.max()) >= head_model.n_faces:
        raise PlyError(f"ply: binding_0 reaches face {int(binding.max())} but {head_model.name} has "
                       f"{head_model.n_faces} faces (a ply of another head model?)")
    frames = _neutral_frames(head_model, shape.detach().cpu(), binding, static_offset)
    raw = cloud_from_splats(splats, dtype=torch.float64).map(lambda x: x[0])
    cloud = GaussianCloud(means=local_to_world_points(raw.means, frames),
                          quats=local_to_world_quats(raw.quats, frames, legacy_order=legacy_order),
                          scales=local_to_world_log_scales(raw.scales.log(), frames).exp(),
                          opacities=raw.opacities, sh=raw.sh)
    return cloud.map(lambda x: x.float()[None]), binding[None]


# -------------------------------------------------------------------------------------------------- writing

def _write_ply(path: str | Path, names: list[str], columns: np.ndarray) -> Path:
    from plyfile import PlyData, PlyElement

    elements = np.empty(columns.shape[0], dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        elements[name] = columns[:, i]
    path = Path(path)
    with atomic_open(path, "wb") as f:
        PlyData([PlyElement.describe(elements, "vertex")]).write(f)
    return path


def write_splat_ply(path: str | Path, cloud: GaussianCloud | PlySplats, *, sh_degree: int | None = 3) -> Path:
    """A world-space 3DGS ply in INRIA's layout (what splat viewers open).

    ``cloud``: activated Gaussians (``[N]`` or ``[1, N]``) or raw :class:`PlySplats` (written as they are).
    ``sh_degree``: INRIA's own loader expects degree 3 (45 ``f_rest``), so lower degrees are zero-padded to it by
    default; None keeps the cloud's degree.
    """
    splats = cloud if isinstance(cloud, PlySplats) else splats_from_cloud(cloud, sh_degree=sh_degree)
    if isinstance(cloud, PlySplats) and sh_degree is not None and splats.sh_degree != sh_degree:
        raise ValueError(f"ply: the splats have SH degree {splats.sh_degree}; pass sh_degree=None to keep it")
    return _write_ply(path, splat_fields(splats.sh_degree), splats.columns(binding=False))


def pad_sh(splats: PlySplats, sh_degree: int) -> PlySplats:
    """The same splats with SH coefficients zero-padded to ``sh_degree`` (each channel's block of ``f_rest``)."""
    have = splats.sh_degree
    if sh_degree < have:
        raise ValueError(f"ply: the splats have SH degree {have}; padding cannot lower it to {sh_degree}")
    n, k_have, k_want = splats.n_points, (have + 1) ** 2 - 1, (sh_degree + 1) ** 2 - 1
    rest = np.zeros((n, 3, k_want), np.float32)
    rest[:, :, :k_have] = splats.f_rest.reshape(n, 3, k_have)
    return dataclasses.replace(splats, f_rest=rest.reshape(n, 3 * k_want))


def write_gaussian_avatars_ply(path: str | Path, splats: PlySplats, *, sh_degree: int | None = 3) -> Path:
    """GaussianAvatars' ``point_cloud.ply`` from face-local splats (see :func:`to_gaussian_avatars`).

    ``sh_degree``: GaussianAvatars' viewer and trainer build their models with ``sh_degree = 3`` and assert 45
    ``f_rest`` properties when loading, so lower degrees are zero-padded to 3 by default; None keeps the splats'.
    """
    if splats.binding is None:
        raise ValueError("ply: GaussianAvatars' point_cloud.ply needs a binding (face index) per splat")
    if sh_degree is not None:
        splats = pad_sh(splats, sh_degree)
    return _write_ply(path, gaussian_avatars_fields(splats.sh_degree), splats.columns())


def write_flame_param_npz(path: str | Path, params: HeadParams, n_vertices: int, *,
                          static_offset: Tensor | np.ndarray | None = None) -> Path:
    """GaussianAvatars' ``flame_param.npz`` for ``params [T]`` (or ``[]`` for one frame) of a head with
    ``n_vertices`` vertices; ``shape`` is taken from the first frame; ``static_offset`` (``[V, 3]`` or ``[1, V, 3]``,
    the one the ply was written with) or zeros; ``dynamic_offset`` zeros."""
    p = params.map(lambda t: t.detach().float().cpu().reshape(-1, t.shape[-1]))  # [T, C]
    T = p.expr.shape[0]
    arrays = {"shape": p.shape[0].numpy()}
    for key, field in FLAME_PARAM_NAMES.items():
        arrays[key] = getattr(p, field).numpy()
    offset = _as_offset(static_offset, n_vertices)
    arrays["static_offset"] = (np.zeros((1, n_vertices, 3), np.float32) if offset is None
                               else offset.numpy().astype(np.float32))
    arrays["dynamic_offset"] = np.zeros((T, n_vertices, 3), np.float32)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


# -------------------------------------------------------------------------------------------------- reading

def _numbered(names: list[str], prefix: str) -> list[str]:
    found = [n for n in names if re.fullmatch(rf"{prefix}_\d+", n)]
    return sorted(found, key=lambda n: int(n.rsplit("_", 1)[1]))


def _read(path: str | Path, *, binding: bool | None) -> PlySplats:
    """``binding``: True requires ``binding_0``, False ignores it, None reads it when present."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ply file")
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except Exception as e:
        raise PlyError(f"{path}: cannot read a ply 'vertex' element ({type(e).__name__}: {e})") from e
    names = [p.name for p in vertex.properties]

    def prop(name: str) -> np.ndarray:
        if name not in names:
            raise PlyError(f"{path}: missing property {name!r} (it has {names})")
        return np.asarray(vertex[name], dtype=np.float32)

    def group(prefix: str, count: int | None) -> np.ndarray:
        found = _numbered(names, prefix)
        if count is not None and len(found) != count:
            raise PlyError(f"{path}: expected {count} {prefix}_* properties, found {found}")
        if not found:
            return np.zeros((len(vertex.data), 0), np.float32)
        return np.stack([prop(n) for n in found], -1)

    rest = group("f_rest", None)
    k = rest.shape[1] // 3 + 1
    if rest.shape[1] % 3 or int(round(math.sqrt(k))) ** 2 != k or k > 16:
        raise PlyError(f"{path}: {rest.shape[1]} f_rest properties is not 3 ((degree + 1)^2 - 1) for a degree <= 3")
    splats = PlySplats(xyz=np.stack([prop(c) for c in "xyz"], -1), f_dc=group("f_dc", 3), f_rest=rest,
                       opacity=prop("opacity"), scale=group("scale", 3), rot=group("rot", 4))
    if binding or (binding is None and "binding_0" in names):
        b = prop("binding_0")
        if np.any(b != np.round(b)) or np.any(b < 0):
            raise PlyError(f"{path}: property 'binding_0' must hold non-negative integer face indices")
        splats.binding = b.astype(np.int64)
    return splats


def read_splat_ply(path: str | Path) -> PlySplats:
    """Raw arrays of an INRIA-layout 3DGS ply (a ``binding_0`` column, when present, is read too)."""
    return _read(path, binding=None)


def read_gaussian_avatars_ply(path: str | Path) -> PlySplats:
    """Raw (face-local) arrays of a GaussianAvatars ``point_cloud.ply``, ``binding`` included."""
    return _read(path, binding=True)


def read_flame_param_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a GaussianAvatars ``flame_param.npz`` (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such flame_param npz")
    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise PlyError(f"{path}: cannot read npz ({type(e).__name__}: {e})") from e
    missing = [k for k in ("shape", *FLAME_PARAM_NAMES) if k not in arrays]
    if missing:
        raise PlyError(f"{path}: missing keys {missing} (found {sorted(arrays)})")
    return arrays

"""The viewer's per-frame arrays: a posed :class:`~avp.types.GaussianCloud` -> what viser's splat renderer takes.

viser wants, per splat, a centre ``[N, 3]``, a covariance ``[N, 3, 3]`` (it keeps the upper triangle in float16), an
RGB colour ``[N, 3]`` and an opacity ``[N, 1]`` in 0..1. Only centres and covariances change with the pose (LBS
rotates splats; face frames also scale them), so colours and opacities are converted once per avatar
(:func:`static_arrays`) and each frame converts the cheap part (:func:`pose_arrays`).

viser has no spherical harmonics: colours are the SH degree-0 term, the view-independent colour our renderer adds
the higher bands to (``0.5 + C0 c_0``, as gsplat), clamped into 0..1.

The bindings overlay colours every point by the head-model region of the triangle it is bound to
(:func:`region_colours`); a triangle in several regions takes the first of :data:`REGION_ORDER` it is in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from avp.render.sh import C0
from avp.rotations import quaternion_to_matrix
from avp.types import GaussianCloud

__all__ = ["REGION_COLOURS", "REGION_ORDER", "face_region_labels", "pose_arrays", "region_colours", "static_arrays",
           "splat_covariances"]

REGION_ORDER = ("pupils", "iris", "eyeballs", "teeth", "tongue", "mouth_cavity", "lips", "eyelids", "brows", "nose",
                "ears", "chin", "jaw", "cheeks", "forehead", "eye_sockets", "eyes", "face", "neck", "scalp", "skin")
"""Regions of the built-in head and of FLAME's masks, most specific first (the overlay's priority)."""

REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "pupils": (20, 20, 20), "iris": (40, 110, 200), "eyeballs": (235, 235, 235), "teeth": (255, 250, 205),
    "tongue": (230, 100, 140), "mouth_cavity": (140, 30, 60), "lips": (220, 40, 60), "eyelids": (250, 160, 40),
    "brows": (120, 70, 30), "nose": (250, 120, 90), "ears": (160, 90, 200), "chin": (60, 170, 110),
    "jaw": (30, 130, 90), "cheeks": (240, 140, 170), "forehead": (90, 180, 230), "eye_sockets": (200, 200, 60),
    "eyes": (200, 200, 60), "face": (245, 190, 150), "neck": (130, 130, 200), "scalp": (100, 100, 100),
    "skin": (200, 170, 140), "other": (255, 0, 255),
}
"""Overlay colour of every region (``other``: a triangle in none of them)."""


def splat_covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R diag(s^2) R^T`` ``[N, 3, 3]`` of splats with wxyz ``quats [N, 4]`` and standard deviations
    ``scales [N, 3]``."""
    R = quaternion_to_matrix(quats)  # normalises
    return (R * scales.square()[..., None, :]) @ R.transpose(-1, -2)


def pose_arrays(posed: GaussianCloud, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Splat ``index`` of a posed cloud (``[T, N]``) -> viser's ``centers [N, 3]`` and ``covariances [N, 3, 3]``
    (float32, CPU)."""
    with torch.no_grad():
        centers = posed.means[index].float()
        cov = splat_covariances(posed.quats[index].float(), posed.scales[index].float())
    return centers.cpu().numpy(), cov.cpu().numpy()


def static_arrays(cloud: GaussianCloud, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colours ``rgbs [N, 3]`` and ``opacities [N, 1]`` in 0..1 (float32) of avatar ``index`` of a cloud: what does not
    change with the pose."""
    with torch.no_grad():
        rgb = (cloud.sh[index, :, 0].float() * C0 + 0.5).clamp(0.0, 1.0)
        opacity = cloud.opacities[index].float().clamp(0.0, 1.0)[:, None]
    return rgb.cpu().numpy(), opacity.cpu().numpy()


def face_region_labels(head_model: torch.nn.Module) -> tuple[list[str], np.ndarray]:
    """``(names, label [F])``: the region of every head-model face as an index into ``names`` (the regions of
    :data:`REGION_ORDER` the head model has, then ``other``)."""
    regions = {k: v.cpu().numpy() for k, v in head_model.face_regions.items()}
    names = [name for name in REGION_ORDER if name in regions and len(regions[name])]
    label = np.full(head_model.n_faces, len(names), dtype=np.int64)
    for i in reversed(range(len(names))):  # most specific last, so it wins
        label[regions[names[i]]] = i
    return [*names, "other"], label


def region_colours(head_model: torch.nn.Module, binding: Tensor) -> tuple[np.ndarray, dict[str, int]]:
    """Overlay colours ``[N, 3]`` uint8 of points bound to faces ``binding [N]``, and how many points each region
    holds (regions without points left out), in :data:`REGION_ORDER`."""
    names, label = face_region_labels(head_model)
    per_point = label[binding.detach().cpu().numpy().astype(np.int64)]
    palette = np.array([REGION_COLOURS[n] for n in names], dtype=np.uint8)
    counts = np.bincount(per_point, minlength=len(names))
    return palette[per_point], {names[i]: int(counts[i]) for i in range(len(names)) if counts[i]}

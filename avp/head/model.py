"""``HeadModel``: one parametric head API over FLAME (user-supplied file) and the built-in procedural head.

A head model is FLAME's construction: a template mesh, linear shape and expression blendshapes, optional pose
correctives, a joint regressor and linear blend skinning over the kinematic tree root -> neck -> {jaw, left eye,
right eye}. Both sources produce a :class:`HeadAssets` (plain arrays); :class:`HeadModel` turns it into a torch
module whose buffers follow ``.to()`` and whose methods also accept inputs on another device or dtype (the buffers
are converted once per device/dtype and cached).

Posing, the neutral head and binding take an optional per-subject ``static_offset [..., V, 3]`` (VHAP's and
GaussianAvatars' tracked per-vertex displacements, stored in shards made from such fits): it is added to the shaped
template before joint regression, pose correctives and skinning, as both do (see :mod:`avp.head.lbs`), so a tracked
subject is posed and bound on its tracked mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from avp.head.lbs import HeadOutput, blend_shapes, lbs
from avp.rotations import axis_angle_to_matrix
from avp.types import HeadParams

if TYPE_CHECKING:
    from avp.head.rig import PointRig

__all__ = ["HAIR_MARGIN", "HeadAssets", "HeadModel", "HeadOutput"]

JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
"""FLAME's joints in pose-vector order (``left`` is the subject's left, +x)."""
FLAME_PARENTS = (-1, 0, 1, 1, 1)

HAIR_MARGIN = ((0.06, 0.03, 0.10), (0.06, 0.08, 0.05))
"""Metres added to the canonical box for what the mesh does not model: ``(lo, hi)`` per axis ``(x, y, z)``.
Sides 6 cm (volume hair), below 3 cm (beards reaching past the chin, collars), above 8 cm (updos), behind 10 cm
(buns, ponytails), in front 5 cm (fringes, beards, glasses)."""

SHAPE_SIGMAS = 3.0
"""``canonical_bounds`` covers every vertex within this many standard deviations of the shape prior N(0, I)."""


@dataclass
class HeadAssets:
    """Arrays that define a head model (what the FLAME loader and the built-in generator produce)."""

    name: str
    """Recorded in shards and checkpoints, e.g. ``"builtin-v1"`` or ``"flame2023+teeth"``."""
    v_template: np.ndarray
    """``[V, 3]`` mean head, neutral expression, zero pose (metres)."""
    shapedirs: np.ndarray
    """``[V, 3, S]`` identity blendshapes (per unit coefficient)."""
    exprdirs: np.ndarray
    """``[V, 3, E]`` expression blendshapes (per unit coefficient)."""
    J_regressor: np.ndarray
    """``[J, V]`` joints = ``J_regressor @ (template + blendshapes)``."""
    weights: np.ndarray
    """``[V, J]`` skinning weights, rows sum to 1."""
    faces: np.ndarray
    """``[F, 3]`` triangles (vertex indices, counter-clockwise seen from outside)."""
    posedirs: np.ndarray | None = None
    """``[(J-1) * 9, V * 3]`` pose correctives (FLAME's layout after its reshape), or None for none."""
    parents: tuple[int, ...] = FLAME_PARENTS
    """Kinematic tree (``-1`` for the root)."""
    joint_names: tuple[str, ...] = JOINT_NAMES
    face_regions: dict[str, np.ndarray] = field(default_factory=dict)
    """Semantic regions: region name -> face indices."""
    flame_version: str | None = None
    """FLAME models: the release (``"2020"``, ``"2023"``; ``""`` when it cannot be told); None for other heads."""
    source: str | None = None
    """The file the model was read from (FLAME), for error messages; None for generated heads."""


class _DeviceCache:
    """Copies of a module's buffers on other devices/dtypes, made once each (cleared when the module moves)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[torch.device, torch.dtype], dict[str, Tensor | None]] = {}


class HeadModel(nn.Module):
    """A FLAME-style parametric head (see the module docstring).

    Buffers (float, following ``.to()``): ``v_template [V, 3]``, ``shapedirs [V, 3, S]``, ``exprdirs [V, 3, E]``,
    ``posedirs [(J-1)*9, V*3]`` (absent when the model has no correctives), ``J_regressor [J, V]``,
    ``lbs_weights [V, J]``; long buffers ``faces [F, 3]`` and one ``region_<name>`` per semantic region. None of
    them is persistent: a checkpoint stores the :class:`~avp.head.config.HeadConfig`, and the model is rebuilt from it.
    """

    def __init__(self, assets: HeadAssets, n_shape: int | None = None, n_expr: int | None = None) -> None:
        super().__init__()
        _validate_assets(assets)
        S_all, E_all = assets.shapedirs.shape[-1], assets.exprdirs.shape[-1]
        n_shape = S_all if n_shape is None else int(n_shape)
        n_expr = E_all if n_expr is None else int(n_expr)
        if not 0 <= n_shape <= S_all:
            raise ValueError(f"{assets.name}: n_shape={n_shape} but the model has {S_all} shape components")
        if not 0 <= n_expr <= E_all:
            raise ValueError(f"{assets.name}: n_expr={n_expr} but the model has {E_all} expression components")
        self.name = assets.name
        self.flame_version = assets.flame_version
        """FLAME release (``"2020"``/``"2023"``, ``""`` unknown) or None when the head is not FLAME."""
        self.source = assets.source
        """The FLAME file the model was read from (None for the built-in head)."""
        self.joint_names = tuple(assets.joint_names)
        self.parents = [int(p) for p in assets.parents]
        f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
        self.register_buffer("v_template", f32(assets.v_template), persistent=False)
        self.register_buffer("shapedirs", f32(assets.shapedirs[..., :n_shape]), persistent=False)
        self.register_buffer("exprdirs", f32(assets.exprdirs[..., :n_expr]), persistent=False)
        posedirs = assets.posedirs
        if posedirs is not None and not np.any(posedirs):
            posedirs = None
        self.register_buffer("posedirs", None if posedirs is None else f32(posedirs), persistent=False)
        self.register_buffer("J_regressor", f32(assets.J_regressor), persistent=False)
        self.register_buffer("lbs_weights", f32(assets.weights), persistent=False)
        self.register_buffer("faces", torch.as_tensor(assets.faces, dtype=torch.long), persistent=False)
        self._region_names = sorted(assets.face_regions)
        for region in self._region_names:
            ids = torch.as_tensor(np.asarray(assets.face_regions[region]), dtype=torch.long)
            self.register_buffer(f"region_{region}", ids, persistent=False)
        self._bounds = _canonical_bounds(assets.v_template, assets.shapedirs[..., :n_shape])
        self._cache = _DeviceCache()

    # ---------------------------------------------------------------- sizes
    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def n_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def n_shape(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def n_expr(self) -> int:
        return self.exprdirs.shape[-1]

    @property
    def n_joints(self) -> int:
        return len(self.parents)

    @property
    def face_regions(self) -> dict[str, Tensor]:
        """Region name -> long face indices ``[F_region]`` (on the module's device)."""
        return {name: getattr(self, f"region_{name}") for name in self._region_names}

    # ---------------------------------------------------------------- buffers on the inputs' device/dtype
    def _apply(self, fn, recurse=True):
        self._cache = _DeviceCache()
        return super()._apply(fn, recurse)

    def tensors(self, like: Tensor) -> dict[str, Tensor | None]:
        """The float buffers on ``like``'s device and dtype (the faces on its device)."""
        dtype = like.dtype if like.is_floating_point() else self.v_template.dtype
        key = (like.device, dtype)
        entry = self._cache.entries.get(key)
        if entry is None:
            names = ("v_template", "shapedirs", "exprdirs", "posedirs", "J_regressor", "lbs_weights")
            entry = {n: None if getattr(self, n) is None else getattr(self, n).to(like.device, dtype) for n in names}
            # rows summing to 1 in the working precision keep skinning exactly affine (rigid motions stay rigid)
            entry["lbs_weights"] = entry["lbs_weights"] / entry["lbs_weights"].sum(-1, keepdim=True)
            entry["faces"] = self.faces.to(like.device)
            self._cache.entries[key] = entry
        return entry

    # ---------------------------------------------------------------- evaluation
    def _check_params(self, params: HeadParams) -> None:
        expected = {"shape": self.n_shape, "expr": self.n_expr, "global_rot": 3, "neck_pose": 3, "jaw_pose": 3,
                    "eyes_pose": 6, "translation": 3}
        batch = params.global_rot.shape[:-1]
        for name, size in expected.items():
            value = getattr(params, name)
            if value.shape[-1] != size:
                raise ValueError(f"{self.name}: HeadParams.{name} must be [..., {size}], got {tuple(value.shape)}")
            if value.shape[:-1] != batch:
                raise ValueError(f"{self.name}: HeadParams.{name} has leading dims {tuple(value.shape[:-1])}, "
                                 f"global_rot has {tuple(batch)}")

    def pose_matrices(self, params: HeadParams) -> Tensor:
        """``[..., J, 3, 3]`` local joint rotations from FLAME's pose fields."""
        pose = torch.cat([params.global_rot, params.neck_pose, params.jaw_pose, params.eyes_pose], dim=-1)
        return axis_angle_to_matrix(pose.unflatten(-1, (self.n_joints, 3)))

    def check_static_offset(self, static_offset: Tensor | None, like: Tensor) -> Tensor | None:
        """``static_offset [..., V, 3]`` checked and on ``like``'s device and dtype (None passes through)."""
        if static_offset is None:
            return None
        if static_offset.dim() < 2 or tuple(static_offset.shape[-2:]) != (self.n_vertices, 3):
            raise ValueError(f"{self.name}: static_offset must be [..., {self.n_vertices}, 3] (one offset per vertex "
                             f"of the model), got {list(static_offset.shape)}")
        if not static_offset.is_floating_point():
            raise ValueError(f"{self.name}: static_offset must be floating point, got {static_offset.dtype}")
        dtype = like.dtype if like.is_floating_point() else self.v_template.dtype
        return static_offset.to(device=like.device, dtype=dtype)

    def forward(self, params: HeadParams, static_offset: Tensor | None = None) -> HeadOutput:
        """Posed mesh: ``vertices [..., V, 3]``, ``joints [..., J, 3]``, ``transforms [..., J, 4, 4]``.

        ``static_offset``: ``[..., V, 3]`` per-vertex offsets of the subject's tracked mesh, broadcast against the
        parameters' leading dims (``[B, 1, V, 3]`` for ``[B, T]`` frames of ``B`` subjects); added to the shaped
        template before joint regression, pose correctives and skinning (VHAP/GaussianAvatars' FLAME).
        """
        self._check_params(params)
        t = self.tensors(params.global_rot)
        v_shaped = t["v_template"] + blend_shapes(params.shape, t["shapedirs"]) + blend_shapes(params.expr,
                                                                                              t["exprdirs"])
        return lbs(v_shaped, self.pose_matrices(params), J_regressor=t["J_regressor"], parents=self.parents,
                   weights=t["lbs_weights"], posedirs=t["posedirs"], translation=params.translation,
                   static_offset=self.check_static_offset(static_offset, params.global_rot))

    def canonical(self, shape: Tensor, static_offset: Tensor | None = None) -> Tensor:
        """``shape [..., S]`` -> the subject's neutral head ``[..., V, 3]`` (zero expression and pose), plus its
        ``static_offset [..., V, 3]`` when given (the tracked neutral mesh)."""
        if shape.shape[-1] != self.n_shape:
            raise ValueError(f"{self.name}: shape must be [..., {self.n_shape}], got {tuple(shape.shape)}")
        t = self.tensors(shape)
        verts = t["v_template"] + blend_shapes(shape, t["shapedirs"])
        offset = self.check_static_offset(static_offset, shape)
        return verts if offset is None else verts + offset

    def canonical_bounds(self) -> Tensor:
        """``[2, 3]`` (lo, hi) box holding canonical heads of plausible shapes plus :data:`HAIR_MARGIN`.

        Plausible = every vertex within :data:`SHAPE_SIGMAS` standard deviations of its position under the shape
        prior N(0, I). Float32 on the CPU (the tokenizer stores it in its config).
        """
        return self._bounds.clone()

    def rig(self, face_idx: Tensor, points: Tensor, shape: Tensor, static_offset: Tensor | None = None) -> PointRig:
        """Bind canonical points to triangles (see :func:`avp.head.rig.bind_points`); the expensive, once-only step.

        Args:
            face_idx: ``[B, N]`` long, triangle of every point.
            points: ``[B, N, 3]`` canonical positions (the subject's neutral head space).
            shape: ``[B, S]`` the subject's shape coefficients.
            static_offset: ``[B, V, 3]`` the subjects' tracked per-vertex offsets, or None (zero).
        """
        from avp.head.rig import bind_points

        return bind_points(self, face_idx, points, shape, static_offset)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, vertices={self.n_vertices}, faces={self.n_faces}, shape={self.n_shape}, "
                f"expr={self.n_expr}, regions={self._region_names}")


def _canonical_bounds(v_template: np.ndarray, shapedirs: np.ndarray) -> Tensor:
    std = np.sqrt((shapedirs.astype(np.float64) ** 2).sum(-1))  # [V, 3]: per-vertex std under N(0, I)
    lo = (v_template - SHAPE_SIGMAS * std).min(0) - np.asarray(HAIR_MARGIN[0])
    hi = (v_template + SHAPE_SIGMAS * std).max(0) + np.asarray(HAIR_MARGIN[1])
    return torch.as_tensor(np.stack([lo, hi]), dtype=torch.float32)


def _validate_assets(a: HeadAssets) -> None:
    def fail(key: str, msg: str) -> None:
        raise ValueError(f"{a.name}: {key} {msg}")

    V = a.v_template.shape[0]
    J = len(a.parents)
    if a.v_template.shape != (V, 3):
        fail("v_template", f"must be [V, 3], got {a.v_template.shape}")
    for key in ("shapedirs", "exprdirs"):
        arr = getattr(a, key)
        if arr.ndim != 3 or arr.shape[:2] != (V, 3):
            fail(key, f"must be [{V}, 3, K], got {arr.shape}")
    if a.J_regressor.shape != (J, V):
        fail("J_regressor", f"must be [{J}, {V}], got {a.J_regressor.shape}")
    if a.weights.shape != (V, J):
        fail("weights", f"must be [{V}, {J}], got {a.weights.shape}")
    if not np.allclose(a.weights.sum(1), 1.0, atol=1e-4):
        sums = a.weights.sum(1)
        fail("weights", f"rows must sum to 1 (worst row sums to {sums[np.argmax(np.abs(sums - 1))]:.6f})")
    if a.posedirs is not None and a.posedirs.shape != ((J - 1) * 9, V * 3):
        fail("posedirs", f"must be [{(J - 1) * 9}, {V * 3}], got {a.posedirs.shape}")
    if a.faces.ndim != 2 or a.faces.shape[1] != 3:
        fail("faces", f"must be [F, 3], got {a.faces.shape}")
    if a.faces.size and (a.faces.min() < 0 or a.faces.max() >= V):
        fail("faces", f"index vertices outside [0, {V}): min {a.faces.min()}, max {a.faces.max()}")
    if a.parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(a.parents) if j > 0):
        fail("parents", f"must start with -1 and list each parent before its child, got {a.parents}")
    F = a.faces.shape[0]
    for region, ids in a.face_regions.items():
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= F):
            fail(f"face_regions[{region!r}]", f"index faces outside [0, {F})")

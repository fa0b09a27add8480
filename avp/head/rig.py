"""Binding points to head-model triangles and animating them (the paper's extra-vertex LBS, or rigid face frames).

Binding (once per avatar, :func:`bind_points`): every canonical point is projected onto its bound triangle of the
subject's neutral mesh; the barycentric coordinates of that projection (the closest point of the triangle, so they are
clamped into it) interpolate the three vertices' skinning weights, expression blendshapes and pose correctives. The
point then behaves as an extra mesh vertex: per frame its rest position moves by the interpolated blendshapes and
it is skinned with the interpolated weights (FLAME's formula, exact at the triangle's corners). Per frame this is
two batched matrix products over the points ``[T, K] @ [K, 3N]`` and ``[N, J] @ [T, J, 12]`` and element-wise
work, with no gathers: all per-point tables are built here.

The Gaussian's orientation follows the blended skinning rotation: the polar (nearest-rotation) factor of the blended
linear part ``sum_j w_j R_j``.

A tracked subject's ``static_offset [B, V, 3]`` (VHAP/GaussianAvatars) is part of its neutral mesh: points are
projected onto the offset mesh, the rest joints are regressed from it, and face-frame posing poses the offset mesh,
as GaussianAvatars does (see :mod:`avp.head.lbs`). The rig keeps the offset, so :meth:`PointRig.deform` needs nothing
more per frame.

``mode="face_frame"`` is GaussianAvatars' rigid attachment instead: the point keeps its coordinates in its
triangle's frame (:mod:`avp.head.frames`), so it follows the triangle's centre, orientation and scale; Gaussian
scales are multiplied by the frame's scale change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from avp.head.frames import FaceFrames, face_frames, local_to_world_points, world_to_local_points
from avp.head.lbs import forward_kinematics
from avp.rotations import matrix_to_quaternion, polar_entries, quaternion_multiply
from avp.types import GaussianCloud, HeadParams, TensorContainer

if TYPE_CHECKING:
    from avp.head.model import HeadModel

__all__ = ["DeformOutput", "PointRig", "animate_gaussians", "bind_points", "closest_point_on_triangle"]

AnimationMode = Literal["lbs", "face_frame"]


@dataclass
class DeformOutput(TensorContainer):
    """Animated points of ``B`` avatars over ``T`` frames."""

    means: Tensor
    """``[B, T, N, 3]`` posed positions."""
    rotations: Tensor
    """``[B, T, N, 3, 3]`` rotation from each point's canonical frame to the posed one."""
    scale_factors: Tensor | None = None
    """``[B, T, N]`` size change of each point's frame (face-frame mode); None where sizes are kept (LBS)."""


def closest_point_on_triangle(points: Tensor, triangles: Tensor) -> Tensor:
    """Barycentric coordinates of the point of each triangle closest to each point.

    Args:
        points: ``[..., 3]``.
        triangles: ``[..., 3, 3]`` (corner, xyz), broadcast against ``points``.

    Returns:
        ``[..., 3]`` non-negative, summing to 1 (the projection clamped into the triangle). Degenerate triangles fall
        back to the closest point of their longest edge.
    """
    a, b, c = triangles.unbind(-2)
    ab, ac = b - a, c - a
    ap = points - a
    d00 = (ab * ab).sum(-1)
    d01 = (ab * ac).sum(-1)
    d11 = (ac * ac).sum(-1)
    d20 = (ap * ab).sum(-1)
    d21 = (ap * ac).sum(-1)
    denom = d00 * d11 - d01 * d01
    tiny = torch.finfo(points.dtype).eps * (d00 * d11).clamp_min(torch.finfo(points.dtype).tiny)
    ok = denom > tiny
    safe = torch.where(ok, denom, torch.ones_like(denom))
    v = (d11 * d20 - d01 * d21) / safe
    w = (d00 * d21 - d01 * d20) / safe
    u = 1 - v - w
    inside = ok & (u >= 0) & (v >= 0) & (w >= 0)
    bary_plane = torch.stack([u, v, w], dim=-1)

    # outside (or degenerate): the closest point lies on one of the edges
    def on_segment(p0: Tensor, p1: Tensor) -> tuple[Tensor, Tensor]:
        d = p1 - p0
        t = ((points - p0) * d).sum(-1) / (d * d).sum(-1).clamp_min(torch.finfo(points.dtype).tiny)
        t = t.clamp(0, 1)
        q = p0 + t[..., None] * d
        return t, ((points - q) ** 2).sum(-1)

    t_ab, e_ab = on_segment(a, b)
    t_bc, e_bc = on_segment(b, c)
    t_ca, e_ca = on_segment(c, a)
    zero = torch.zeros_like(t_ab)
    cand = torch.stack([
        torch.stack([1 - t_ab, t_ab, zero], -1),
        torch.stack([zero, 1 - t_bc, t_bc], -1),
        torch.stack([t_ca, zero, 1 - t_ca], -1),
    ], dim=-2)
    best = torch.stack([e_ab, e_bc, e_ca], -1).argmin(-1)
    bary_edge = cand.gather(-2, best[..., None, None].expand(*best.shape, 1, 3)).squeeze(-2)
    return torch.where(inside[..., None], bary_plane, bary_edge)


@dataclass
class PointRig(TensorContainer):
    """Points bound to a head model: everything per point that animation needs (built by :func:`bind_points`)."""

    face_idx: Tensor
    """``[B, N]`` long, bound triangle."""
    bary: Tensor
    """``[B, N, 3]`` barycentric coordinates of each point's projection on its triangle (clamped)."""
    points: Tensor
    """``[B, N, 3]`` canonical positions the rig was built from."""
    offsets: Tensor
    """``[B, N, 3]`` point minus its projection on the triangle (canonical space)."""
    weights: Tensor
    """``[B, N, J]`` interpolated skinning weights."""
    blend_dirs: Tensor
    """``[B, E (+ P), 3 * N]`` interpolated expression blendshapes, then pose correctives when the model has them;
    component-major (column ``c * N + n`` is coordinate ``c`` of point ``n``) so that per-frame work is contiguous."""
    joints: Tensor
    """``[B, J, 3]`` the subject's rest joints at neutral expression."""
    joint_exprdirs: Tensor
    """``[E, J * 3]`` how the regressed joints move per expression coefficient."""
    blended: Tensor
    """``[K]`` long, the point columns whose weights mix several joints in some avatar of the batch (only their
    blended rotation needs orthonormalising: for the others it is exactly one joint's rotation)."""
    frames: FaceFrames
    """``[B, N]`` canonical frame of each point's triangle (face-frame mode)."""
    shape: Tensor
    """``[B, S]`` the subject's shape coefficients."""
    model: HeadModel
    """The head model the points are bound to."""
    static_offset: Tensor | None = None
    """``[B, V, 3]`` the subjects' tracked per-vertex offsets the rig was built with (None: none)."""

    @property
    def batch_size(self) -> int:
        return self.points.shape[0]

    @property
    def n_points(self) -> int:
        return self.points.shape[1]

    @property
    def has_pose_correctives(self) -> bool:
        return self.blend_dirs.shape[1] > self.joint_exprdirs.shape[0]

    def _check(self, params: HeadParams, means: Tensor | None) -> tuple[int, int]:
        B = self.batch_size
        batch = params.global_rot.shape[:-1]
        if len(batch) != 2 or batch[0] != B:
            raise ValueError(f"PointRig.deform: HeadParams must be [B={B}, T, ...], got leading dims {tuple(batch)}")
        E = self.joint_exprdirs.shape[0]
        if params.expr.shape != (*batch, E):
            raise ValueError(f"PointRig.deform: HeadParams.expr must be [{B}, T, {E}], got {tuple(params.expr.shape)}")
        for name, size in (("neck_pose", 3), ("jaw_pose", 3), ("eyes_pose", 6), ("translation", 3)):
            if getattr(params, name).shape != (*batch, size):
                raise ValueError(f"PointRig.deform: HeadParams.{name} must be [{B}, T, {size}], got "
                                 f"{tuple(getattr(params, name).shape)}")
        if means is not None and means.shape != self.points.shape:
            raise ValueError(f"PointRig.deform: means must be {list(self.points.shape)} (the rig's points), got "
                             f"{list(means.shape)}")
        return B, batch[1]

    def deform(self, params: HeadParams, means: Tensor | None = None, mode: AnimationMode = "lbs") -> DeformOutput:
        """Animate the bound points to every frame's expression and pose.

        Args:
            params: ``[B, T]`` head parameters; their ``shape`` is ignored (the identity is the rig's).
            means: ``[B, N, 3]`` canonical positions to animate instead of the rig's points (e.g. moved by a decoder
                offset); gradients flow to them.
            mode: ``"lbs"`` (the paper: extra-vertex skinning) or ``"face_frame"`` (GaussianAvatars).
        """
        B, T = self._check(params, means)
        p = self.points if means is None else means
        if mode == "lbs":
            return self._deform_lbs(params, p, B, T)
        if mode == "face_frame":
            return self._deform_face_frame(params, p, B, T)
        raise ValueError(f"PointRig.deform: mode must be 'lbs' or 'face_frame', got {mode!r}")

    def _deform_lbs(self, params: HeadParams, p: Tensor, B: int, T: int) -> DeformOutput:
        N = self.n_points
        J = self.joints.shape[1]
        rot_mats = self.model.pose_matrices(params)  # [B, T, J, 3, 3]
        coeffs = params.expr
        if self.has_pose_correctives:
            eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
            coeffs = torch.cat([coeffs, (rot_mats[..., 1:, :, :] - eye).flatten(-3)], dim=-1)
        # everything per point is component-major, [..., C, N]: rows of contiguous per-point values
        # [B, T, K] @ [B, K, 3N] -> [B, T, 3, N]: each point's rest position in each frame
        rest = p.transpose(1, 2)[:, None] + (coeffs @ self.blend_dirs).unflatten(-1, (3, N))
        joints = self.joints[:, None] + (params.expr @ self.joint_exprdirs).unflatten(-1, (J, 3))
        _, transforms = forward_kinematics(rot_mats, joints, self.model.parents)
        # [B, T, 12, J] @ [B, 1, J, N] -> [B, T, 12, N]: each point's blended affine transform, row-major 3x4
        affine = transforms[..., :3, :].flatten(-2).transpose(-1, -2) @ self.weights.transpose(1, 2)[:, None]
        m = affine.unbind(2)
        r0, r1, r2 = rest.unbind(2)
        t = params.translation
        means = torch.stack([torch.addcmul(torch.addcmul(torch.addcmul(m[4 * i + 3] + t[..., i, None], m[4 * i], r0),
                                                        m[4 * i + 1], r1), m[4 * i + 2], r2) for i in range(3)], dim=-1)
        linear = [m[4 * i + k] for i in range(3) for k in range(3)]
        if self.blended.numel() == N:
            rotations = torch.stack(polar_entries(linear), dim=-1)
        else:
            # rigid points already carry an exact rotation; only the blended columns need the polar factor
            rotations = torch.stack(linear, dim=-1)  # [B, T, N, 9]
            if self.blended.numel():
                polar = polar_entries([x.index_select(-1, self.blended) for x in linear])
                rotations[:, :, self.blended] = torch.stack(polar, dim=-1)
        return DeformOutput(means=means, rotations=rotations.unflatten(-1, (3, 3)))

    def _deform_face_frame(self, params: HeadParams, p: Tensor, B: int, T: int) -> DeformOutput:
        local = world_to_local_points(p, self.frames)  # [B, N, 3]
        shape = self.shape[:, None].expand(B, T, self.shape.shape[-1])
        offset = None if self.static_offset is None else self.static_offset[:, None]  # [B, 1, V, 3]
        posed = self.model(HeadParams(shape, params.expr, params.global_rot, params.neck_pose, params.jaw_pose,
                                      params.eyes_pose, params.translation), static_offset=offset)
        faces = self.model.tensors(p)["faces"]
        frames_t = face_frames(posed.vertices, faces).gather(self.face_idx[:, None])  # [B, T, N]
        means = local_to_world_points(local[:, None], frames_t)
        rotations = frames_t.rotations @ self.frames.rotations[:, None].transpose(-1, -2)
        return DeformOutput(means=means, rotations=rotations,
                            scale_factors=frames_t.scales / self.frames.scales[:, None])


def bind_points(model: HeadModel, face_idx: Tensor, points: Tensor, shape: Tensor,
                static_offset: Tensor | None = None) -> PointRig:
    """Build a :class:`PointRig`: project points onto their triangles and interpolate the per-vertex model data.

    Args:
        model: the head model.
        face_idx: ``[B, N]`` long, triangle of each point, in ``[0, model.n_faces)``.
        points: ``[B, N, 3]`` canonical positions (the subject's neutral head space).
        shape: ``[B, S]`` the subject's shape coefficients.
        static_offset: ``[B, V, 3]`` (or ``[V, 3]`` for all) the subjects' tracked per-vertex offsets, part of their
            neutral mesh; None for none.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"rig: points must be [B, N, 3], got {list(points.shape)}")
    B, N = points.shape[:2]
    if face_idx.shape != (B, N):
        raise ValueError(f"rig: face_idx must be [B={B}, N={N}] like points, got {list(face_idx.shape)}")
    if face_idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"rig: face_idx must hold integer face indices, got dtype {face_idx.dtype}")
    if shape.shape != (B, model.n_shape):
        raise ValueError(f"rig: shape must be [B={B}, S={model.n_shape}], got {list(shape.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"rig: points must be floating point, got {points.dtype}")
    if N and (int(face_idx.min()) < 0 or int(face_idx.max()) >= model.n_faces):
        raise ValueError(f"rig: face_idx must index faces of {model.name} in [0, {model.n_faces}); got values in "
                         f"[{int(face_idx.min())}, {int(face_idx.max())}]")
    if not torch.isfinite(points).all():
        raise ValueError("rig: points hold NaN or infinite values")
    face_idx = face_idx.long()
    shape = shape.to(points.dtype)
    offset = model.check_static_offset(static_offset, points)
    if offset is not None:
        if offset.dim() == 2:
            offset = offset.expand(B, -1, -1)
        if offset.shape[0] != B or offset.dim() != 3:
            raise ValueError(f"rig: static_offset must be [B={B}, V, 3] or [V, 3], got {list(static_offset.shape)}")
    t = model.tensors(points)
    faces = t["faces"]
    verts = model.canonical(shape, offset)  # [B, V, 3], the tracked neutral mesh when there is an offset
    corner_ids = faces[face_idx]  # [B, N, 3]
    batch = torch.arange(B, device=points.device)[:, None, None]
    tri = verts[batch, corner_ids]  # [B, N, 3 corners, 3]
    bary = closest_point_on_triangle(points, tri)
    surface = (bary[..., None] * tri).sum(-2)

    def interpolate(per_vertex: Tensor) -> Tensor:
        """``[V, ...]`` -> ``[B, N, ...]`` barycentric blend over each point's triangle corners."""
        out = None
        for k in range(3):  # one corner at a time: never materialise [B, N, 3, ...]
            w = bary[..., k].reshape(B, N, *([1] * (per_vertex.dim() - 1)))
            term = w * per_vertex[corner_ids[..., k]]
            out = term if out is None else out + term
        return out

    weights = interpolate(t["lbs_weights"])  # [B, N, J]
    E = model.n_expr
    V = model.n_vertices
    expr = interpolate(t["exprdirs"])  # [B, N, 3, E]
    blend = [expr.permute(0, 3, 2, 1).reshape(B, E, 3 * N)]  # component-major columns c * N + n
    if t["posedirs"] is not None:
        P = t["posedirs"].shape[0]
        pose = interpolate(t["posedirs"].reshape(P, V, 3).permute(1, 2, 0))  # [B, N, 3, P]
        blend.append(pose.permute(0, 3, 2, 1).reshape(B, P, 3 * N))
    joints = t["J_regressor"] @ verts  # [B, J, 3]
    J = joints.shape[1]
    # [J, V] x [V, 3, E] -> [J, 3, E] -> [E, J*3]
    joint_exprdirs = torch.einsum("jv,vce->ejc", t["J_regressor"], t["exprdirs"]).reshape(E, J * 3)
    frames = face_frames(verts, faces).gather(face_idx)
    # a point whose triangle corners all follow one joint is rigid to it (its weight row is one-hot)
    one_joint = (t["lbs_weights"] >= 1.0 - 1e-6).any(-1)  # [V]
    corner_joint = t["lbs_weights"].argmax(-1)[corner_ids]  # [B, N, 3]
    rigid = one_joint[corner_ids].all(-1) & (corner_joint == corner_joint[..., :1]).all(-1)
    blended_cols = torch.nonzero(~rigid.all(0)).flatten()
    return PointRig(face_idx=face_idx, bary=bary, points=points, offsets=points - surface, weights=weights,
                    blend_dirs=torch.cat(blend, dim=1), joints=joints, joint_exprdirs=joint_exprdirs,
                    blended=blended_cols, frames=frames, shape=shape, model=model, static_offset=offset)


def animate_gaussians(rig: PointRig, cloud: GaussianCloud, params: HeadParams,
                      mode: AnimationMode = "lbs") -> GaussianCloud:
    """Pose a batch of canonical Gaussian avatars for ``T`` frames each.

    Args:
        rig: the avatars' binding (``B`` avatars of ``N`` points).
        cloud: ``[B, N]`` canonical Gaussians; their means are animated (gradients flow to them).
        params: ``[B, T]`` head parameters.
        mode: ``"lbs"`` or ``"face_frame"`` (see :meth:`PointRig.deform`).

    Returns:
        ``[B * T, N]`` Gaussians, ``(b, t)`` flattened b-major: means deformed, quaternions rotated by each point's
        rotation (``q_posed = q(R) * q_canonical``), scales multiplied by the frame's scale change in face-frame mode,
        everything else repeated.
    """
    out = rig.deform(params, cloud.means, mode=mode)
    B, T = out.means.shape[:2]
    quats = quaternion_multiply(matrix_to_quaternion(out.rotations), cloud.quats[:, None])
    scales = cloud.scales[:, None]
    if out.scale_factors is not None:
        scales = scales * out.scale_factors[..., None]
    repeat = lambda x: x[:, None].expand(B, T, *x.shape[1:]).flatten(0, 1)
    return GaussianCloud(
        means=out.means.flatten(0, 1),
        quats=quats.flatten(0, 1),
        scales=scales.expand(B, T, *cloud.scales.shape[1:]).flatten(0, 1),
        opacities=repeat(cloud.opacities),
        sh=repeat(cloud.sh),
        mask=None if cloud.mask is None else repeat(cloud.mask),
    )

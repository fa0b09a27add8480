"""Linear blend skinning as FLAME defines it (the SMPL family's ``lbs``), batched over any leading dims.

``v_shaped = v_template + shapedirs . shape + exprdirs . expr (+ static_offset)``; joints are regressed from
``v_shaped``; pose correctives ``posedirs . (R_j - I)`` (joints 1..J-1) are added; then each vertex moves by the
weighted sum of its joints' rest-to-posed transforms.

A tracked subject's **static offset** (per-vertex ``[V, 3]`` displacements in canonical space, VHAP's and
GaussianAvatars' ``static_offset``) belongs to ``v_shaped``: both add it to the template plus blendshapes before joint
regression, pose correctives and skinning (``FlameHead.forward`` in ShenhanQian/GaussianAvatars
``flame_model/flame.py``: ``v_shaped += static_offset`` then ``lbs``), so the head is posed on the tracked mesh.

Global translation is folded into the returned transforms, so ``vertices == sum_j w_j * transforms_j @ [v_posed; 1]``
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avp.types import TensorContainer

__all__ = ["HeadOutput", "blend_shapes", "forward_kinematics", "lbs", "pose_feature", "skin"]


@dataclass
class HeadOutput(TensorContainer):
    """Posed mesh and skeleton."""

    vertices: Tensor
    """``[..., V, 3]`` posed vertices (translation applied)."""
    joints: Tensor
    """``[..., J, 3]`` posed joint positions (translation applied)."""
    transforms: Tensor
    """``[..., J, 4, 4]`` rest-to-posed skinning transform of every joint (translation applied)."""
    v_shaped: Tensor
    """``[..., V, 3]`` rest vertices with shape and expression blendshapes (and the static offset, when given), before
    pose correctives and skinning."""


def blend_shapes(coeffs: Tensor, dirs: Tensor) -> Tensor:
    """``coeffs [..., K]``, ``dirs [V, 3, K]`` -> displacements ``[..., V, 3]``."""
    if dirs.shape[-1] != coeffs.shape[-1]:
        raise ValueError(f"blend_shapes: {coeffs.shape[-1]} coefficients for {dirs.shape[-1]} directions")
    V = dirs.shape[0]
    # [..., K] @ [K, V*3] -> [..., V*3]
    flat = coeffs @ dirs.reshape(V * 3, -1).transpose(0, 1)
    return flat.unflatten(-1, (V, 3))


def pose_feature(rot_mats: Tensor) -> Tensor:
    """``[..., J, 3, 3]`` joint rotations -> ``[..., (J-1) * 9]`` pose-corrective feature ``R_j - I`` (j >= 1)."""
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[..., 1:, :, :] - eye).flatten(-3)


def forward_kinematics(rot_mats: Tensor, joints: Tensor, parents: list[int]) -> tuple[Tensor, Tensor]:
    """Chain local joint rotations down the kinematic tree.

    Args:
        rot_mats: ``[..., J, 3, 3]`` local rotation of every joint (relative to its parent).
        joints: ``[..., J, 3]`` rest joint positions.
        parents: parent index of every joint, ``-1`` for the root; parents precede their children.

    Returns:
        ``posed_joints [..., J, 3]`` and ``transforms [..., J, 4, 4]``: the rest-to-posed transform of every joint
        (``posed = transform @ rest`` for a point rigidly attached to that joint).
    """
    J = joints.shape[-2]
    rel = joints.clone()
    for j in range(1, J):
        rel[..., j, :] = joints[..., j, :] - joints[..., parents[j], :]
    # world rotation and translation of each joint frame (frame origin = posed joint)
    world_R: list[Tensor] = []
    world_t: list[Tensor] = []
    for j in range(J):
        R_local = rot_mats[..., j, :, :]
        if parents[j] < 0:
            world_R.append(R_local)
            world_t.append(rel[..., j, :])
        else:
            p = parents[j]
            world_R.append(world_R[p] @ R_local)
            world_t.append((world_R[p] @ rel[..., j, :, None]).squeeze(-1) + world_t[p])
    R = torch.stack(world_R, dim=-3)
    posed_joints = torch.stack(world_t, dim=-2)
    # rest-to-posed: x -> R (x - J_rest) + J_posed
    t = posed_joints - (R @ joints[..., None]).squeeze(-1)
    top = torch.cat([R, t[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return posed_joints, torch.cat([top, bottom], dim=-2)


def skin(points: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Linear blend skinning of rest points.

    Args:
        points: ``[..., V, 3]`` rest positions (after all blendshapes).
        weights: ``[V, J]`` or ``[..., V, J]`` skinning weights.
        transforms: ``[..., J, 4, 4]`` rest-to-posed joint transforms.
    """
    # [..., V, J] @ [..., J, 12] -> [..., V, 12]: blended affine transform per vertex
    blended = weights @ transforms[..., :3, :].flatten(-2)
    blended = blended.unflatten(-1, (3, 4))
    return (blended[..., :3] @ points[..., None]).squeeze(-1) + blended[..., 3]


def lbs(
    v_shaped: Tensor,
    rot_mats: Tensor,
    *,
    J_regressor: Tensor,
    parents: list[int],
    weights: Tensor,
    posedirs: Tensor | None = None,
    translation: Tensor | None = None,
    static_offset: Tensor | None = None,
) -> HeadOutput:
    """FLAME's skinning.

    Args:
        v_shaped: ``[..., V, 3]`` template plus shape and expression blendshapes.
        rot_mats: ``[..., J, 3, 3]`` local joint rotations (``axis_angle_to_matrix`` of FLAME's pose vector).
        J_regressor: ``[J, V]`` joint regressor (applied to ``v_shaped``).
        parents: kinematic tree, ``-1`` for the root.
        weights: ``[V, J]`` skinning weights.
        posedirs: ``[(J-1) * 9, V * 3]`` pose-corrective blendshapes, or None for none.
        translation: ``[..., 3]`` added after skinning.
        static_offset: ``[..., V, 3]`` (broadcast against ``v_shaped``) added to ``v_shaped`` before everything else:
            joints, correctives and skinning all see the offset mesh (the returned ``v_shaped`` includes it).
    """
    if static_offset is not None:
        if static_offset.shape[-2:] != v_shaped.shape[-2:]:
            raise ValueError(f"lbs: static_offset must be [..., {v_shaped.shape[-2]}, 3] like the vertices, got "
                             f"{list(static_offset.shape)}")
        v_shaped = v_shaped + static_offset
    joints_rest = J_regressor @ v_shaped  # [..., J, 3]
    v_posed = v_shaped
    if posedirs is not None:
        # [..., (J-1)*9] @ [(J-1)*9, V*3]
        v_posed = v_shaped + (pose_feature(rot_mats) @ posedirs).unflatten(-1, (v_shaped.shape[-2], 3))
    posed_joints, transforms = forward_kinematics(rot_mats, joints_rest, parents)
    if translation is not None:
        posed_joints = posed_joints + translation[..., None, :]
        transforms = transforms.clone()
        transforms[..., :3, 3] = transforms[..., :3, 3] + translation[..., None, :]
    vertices = skin(v_posed, weights, transforms)
    return HeadOutput(vertices=vertices, joints=posed_joints, transforms=transforms, v_shaped=v_shaped)

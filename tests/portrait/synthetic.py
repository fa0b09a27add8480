"""Landmarks of a known head: the embedded points of given head parameters projected through a camera."""

from __future__ import annotations

import torch

from avp.portrait.fit import project
from avp.portrait.landmarks_embedding import LandmarkEmbedding
from avp.types import Cameras, HeadParams


def synthetic_landmarks(head_model: torch.nn.Module, embedding: LandmarkEmbedding, params: HeadParams,
                        camera: Cameras) -> torch.Tensor:
    """``[B, 478, 2]`` mediapipe-indexed pixels of ``params [B]``; landmarks outside the embedding are zeros."""
    with torch.no_grad():
        verts = head_model(params).vertices  # [B, V, 3]
        uv, _ = project(embedding.points(verts, head_model.faces), camera.Ks, camera.viewmats)  # [B, L, 2]
    out = torch.zeros(uv.shape[0], 478, 2)
    out[:, embedding.landmark_indices] = uv
    return out


def random_params(head_model: torch.nn.Module, batch: int, seed: int, *, scale: float = 1.0) -> HeadParams:
    """Plausible parameters: shape and expression within one s.d., poses of a few degrees to ~15 degrees."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, a=1.0: (torch.rand(*s, generator=g) * 2 - 1) * a * scale
    p = HeadParams.zeros(batch, n_shape=head_model.n_shape, n_expr=head_model.n_expr)
    p.shape = r(1, head_model.n_shape, a=1.0).expand(batch, -1).clone()
    p.expr = r(batch, head_model.n_expr, a=0.8)
    p.global_rot = r(batch, 3, a=0.25) * torch.tensor([1.0, 1.0, 0.3])
    p.jaw_pose = torch.stack([r(batch, a=0.1).abs() * 2, torch.zeros(batch), torch.zeros(batch)], -1)
    p.translation = r(batch, 3, a=0.01)
    return p

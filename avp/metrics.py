"""Point-cloud metrics for generated clouds against the teacher: Chamfer distance, F-score@tau, count ratio, binding
agreement. Distances are Euclidean, in the clouds' units (metres). Nearest neighbours are exact (chunked ``cdist``),
on whatever device the clouds are on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK = 4096


def nearest_neighbors(query: Tensor, reference: Tensor, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """For each ``query [N, 3]`` point: distance ``[N]`` to, and index ``[N]`` of, its nearest ``reference [M, 3]``."""
    if reference.shape[0] == 0:
        raise ValueError("nearest_neighbors: the reference cloud is empty")
    dists, index = [], []
    ref = reference.float()
    for start in range(0, query.shape[0], chunk):
        d = torch.cdist(query[start : start + chunk].float(), ref)  # [n, M]
        best = d.min(dim=1)
        dists.append(best.values)
        index.append(best.indices)
    if not dists:
        return query.new_zeros(0), torch.zeros(0, dtype=torch.long, device=query.device)
    return torch.cat(dists), torch.cat(index)


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance of ``a [N, 3]`` and ``b [M, 3]``: the mean of the two mean nearest-neighbour
    distances, ``(mean_a min_b |a - b| + mean_b min_a |a - b|) / 2``; NaN when either cloud is empty."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.tensor(math.nan, device=a.device)
    return (nearest_neighbors(a, b)[0].mean() + nearest_neighbors(b, a)[0].mean()) / 2


def f_score(pred: Tensor, target: Tensor, tau: float) -> Tensor:
    """F-score at threshold ``tau``: harmonic mean of precision (fraction of ``pred [N, 3]`` within ``tau`` of the
    target) and recall (fraction of ``target [M, 3]`` within ``tau`` of the prediction); 0 when either is empty."""
    if pred.shape[0] == 0 or target.shape[0] == 0:
        return torch.tensor(0.0, device=pred.device)
    precision = (nearest_neighbors(pred, target)[0] <= tau).float().mean()
    recall = (nearest_neighbors(target, pred)[0] <= tau).float().mean()
    denom = precision + recall
    return torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(denom))


def binding_agreement(pred: Tensor, pred_binding: Tensor, target: Tensor, target_binding: Tensor) -> Tensor:
    """Fraction of ``pred [N, 3]`` points whose face ``pred_binding [N]`` equals the face of the nearest ``target
    [M, 3]`` point (``target_binding [M]``); NaN when either cloud is empty."""
    if pred.shape[0] == 0 or target.shape[0] == 0:
        return torch.tensor(math.nan, device=pred.device)
    _, nearest = nearest_neighbors(pred, target)
    return (pred_binding.long() == target_binding.long()[nearest]).float().mean()


@dataclass
class PointCloudMetrics:
    """Metrics of one generated cloud against its teacher (plain floats, ready to log)."""

    chamfer: float
    """Symmetric mean nearest-neighbour distance (metres); NaN when the generated cloud is empty."""
    f_score: float
    """F-score at ``tau`` (0..1)."""
    count_ratio: float
    """Generated points / teacher points."""
    binding_agreement: float
    """Fraction of generated points bound to the same face as their nearest teacher point; NaN when empty."""

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def point_cloud_metrics(pred: Tensor, pred_binding: Tensor, target: Tensor, target_binding: Tensor,
                        tau: float) -> PointCloudMetrics:
    """All metrics of ``pred [N, 3]`` (faces ``[N]``) against the teacher ``target [M, 3]`` (faces ``[M]``)."""
    if target.shape[0] == 0:
        raise ValueError("point_cloud_metrics: the teacher cloud is empty")
    return PointCloudMetrics(
        chamfer=float(chamfer_distance(pred, target)),
        f_score=float(f_score(pred, target, tau)),
        count_ratio=pred.shape[0] / target.shape[0],
        binding_agreement=float(binding_agreement(pred, pred_binding, target, target_binding)),
    )


def batch_point_cloud_metrics(pred: Tensor, pred_binding: Tensor, pred_mask: Tensor, target: Tensor,
                              target_binding: Tensor, target_mask: Tensor, tau: float) -> list[PointCloudMetrics]:
    """:func:`point_cloud_metrics` for padded batches: clouds ``[B, N, 3]`` / ``[B, M, 3]`` with faces and masks."""
    return [
        point_cloud_metrics(pred[i][pred_mask[i]], pred_binding[i][pred_mask[i]], target[i][target_mask[i]],
                            target_binding[i][target_mask[i]], tau)
        for i in range(pred.shape[0])
    ]

"""Point-cloud metrics for generated clouds against the teacher: Chamfer distance, F-score@tau, count ratio, binding
agreement. Distances are Euclidean, in the clouds' units (metres). Nearest neighbours are exact and independent of
the block size (difference-based ``cdist`` in bounded blocks), on whatever device the clouds are on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK = 2048
"""Block edge of the nearest-neighbour search: at most ``CHUNK x CHUNK`` distances are held at once (16 MiB in
float32), whatever the clouds' sizes."""


def _distance_dtype(*clouds: Tensor) -> torch.dtype:
    dtype = torch.promote_types(clouds[0].dtype, clouds[1].dtype)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def nearest_neighbors(query: Tensor, reference: Tensor, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """For each ``query [N, 3]`` point: distance ``[N]`` to, and index ``[N]`` of, its nearest ``reference [M, 3]``.

    Exact and independent of ``chunk``: every distance is computed from the coordinate differences
    (``cdist``'s difference-based mode; its default matrix-product formula, used above 25 rows, loses accuracy for
    near-coincident points and changes results with the block size), and ties go to the lowest reference index.
    A NaN coordinate gives NaN distances, as a plain ``min`` would. Blocks of at most ``chunk`` query x ``chunk``
    reference points bound the memory. Computed in float64 when either cloud is float64, float32 otherwise.
    """
    if reference.shape[0] == 0:
        raise ValueError("nearest_neighbors: the reference cloud is empty")
    if chunk < 1:
        raise ValueError(f"nearest_neighbors: chunk must be >= 1, got {chunk}")
    dtype = _distance_dtype(query, reference)
    query, reference = query.to(dtype), reference.to(dtype)
    n = query.shape[0]
    best_d = torch.full((n,), math.inf, dtype=dtype, device=query.device)
    best_i = torch.zeros(n, dtype=torch.long, device=query.device)
    for q0 in range(0, n, chunk):
        q = query[q0 : q0 + chunk]
        bd, bi = best_d[q0 : q0 + chunk], best_i[q0 : q0 + chunk]  # views: updated in place
        for r0 in range(0, reference.shape[0], chunk):
            d = torch.cdist(q, reference[r0 : r0 + chunk], compute_mode="donot_use_mm_for_euclid_dist")  # [n, m]
            block = d.min(dim=1)  # first minimum within the block
            # strict: an earlier block keeps its tie; a NaN sticks
            better = (block.values < bd) | block.values.isnan()
            bd.copy_(torch.where(better, block.values, bd))
            bi.copy_(torch.where(better, block.indices + r0, bi))
    return best_d, best_i


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

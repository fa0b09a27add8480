"""Several draws of the generator merged into one cloud per condition (``sampling.draws``; an extension of ours).

One draw of an autoregressive point generator is one random sample of where the surface points fall: at toy scale
two draws for the same portrait differ by up to 2.4 dB once rendered, and a single draw leaves holes where the model
is unsure (docs/benchmark/EXPERIMENTS.md, exp26). Merging ``K`` draws and keeping an evenly spread subset of their
union, as many points as one draw has on average, keeps the generator's support (every kept point is one the model
sampled, with the face it bound it to) and spends the point budget evenly over it. The merged cloud is re-sorted into
a token sequence, and its hidden states for the decoder come from a teacher-forced pass of that sequence, exactly as
for any stored cloud.
"""

from __future__ import annotations

import torch
from torch import Tensor


def farthest_point_subset(points: Tensor, mask: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Farthest-point sampling per cloud: ``points [B, M, 3]`` with ``mask [B, M]`` (True = real) -> ``index [B, K]``
    long and ``valid [B, K]`` bool, ``K = counts.max()``: cloud ``b`` keeps ``min(counts[b], its real points)``
    indices (padding index 0 after them). Starts at each cloud's first real point, then repeatedly takes the real
    point farthest from those kept (ties: the lowest index), so the result is deterministic."""
    B, M = mask.shape
    counts = torch.minimum(counts.long(), mask.sum(-1))
    K = int(counts.max())
    index = torch.zeros(B, K, dtype=torch.long, device=points.device)
    valid = torch.arange(K, device=points.device)[None] < counts[:, None]
    nearest = torch.full((B, M), torch.inf, dtype=points.dtype, device=points.device)
    nearest = nearest.masked_fill(~mask, -1.0)  # padding is never the farthest
    current = mask.long().argmax(-1)  # first real point
    rows = torch.arange(B, device=points.device)
    for k in range(K):
        index[:, k] = torch.where(valid[:, k], current, torch.zeros_like(current))
        d = (points - points[rows, current][:, None]).square().sum(-1)  # [B, M]
        nearest = torch.where(mask, torch.minimum(nearest, d), nearest)
        current = nearest.argmax(-1)
    return index, valid


def merge_draws(points: Tensor, binding: Tensor, mask: Tensor, n_points: Tensor, draws: int
                ) -> tuple[Tensor, Tensor, Tensor]:
    """``draws`` consecutive clouds per condition (``points [B * draws, N, 3]``, ``binding``/``mask [B * draws, N]``,
    ``n_points [B * draws]``, condition-major) -> each condition's union thinned by :func:`farthest_point_subset` to
    the rounded mean point count of its draws: ``points [B, K, 3]``, ``binding [B, K]``, ``mask [B, K]``."""
    BK, N = mask.shape
    if draws < 1 or BK % draws:
        raise ValueError(f"merge_draws: {BK} clouds are not a whole number of {draws} draws per condition")
    B = BK // draws
    union_points = points.reshape(B, draws * N, 3)
    union_binding = binding.reshape(B, draws * N)
    union_mask = mask.reshape(B, draws * N)
    target = torch.round(n_points.reshape(B, draws).double().mean(-1)).long().clamp_min(1)
    index, valid = farthest_point_subset(union_points.double(), union_mask, target)
    kept_points = union_points.gather(1, index[..., None].expand(-1, -1, 3)) * valid[..., None]
    kept_binding = union_binding.gather(1, index) * valid
    return kept_points, kept_binding, valid

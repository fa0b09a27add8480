"""An auxiliary target for the condition encoder: where the subject's points are, read from the condition tokens.

An extension of ours, off by default (the paper trains the condition only through the next-token loss). At toy scale
a from-scratch portrait encoder learns little from that loss: the generator's clouds follow the mean head, whatever
the hair in the portrait (docs/benchmark/EXPERIMENTS.md, exp9). The probe pools the condition tokens with a few
learned queries and predicts where the subject's points are: a distribution over the cells of a ``cells^3`` grid over
the tokenizer's box (``target: density``, cross-entropy against the teacher's share of points per cell: a sparse
cloud's cell counts are noisy, their expectation is the subject's surface) or which cells hold a point (``target:
occupancy``, binary cross-entropy). Its loss reaches the encoder directly, so the tokens must carry the subject's
geometry. The probe is a training head only: the generator's samples and features do not use it, and checkpoints keep
it beside, not inside, the network. Measured at toy scale (exp10): with the occupancy target the clouds follow the
portrait's hair more often (recall of the teacher's hair points 0.14 -> 0.42), the renders did not improve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GeometryProbeConfig:
    """The auxiliary geometry loss on the condition tokens (``GeneratorModule(geometry_probe=...)``)."""

    weight: float = 0.0
    """Weight of the probe's loss beside the next-token loss (0: off, the paper's training)."""
    target: Literal["density", "occupancy"] = "density"
    """``density``: the share of the cloud's points in each cell (cross-entropy); ``occupancy``: whether a cell holds
    a point (binary cross-entropy per cell)."""
    cells: int = 8
    """Grid cells per axis over the tokenizer's box."""
    queries: int = 8
    """Learned queries that pool the condition tokens."""

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError(f"geometry_probe.weight must be >= 0, got {self.weight}")
        if self.target not in ("density", "occupancy"):
            raise ValueError(f"geometry_probe.target must be 'density' or 'occupancy', got {self.target!r}")
        if self.cells < 1 or self.queries < 1:
            raise ValueError(f"geometry_probe: cells and queries must be >= 1, got {self.cells}, {self.queries}")


def cell_counts(means: Tensor, mask: Tensor, bounds: Tensor, cells: int) -> Tensor:
    """How many valid points each cell of a ``cells^3`` grid over ``bounds [2, 3]`` (lo, hi) holds.

    Args:
        means: ``[B, N, 3]`` points (outside the box: clamped to its border cells, as the tokenizer does).
        mask: ``[B, N]`` bool, valid points.
    Returns:
        ``[B, cells^3]`` float counts, cell ``(i, j, k)`` (x, y, z) at ``(i * cells + j) * cells + k``.
    """
    lo, hi = bounds.to(means)
    ijk = ((means - lo) / (hi - lo) * cells).floor().long().clamp(0, cells - 1)  # [B, N, 3]
    index = (ijk[..., 0] * cells + ijk[..., 1]) * cells + ijk[..., 2]  # [B, N]
    grid = means.new_zeros(means.shape[0], cells**3)
    return grid.scatter_add_(1, index.masked_fill(~mask, 0), mask.to(means.dtype))


def occupancy_grid(means: Tensor, mask: Tensor, bounds: Tensor, cells: int) -> Tensor:
    """``[B, cells^3]`` float 0/1: the cells that hold a valid point (see :func:`cell_counts`)."""
    return (cell_counts(means, mask, bounds, cells) > 0).to(means.dtype)


class GeometryProbe(nn.Module):
    """Condition tokens ``[B, C, D]`` -> logits ``[B, cells^3]`` over the grid's cells (attention pooling, then a
    linear map): a softmax over cells (``density``) or one sigmoid per cell (``occupancy``)."""

    def __init__(self, width: int, config: GeometryProbeConfig):
        super().__init__()
        config.validate()
        self.cells, self.target = config.cells, config.target
        heads = next(h for h in (4, 2, 1) if width % h == 0)
        self.queries = nn.Parameter(torch.randn(1, config.queries, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(config.queries * width)
        self.out = nn.Linear(config.queries * width, config.cells**3)

    def forward(self, condition: Tensor) -> Tensor:
        B = condition.shape[0]
        pooled, _ = self.pool(self.queries.expand(B, -1, -1).to(condition.dtype), condition, condition)  # [B, Q, D]
        return self.out(self.norm(pooled.flatten(1)))  # [B, cells^3]

    def loss(self, condition: Tensor, means: Tensor, mask: Tensor, bounds: Tensor) -> Tensor:
        """The probe's loss against the teacher clouds (``means [B, N, 3]``, ``mask [B, N]``) in ``bounds [2, 3]``;
        a scalar (mean over the batch)."""
        counts = cell_counts(means.float(), mask, bounds.float(), self.cells)
        logits = self(condition).float()
        if self.target == "occupancy":
            return F.binary_cross_entropy_with_logits(logits, (counts > 0).float())
        share = counts / counts.sum(-1, keepdim=True).clamp(min=1)
        return -(share * logits.log_softmax(-1)).sum(-1).mean()

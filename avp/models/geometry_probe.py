"""An auxiliary target for the condition encoder: the subject's coarse occupancy, read from the condition tokens.

An extension of ours, off by default (the paper trains the condition only through the next-token loss). At toy scale
a from-scratch portrait encoder learns little from that loss: the generator's clouds follow the mean head, whatever
the hair in the portrait (docs/benchmark/EXPERIMENTS.md, exp9). The probe pools the condition tokens with a few
learned queries and predicts which cells of a ``cells^3`` grid over the tokenizer's box hold a teacher point; its
loss reaches the encoder directly, so the tokens must carry the subject's geometry. The probe is a training head only:
the generator's samples and features do not use it, and checkpoints keep it beside, not inside, the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GeometryProbeConfig:
    """The auxiliary occupancy loss on the condition tokens (``GeneratorModule(geometry_probe=...)``)."""

    weight: float = 0.0
    """Weight of the occupancy loss beside the next-token loss (0: off, the paper's training)."""
    cells: int = 8
    """Grid cells per axis over the tokenizer's box."""
    queries: int = 8
    """Learned queries that pool the condition tokens."""

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError(f"geometry_probe.weight must be >= 0, got {self.weight}")
        if self.cells < 1 or self.queries < 1:
            raise ValueError(f"geometry_probe: cells and queries must be >= 1, got {self.cells}, {self.queries}")


def occupancy_grid(means: Tensor, mask: Tensor, bounds: Tensor, cells: int) -> Tensor:
    """Which cells of a ``cells^3`` grid over ``bounds [2, 3]`` (lo, hi) hold a valid point.

    Args:
        means: ``[B, N, 3]`` points (outside the box: clamped to its border cells, as the tokenizer does).
        mask: ``[B, N]`` bool, valid points.
    Returns:
        ``[B, cells^3]`` float 0/1, cell ``(i, j, k)`` (x, y, z) at ``(i * cells + j) * cells + k``.
    """
    lo, hi = bounds.to(means)
    ijk = ((means - lo) / (hi - lo) * cells).floor().long().clamp(0, cells - 1)  # [B, N, 3]
    index = (ijk[..., 0] * cells + ijk[..., 1]) * cells + ijk[..., 2]  # [B, N]
    grid = means.new_zeros(means.shape[0], cells**3)
    grid.scatter_add_(1, index.masked_fill(~mask, 0), mask.to(means.dtype))
    return (grid > 0).to(means.dtype)


class GeometryProbe(nn.Module):
    """Condition tokens ``[B, C, D]`` -> occupancy logits ``[B, cells^3]`` (attention pooling, then a linear map)."""

    def __init__(self, width: int, config: GeometryProbeConfig):
        super().__init__()
        config.validate()
        self.cells = config.cells
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
        """Binary cross-entropy of the predicted occupancy against the teacher clouds' (``means [B, N, 3]``,
        ``mask [B, N]``) in ``bounds [2, 3]``; a scalar."""
        target = occupancy_grid(means.float(), mask, bounds.float(), self.cells)
        return F.binary_cross_entropy_with_logits(self(condition).float(), target)

"""The optimiser both stages use: AdamW (no weight decay on biases, norms and embeddings), linear warm-up, cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def warmup_cosine(warmup_steps: int, total_steps: float, min_ratio: float) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up to 1, then cosine to ``min_ratio`` at ``total_steps``
    (constant after warm-up when the run has no known length)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not math.isfinite(total_steps) or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def adamw_warmup_cosine(named_parameters: Iterable[tuple[str, nn.Parameter]], *, lr: float, weight_decay: float,
                        betas: tuple[float, float], warmup_steps: int, min_lr_ratio: float,
                        total_steps: float) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: AdamW over the trainable parameters (1-d tensors and embeddings
    without decay) with a per-step warm-up + cosine schedule over ``total_steps`` (``inf``: constant after warm-up)."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=tuple(betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""Random head parameters for the head-model tests."""

from __future__ import annotations

import torch

from avp.head import HeadModel
from avp.types import HeadParams


def random_params(model: HeadModel, *batch: int, scale: float = 1.0, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> HeadParams:
    """Plausible random head parameters: N(0, 1) shape and expression, poses of a few tenths of a radian."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, k=1.0: (torch.randn(*batch, *s, generator=g, dtype=torch.float64) * k * scale).to(dtype)
    jaw = r(3, k=0.1)
    jaw[..., 0] = jaw[..., 0].abs() + 0.05 * scale  # open, never hyper-extended
    return HeadParams(r(model.n_shape), r(model.n_expr), r(3, k=0.3), r(3, k=0.2), jaw, r(6, k=0.2), r(3, k=0.05))

"""Raw Gaussian attributes -> the activated :class:`~avp.types.GaussianCloud` the renderer consumes.

The one activation site shared by the shards (teacher fits stored as ``log_scales``/``opacity_logits``) and the
decoder (:mod:`avp.models.gaussian_activation` adds its bounded parameterisation on top).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from avp.types import GaussianCloud


def activate(means: Tensor, log_scales: Tensor, opacity_logits: Tensor, quats: Tensor, sh: Tensor,
             mask: Tensor | None = None, *, min_scale: float | None = None,
             max_scale: float | None = None) -> GaussianCloud:
    """Raw attributes ``[B, N, ...]`` -> activated :class:`GaussianCloud`.

    ``scales = exp(log_scales)`` (clamped to ``[min_scale, max_scale]`` metres where given: the clamp happens on the
    log scale, so gradients stop only beyond a bound), ``opacities = sigmoid(opacity_logits)``, quaternions
    normalised (wxyz); ``means``, ``sh`` and ``mask`` pass through.
    """
    lo = math.log(min_scale) if min_scale is not None else None
    hi = math.log(max_scale) if max_scale is not None else None
    if lo is not None or hi is not None:
        log_scales = log_scales.clamp(min=lo, max=hi)
    return GaussianCloud(
        means=means,
        quats=torch.nn.functional.normalize(quats, dim=-1),
        scales=torch.exp(log_scales),
        opacities=torch.sigmoid(opacity_logits),
        sh=sh,
        mask=mask,
    )

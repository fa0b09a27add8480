"""Raw Gaussian attributes -> the activated :class:`~avp.types.GaussianCloud` the renderer consumes.

The one activation site shared by the shards (teacher fits stored as ``log_scales``/``opacity_logits``) and the
decoder (:mod:`avp.models.gaussian_activation` adds its bounded parameterisation on top).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from avp.types import GaussianCloud


class _InwardClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(min=lo, max=hi)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        outward = ((x > ctx.hi) & (grad < 0)) | ((x < ctx.lo) & (grad > 0))
        return grad.masked_fill(outward, 0.0), None, None


def inward_clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """``x.clamp(lo, hi)`` whose gradient, beyond a bound, passes where a descent step would move ``x`` back inside.

    A plain clamp has zero gradient beyond its bounds: a raw value that overshoots (an Adam step at a high learning
    rate) then receives no gradient from any loss and stays out for good. In the decoder that froze runs with
    oversized, faint splats from their first steps (docs/benchmark/EXPERIMENTS.md, exp22). Inside the bounds, and
    for the forward value everywhere, this is the plain clamp.
    """
    return _InwardClamp.apply(x, lo, hi)


def activate(means: Tensor, log_scales: Tensor, opacity_logits: Tensor, quats: Tensor, sh: Tensor,
             mask: Tensor | None = None, *, min_scale: float | None = None,
             max_scale: float | None = None) -> GaussianCloud:
    """Raw attributes ``[B, N, ...]`` -> activated :class:`GaussianCloud`.

    ``scales = exp(log_scales)`` (clamped to ``[min_scale, max_scale]`` metres where given, on the log scale, by
    :func:`inward_clamp`: beyond a bound the gradient still passes when it points back inside), ``opacities =
    sigmoid(opacity_logits)``, quaternions normalised (wxyz); ``means``, ``sh`` and ``mask`` pass through.
    """
    lo = math.log(min_scale) if min_scale is not None else -math.inf
    hi = math.log(max_scale) if max_scale is not None else math.inf
    if min_scale is not None or max_scale is not None:
        log_scales = inward_clamp(log_scales, lo, hi)
    return GaussianCloud(
        means=means,
        quats=torch.nn.functional.normalize(quats, dim=-1),
        scales=torch.exp(log_scales),
        opacities=torch.sigmoid(opacity_logits),
        sh=sh,
        mask=mask,
    )

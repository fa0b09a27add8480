"""Raw Gaussian parameters -> activated :class:`~avp.types.GaussianCloud`: the one place activation happens.

Two producers of raw parameters use it:

- the teacher fits in the shards (``log_scales``, ``opacity_logits``, unnormalised ``quats``, SH): :func:`activate`
  with no bounds, i.e. ``scales = exp(log_scales)``, ``opacities = sigmoid(opacity_logits)``, quaternions normalised;
- the Gaussian decoder's heads (:class:`RawSplats`): :func:`activate_splats` with the parameterisation of
  :class:`SplatParameterisation`:

  ========== ==================================================================================================
  attribute  raw -> activated
  ========== ==================================================================================================
  offset     ``max_offset * tanh(raw)`` per axis (metres): bounded, 0 at raw 0, added to the point position
  scale      ``exp(clamp(raw, log(min_scale), log(max_scale)))`` per axis (metres); heads start at ``init_scale``
  rotation   ``normalize(raw)`` (wxyz); heads start at the identity ``(1, 0, 0, 0)``
  opacity    ``sigmoid(raw)``; heads start at ``init_opacity`` (0.1)
  colour     degree-0 band: ``rgb = sigmoid(raw)`` turned into the SH DC coefficient (``rgb_to_sh0``, so the base
             colour stays in 0..1 and starts at grey 0.5); higher bands (``sh_degree`` 1..3) are linear SH
             coefficients (gsplat convention), starting at 0
  ========== ==================================================================================================

:func:`init_biases` gives the raw values that activate to the initial values, for the decoder heads' biases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from avp.activation import activate
from avp.render.sh import rgb_to_sh0
from avp.types import GaussianCloud, TensorContainer


@dataclass
class SplatParameterisation:
    """Bounds and initial values of the decoder's splat attributes (metres; see the module docstring)."""

    max_offset: float = 0.01
    """Largest position offset per axis (metres) the decoder may add to a point (``max_offset * tanh``)."""
    min_scale: float = 1e-4
    """Smallest splat standard deviation (metres); the exp of the raw log-scale is clamped to it."""
    max_scale: float = 0.03
    """Largest splat standard deviation (metres); keeps single splats from covering the head."""
    init_scale: float = 0.003
    """Standard deviation (metres) the scale heads start from (a point spacing of a dense avatar)."""
    init_opacity: float = 0.1
    """Opacity the opacity head starts from."""

    def validate(self) -> None:
        if self.max_offset < 0:
            raise ValueError(f"splat parameterisation: max_offset must be >= 0, got {self.max_offset}")
        if not 0 < self.min_scale <= self.init_scale <= self.max_scale:
            raise ValueError("splat parameterisation: need 0 < min_scale <= init_scale <= max_scale, got "
                             f"{self.min_scale}, {self.init_scale}, {self.max_scale}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"splat parameterisation: init_opacity must be in (0, 1), got {self.init_opacity}")


@dataclass
class RawSplats(TensorContainer):
    """What the decoder heads emit, before activation (``B`` avatars, ``N`` points)."""

    offset: Tensor
    """``[B, N, 3]`` pre-``tanh`` position offsets."""
    log_scales: Tensor
    """``[B, N, 3]`` log standard deviations (metres), before clamping."""
    quats: Tensor
    """``[B, N, 4]`` unnormalised rotations, wxyz."""
    opacity_logits: Tensor
    """``[B, N]`` logits of opacity."""
    colour: Tensor
    """``[B, N, K, 3]``: row 0 are logits of the RGB base colour, rows 1.. linear SH coefficients."""


def bounded_offset(raw: Tensor, max_offset: float) -> Tensor:
    """``raw [..., 3]`` -> offsets in metres, each component in ``(-max_offset, max_offset)``."""
    return max_offset * torch.tanh(raw)


def colour_to_sh(colour: Tensor) -> Tensor:
    """Decoder colour ``[..., K, 3]`` (DC as RGB logits, then SH bands) -> SH coefficients ``[..., K, 3]``."""
    rgb = torch.sigmoid(colour[..., :1, :])
    return torch.cat([rgb_to_sh0(rgb), colour[..., 1:, :]], dim=-2)


def activate_splats(points: Tensor, raw: RawSplats, parameterisation: SplatParameterisation,
                    mask: Tensor | None = None) -> tuple[GaussianCloud, Tensor]:
    """The decoder's raw outputs at ``points [B, N, 3]`` -> (activated cloud, ``offsets [B, N, 3]`` in metres).

    ``cloud.means = points + offsets``; see the module docstring for every attribute.
    """
    p = parameterisation
    offsets = bounded_offset(raw.offset, p.max_offset)
    cloud = activate(points + offsets, raw.log_scales, raw.opacity_logits, raw.quats, colour_to_sh(raw.colour),
                     mask, min_scale=p.min_scale, max_scale=p.max_scale)
    return cloud, offsets


def init_biases(parameterisation: SplatParameterisation) -> dict[str, Tensor]:
    """Raw values that activate to the initial splat: zero offset, ``init_scale``, identity, ``init_opacity``, grey.

    Keys ``offset [3]``, ``log_scales [3]``, ``quats [4]``, ``opacity_logits [1]``, ``colour_dc [3]``.
    """
    p = parameterisation
    return {
        "offset": torch.zeros(3),
        "log_scales": torch.full((3,), math.log(p.init_scale)),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]),
        "opacity_logits": torch.tensor([math.log(p.init_opacity / (1 - p.init_opacity))]),
        "colour_dc": torch.zeros(3),
    }

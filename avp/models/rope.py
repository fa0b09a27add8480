"""Rotary position embedding (RoPE): attention scores depend only on the distance between positions.

That is what makes window training work: a window cut from the middle of a long sequence keeps its absolute
positions, and the model sees the same relative geometry it sees during sampling at those positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Rotates pairs of channels ``(i, i + d/2)`` of each head by ``position * base ** (-2i / d)``."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions [T]`` or ``[B, T]`` -> ``cos, sin`` of shape ``[1 | B, 1, T, head_dim / 2]`` in ``dtype``.

        Angles are computed in float64 (not stored: a module cast to half precision cannot spoil them), so they stay
        exact at the tens of thousands of positions an avatar needs.
        """
        wide = torch.float32 if positions.device.type == "mps" else torch.float64  # MPS has no float64
        exponent = torch.arange(0, self.head_dim, 2, dtype=wide, device=positions.device) / self.head_dim
        angles = positions.to(wide)[..., None] * self.base**-exponent  # [..., T, d/2]
        if angles.ndim == 2:
            angles = angles[None]
        angles = angles[:, None]  # [B, 1, T, d/2] broadcast over heads
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x [B, H, T, d]`` rotated by ``cos, sin [B | 1, 1, T, d/2]`` (cast to ``x``'s dtype: bf16 stays bf16)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

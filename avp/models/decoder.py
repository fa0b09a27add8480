"""The conditioned Gaussian decoder: generated points (+ the generator's hidden states) -> full splats.

Per point ``n`` (PAPER.md §3):

- *position branch*: the dequantised canonical position, normalised into the tokenizer's box (``[-1, 1]`` per axis),
  Fourier-encoded (``p, sin(2^k pi p), cos(2^k pi p)``, ``k < n_frequencies``) -> 2-layer MLP -> ``width``;
- *AR-feature branch*: the generator's final hidden states at the point's 4 token positions ``[4, D]``, concatenated
  ``[4 D]`` -> 2-layer MLP (the aggregate) -> ``width``;
- the branches selected by ``inputs`` (``both`` | ``position`` | ``ar_feature``) are concatenated and projected to
  ``width``; a pre-norm Transformer over the points (bidirectional self-attention with the padding masked out,
  optionally cross-attention to the generator's condition tokens, MLP) mixes them;
- linear heads give raw offset, log-scale, rotation, opacity and colour (:class:`~avp.models.gaussian_activation.
  RawSplats`), activated by :func:`~avp.models.gaussian_activation.activate_splats` (bounded offset, clamped exp
  scale, identity-biased quaternion, opacity starting at 0.1, RGB or SH up to degree 3).

The ablations of the paper's table are the ``inputs`` switch: ``position`` never looks at the hidden states and
``ar_feature`` never looks at the positions (its splats still sit at the points, moved by their offsets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avp.models.gaussian_activation import RawSplats, SplatParameterisation, activate_splats, init_biases
from avp.models.layers import fourier_features
from avp.models.pixel_aligned import pixel_feature_dim
from avp.types import GaussianCloud, TensorContainer

INPUTS = ("both", "position", "ar_feature")
APPEARANCE = ("none", "pixel")


@dataclass
class DecoderConfig:
    """Size, inputs and output parameterisation of :class:`GaussianDecoder`."""

    inputs: str = "both"
    """What the decoder sees per point: ``both`` (position + AR features, the paper's model), ``position`` (the
    "AR position only" ablation) or ``ar_feature`` (the "AR feature only" ablation)."""
    width: int = 512
    """Width of the point tokens and of the Transformer."""
    n_layers: int = 8
    """Transformer blocks over the points."""
    n_heads: int = 8
    """Attention heads (self and cross); must divide ``width``."""
    mlp_ratio: float = 4.0
    """Transformer MLP hidden width as a multiple of ``width``."""
    n_frequencies: int = 10
    """Fourier octaves of the normalised position (the finest has a period of ``2 / 2^(n-1)`` box half-widths)."""
    feature_hidden: int = 1024
    """Hidden width of the MLP that aggregates a point's 4 hidden states ``[4 D] -> width``."""
    cross_attention: bool = False
    """Each block also cross-attends to the generator's condition tokens (portrait and head-mesh tokens)."""
    sh_degree: int = 0
    """Colour: 0 = view-independent RGB; 1..3 = spherical harmonics of that degree."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches."""
    splat: SplatParameterisation = field(default_factory=SplatParameterisation)
    """Bounds and initial values of the activated attributes (offset, scale, opacity)."""
    appearance: str = "none"
    """Extra appearance input per point, the same for every ``inputs`` row: ``none`` (the paper: the portrait
    reaches the decoder only through the generator's features and condition tokens) or ``pixel`` (an extension of
    ours: the portrait's colours where the point projects, :mod:`avp.models.pixel_aligned`)."""
    pixel_levels: int = 3
    """Pyramid levels of the ``pixel`` colours."""

    def validate(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"decoder: inputs must be one of {INPUTS}, got {self.inputs!r}")
        if self.width % self.n_heads:
            raise ValueError(f"decoder: width {self.width} is not divisible by n_heads {self.n_heads}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"decoder: sh_degree must be in 0..3, got {self.sh_degree}")
        if self.appearance not in APPEARANCE:
            raise ValueError(f"decoder: appearance must be one of {APPEARANCE}, got {self.appearance!r}")
        if self.pixel_levels < 1:
            raise ValueError(f"decoder: pixel_levels must be >= 1, got {self.pixel_levels}")
        if self.n_layers < 0 or self.n_frequencies < 0:
            raise ValueError("decoder: n_layers and n_frequencies must be >= 0")
        self.splat.validate()


@dataclass
class DecoderOutput(TensorContainer):
    """Decoded splats of ``B`` avatars with up to ``N`` points, in canonical space."""

    cloud: GaussianCloud
    """``[B, N]`` activated Gaussians; ``means = points + offsets``; ``mask`` as given."""
    offsets: Tensor
    """``[B, N, 3]`` position offsets (metres) the decoder added to the points."""
    raw: RawSplats
    """The heads' raw outputs (before activation)."""


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class _Attention(nn.Module):
    """Multi-head attention of ``x [B, N, W]`` to ``context [B, M, Wc]`` with an optional key mask ``[B, M]``."""

    def __init__(self, width: int, n_heads: int, context_dim: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, width // n_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        B, N, W = x.shape
        M = context.shape[1]
        q = self.q(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]
        k, v = self.kv(context).view(B, M, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 2 x [B, H, M, d]
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, M], True = attend
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, N, W))


class PointBlock(nn.Module):
    """Pre-norm block: self-attention over the points, optional cross-attention to the condition, MLP."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: float, dropout: float, condition_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = _Attention(width, n_heads, width, dropout)
        self.cross = None
        if condition_dim is not None:
            self.norm_c = nn.LayerNorm(width)
            self.cross = _Attention(width, n_heads, condition_dim, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = _mlp(width, int(round(width * mlp_ratio)), width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, condition: Tensor | None) -> Tensor:
        """``x [B, N, W]``, ``mask [B, N]`` (True = real point), ``condition [B, C, Dc]``."""
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm_c(x), condition))
        return x + self.drop(self.mlp(self.norm2(x)))


class GaussianDecoder(nn.Module):
    """Points ``[B, N, 3]`` + per-point hidden states ``[B, N, 4, D]`` -> :class:`DecoderOutput`.

    Args:
        config: :class:`DecoderConfig`.
        feature_dim: ``D``, the generator's width (its hidden states).
        bounds: ``[2, 3]`` the tokenizer's box (lo, hi); positions are normalised into it.
        condition_dim: width of the condition tokens (required with ``config.cross_attention``).
    """

    center: Tensor
    half_extent: Tensor

    def __init__(self, config: DecoderConfig, feature_dim: int, bounds: Tensor, condition_dim: int | None = None):
        super().__init__()
        config.validate()
        if config.cross_attention and condition_dim is None:
            raise ValueError("decoder: cross_attention needs condition_dim (the condition tokens' width)")
        bounds = torch.as_tensor(bounds, dtype=torch.float32)
        if bounds.shape != (2, 3) or not bool((bounds[1] > bounds[0]).all()):
            raise ValueError(f"decoder: bounds must be [2, 3] with hi > lo, got {bounds.tolist()}")
        self.config = config
        self.feature_dim = int(feature_dim)
        W = config.width
        self.register_buffer("center", (bounds[0] + bounds[1]) / 2)
        self.register_buffer("half_extent", (bounds[1] - bounds[0]) / 2)
        use_pos = config.inputs in ("both", "position")
        use_feat = config.inputs in ("both", "ar_feature")
        self.position_mlp = _mlp(3 * (1 + 2 * config.n_frequencies), W, W) if use_pos else None
        self.feature_mlp = _mlp(4 * self.feature_dim, config.feature_hidden, W) if use_feat else None
        use_pixel = config.appearance == "pixel"
        self.pixel_mlp = _mlp(pixel_feature_dim(config.pixel_levels), W, W) if use_pixel else None
        self.fuse = nn.Linear(W * (int(use_pos) + int(use_feat) + int(use_pixel)), W)
        cond = condition_dim if config.cross_attention else None
        self.blocks = nn.ModuleList(PointBlock(W, config.n_heads, config.mlp_ratio, config.dropout, cond)
                                    for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(W)
        K = (config.sh_degree + 1) ** 2
        self.heads = nn.ModuleDict({
            "offset": nn.Linear(W, 3),
            "log_scales": nn.Linear(W, 3),
            "quats": nn.Linear(W, 4),
            "opacity_logits": nn.Linear(W, 1),
            "colour": nn.Linear(W, 3 * K),
        })
        self._init_weights()

    @property
    def sh_degree(self) -> int:
        return self.config.sh_degree

    def _init_weights(self) -> None:
        """Trunk: N(0, 0.02) linears (residual outputs scaled by 1/sqrt(2 layers)); heads: small weights and the
        biases of :func:`~avp.models.gaussian_activation.init_biases` (identity rotation, ``init_scale``, opacity
        ``init_opacity``, zero offset, grey colour, zero higher SH bands)."""
        residual_std = 0.02 / math.sqrt(2 * max(self.config.n_layers, 1))
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                is_residual = name.endswith((".attn.out", ".cross.out", ".mlp.2"))
                nn.init.normal_(m.weight, std=residual_std if is_residual else 0.02)
                nn.init.zeros_(m.bias)
        biases = init_biases(self.config.splat)
        with torch.no_grad():
            for key in ("offset", "log_scales", "quats", "opacity_logits"):
                self.heads[key].bias.copy_(biases[key])
                self.heads[key].weight.mul_(0.1)
            colour = self.heads["colour"]
            colour.bias.zero_()
            colour.bias.view(-1, 3)[0].copy_(biases["colour_dc"])

    def normalise(self, points: Tensor) -> Tensor:
        """Canonical ``points [..., 3]`` (metres) -> the tokenizer's box mapped to ``[-1, 1]``."""
        return (points - self.center.to(points.dtype)) / self.half_extent.to(points.dtype)

    def forward(self, points: Tensor, features: Tensor | None = None, mask: Tensor | None = None,
                condition: Tensor | None = None, pixel: Tensor | None = None) -> DecoderOutput:
        """Decode splats.

        Args:
            points: ``[B, N, 3]`` dequantised canonical positions (metres).
            features: ``[B, N, 4, D]`` the generator's final hidden states at each point's 4 token positions
                (required unless ``inputs == "position"``, where it is ignored).
            mask: ``[B, N]`` bool, True for real points (None: all real); padding is masked out of attention.
            condition: ``[B, C, Dc]`` condition tokens (required with ``cross_attention``, ignored otherwise).
            pixel: ``[B, N, 3 * pixel_levels + 2]`` :func:`~avp.models.pixel_aligned.pixel_features` (required with
                ``appearance == "pixel"``, ignored otherwise).
        """
        cfg = self.config
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"GaussianDecoder: points must be [B, N, 3], got {tuple(points.shape)}")
        B, N = points.shape[:2]
        if mask is not None and tuple(mask.shape) != (B, N):
            raise ValueError(f"GaussianDecoder: mask must be [B, N] = {[B, N]}, got {tuple(mask.shape)}")
        parts = []
        if self.position_mlp is not None:
            parts.append(self.position_mlp(fourier_features(self.normalise(points), cfg.n_frequencies)))
        if self.feature_mlp is not None:
            if features is None:
                raise ValueError(f"GaussianDecoder: inputs={cfg.inputs!r} needs the per-point hidden states "
                                 "features [B, N, 4, D]")
            if tuple(features.shape) != (B, N, 4, self.feature_dim):
                raise ValueError(f"GaussianDecoder: features must be [B, N, 4, D] = {[B, N, 4, self.feature_dim]}, "
                                 f"got {tuple(features.shape)}")
            parts.append(self.feature_mlp(features.flatten(-2).to(points.dtype)))  # [B, N, 4D] -> [B, N, W]
        if self.pixel_mlp is not None:
            expected = (B, N, pixel_feature_dim(cfg.pixel_levels))
            if pixel is None or tuple(pixel.shape) != expected:
                got = None if pixel is None else tuple(pixel.shape)
                raise ValueError(f"GaussianDecoder: appearance='pixel' needs pixel features {list(expected)}, "
                                 f"got {got}")
            parts.append(self.pixel_mlp(pixel.to(points.dtype)))
        if cfg.cross_attention:
            if condition is None:
                raise ValueError("GaussianDecoder: cross_attention needs the condition tokens [B, C, Dc]")
            condition = condition.to(points.dtype)
        else:
            condition = None
        x = self.fuse(torch.cat(parts, dim=-1))  # [B, N, W]
        key_mask = None if mask is None else mask.bool()
        for block in self.blocks:
            x = block(x, key_mask, condition)
        x = self.norm(x)
        K = (cfg.sh_degree + 1) ** 2
        raw = RawSplats(
            offset=self.heads["offset"](x),
            log_scales=self.heads["log_scales"](x),
            quats=self.heads["quats"](x),
            opacity_logits=self.heads["opacity_logits"](x).squeeze(-1),
            colour=self.heads["colour"](x).unflatten(-1, (K, 3)),
        )
        cloud, offsets = activate_splats(points, raw, cfg.splat, None if mask is None else mask.bool())
        return DecoderOutput(cloud=cloud, offsets=offsets, raw=raw)

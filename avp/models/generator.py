"""The autoregressive point generator: a decoder-only Transformer over point tokens, conditioned by cross-attention.

Per layer (pre-norm): causal self-attention (SDPA) with RoPE, cross-attention to the condition tokens, MLP. Each input
token gets its token embedding plus a *role* embedding (x / y / z / b, or the BOS slot) derived from its absolute
sequence position (BOS at 0, then ``x y z b`` repeating), so a window cut anywhere on a point boundary still knows
which role each token plays, and RoPE makes attention depend only on distances: training windows and sampling use the
same absolute positions (``input_pos``).

Decoding API (as litgpt's): ``set_kv_cache(batch_size, max_len)`` allocates per-layer caches, then
``forward(tokens, condition, input_pos)`` with consecutive positions appends to them (the condition's keys/values are
computed on the first call and reused), ``reset_kv_cache(start)`` empties them to restart at position ``start`` (the
sampler's sliding window), ``clear_kv_cache()`` frees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avp.models.layers import DecoderBlock, KVCache, init_transformer_weights
from avp.models.rope import RotaryEmbedding
from avp.models.tokenizer import PointTokenizer
from avp.types import TensorContainer

N_ROLES = 5  # x, y, z, b and the BOS slot


@dataclass
class GeneratorConfig:
    """Size and regularisation of the AR Transformer (vocabulary and condition width come from elsewhere)."""

    n_layers: int = 24
    """Decoder blocks (MeshAnything's OPT-350M scale: 24)."""
    width: int = 1024
    """Model width D (also the width of the condition tokens)."""
    n_heads: int = 16
    """Attention heads (self and cross); must divide ``width``."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``width``."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches."""
    rope_base: float = 10000.0
    """RoPE base; the longest wavelength is ``2 pi rope_base`` positions (keep it well above the window)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (long windows on one GPU: less memory, ~30% slower)."""


@dataclass
class GeneratorOutput(TensorContainer):
    """What one forward of the generator returns."""

    logits: Tensor
    """``[B, L, vocab]`` next-token logits at every input position."""
    hidden: Tensor
    """``[B, L, D]`` final hidden states (after the last norm; the input of the output head)."""


def point_features(hidden: Tensor, n_points: int | Tensor) -> Tensor:
    """Per-point decoder features: the final hidden states at the 4 input positions of each point's tokens.

    Args:
        hidden: ``[B, L, D]`` hidden states of a forward over ``BOS x1 y1 z1 b1 …`` (BOS at position 0).
        n_points: number of points ``N`` (int), or ``[B]`` long counts per sample (shorter samples are zero-padded).

    Returns:
        ``[B, N, 4, D]`` (``N = max(n_points)``), for point ``n`` the states at positions ``1 + 4n .. 4 + 4n``.
    """
    B, L, D = hidden.shape
    counts = torch.as_tensor(n_points, device=hidden.device).long().expand(B)
    n = int(counts.max()) if B else 0
    if 1 + 4 * n > L:
        raise ValueError(f"point_features: {n} points need {1 + 4 * n} positions (BOS + 4 per point), "
                         f"hidden has {L}")
    feats = hidden[:, 1 : 1 + 4 * n].reshape(B, n, 4, D)  # [B, N, 4, D]
    valid = torch.arange(n, device=hidden.device)[None, :] < counts[:, None]  # [B, N]
    return feats * valid[:, :, None, None].to(feats.dtype)


class PointGenerator(nn.Module):
    """Decoder-only Transformer: ``tokens [B, T]`` + ``condition [B, C, Dc]`` -> :class:`GeneratorOutput`."""

    def __init__(self, config: GeneratorConfig, vocab_size: int, condition_dim: int | None = None):
        super().__init__()
        if vocab_size <= 4:
            raise ValueError(f"PointGenerator: vocab_size must exceed the specials, got {vocab_size}")
        if config.width % config.n_heads or (config.width // config.n_heads) % 2:
            raise ValueError(f"PointGenerator: width {config.width} is not divisible by n_heads {config.n_heads} into "
                             "an even head size (RoPE rotates channel pairs)")
        self.config = config
        self.vocab_size = vocab_size
        self.condition_dim = condition_dim or config.width
        D = config.width
        self.token_embedding = nn.Embedding(vocab_size, D)
        self.role_embedding = nn.Embedding(N_ROLES, D)
        self.rope = RotaryEmbedding(D // config.n_heads, config.rope_base)
        self.blocks = nn.ModuleList(
            DecoderBlock(D, config.n_heads, self.condition_dim, config.mlp_ratio, config.dropout)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, vocab_size, bias=False)
        init_transformer_weights(self, config.n_layers)

    # ------------------------------------------------------------------------------------------------- KV cache
    @property
    def kv_cache_active(self) -> bool:
        return self.blocks[0].attn.cache is not None

    def set_kv_cache(self, batch_size: int, max_len: int) -> None:
        """Allocate caches for ``batch_size`` sequences of up to ``max_len`` positions, starting at position 0."""
        for block in self.blocks:
            block.attn.cache = KVCache(batch_size, max_len)
            block.cross.cache_condition = True
            block.cross.clear()

    def reset_kv_cache(self, start: int = 0) -> None:
        """Empty the self-attention caches (keeping the condition's); the next forward starts at ``start``."""
        if not self.kv_cache_active:
            raise RuntimeError("reset_kv_cache: no KV cache is set (call set_kv_cache first)")
        for block in self.blocks:
            block.attn.cache.reset(start)

    def clear_kv_cache(self) -> None:
        """Free the caches; forwards go back to full-sequence mode."""
        for block in self.blocks:
            block.attn.cache = None
            block.cross.cache_condition = False
            block.cross.clear()

    # -------------------------------------------------------------------------------------------------- forward
    def forward(self, tokens: Tensor, condition: Tensor, input_pos: Tensor | None = None,
                return_logits: bool = True) -> GeneratorOutput:
        """Next-token logits and hidden states.

        Args:
            tokens: ``[B, T]`` token ids.
            condition: ``[B, C, Dc]`` condition tokens (a cached decode reuses the first call's keys/values).
            input_pos: absolute positions of ``tokens`` (BOS = 0): ``[T]`` consecutive positions, required with a
                KV cache, where they must continue the cached positions (checked when on the CPU; on an accelerator
                the cache's own count is trusted, so decoding never waits for the device); without a cache ``[T]``
                or ``[B, T]`` (per-sample training windows), default ``0 .. T-1``. Attention is causal within
                ``tokens`` (plus the cached prefix).
            return_logits: False skips the output head (``logits`` is ``[B, T, 0]``): feature extraction for the
                decoder needs only the hidden states, and the vocabulary-wide head dominates a small model's cost.
        """
        if tokens.ndim != 2:
            raise ValueError(f"PointGenerator: tokens must be [B, T], got {tuple(tokens.shape)}")
        if condition.ndim != 3 or condition.shape[-1] != self.condition_dim:
            raise ValueError(f"PointGenerator: condition must be [B, C, {self.condition_dim}], "
                             f"got {tuple(condition.shape)}")
        B, T = tokens.shape
        slot = 0
        if self.kv_cache_active:
            if input_pos is None or input_pos.ndim != 1 or input_pos.shape[0] != T:
                raise ValueError("PointGenerator: with a KV cache, input_pos must be the [T] consecutive positions "
                                 "of the tokens")
            cache = self.blocks[0].attn.cache
            slot = cache.length  # the tokens continue the cache (no device sync to read input_pos)
            if input_pos.device.type == "cpu" and int(input_pos[0]) != cache.start + slot:
                raise ValueError(f"PointGenerator: the KV cache continues at position {cache.start + slot}, "
                                 f"got input_pos starting at {int(input_pos[0])}")
            positions = input_pos
        elif input_pos is None:
            positions = torch.arange(T, device=tokens.device)
        else:
            if input_pos.shape[-1] != T or input_pos.ndim not in (1, 2):
                raise ValueError(f"PointGenerator: input_pos must be [T] or [B, T] with T={T}, "
                                 f"got {tuple(input_pos.shape)}")
            positions = input_pos
        roles = PointTokenizer.role_of_position(positions)
        x = self.token_embedding(tokens) + self.role_embedding(roles)  # [B, T, D]
        cos, sin = self.rope.cos_sin(positions, x.dtype)
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, condition, cos, sin, slot, use_reentrant=False)
            else:
                x = block(x, condition, cos, sin, slot)
        hidden = self.norm(x)
        logits = self.head(hidden) if return_logits else hidden.new_empty(B, T, 0)
        return GeneratorOutput(logits=logits, hidden=hidden)

    def point_features(self, hidden: Tensor, n_points: int | Tensor) -> Tensor:
        """``hidden [B, L, D]`` -> ``[B, N, 4, D]``; see :func:`point_features`."""
        return point_features(hidden, n_points)


def training_windows(tokens: Tensor, lengths: Tensor, window: int, pad_id: int,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Cut one random training window per sequence (truncated sliding-window training).

    Each sequence of ``n = lengths_i - 1`` inputs that does not fit gets a window of ``window`` inputs starting at
    position 0 (with BOS) or at a point boundary ``1 + 4k``, chosen uniformly among the starts whose window ends
    within 3 tokens of the sequence's end (so EOS is trained too). A sequence that fits starts at 0: the window is
    then the whole sequence (the same computation as a full forward).

    Args:
        tokens: ``[B, L]`` (``BOS … EOS PAD …``); lengths: ``[B]`` tokens up to EOS.

    Returns:
        ``inputs [B, W]``, ``targets [B, W]`` (PAD where nothing is to be predicted) and absolute ``positions
        [B, W]`` of the inputs (for the model's ``input_pos``), ``W = min(window, L - 1)``.
    """
    B, L = tokens.shape
    W = min(window, L - 1)
    n_inputs = lengths - 1  # [B]
    # starts 1 + 4k with 1 + 4k + W <= n + 3, plus the start 0; only sequences longer than the window slide
    n_boundary = torch.where(n_inputs > W, torch.div(n_inputs + 2 - W, 4, rounding_mode="floor") + 1, 0)
    u = torch.rand(B, generator=generator, device="cpu" if generator is None else generator.device)
    choice = (u.to(tokens.device) * (n_boundary + 1)).floor().long().clamp(max=n_boundary)  # 0 .. n_boundary
    starts = torch.where(choice == 0, 0, 1 + 4 * (choice - 1))  # [B]
    padded = torch.cat([tokens, tokens.new_full((B, W + 1), pad_id)], dim=1)
    index = starts[:, None] + torch.arange(W + 1, device=tokens.device)  # [B, W + 1]
    win = torch.gather(padded, 1, index)
    return win[:, :-1], win[:, 1:], index[:, :-1]

"""Transformer building blocks: attention with an optional KV cache, cross-attention, MLP, pre-norm blocks; the Fourier
positional encoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avp.models.rope import apply_rotary


def fourier_features(x: Tensor, n_frequencies: int) -> Tensor:
    """``x [..., C]`` in about [-1, 1] -> ``[..., C (1 + 2 n_frequencies)]``: x, then sin, then cos of ``2^k pi x``
    for ``k < n_frequencies`` (each block channel-major: channel ``c``'s ``K`` frequencies are adjacent).

    The positional encoding of both the mesh point encoder and the Gaussian decoder: one definition, so the two
    can never drift apart.
    """
    freqs = (2.0 ** torch.arange(n_frequencies, device=x.device, dtype=x.dtype)) * math.pi
    angles = (x[..., None] * freqs).flatten(-2)  # [..., C * K]
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:
    """``scaled_dot_product_attention`` in the narrower of the queries' and the keys' dtypes (a bf16 cache is read as
    stored, not widened), returned in the queries' dtype."""
    dtype = k.dtype if k.element_size() < q.element_size() else q.dtype
    return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), **kw).to(q.dtype)


def attend_one(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention of a single query per row, ``q [B, H, 1, d]`` over ``k, v [B, H, S, d]`` (``mask [1|B, 1|H, 1, S]``,
    True = attend), written as products, sums and a softmax in fp32 rather than as a fused attention kernel: compiled on
    a CPU these become two reductions and a softmax fused with the step's other element-wise work, where the flash
    kernel's per-call set-up (layout copies, block buffers) costs more than one query's arithmetic
    (BENCHMARKS.md, "Decode steps"). Returns ``[B, H, 1, d]`` in the queries' dtype."""
    scores = (q.float() * k.float()).sum(-1) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, S]
    if mask is not None:
        scores = scores.masked_fill(~mask[..., 0, :], float("-inf"))
    weights = scores.softmax(-1)
    return (weights[..., None] * v.float()).sum(-2, keepdim=True).to(q.dtype)


def attend_step(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """The decoding step's attention of one query per row: :func:`attend_one` on a CPU, the fused kernel of
    :func:`attend` elsewhere (a GPU's attention kernels have no per-call set-up to speak of)."""
    if q.device.type == "cpu":
        return attend_one(q, k, v, mask)
    return attend(q, k, v, attn_mask=mask)


class KVCache:
    """Keys and values of one attention layer for positions ``[start, start + max_len)``.

    Storage is allocated on the first write (device and dtype from the keys, so autocast decoding caches in bf16;
    ``dtype`` stores them in that dtype instead, e.g. bf16 keys of an fp32 model: half the bytes every step reads).
    ``length`` is how many slots hold valid entries; slot ``i`` holds position ``start + i``.
    """

    def __init__(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None):
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"KVCache: batch_size and max_len must be positive, got {batch_size}, {max_len}")
        self.batch_size = batch_size
        self.max_len = max_len
        self.dtype = dtype
        self.start = 0
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def reset(self, start: int = 0) -> None:
        """Forget every entry; the next write must be at position ``start``."""
        self.start = start
        self.length = 0

    def write(self, slot: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v [B, H, T, d]`` at slots ``slot .. slot+T-1``; return every key/value up to slot ``slot+T-1``."""
        B, H, T, d = k.shape
        if B != self.batch_size:
            raise ValueError(f"KVCache: set for batch size {self.batch_size}, got a batch of {B}")
        if slot != self.length:
            raise ValueError(f"KVCache: positions must continue the cached ones (next is {self.start + self.length}, "
                             f"got {self.start + slot})")
        if slot + T > self.max_len:
            raise ValueError(f"KVCache: holds {self.max_len} positions from {self.start}; writing "
                             f"{T} at {self.start + slot} overflows it (slide the window with reset_kv_cache)")
        dtype = self.dtype or k.dtype
        if self.k is None or self.k.dtype != dtype or self.k.device != k.device or self.k.shape[1] != H:
            self.k = k.new_zeros(B, H, self.max_len, d, dtype=dtype)
            self.v = v.new_zeros(B, H, self.max_len, d, dtype=dtype)
        self.k[:, :, slot : slot + T] = k.to(dtype)
        self.v[:, :, slot : slot + T] = v.to(dtype)
        self.length = slot + T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class SelfAttention(nn.Module):
    """Multi-head self-attention (causal by default), RoPE-rotated when given ``cos, sin``, with an optional cache."""

    def __init__(self, width: int, n_heads: int, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        if width % n_heads:
            raise ValueError(f"attention: width {width} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = width // n_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout
        self.causal = causal
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor | None = None, sin: Tensor | None = None, slot: int = 0) -> Tensor:
        """``x [B, T, D]``; ``cos, sin [B|1, 1, T, d/2]`` (None: no rotation); ``slot``: first cache slot of ``x``."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, d]
        if cos is not None and sin is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask = None
        causal = self.causal
        if self.cache is not None:
            k, v = self.cache.write(slot, k, v)
            if T == 1:
                causal = False  # one new query sees every cached key
            elif slot > 0:
                # queries at slots slot..slot+T-1 see keys up to their own slot
                qs = torch.arange(slot, slot + T, device=x.device)[:, None]
                mask = torch.arange(k.shape[2], device=x.device)[None, :] <= qs  # [T, S]
                causal = False
        drop = self.dropout if self.training else 0.0
        y = attend(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def decode_step(self, x: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, k_cache: Tensor,
                    v_cache: Tensor) -> Tensor:
        """Fixed-shape one-token step: ``x [B, 1, D]`` is the token at cache slot ``slot`` (``[1]`` long tensor).

        Its key/value are written into ``k_cache, v_cache [B, H, S, d]`` (a cache's whole storage) in place, and the
        query attends to slots ``0 .. slot`` through a mask over all ``S`` slots: no slice by a host-side length, so
        every step has the same shapes and no Python branch on values (it compiles, and replays as a CUDA graph).
        Stale slots past ``slot`` (left by a window slide) are masked out.
        """
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, 1, d]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # an index_put_ (not index_copy_): inductor writes it in place instead of copying the whole cache
        k_cache[:, :, slot] = k.to(k_cache.dtype)
        v_cache[:, :, slot] = v.to(v_cache.dtype)
        mask = (torch.arange(k_cache.shape[2], device=x.device) <= slot)[None, None, None, :]  # [1, 1, 1, S]
        y = attend_step(q, k_cache, v_cache, mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    """Multi-head attention from the token stream to the condition tokens (no mask: the condition is always whole).

    With ``cache_condition`` set, keys/values of the condition are computed once and reused (decoding).
    """

    def __init__(self, width: int, n_heads: int, condition_dim: int, dropout: float = 0.0):
        super().__init__()
        if width % n_heads:
            raise ValueError(f"attention: width {width} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = width // n_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(condition_dim, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout
        self.cache_condition = False
        self.cache_dtype: torch.dtype | None = None
        """Dtype the cached condition keys/values are stored in (None: as computed)."""
        self._cached: tuple[Tensor, Tensor] | None = None

    def clear(self) -> None:
        self._cached = None

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        """``x [B, T, D]``, ``condition [B, C, Dc]`` -> ``[B, T, D]``."""
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, d]
        if self.cache_condition and self._cached is not None:
            k, v = self._cached
        else:
            C = condition.shape[1]
            k, v = self.kv(condition).view(B, C, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            if self.cache_condition:
                if self.cache_dtype is not None:
                    k, v = k.to(self.cache_dtype), v.to(self.cache_dtype)
                self._cached = (k, v)
        if k.shape[0] != B:
            raise ValueError(f"cross-attention: condition batch {k.shape[0]} does not match token batch {B}")
        drop = self.dropout if self.training else 0.0
        y = attend(q, k, v, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    @property
    def cached_condition(self) -> tuple[Tensor, Tensor] | None:
        """``(k, v) [B, H, C, d]`` of the condition once a caching forward computed them, else None."""
        return self._cached

    def decode_step(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``x [B, T, D]`` attending to the condition's cached ``k, v [B, H, C, d]`` (given, not read from ``self``,
        so a compiled step takes them as inputs)."""
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, d]
        y = attend_step(q, k, v) if T == 1 else attend(q, k, v)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(round(width * ratio))
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the condition, MLP (each with a residual)."""

    def __init__(self, width: int, n_heads: int, condition_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, n_heads, dropout)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.cross = CrossAttention(width, n_heads, condition_dim, dropout)
        self.norm3 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, condition: Tensor, cos: Tensor, sin: Tensor, slot: int = 0) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, slot))
        x = x + self.drop(self.cross(self.norm2(x), condition))
        return x + self.mlp(self.norm3(x))

    def decode_step(self, x: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, k_cache: Tensor, v_cache: Tensor,
                    cond_k: Tensor, cond_v: Tensor) -> Tensor:
        """One fixed-shape decoding step (eval mode: no dropout); see :meth:`SelfAttention.decode_step`."""
        x = x + self.attn.decode_step(self.norm1(x), cos, sin, slot, k_cache, v_cache)
        x = x + self.cross.decode_step(self.norm2(x), cond_k, cond_v)
        return x + self.mlp(self.norm3(x))


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention + MLP block (condition encoders)."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, n_heads, causal=False)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module, n_layers: int) -> None:
    """GPT-2 style: N(0, 0.02) linear/embedding weights; residual output projections scaled by 1/sqrt(2 n_layers)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("out", "fc2")) else 0.02
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

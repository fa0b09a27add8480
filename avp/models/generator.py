"""The autoregressive point generator: a decoder-only Transformer over point tokens, conditioned by cross-attention.

Per layer (pre-norm): causal self-attention (SDPA) with RoPE, cross-attention to the condition tokens, MLP. Each input
token gets its token embedding plus a *role* embedding (x / y / z / b, or the BOS slot) derived from its absolute
sequence position (BOS at 0, then ``x y z b`` repeating), so a window cut anywhere on a point boundary still knows
which role each token plays, and RoPE makes attention depend only on distances: training windows and sampling use the
same absolute positions (``input_pos``). The output head is the paper's softmax over the whole vocabulary, or with
``GeneratorConfig.head = "role"`` a softmax over each slot's allowed tokens only (:func:`role_cross_entropy`).

Decoding API (as litgpt's): ``set_kv_cache(batch_size, max_len)`` allocates per-layer caches, then
``forward(tokens, condition, input_pos)`` with consecutive positions appends to them (the condition's keys/values are
computed on the first call and reused), ``reset_kv_cache(start)`` empties them to restart at position ``start`` (the
sampler's sliding window), ``clear_kv_cache()`` frees them. Once a cached forward has filled them,
``decode_step(token, position, slot, decode_state())`` is the fixed-shape one-token step (no host-side lengths, no
Python branch on values) that ``torch.compile`` and CUDA graphs need; the sampler uses it with
``SamplingConfig.static_step`` / ``compile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avp.models.layers import DecoderBlock, KVCache, init_transformer_weights
from avp.models.rope import RotaryEmbedding
from avp.models.tokenizer import PointTokenizer
from avp.types import TensorContainer

N_ROLES = 5  # x, y, z, b and the BOS slot
HEADS = ("full", "role")


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
    head: Literal["full", "role"] = "full"
    """Output softmax. ``full`` (the paper's): over the whole vocabulary at every position. ``role`` (an extension of
    ours): the same output matrix, but each slot's softmax runs only over the tokens its role allows: the ``L``
    coordinate rows at slots whose next token is x, y or z (plus EOS where it is x: a point boundary), the ``F``
    face rows at binding slots. Training (:func:`role_cross_entropy`) then never forms ``[B, T, vocab]`` logits (the
    face rows, most of a small model's head, are evaluated at one slot in four) and sampling computes only the
    slot's rows; the grammar mask sampling applies in either mode makes both modes sample from the softmax over the
    allowed set. ``forward`` still returns full-vocabulary logits, meaningful in ``role`` mode only within each slot's
    allowed set. Losses of the two modes are not comparable (``role`` normalises over fewer tokens)."""


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
        if config.head not in HEADS:
            raise ValueError(f"PointGenerator: head must be one of {HEADS}, got {config.head!r}")
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

    def set_kv_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        """Allocate caches for ``batch_size`` sequences of up to ``max_len`` positions, starting at position 0; keys
        and values (the condition's too) are stored in ``dtype`` (None: as computed) and attended in it."""
        for block in self.blocks:
            block.attn.cache = KVCache(batch_size, max_len, dtype)
            block.cross.cache_condition = True
            block.cross.cache_dtype = dtype
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
            block.cross.cache_dtype = None
            block.cross.clear()

    def decode_state(self) -> list[Tensor]:
        """The tensors a :meth:`decode_step` reads and writes, 4 per block: the self-attention cache's whole key and
        value storage ``[B, H, S, d]`` (``S = max_len``) and the condition's keys and values ``[B, H, C, d]``
        (contiguous copies: the cached ones are views of a ``[B, C, H, d]`` projection, and a compiled step laid out
        in that order splits its softmax over the condition into many small parallel regions).

        Available once a cached forward has run (it allocates the storage and computes the condition's keys); the
        same tensors serve until :meth:`clear_kv_cache` (a window slide rewrites the storage in place).
        """
        state: list[Tensor] = []
        for block in self.blocks:
            cache, cond = block.attn.cache, block.cross.cached_condition
            if cache is None or cache.k is None or cache.v is None or cond is None:
                raise RuntimeError("decode_state: run a forward with the KV cache set first (it allocates the storage "
                                   "and caches the condition)")
            state += [cache.k, cache.v, *(t.contiguous() for t in cond)]
        return state

    def decode_step(self, token: Tensor, position: Tensor, slot: Tensor, state: list[Tensor]) -> Tensor:
        """Fixed-shape one-token decoding step (eval mode): the same computation as a cached :meth:`forward` of one
        token, with attention over the cache's whole storage under a mask instead of a slice of its valid part.

        Args:
            token: ``[B, 1]`` long, the input token.
            position: ``[1]`` long, its absolute position (BOS = 0; role embedding and RoPE).
            slot: ``[1]`` long, its cache slot (``position`` minus the cache's start); slots ``0 .. slot - 1`` must
                hold the context (written by a cached forward or earlier steps). The caches' ``length`` counters are
                not touched (the caller keeps them: they live on the host).
            state: :meth:`decode_state`, or the same list with each self-attention cache cut to a view of its first
                ``n > slot`` slots (the sampler's attended length on a CPU).

        Returns:
            ``[B, D]`` final hidden state (the input of the output head: :meth:`head_logits`).
        """
        roles = PointTokenizer.role_of_position(position)
        x = self.token_embedding(token) + self.role_embedding(roles)  # [B, 1, D]
        cos, sin = self.rope.cos_sin(position, x.dtype)
        for i, block in enumerate(self.blocks):
            x = block.decode_step(x, cos, sin, slot, *state[4 * i : 4 * i + 4])
        return self.norm(x)[:, 0]

    def advance_kv_cache(self, n: int = 1) -> None:
        """Count ``n`` more valid slots in every cache (after :meth:`decode_step` wrote them), so that a later cached
        forward continues after them."""
        for block in self.blocks:
            block.attn.cache.length += n

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

    def head_logits(self, hidden: Tensor, rows: Tensor | slice | None = None) -> Tensor:
        """``hidden [..., D]`` -> output-head logits ``[..., R]`` for vocabulary ``rows`` only (None: all)."""
        return F.linear(hidden, self.head.weight if rows is None else self.head.weight[rows])

    def point_features(self, hidden: Tensor, n_points: int | Tensor) -> Tensor:
        """``hidden [B, L, D]`` -> ``[B, N, 4, D]``; see :func:`point_features`."""
        return point_features(hidden, n_points)


def role_rows(role: int, levels: int, n_faces: int, device: torch.device | str | None = None) -> Tensor | slice:
    """Vocabulary rows a slot predicting ``role`` (0..3 = x, y, z, b) chooses from in ``role`` head mode.

    ``x``: the ``levels`` coordinates then EOS (index tensor, EOS last); ``y``, ``z``: the coordinates (a slice);
    ``b``: the ``n_faces`` face tokens (a slice). The order of the rows is the order of the restricted logits.
    """
    if role == 3:
        return slice(levels, levels + n_faces)
    if role == 0:
        eos = levels + n_faces + 1
        return torch.cat([torch.arange(levels, device=device), torch.tensor([eos], device=device)])
    return slice(0, levels)


@dataclass
class RoleLogits:
    """Next-token logits of a batch restricted to each slot's role (``GeneratorConfig.head = "role"``).

    Slots with a PAD target are left out; the others are split into two groups, each computed with its own slice of
    the output matrix. Targets are indices into the group's columns.
    """

    coord: Tensor
    """``[Nc, L + 1]`` logits at coordinate slots over the ``L`` coordinates and EOS (last column; ``-inf`` at y and z
    slots, where no point can end)."""
    coord_target: Tensor
    """``[Nc]`` long, ``0..L-1`` a coordinate, ``L`` EOS."""
    coord_role: Tensor
    """``[Nc]`` long, role of the predicted token: 0, 1, 2 for x, y, z."""
    face: Tensor
    """``[Nf, F]`` logits at binding slots over the faces."""
    face_target: Tensor
    """``[Nf]`` long face index."""

    @property
    def n_tokens(self) -> int:
        return self.coord_target.shape[0] + self.face_target.shape[0]

    def loss_sum(self) -> Tensor:
        """Summed cross-entropy (float32) of both groups."""
        return (F.cross_entropy(self.coord.float(), self.coord_target, reduction="sum")
                + F.cross_entropy(self.face.float(), self.face_target, reduction="sum"))

    def token_stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss_sum, hits [5], counts [5])`` for targets x, y, z, b, EOS; a hit is the argmax within the role's
        allowed set (a y/z slot never picks EOS, a binding slot only faces)."""
        device = self.coord.device
        L = self.coord.shape[1] - 1
        hits = torch.zeros(5, device=device)
        counts = torch.zeros(5, device=device)
        correct = self.coord.argmax(-1) == self.coord_target
        eos = self.coord_target == L
        for r in range(3):
            sel = (self.coord_role == r) & ~eos
            hits[r] += (correct & sel).sum()
            counts[r] += sel.sum()
        hits[3] += (self.face.argmax(-1) == self.face_target).sum()
        counts[3] += self.face_target.shape[0]
        hits[4] += (correct & eos).sum()
        counts[4] += eos.sum()
        return self.loss_sum(), hits, counts


def role_logits(hidden: Tensor, weight: Tensor, targets: Tensor, positions: Tensor, levels: int, n_faces: int,
                pad_id: int) -> RoleLogits:
    """Split next-token prediction into coordinate and binding slots and compute each group's logits only over its
    own rows of the output matrix (never ``[B, T, vocab]``).

    Args:
        hidden: ``[B, T, D]`` final hidden states (:class:`GeneratorOutput` ``hidden``).
        weight: ``[vocab, D]`` output matrix (``PointGenerator.head.weight``).
        targets: ``[B, T]`` next tokens (PAD: no target).
        positions: ``[B, T]`` or ``[T]`` absolute positions of the inputs (BOS = 0); the target's role is that of
            position + 1.
        levels, n_faces, pad_id: the tokenizer's layout (coordinates ``0..L-1``, faces ``L..L+F-1``, BOS, EOS, PAD).

    Raises ``ValueError`` for a target its slot cannot hold (e.g. a face token at a coordinate slot, EOS inside a
    point): the sequences are not the tokenizer's.
    """
    L, Fn = levels, n_faces
    eos = L + Fn + 1
    if weight.shape[0] != L + Fn + 3:
        raise ValueError(f"role_logits: weight has {weight.shape[0]} rows, the layout levels={L}, n_faces={Fn} "
                         f"needs {L + Fn + 3}")
    role = PointTokenizer.role_of_position(positions + 1).expand_as(targets)  # 0..3: role of the target
    valid = targets != pad_id
    coord_sel = valid & (role < 3)
    face_sel = valid & (role == 3)
    h_c, t_c, r_c = hidden[coord_sel], targets[coord_sel], role[coord_sel]
    h_f, t_f = hidden[face_sel], targets[face_sel] - L
    is_eos = t_c == eos
    ok = bool(((t_c >= 0) & (t_c < L) | (is_eos & (r_c == 0))).all()) and bool(((t_f >= 0) & (t_f < Fn)).all())
    if not ok:
        raise ValueError("role_logits: a target does not fit its slot's role (coordinates at x/y/z slots, EOS only "
                         "at x slots, faces at b slots); the sequences are not grammatical")
    eos_logit = F.linear(h_c, weight[eos : eos + 1]).masked_fill((r_c != 0)[:, None], float("-inf"))
    coord = torch.cat([F.linear(h_c, weight[:L]), eos_logit], dim=-1)  # [Nc, L + 1]
    face = F.linear(h_f, weight[L : L + Fn])  # [Nf, F]
    return RoleLogits(coord=coord, coord_target=torch.where(is_eos, L, t_c), coord_role=r_c, face=face,
                      face_target=t_f)


def role_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, positions: Tensor, levels: int,
                       n_faces: int, pad_id: int, reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Next-token cross-entropy of the ``role`` head: at each slot the softmax over the tokens its role allows
    (:func:`role_logits`; arguments as there), float32. ``mean`` averages over the non-PAD targets, like
    ``F.cross_entropy(..., ignore_index=pad_id)`` does for the full head; ``sum`` adds them up."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"role_cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r}")
    groups = role_logits(hidden, weight, targets, positions, levels, n_faces, pad_id)
    total = groups.loss_sum()
    return total if reduction == "sum" else total / groups.n_tokens


def training_windows(tokens: Tensor, lengths: Tensor, window: int, pad_id: int,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Cut one random training window per sequence so that every target is trained equally often in expectation.

    A sequence of ``n = lengths_i - 1`` inputs that fits the window (``n <= W``) is trained whole (the same
    computation as a full forward). A longer one is cut into the fewest consecutive *pieces* of at most ``W`` inputs
    that begin at BOS or at point boundaries ``1 + 4k``: ``m`` pieces, the inner ones ``4 * (W // 4)`` inputs long,
    the first (from BOS) and the last (through the last input, whose target is EOS) sharing the rest at a random
    phase; one piece is drawn uniformly and its targets are trained. Whatever the cuts, every input position lies in
    exactly one of the ``m`` pieces, so every target (BOS's target x1, every coordinate and binding, EOS) is trained
    with probability exactly ``1 / m`` for every sequence length and every ``W`` (also ``W % 4 != 0``). For the
    tokenizer's sequences (``n = 4N + 1``) and ``W % 4 == 0``, ``m = ceil(n / W)``, and no scheme of windows of ``W``
    inputs trains more targets per window with equal coverage: positions ``0, W, 2W, …`` are pairwise too far apart
    to share a window, so covering each with probability ``c`` needs ``ceil(n / W) c <= 1``. (``W % 4 != 0`` can
    need one piece more, as inner pieces hold only ``4 * (W // 4)`` inputs.)

    The window ends with the piece and starts at the earliest point boundary (or BOS) that keeps the piece within
    ``W`` inputs: the inputs before the piece are context only (PAD targets), so the piece's first targets are
    predicted with as much history as the window allows, as in sampling, at no extra cost. Inputs after the piece
    (the next tokens of the sequence, EOS, PAD past its end) have PAD targets; causal attention keeps them from
    influencing the piece. The random phase moves the cuts, so each position is trained with varying context.

    Args:
        tokens: ``[B, L]`` (``BOS … EOS PAD …``); lengths: ``[B]`` tokens up to EOS.
        window: inputs per window (at least 4: one point).
        generator: RNG for the phase and the piece (two uniforms per sequence; None: the global one).

    Returns:
        ``inputs [B, W]``, ``targets [B, W]`` (PAD where nothing is to be predicted) and absolute ``positions
        [B, W]`` of the inputs (for the model's ``input_pos``; consecutive from the window's start): ``inputs`` and
        the non-PAD ``targets`` are the tokens at ``positions`` and ``positions + 1``, ``W = min(window, L - 1)``.
    """
    if window < 4:
        raise ValueError(f"training_windows: window must hold at least one point (4 tokens), got {window}")
    B, L = tokens.shape
    W = min(window, L - 1)
    device = tokens.device
    n = lengths.to(device).long() - 1  # [B] inputs
    slides = n > W
    # cuts at positions 1 + 4 k_j, k_j = k_1 + (j - 1) G (j = 1 .. m - 1); first piece [0, 1 + 4 k_1) needs
    # k_1 <= a, the last [1 + 4 k_{m-1}, n) needs k_{m-1} >= e (at most W inputs) and k_{m-1} <= (n - 2) // 4
    G, a = W // 4, (W - 1) // 4
    e = torch.div(n + 2 - W, 4, rounding_mode="floor")  # ceil((n - 1 - W) / 4)
    m = 2 + torch.div(e - a + G - 1, G, rounding_mode="floor").clamp(min=0)  # fewest pieces
    lo = (e - (m - 2) * G).clamp(min=0)
    hi = torch.minimum(torch.full_like(n, a), torch.div(n - 2, 4, rounding_mode="floor") - (m - 2) * G)
    u = torch.rand(2, B, generator=generator, device="cpu" if generator is None else generator.device).to(device)
    k1 = lo + (u[0] * (hi - lo + 1)).long().clamp(max=(hi - lo).clamp(min=0))
    piece = (u[1] * m).long().clamp(max=m - 1)  # 0 .. m - 1
    start = torch.where(piece == 0, 0, 1 + 4 * (k1 + (piece - 1) * G))
    end = torch.where(piece == m - 1, n, 1 + 4 * (k1 + piece * G))
    start = torch.where(slides, start, 0)
    end = torch.where(slides, end, n)
    first = (end - W).clamp(min=0)  # the window: the earliest boundary (or BOS) with end - first <= W
    first = torch.where(first > 0, 1 + 4 * torch.div(first + 2, 4, rounding_mode="floor"), 0)
    padded = torch.cat([tokens, tokens.new_full((B, W + 1), pad_id)], dim=1)
    index = first[:, None] + torch.arange(W + 1, device=device)  # [B, W + 1]
    win = torch.gather(padded, 1, index)
    pos = index[:, :-1]
    targets = torch.where((pos >= start[:, None]) & (pos < end[:, None]), win[:, 1:], pad_id)
    return win[:, :-1], targets, pos

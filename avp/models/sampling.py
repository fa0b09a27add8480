"""Autoregressive sampling of point clouds from a :class:`~avp.models.generator.PointGenerator` (no parameters here).

It lives in ``models/`` because it is the generator's inference algorithm (pure torch, no I/O): the stage-1 model
samples with it and computes teacher-forced features with exactly its contexts, and the stage-2 model samples the
points it decodes. Nothing in ``models/`` imports anything above it.

Every step masks the logits so that only a well-formed sequence can come out:

- *grammar by role*: coordinate tokens at x/y/z slots, face tokens at b slots, EOS only at a point boundary (and only
  after ``min_points`` points), never BOS or PAD;
- *order* (when the tokenizer sorts points and ``enforce_order``): each new point is strictly greater than the
  previous one in the tokenizer's sort order (``yzx``: y, then z, then x, then the face), the order every training
  sequence has (strictly: duplicates were removed). Tokens arrive as x, y, z, b while the priority can differ, so a
  value is allowed when *some* completion of the point can still be greater; when none can, only EOS is allowed.

Then temperature (0 = greedy), top-k and top-p pick the token with a seeded ``torch.Generator``.

Each slot chooses among its role's tokens only (coordinates and EOS at x slots, coordinates at y/z, faces at b): the
grammar masks every other token, so a draw over the role's tokens is a draw over the masked vocabulary, at a cost that
does not grow with the vocabulary (65 of 11k entries at three slots in four; one uniform per draw). A model with the
role-factored head (``GeneratorConfig.head = "role"``) forwards without logits and computes only those rows
(``hidden @ W[rows].T``), so its draws are the full head's.

Long clouds: the model sees at most ``window`` tokens (its training window). When the context would exceed it, the
sampler restarts the context at a point boundary so that the last ``keep`` tokens or fewer remain, re-encoding them in
one forward (same absolute positions, the condition kept): exactly the view a training window starting there has.
With ``use_kv_cache=False`` the same contexts are recomputed in full at every step (the benchmark's baseline).

Sampling never records autograd (it runs under ``torch.no_grad``): a decode graph kept alive across tens of thousands of
steps would hold every activation (~85 GB for a 40k-token base avatar). ``static_step`` decodes a whole point at a time,
x, y, z and face, with four of the model's fixed-shape steps (:meth:`~avp.models.generator.PointGenerator.decode_step`:
the KV cache's storage under a mask, on a CPU a view of it up to the next ``ATTEND_BUCKET`` slots, positions and cache
slots as device tensors), each fused with its slot's choice (the role's logits, the grammar and order masks, the draw
from a uniform drawn before the point: :func:`_next_tokens`, the same code the eager loop runs), and checks for the end
of the batch only every ``EOS_CHECK_EVERY`` tokens, so a point holds no host/device synchronisation; ``compile`` runs
that point step through ``torch.compile`` (inductor; on CUDA with ``mode="reduce-overhead"``: CUDA graphs), one call per
point instead of one per token. The first forward, the last, the re-encode after a window slide and the few tokens until
the next point boundary stay eager. Either switch changes hidden states in the last bits (sums over the masked storage,
fused kernels), which can flip a near-tied draw: off by default, and the default path is the eager one whose samples the
tests pin.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from avp.device import ACCELERATOR
from avp.models.generator import GeneratorOutput, point_features, role_rows
from avp.models.tokenizer import PointTokenizer, dequantize_levels
from avp.types import TensorContainer

EOS_CHECK_EVERY = 64
"""With ``static_step``: tokens between two checks whether every cloud of the batch has ended (a host sync each).
Finished clouds emit PAD meanwhile, so the samples do not depend on it; at most this many steps are wasted."""
ATTEND_BUCKET = 64
"""With ``static_step`` on a CPU: the step attends over the cache's first multiple of this many slots that holds the
context, not its whole storage (the cache reads of a batch grow with the window otherwise). CUDA graphs attend over the
whole storage (one recorded graph)."""
_COMPILED: dict[tuple, Callable[..., tuple]] = {}  # compiled point steps: model class, mode, batch, cache dtype, head


@dataclass
class SamplingConfig:
    """How to sample (defaults: plain sampling at temperature 1 with all masks)."""

    temperature: float = 1.0
    """Softmax temperature; 0 picks the most likely allowed token (greedy)."""
    top_k: int = 0
    """Keep only the k most likely allowed tokens (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1: all)."""
    role_temperature: tuple[float, float, float, float] | None = None
    """Temperatures of the x, y, z and face slots (None: ``temperature`` at every slot; an extension of ours).
    Overrides ``temperature`` where given (``temperature`` 0, greedy, still overrides everything). Measured at toy
    scale (docs/benchmark/EXPERIMENTS.md, exp9): sharper coordinates bring points nearer the teacher but lengthen the
    clouds (points are sorted, and sharper steps sweep the head more slowly), whichever axes are sharpened."""
    eos_temperature: float | None = None
    """Temperature of the stop decision alone (None: ``temperature``; an extension of ours). At an x slot the model
    chooses between EOS and the next point's x: with ``eos_temperature`` the slot stops with EOS's probability at that
    temperature and otherwise draws x from the coordinates at the slot's temperature (top-k / top-p apply to them).
    Ignored when ``temperature`` is 0 (greedy). Measured (exp9): at coordinate temperatures below 1 the clouds still
    grow longer than the data's with EOS at 1, since the sweep, not the stop probability, sets their length."""
    max_points: int = 10000
    """Stop after this many points (the cloud is then returned without EOS, ``finished = False``)."""
    min_points: int = 1
    """EOS is not allowed before this many points (unless the order leaves no possible next point)."""
    enforce_order: bool = True
    """Each point must follow the previous one in the tokenizer's sort order (ignored for ``order='random'``)."""
    window: int = 12000
    """Most tokens the model attends to (its training window); longer clouds slide the context."""
    keep: int = 0
    """Tokens kept when the context slides (0: half the window); a smaller value slides less often."""
    use_kv_cache: bool = True
    """Decode with the KV cache (False recomputes every context in full: the benchmark baseline)."""
    kv_cache_dtype: Literal["auto", "bfloat16"] = "auto"
    """Dtype the KV cache stores keys and values in, and attention runs in: ``auto`` as the model computes them
    (fp32, or bf16 under autocast); ``bfloat16`` halves the bytes every decode step reads from the cache, which is
    what batched sampling of long clouds spends its time on (BENCHMARKS.md), at the cost of bf16 attention: hidden
    states change in the third decimal, so near-tied draws can differ from the fp32 cache's."""
    bind_nearest: int = 0
    """Restrict each point's face token to the ``k`` faces whose centres (on the subject's canonical mesh) are
    nearest to the point just sampled (0: any face, the paper's setting). An extension of ours: it keeps a point from
    being bound to a far-away triangle, which would make it fly off under animation, when the model has seen too few
    examples to learn the binding (toy-scale training); needs the face centres at sampling time."""
    guidance: float = 1.0
    """Classifier-free guidance scale ``w`` (1: plain conditional sampling, the paper's setting). Each slot's logits
    are ``l_null + w (l_cond - l_null)``, with ``l_null`` from the generator's learned null condition (trained with
    ``condition.guidance_dropout > 0``): ``w > 1`` follows the portrait more closely. An extension of ours; doubles
    the batch the Transformer runs."""
    draws: int = 1
    """Clouds drawn per condition and merged into one (1: a single draw, the paper's setting; an extension of ours):
    the union of ``draws`` clouds thinned by farthest-point sampling to the mean point count of the draws, re-sorted,
    its hidden states teacher-forced (:mod:`avp.models.draws`). Costs ``draws`` times the sampling."""
    static_step: bool = False
    """Decode whole points with four of the model's fixed-shape steps, each fused with its slot's choice (the KV
    cache's storage under a mask, on a CPU up to the next ``ATTEND_BUCKET`` slots; no host syncs inside a point,
    end-of-batch checks every ``EOS_CHECK_EVERY`` tokens). Fewer, larger operations than the eager step; hidden states
    differ from it in the last bits, so a near-tied draw can differ. Needs the KV cache."""
    compile: bool = False
    """Run the fixed-shape point step (implies ``static_step``) through ``torch.compile``: inductor, on CUDA with
    ``mode="reduce-overhead"`` (CUDA graphs). The first sample at a new batch size compiles (about a minute on 2 CPU
    cores). Off by default until measured on a GPU; on a CPU see BENCHMARKS.md for what it buys."""

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling: temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"sampling: need top_k >= 0 and 0 < top_p <= 1, got {self.top_k}, {self.top_p}")
        if self.role_temperature is not None and (len(self.role_temperature) != 4
                                                   or not all(t > 0 for t in self.role_temperature)):
            raise ValueError(f"sampling: role_temperature must be 4 temperatures > 0 (x, y, z, face) or null, got "
                             f"{self.role_temperature}")
        if self.eos_temperature is not None and not self.eos_temperature > 0:
            raise ValueError(f"sampling: eos_temperature must be > 0 or null, got {self.eos_temperature}")
        if self.max_points < 1 or not 0 <= self.min_points <= self.max_points:
            raise ValueError(f"sampling: need max_points >= 1 and 0 <= min_points <= max_points, got "
                             f"{self.max_points}, {self.min_points}")
        if self.window < 8:
            raise ValueError(f"sampling: window must be at least 8 tokens (two points), got {self.window}")
        if self.keep and not 4 <= self.keep < self.window:
            raise ValueError(f"sampling: keep must be in [4, window) or 0, got {self.keep}")
        if self.draws < 1:
            raise ValueError(f"sampling: draws must be >= 1, got {self.draws}")
        if self.bind_nearest < 0:
            raise ValueError(f"sampling: bind_nearest must be >= 0, got {self.bind_nearest}")
        if not self.guidance >= 0:
            raise ValueError(f"sampling: guidance must be >= 0 (1: no guidance), got {self.guidance}")
        if self.kv_cache_dtype not in ("auto", "bfloat16"):
            raise ValueError(f"sampling: kv_cache_dtype must be 'auto' or 'bfloat16', got {self.kv_cache_dtype!r}")
        if (self.static_step or self.compile) and not self.use_kv_cache:
            raise ValueError("sampling: static_step and compile decode with the KV cache (use_kv_cache: true)")


@dataclass
class SampleOutput(TensorContainer):
    """Sampled clouds of a batch of ``B`` conditions (``N`` = the largest point count)."""

    tokens: Tensor
    """``[B, L]`` long: ``BOS x y z b … EOS`` then PAD (no EOS when the cloud stopped at ``max_points``)."""
    lengths: Tensor
    """``[B]`` long, tokens up to and including EOS (or the last b token)."""
    points: Tensor
    """``[B, N, 3]`` dequantised canonical points (bin centres), zeros on padding."""
    binding: Tensor
    """``[B, N]`` long face indices, 0 on padding."""
    mask: Tensor
    """``[B, N]`` bool, True for real points."""
    n_points: Tensor
    """``[B]`` long points per cloud."""
    finished: Tensor
    """``[B]`` bool, True when the model emitted EOS (False: stopped at ``max_points``)."""
    hidden: Tensor
    """``[B, L, D]`` final hidden state at every input position (from the forward that consumed that token)."""

    @property
    def point_hidden(self) -> Tensor:
        """``[B, N, 4, D]`` the decoder's per-point features (hidden states at each point's 4 input positions)."""
        return point_features(self.hidden, self.n_points)


def _aligned_start(pos: int, keep: int) -> int:
    """Smallest point-boundary position ``1 + 4k`` with at most ``keep`` tokens from it through ``pos``."""
    lowest = pos + 1 - keep
    return 1 + 4 * max(0, -(-(lowest - 1) // 4))


def context_windows(n_inputs: int, window: int, keep: int = 0) -> list[tuple[int, int, int]]:
    """How :func:`sample` slides its context over input positions ``0 .. n_inputs - 1``.

    Returns ``(start, first, last)`` groups: inputs ``first .. last`` are all predicted with the context that begins
    at position ``start`` (``start <= first``; ``start`` is 0 or a point boundary ``1 + 4k``).
    """
    keep = keep or window // 2
    groups = []
    start = first = 0
    while first < n_inputs:
        last = min(start + window - 1, n_inputs - 1)
        groups.append((start, first, last))
        first = last + 1
        start = _aligned_start(first, keep)
    return groups


def teacher_forced(model: torch.nn.Module, condition: Tensor, tokens: Tensor, window: int, keep: int = 0,
                   keep_logits: bool = True) -> GeneratorOutput:
    """Teacher-forced forward of whole sequences with exactly the contexts :func:`sample` would use.

    ``tokens [B, L]`` (``BOS …``) -> logits ``[B, L, vocab]`` (``[B, L, 0]`` with ``keep_logits=False``: long clouds
    have large logits) and hidden ``[B, L, D]`` at every input position. Sequences that fit the window take one
    forward; longer ones one forward per context (:func:`context_windows`). Gradients flow if enabled.
    """
    logits, hidden = [], []
    for start, first, last in context_windows(tokens.shape[1], window, keep):
        out = model(tokens[:, start : last + 1], condition, torch.arange(start, last + 1, device=tokens.device),
                    return_logits=keep_logits)
        hidden.append(out.hidden[:, first - start :])
        logits.append(out.logits[:, first - start :])
    return GeneratorOutput(logits=torch.cat(logits, dim=1), hidden=torch.cat(hidden, dim=1))


def order_threshold(prev: Tensor, has_prev: Tensor, cur: Tensor, role: int, priority: tuple[int, ...],
                    maxima: tuple[int, int, int, int]) -> Tensor:
    """Smallest allowed value ``[B]`` of component ``role`` (0..3 = x, y, z, face) so that the point being sampled
    can still end up strictly greater than ``prev`` in the lexicographic order ``priority``.

    ``prev [B, 4]`` is the previous point, ``cur [B, 4]`` the components sampled so far (those before ``role``).
    Returns ``maxima[role] + 1`` where no value works (only EOS can follow).
    """
    B = prev.shape[0]
    device = prev.device
    tied = has_prev.clone()  # False = already free (no previous point or already greater)
    impossible = torch.zeros(B, dtype=torch.bool, device=device)
    k_index = priority.index(role)
    for k in priority[:k_index]:
        if k < role:  # sampled: compare
            greater, less = cur[:, k] > prev[:, k], cur[:, k] < prev[:, k]
            impossible |= tied & less
            tied &= ~(greater | less)
        else:  # still to come: it can be made greater unless the previous value is the maximum
            tied &= prev[:, k] >= maxima[k]
    # with the prefix tied, equality here is allowed only if the rest can still make the point greater
    rest_ok = torch.zeros(B, dtype=torch.bool, device=device)
    rest_tied = torch.ones(B, dtype=torch.bool, device=device)
    for k in priority[k_index + 1:]:
        if k < role:
            greater, less = cur[:, k] > prev[:, k], cur[:, k] < prev[:, k]
            rest_ok |= rest_tied & greater
            rest_tied &= ~(greater | less)
        else:
            can = prev[:, k] < maxima[k]
            rest_ok |= rest_tied & can
            rest_tied &= ~can
    tight = torch.where(rest_ok, prev[:, role], prev[:, role] + 1)
    thr = torch.where(tied, tight, torch.zeros_like(tight))
    return torch.where(impossible, torch.full_like(thr, maxima[role] + 1), thr)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """``logits [B, V]`` (disallowed already -inf) with all but the top-k / top-p nucleus set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # tokens after the nucleus is complete (the first always stays)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def slot_probs(logits: Tensor, config: SamplingConfig, role: int, eos_id: int | None = None) -> Tensor:
    """Probabilities ``[B, V]`` of the next token from ``logits [B, V]`` (disallowed already -inf) at a sampled slot
    of ``role`` (0..3: x, y, z, face), at the slot's temperature (``role_temperature`` or ``temperature``).

    With ``eos_id`` (an x slot) and ``config.eos_temperature`` set: EOS keeps its probability at ``eos_temperature``
    and the rest of the mass goes to the other allowed tokens at the slot's temperature after top-k / top-p;
    otherwise the whole row at the slot's temperature after top-k / top-p.
    """
    temperature = config.temperature if config.role_temperature is None else config.role_temperature[role]
    if eos_id is None or config.eos_temperature is None:
        return filter_logits(logits / temperature, config.top_k, config.top_p).softmax(-1)
    p_eos = (logits / config.eos_temperature).softmax(-1)[:, eos_id]  # [B]
    rest = logits.clone()
    rest[:, eos_id] = float("-inf")
    # a row where only EOS is allowed has no other token (NaN softmax) and p_eos = 1
    q = filter_logits(rest / temperature, config.top_k, config.top_p).softmax(-1).nan_to_num(0.0)
    probs = q * (1 - p_eos)[:, None]
    probs[:, eos_id] = p_eos
    return probs


def _restrict_to_nearest_faces(allowed: Tensor, point: Tensor, face_centers: Tensor, k: int) -> Tensor:
    """``allowed [B, F]`` (a b slot's faces) narrowed to the ``k`` faces nearest to ``point [B, 3]``; a row whose
    order constraint leaves none of them allowed keeps its unrestricted set."""
    k = min(k, face_centers.shape[1])
    nearest = torch.cdist(point[:, None].to(face_centers.dtype), face_centers)[:, 0].topk(k, largest=False).indices
    near = torch.zeros_like(allowed)
    near.scatter_(1, nearest, True)
    narrowed = allowed & near
    return torch.where(narrowed.any(-1, keepdim=True), narrowed, allowed)


def _guide(logits: Tensor, B: int, scale: float) -> Tensor:
    """Classifier-free guidance: ``logits [2B, R]`` (conditioned rows, then their null-conditioned copies) ->
    ``l_null + scale (l_cond - l_null)`` ``[B, R]``; ``[B, R]`` (no guidance) is returned as it is."""
    if logits.shape[0] == B:
        return logits
    cond, null = logits[:B], logits[B:]
    return null + scale * (cond - null)


def uniforms(n: int, generator: torch.Generator | Sequence[torch.Generator] | None,
             device: torch.device) -> Tensor:
    """``[n]`` float64 uniforms, one per row: from the one generator (or the global one), or with ``n`` generators each
    row's from its own (so that a row's draws do not depend on the other rows of its batch)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if len(generator) != n:
        raise ValueError(f"sampling: {len(generator)} generators for {n} rows")
    return torch.cat([torch.rand(1, generator=g, device=device, dtype=torch.float64) for g in generator])


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """``[B]`` long: the token of each row of ``probs [B, V]`` at which its cumulative sum passes ``u [B]`` (uniforms in
    [0, 1)); never a zero-probability token. Pure tensor code (it runs inside the compiled decode step)."""
    cdf = probs.double().cumsum(-1)
    target = u * cdf[:, -1]  # the cumulative sum of float probabilities may end a hair below 1
    index = torch.searchsorted(cdf, target[:, None], right=True).squeeze(-1)
    # never land on a zero-probability token (masked or filtered) at the edges of the cumulative sum
    index = index.clamp(max=probs.shape[1] - 1)
    allowed = probs > 0
    last = allowed.shape[1] - 1 - allowed.flip(-1).long().argmax(-1)
    return torch.where(allowed.gather(1, index[:, None]).squeeze(-1), index, last)


def draw_tokens(probs: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
    """One token per row of ``probs [B, V]`` by inverse CDF with one uniform per row (:func:`uniforms`, then
    :func:`inverse_cdf`). One uniform, not one random number per vocabulary entry as ``torch.multinomial`` draws: the
    cost of a draw does not grow with the vocabulary, and the draw depends on the allowed tokens' probabilities only,
    so restricting ``probs`` to a slot's tokens (zeros removed) draws the same token."""
    return inverse_cdf(probs, uniforms(probs.shape[0], generator, probs.device))


@dataclass(frozen=True)
class _Slots:
    """What a sample call's slots may choose and how (fixed for the call; constants to ``torch.compile``)."""

    config: SamplingConfig
    levels: int
    n_faces: int
    eos_id: int
    pad_id: int
    enforce: bool
    priority: tuple[int, ...]
    maxima: tuple[int, int, int, int]
    batch: int
    """Conditions ``B`` (the model runs ``2B`` rows under guidance: the conditioned ones first)."""


def _next_tokens(slots: _Slots, role: int, logits: Tensor, u: Tensor | None, prev: Tensor, cur: Tensor,
                 n_points: Tensor, done: Tensor, face_centers: Tensor | None, bounds: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Choose the token of one slot of ``role`` for every cloud and update the clouds' state (pure tensor code: the
    eager loop calls it as it is, the compiled step inside its graph).

    Args:
        logits: ``[B_run, R]`` the role's logits (its ``R`` tokens in vocabulary order: coordinates, then EOS at x).
        u: ``[B]`` float64 uniforms of the draw (None: greedy).
        prev, cur: ``[B, 4]`` long, the previous point and the components sampled so far.
        n_points: ``[B]`` long points so far; done: ``[B]`` bool, clouds that emitted EOS.
        face_centers: ``[B, F, 3]`` with ``bind_nearest``, else None; bounds: ``[2, 3]`` the tokenizer's bounds then.

    Returns:
        ``(token [B], done, cur, prev, n_points)``, the state after the slot (new tensors).
    """
    c, L = slots.config, slots.levels
    B = slots.batch
    if slots.enforce:
        thr = order_threshold(prev, n_points > 0, cur, role, slots.priority, slots.maxima)
    else:
        thr = torch.zeros(B, dtype=torch.long, device=logits.device)
    # the choice is made among the role's R tokens only (every other token is masked by the grammar): local index j
    # is the role's j-th token in vocabulary order, so argmax ties and cumulative sums are those of the full
    # vocabulary under the mask
    R = logits.shape[-1]
    allowed = torch.arange(R, device=logits.device)[None, :] >= thr[:, None]  # [B, R]
    if role == 3 and c.bind_nearest > 0:
        point = dequantize_levels(cur[:, :3], bounds, L)
        allowed = _restrict_to_nearest_faces(allowed, point, face_centers, c.bind_nearest)
    if role == 0:  # x slots end with EOS (local index L)
        eos_ok = (n_points >= c.min_points) | (thr > slots.maxima[0])
        allowed = torch.cat([allowed[:, :L], eos_ok[:, None]], -1)
    logits = _guide(logits.float(), B, c.guidance).masked_fill(~allowed, float("-inf"))  # [B, R]
    if u is None:
        choice = logits.argmax(-1)
    else:
        choice = inverse_cdf(slot_probs(logits, c, role, L if role == 0 else None), u)
    if role == 0:
        token = torch.where(choice == L, torch.full_like(choice, slots.eos_id), choice)
    else:
        token = choice + L if role == 3 else choice
    token = torch.where(done, torch.full_like(token, slots.pad_id), token)
    done = done | (token == slots.eos_id)
    cur = torch.cat([cur[:, :role], (token - L if role == 3 else token)[:, None], cur[:, role + 1 :]], -1)
    if role == 3:
        live = ~done
        prev = torch.where(live[:, None], cur, prev)
        n_points = n_points + live.long()
    return token, done, cur, prev, n_points


def attended_slots(context: int, window: int) -> int:
    """Cache slots the fixed-shape step attends over on a CPU with ``context`` tokens in a ``window``-slot cache: the
    next multiple of :data:`ATTEND_BUCKET`, at most the window."""
    return min(-(-context // ATTEND_BUCKET) * ATTEND_BUCKET, window)


def _attended(state: list[Tensor], length: int) -> list[Tensor]:
    """:meth:`~avp.models.generator.PointGenerator.decode_state` with each self-attention cache cut to its first
    ``length`` slots (views: the step still writes into the storage), marked dynamic in that length so that one
    compiled graph serves every length."""
    views = []
    for i, t in enumerate(state):
        if i % 4 < 2:  # a block's self-attention keys and values; its condition's stay whole
            t = t[:, :, :length]
            torch._dynamo.maybe_mark_dynamic(t, 2)
        views.append(t)
    return views


def _fused_point(model: torch.nn.Module, token: Tensor, position: Tensor, slot: Tensor, state: list[Tensor],
                 weights: list[Tensor | None], rows: list[Tensor | slice], slots: _Slots, u: Tensor | None,
                 prev: Tensor, cur: Tensor, n_points: Tensor, done: Tensor, face_centers: Tensor | None,
                 bounds: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One point: four fixed-shape decoding steps (the model's :meth:`decode_step`), each fused with the choice of its
    slot (x, y, z, face: the role's logits, then :func:`_next_tokens`), each step's input the token the previous one
    chose.

    Args:
        token: ``[B_run, 1]`` the input at ``position`` (the previous point's face token, or BOS), a point boundary.
        position, slot: ``[1]`` long, its position and cache slot; the steps write slots ``slot .. slot + 3``.
        weights: per role, the role head's rows ``[R, D]`` (None: the full head's logits at ``rows[role]``).
        u: ``[4, B]`` float64 uniforms of the four draws (None: greedy).

    Returns:
        ``(hidden [B_run, 4, D], tokens [B, 4], done, cur, prev, n_points)``.
    """
    hiddens, chosen = [], []
    for role in range(4):
        hidden = type(model).decode_step(model, token, position + role, slot + role, state)  # [B_run, D]
        weight = weights[role]
        logits = F.linear(hidden, weight) if weight is not None else model.head_logits(hidden)[:, rows[role]]
        nxt, done, cur, prev, n_points = _next_tokens(slots, role, logits, None if u is None else u[role], prev, cur,
                                                      n_points, done, face_centers, bounds)
        hiddens.append(hidden)
        chosen.append(nxt)
        token = nxt.repeat(token.shape[0] // slots.batch)[:, None]  # guided: the null-conditioned rows' input too
    return torch.stack(hiddens, 1), torch.stack(chosen, 1), done, cur, prev, n_points


def _point_step(model: torch.nn.Module, compiled: bool, device: torch.device, key: tuple) -> Callable[..., tuple]:
    """:func:`_fused_point`, eager or through ``torch.compile`` (once per model class, mode and ``key``: the batch,
    cache dtype and head), as a function with a code object of its own: dynamo keeps compiled graphs and their guards
    per code object, so each key gets a cache with one entry, which never makes a step try another key's graph first
    and never reaches dynamo's recompile limit."""
    if not hasattr(model, "decode_step") or not hasattr(model, "decode_state"):
        raise TypeError(f"sampling: static_step/compile need a model with decode_step and decode_state "
                        f"(PointGenerator), got {type(model).__name__}")
    if not compiled:
        return _fused_point
    mode = "reduce-overhead" if device.type == ACCELERATOR else "default"
    full_key = (type(model), mode, *key)
    if full_key not in _COMPILED:
        own = types.FunctionType(_fused_point.__code__.replace(), _fused_point.__globals__, "_fused_point")
        # on a CPU the graph's kernels are called from C++ (``cpp_wrapper``) rather than Python: a batch-1 step is a
        # few hundred small kernels, and their Python launches cost more than the arithmetic; and one-row matrix
        # products (batch 1) become inductor's own reductions fused with their neighbours (``decompose_mm_pass``)
        # instead of a BLAS call each: 24 per token, each costing more in set-up than in arithmetic (BENCHMARKS.md)
        cpu_options = {"cpp_wrapper": True, "post_grad_fusion_options": {"decompose_mm_pass": {}}}
        compile_args = {"mode": mode} if device.type == ACCELERATOR else {"options": cpu_options}
        _COMPILED[full_key] = torch.compile(own, fullgraph=True, dynamic=False, **compile_args)
    return _COMPILED[full_key]


def sample(
    model: torch.nn.Module,
    condition: Tensor,
    tokenizer: PointTokenizer,
    config: SamplingConfig | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    face_centers: Tensor | None = None,
    null_condition: Tensor | None = None,
) -> SampleOutput:
    """Sample one cloud per condition (under ``torch.no_grad``: nothing returned carries a graph).

    Args:
        model: a :class:`~avp.models.generator.PointGenerator` (anything with its forward and KV-cache API; the
            fixed-shape step of ``static_step`` / ``compile`` also needs ``decode_step`` and ``decode_state``).
        condition: ``[B, C, D]`` condition tokens (``ConditionEncoder`` output).
        tokenizer: the tokenizer the model was trained with.
        config: :class:`SamplingConfig` (default: temperature 1, all masks, 10,000 points at most).
        generator: RNG for the token draws, on the condition's device (None: the global one), or one generator per
            condition (each cloud then draws only from its own: see :func:`draw_tokens`).
        on_step: called as ``on_step(position, max_position)`` after every step (progress bars).
        face_centers: ``[B, F, 3]`` centres of the head model's faces on each subject's canonical mesh; required
            when ``config.bind_nearest > 0``.
        null_condition: ``[B, C, D]`` the learned null condition (classifier-free guidance); required when
            ``config.guidance != 1``.
    """
    config = config or SamplingConfig()
    config.validate()
    if config.guidance != 1 and null_condition is None:
        raise ValueError(f"sampling: guidance={config.guidance} needs the null condition (a generator trained with "
                         "condition.guidance_dropout > 0)")
    if config.guidance != 1 and null_condition.shape != condition.shape:
        raise ValueError(f"sampling: null_condition must have the condition's shape {tuple(condition.shape)}, got "
                         f"{tuple(null_condition.shape)}")
    with torch.no_grad():
        return _sample(model, condition, tokenizer, config, generator, on_step, face_centers,
                       null_condition if config.guidance != 1 else None)


def _sample(model: torch.nn.Module, condition: Tensor, tokenizer: PointTokenizer, config: SamplingConfig,
            generator: torch.Generator | Sequence[torch.Generator] | None, on_step: Callable[[int, int], None] | None,
            face_centers: Tensor | None, null_condition: Tensor | None = None) -> SampleOutput:
    B = condition.shape[0]
    # guidance runs the conditioned rows and their null-conditioned copies as one batch: rows B.. are the copies
    guided = null_condition is not None
    B_run = 2 * B if guided else B
    if guided:
        condition = torch.cat([condition, null_condition.to(condition)])
    device = condition.device
    L, F_ = tokenizer.levels, tokenizer.n_faces
    if config.bind_nearest > 0 and (face_centers is None or face_centers.shape != (B, F_, 3)):
        got = None if face_centers is None else tuple(face_centers.shape)
        raise ValueError(f"sampling: bind_nearest={config.bind_nearest} needs face_centers [B, F, 3] = [{B}, {F_}, 3], "
                         f"got {got}")
    enforce = config.enforce_order and tokenizer.sorted
    priority = tokenizer.priority if enforce else (0, 1, 2, 3)
    maxima = (L - 1, L - 1, L - 1, F_ - 1)
    keep = config.keep or config.window // 2
    last_input = 4 * config.max_points  # position of the last b token a cloud may have
    total = last_input + 2
    static = config.static_step or config.compile
    role_head = getattr(getattr(model, "config", None), "head", "full") == "role"
    cache_dtype = torch.bfloat16 if config.kv_cache_dtype == "bfloat16" else None
    point_step = _point_step(model, config.compile, device, (B_run, cache_dtype, role_head)) if static else None
    graphs = config.compile and device.type == ACCELERATOR
    slots = _Slots(config=config, levels=L, n_faces=F_, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                   enforce=enforce, priority=tuple(priority), maxima=maxima, batch=B)
    bounds = tokenizer.bounds.to(device) if config.bind_nearest > 0 else None
    greedy = config.temperature == 0

    tokens = torch.full((B, total), tokenizer.pad_id, dtype=torch.long, device=device)
    tokens[:, 0] = tokenizer.bos_id
    hidden = torch.zeros(0)  # allocated by the first forward (its dtype and width)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    n_points = torch.zeros(B, dtype=torch.long, device=device)
    prev = torch.zeros(B, 4, dtype=torch.long, device=device)
    cur = torch.zeros(B, 4, dtype=torch.long, device=device)
    rows = [role_rows(r, L, F_, device) for r in range(4)]  # the vocabulary rows a slot of each role chooses from
    # the role head's output rows per role, gathered once (the x rows are not contiguous: EOS comes last)
    role_weights = [model.head.weight[r] for r in rows] if role_head else [None] * 4
    # the static step's position and cache slot live on the device: advancing them is a kernel, not a host sync
    step_pos = torch.zeros(1, dtype=torch.long, device=device)
    step_slot = torch.zeros(1, dtype=torch.long, device=device)
    step_token = torch.zeros(B_run, 1, dtype=torch.long, device=device)
    state: list[Tensor] = []
    attended: list[Tensor] = []  # the step's view of the caches: the storage's first attended_length slots
    attended_length = window_slots = 0

    was_training = model.training
    model.eval()
    if config.use_kv_cache and config.kv_cache_dtype == "bfloat16":
        model.set_kv_cache(B_run, config.window, torch.bfloat16)
    elif config.use_kv_cache:
        model.set_kv_cache(B_run, config.window)
    # once the compiled point step has run with dynamo's guards at the current shapes, the inputs they checked
    # (shapes, dtypes, constants) stay as they were until the attended length changes or an eager forward runs: the
    # steps in between skip the guards (a sizeable share of a CPU step)
    guarded = False
    try:
        ctx_start = 0  # first position of the model's context
        cached_to = 0  # with the cache: positions ctx_start .. cached_to - 1 are in it
        pos = 0  # position of the next input token
        while True:
            role = pos % 4  # the role of the token chosen at pos + 1 (position p > 0 has role (p - 1) % 4)
            # ---- forward the input token at `pos` (after a slide, the kept context is re-encoded with it)
            if pos - ctx_start + 1 > config.window:
                ctx_start = _aligned_start(pos, keep)
                if config.use_kv_cache:
                    model.reset_kv_cache(ctx_start)
                    cached_to = ctx_start
            first = cached_to if config.use_kv_cache else ctx_start
            # a whole point continuing the cache: four fixed-shape steps, each fused with its slot's choice
            if (static and first == pos and pos % 4 == 0 and 0 < pos and pos + 3 < last_input
                    and pos + 4 - ctx_start <= config.window):
                # the four draws' uniforms, in the order the one-token loop draws them
                u = None if greedy else torch.stack([uniforms(B, generator, device) for _ in range(4)])
                if not graphs:  # attend over the cache up to the next multiple of ATTEND_BUCKET slots
                    length = attended_slots(pos + 4 - ctx_start, window_slots)
                    if length != attended_length:  # new shapes: the next step checks its guards
                        attended, attended_length = _attended(state, length), length
                        guarded = False
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                # a copy into fixed strides (a slice's depend on max_points); guided, into both halves at once
                step_token.view(B_run // B, B, 1).copy_(tokens[:, pos : pos + 1])
                skip = (torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if guarded
                        else contextlib.nullcontext())
                try:
                    with skip:
                        point_hidden, chosen, done, cur, prev, n_points = point_step(
                            model, step_token, step_pos, step_slot, attended, role_weights, rows, slots, u, prev,
                            cur, n_points, done, face_centers, bounds)
                except Exception as e:
                    if not config.compile:
                        raise
                    raise RuntimeError(f"sampling: compile=True could not compile or run the decode step with "
                                       f"torch.compile on {device.type} ({type(e).__name__}: {e}); sample with "
                                       "compile: false (static_step: true keeps the fixed-shape step)") from e
                guarded = config.compile
                if graphs:  # a replay overwrites its outputs: keep the state out of the graphs' memory
                    done, cur, prev, n_points = done.clone(), cur.clone(), prev.clone(), n_points.clone()
                model.advance_kv_cache(4)
                step_pos += 4
                step_slot += 4
                hidden[:, pos : pos + 4] = point_hidden[:B]  # the conditioned rows' (the decoder's features)
                tokens[:, pos + 1 : pos + 5] = chosen
                cached_to = pos + 4
                if on_step is not None:
                    for p in range(pos + 1, pos + 5):
                        on_step(p, last_input)
                pos += 4
                if pos % EOS_CHECK_EVERY == 0 and bool(done.all()):
                    break
                continue
            # ---- one token: the eager forward (the first, the re-encode after a slide, the steps a point step cannot
            # take), then the slot's choice
            u = None if greedy or pos == last_input else uniforms(B, generator, device)
            guarded = False
            positions = torch.arange(first, pos + 1, device=device)
            inputs = tokens[:, first : pos + 1]
            if guided:
                inputs = inputs.repeat(2, 1)
            if role_head:
                out = model(inputs, condition, positions, return_logits=False)
            else:
                out = model(inputs, condition, positions)
            last_hidden = out.hidden[:, -1]
            if static:
                attended_length = 0  # after an eager forward (a slide among them) the point step takes views again
                if not state:
                    state = model.decode_state()
                    window_slots = state[0].shape[2]
                    attended = state
                    if graphs:  # the caches keep their addresses for the whole sample: no copies per replay
                        for t in state:
                            torch._dynamo.mark_static_address(t)
                step_pos.fill_(pos + 1)
                step_slot.fill_(pos + 1 - ctx_start)
            cached_to = pos + 1
            if pos == 0:
                hidden = last_hidden.new_zeros(B, total, last_hidden.shape[-1])
            hidden[:, pos] = last_hidden[:B]  # the conditioned rows' (the decoder's features)
            if pos == last_input:
                break
            logits = F.linear(last_hidden, role_weights[role]) if role_head else out.logits[:, -1][:, rows[role]]
            nxt, done, cur, prev, n_points = _next_tokens(slots, role, logits, u, prev, cur, n_points, done,
                                                          face_centers, bounds)
            tokens[:, pos + 1] = nxt
            pos += 1
            if on_step is not None:
                on_step(pos, last_input)
            if role == 0 and (not static or pos % EOS_CHECK_EVERY == 1) and bool(done.all()):
                break
    finally:
        if config.use_kv_cache:
            model.clear_kv_cache()
        model.train(was_training)

    finished = done
    lengths = torch.where(finished, 4 * n_points + 2, 4 * n_points + 1)
    n_max = int(n_points.max())
    L_out = int(lengths.max())
    tokens = tokens[:, :L_out]
    hidden = hidden[:, :L_out]
    if static and bool(finished.all()):
        # the eager loop stops before consuming the last EOS; the static one may run on: same output either way
        hidden[:, L_out - 1] = 0
    point_rows = tokens[:, 1 : 1 + 4 * n_max].reshape(B, n_max, 4)  # [B, N, 4]
    mask = torch.arange(n_max, device=device)[None, :] < n_points[:, None]
    q = point_rows[..., :3].clamp(0, L - 1)
    points = tokenizer.dequantize(q) * mask[..., None]
    binding = (point_rows[..., 3] - L).clamp(min=0) * mask
    return SampleOutput(tokens=tokens, lengths=lengths, points=points, binding=binding, mask=mask,
                        n_points=n_points, finished=finished, hidden=hidden)

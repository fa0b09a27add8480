"""Point tokenizer: canonical points with face bindings <-> token sequences (DESIGN.md §5).

Vocabulary (``L = levels``, ``F = n_faces``):

- ``0 .. L-1``: quantised coordinates (one token per axis);
- ``L + f``: binding to head-model face ``f`` (``0 <= f < F``);
- ``L + F``: BOS, ``L + F + 1``: EOS, ``L + F + 2``: PAD; ``vocab_size = L + F + 3``.

A cloud of ``N`` points becomes ``BOS x1 y1 z1 b1 … xN yN zN bN EOS`` (``4N + 2`` tokens). Inside a point the tokens
are always x, y, z, b; the *order of the points* is the sort ``order`` names: ``"yzx"`` (the paper's: y first, then
z, then x, ascending, binding breaks ties) or any other permutation of ``"xyz"``, or ``"random"`` (no sort: a fresh
random permutation per call, the ordering ablation). Exact duplicates (all four tokens equal) are removed.

Points are quantised in the box ``bounds`` (``[2, 3]`` lo/hi, the head model's ``canonical_bounds()``) into ``levels``
bins per axis and dequantised to bin centres, so ``decode(encode(p))`` is within half a bin of ``p``. Points outside
the box are clamped to it by default (:meth:`PointTokenizer.count_out_of_box` counts them so training can log it);
with ``strict=True`` they raise. A token sequence longer than a model's context is not the tokenizer's concern:
training cuts it into windows and sampling caps the number of points.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import torch
from torch import Tensor, nn

AXES = "xyz"
SORTED_ORDERS = tuple("".join(p) for p in permutations(AXES))
ORDERS = (*SORTED_ORDERS, "random")
ROLE_NAMES = ("x", "y", "z", "b")


@dataclass
class TokenizerConfig:
    """How points become tokens (the head model supplies the box and the face count)."""

    levels: int = 1024
    """Quantisation levels per axis (the paper uses 1024)."""
    order: str = "yzx"
    """Point order: a permutation of ``xyz`` naming the sort priority (``yzx``: y first, the paper's) or ``random``."""
    strict: bool = False
    """Raise on points outside the box instead of clamping them to it."""


def dequantize_levels(q: Tensor, bounds: Tensor, levels: int) -> Tensor:
    """``q [..., 3]`` integer levels of a ``levels``-level grid over ``bounds [2, 3]`` (lo, hi) -> ``[..., 3]`` bin
    centres (:meth:`PointTokenizer.dequantize`; a function so that a compiled decode step can call it)."""
    lo, hi = bounds
    return lo + (q.to(lo.dtype) + 0.5) / levels * (hi - lo)


class PointTokenizer(nn.Module):
    """Turns canonical point clouds with face bindings into token sequences and back.

    An ``nn.Module`` only so that ``bounds`` is a buffer: it travels with ``.to(device)`` and is stored in checkpoints
    (a model trained in one box keeps decoding in that box even if the head model's bounds change later).
    """

    bounds: Tensor

    def __init__(self, bounds: Tensor, n_faces: int, levels: int = 1024, order: str = "yzx", strict: bool = False):
        super().__init__()
        bounds = torch.as_tensor(bounds, dtype=torch.float32)
        if bounds.shape != (2, 3):
            raise ValueError(f"PointTokenizer: bounds must be [2, 3] (lo, hi), got {tuple(bounds.shape)}")
        if not bool((bounds[1] > bounds[0]).all()):
            raise ValueError(f"PointTokenizer: bounds hi must exceed lo on every axis, got {bounds.tolist()}")
        if int(n_faces) <= 0:
            raise ValueError(f"PointTokenizer: n_faces must be positive, got {n_faces}")
        if int(levels) < 2:
            raise ValueError(f"PointTokenizer: levels must be at least 2, got {levels}")
        if order not in ORDERS:
            raise ValueError(f"PointTokenizer: order must be one of {ORDERS}, got {order!r}")
        if int(levels) ** 3 * int(n_faces) >= 2**62:
            raise ValueError(f"PointTokenizer: levels={levels} with n_faces={n_faces} overflows the int64 sort key")
        self.register_buffer("bounds", bounds.clone())
        self.n_faces = int(n_faces)
        self.levels = int(levels)
        self.order = order
        self.strict = bool(strict)
        self.bos_id = self.levels + self.n_faces
        self.eos_id = self.bos_id + 1
        self.pad_id = self.bos_id + 2
        self.vocab_size = self.levels + self.n_faces + 3

    @classmethod
    def from_config(cls, config: TokenizerConfig, bounds: Tensor, n_faces: int) -> PointTokenizer:
        return cls(bounds, n_faces, levels=config.levels, order=config.order, strict=config.strict)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, n_faces={self.n_faces}, order={self.order!r}, strict={self.strict}"

    @property
    def sorted(self) -> bool:
        """True when points are sorted (any order but ``random``): sampling can then enforce the order."""
        return self.order != "random"

    @property
    def priority(self) -> tuple[int, int, int, int]:
        """Sort priority as component indices into ``(x, y, z, b)``: ``yzx`` -> ``(1, 2, 0, 3)``."""
        if not self.sorted:
            raise ValueError("PointTokenizer: order 'random' has no sort priority")
        return (*(AXES.index(a) for a in self.order), 3)

    @property
    def bin_size(self) -> Tensor:
        """``[3]`` width of one quantisation bin per axis (metres)."""
        return (self.bounds[1] - self.bounds[0]) / self.levels

    # ----------------------------------------------------------------------------------------------- quantisation
    def out_of_box(self, points: Tensor) -> Tensor:
        """``points [..., 3] -> [...]`` bool, True where a point lies outside the box (it would be clamped)."""
        lo, hi = self.bounds.to(points.dtype)
        return ((points < lo) | (points > hi)).any(-1)

    def count_out_of_box(self, points: Tensor, mask: Tensor | None = None) -> Tensor:
        """``points [B, N, 3]``, ``mask [B, N]`` -> ``[B]`` long: how many real points :meth:`quantize` clamps."""
        outside = self.out_of_box(points)
        if mask is not None:
            outside = outside & mask
        return outside.sum(-1)

    def quantize(self, points: Tensor) -> Tensor:
        """``points [..., 3]`` metres -> ``[..., 3]`` long in ``0..levels-1`` (clamped, or an error when strict)."""
        if not torch.isfinite(points).all():
            raise ValueError("PointTokenizer.quantize: points contain NaN or inf")
        if self.strict:
            outside = self.out_of_box(points)
            if bool(outside.any()):
                bad = points[outside]
                raise ValueError(
                    f"PointTokenizer (strict): {int(outside.sum())} point(s) lie outside the box "
                    f"lo={self.bounds[0].tolist()} hi={self.bounds[1].tolist()}, e.g. {bad[0].tolist()}; "
                    "enlarge the head model's canonical bounds or use strict=False to clamp"
                )
        lo, hi = self.bounds.to(points.dtype)
        unit = (points - lo) / (hi - lo)
        return (unit * self.levels).floor().long().clamp(0, self.levels - 1)

    def dequantize(self, q: Tensor) -> Tensor:
        """``q [..., 3]`` integer levels -> ``[..., 3]`` bin centres in metres."""
        return dequantize_levels(q, self.bounds, self.levels)

    # ---------------------------------------------------------------------------------------------------- encode
    def _check_binding(self, binding: Tensor, where: str) -> None:
        if binding.numel() == 0:
            return
        lo, hi = int(binding.min()), int(binding.max())
        if lo < 0 or hi >= self.n_faces:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"PointTokenizer: {where} has face index {bad} outside the head model's faces [0, {self.n_faces}); "
                "the cloud was bound to a different head model or is corrupt"
            )

    def sort_points(self, q: Tensor, binding: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``q [N, 3]`` levels and ``binding [N]`` -> ``[M, 4]`` unique ``(x, y, z, b)`` rows in sequence order."""
        L, F = self.levels, self.n_faces
        key = torch.zeros_like(q[:, 0])  # int64 sort key: priority axes then binding, lexicographic
        if self.sorted:
            for axis in self.priority[:3]:
                key = key * L + q[:, axis]
        else:
            key = (q[:, 0] * L + q[:, 1]) * L + q[:, 2]
        key = key * F + binding
        key = torch.unique(key, sorted=True)
        b = key % F
        rest = key // F
        comps = {}
        axes = self.priority[:3] if self.sorted else (0, 1, 2)
        for axis in reversed(axes):
            comps[axis] = rest % L
            rest = rest // L
        rows = torch.stack([comps[0], comps[1], comps[2], b], dim=-1)  # [M, 4]
        if not self.sorted:
            perm = torch.randperm(rows.shape[0], generator=generator, device="cpu").to(rows.device)
            rows = rows[perm]
        return rows

    def points_to_tokens(self, rows: Tensor) -> Tensor:
        """``rows [M, 4]`` (x, y, z levels, face) -> ``[4M]`` token ids (no BOS/EOS)."""
        tokens = rows.clone()
        tokens[:, 3] = tokens[:, 3] + self.levels
        return tokens.reshape(-1)

    def encode(self, points: Tensor, binding: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``points [N, 3]`` canonical metres, ``binding [N]`` face ids -> ``tokens [4M + 2]`` (``M <= N``, no dups).

        ``generator`` seeds the permutation when ``order="random"`` (ignored otherwise).
        """
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ValueError(f"PointTokenizer.encode: points must be [N, 3], got {tuple(points.shape)}")
        if binding.shape != points.shape[:1]:
            raise ValueError(f"PointTokenizer.encode: binding must be [N] = [{points.shape[0]}], "
                             f"got {tuple(binding.shape)}")
        if points.shape[0] == 0:
            raise ValueError("PointTokenizer.encode: the cloud is empty (a sequence needs at least one point)")
        binding = binding.long()
        self._check_binding(binding, "the cloud")
        rows = self.sort_points(self.quantize(points), binding, generator)
        body = self.points_to_tokens(rows)
        bos = body.new_tensor([self.bos_id])
        eos = body.new_tensor([self.eos_id])
        return torch.cat([bos, body, eos])

    def encode_batch(
        self, means: Tensor, binding: Tensor, mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Batched :meth:`encode` with PAD on the right.

        Args:
            means: ``[B, N, 3]`` canonical points (``AvatarBatch.teacher.means``).
            binding: ``[B, N]`` face ids.
            mask: ``[B, N]`` bool, True for real points (None: all real).

        Returns:
            ``tokens [B, Lmax]`` long (``BOS … EOS PAD …``) and ``lengths [B]`` long (``4M_i + 2``, PAD excluded).
        """
        if means.ndim != 3 or means.shape[-1] != 3:
            raise ValueError(f"PointTokenizer.encode_batch: means must be [B, N, 3], got {tuple(means.shape)}")
        if binding.shape != means.shape[:2]:
            raise ValueError(f"PointTokenizer.encode_batch: binding must be [B, N] = {list(means.shape[:2])}, "
                             f"got {list(binding.shape)}")
        if mask is None:
            mask = torch.ones(means.shape[:2], dtype=torch.bool, device=means.device)
        seqs = []
        for i in range(means.shape[0]):
            keep = mask[i].bool()
            if not bool(keep.any()):
                raise ValueError(f"PointTokenizer.encode_batch: sample {i} of the batch has an empty cloud")
            try:
                seqs.append(self.encode(means[i][keep], binding[i][keep], generator))
            except ValueError as err:
                raise ValueError(f"sample {i} of the batch: {err}") from err
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=means.device)
        tokens = torch.full((len(seqs), int(lengths.max())), self.pad_id, dtype=torch.long, device=means.device)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
        return tokens, lengths

    # ---------------------------------------------------------------------------------------------------- decode
    def decode_rows(self, tokens: Tensor) -> Tensor:
        """``tokens [L]`` -> ``[N, 4]`` long rows ``(x, y, z levels, face index)``.

        Accepts a sequence with or without the leading BOS; reading stops at the first EOS (or PAD, or the end).
        Raises on a token in the wrong role or an incomplete last point, naming the position.
        """
        if tokens.ndim != 1:
            raise ValueError(f"PointTokenizer.decode: tokens must be [L], got {tuple(tokens.shape)}")
        tokens = tokens.long()
        start = 1 if tokens.numel() > 0 and int(tokens[0]) == self.bos_id else 0
        body = tokens[start:]
        stop = ((body == self.eos_id) | (body == self.pad_id)).nonzero()
        if stop.numel():
            body = body[: int(stop[0])]
        if body.numel() % 4:
            raise ValueError(f"PointTokenizer.decode: {body.numel()} body tokens is not a whole number of points "
                             "(4 tokens each); the sequence was cut inside a point")
        rows = body.reshape(-1, 4).clone()  # [N, 4]
        rows[:, 3] -= self.levels
        coord_ok = (rows[:, :3] >= 0) & (rows[:, :3] < self.levels)
        face_ok = (rows[:, 3] >= 0) & (rows[:, 3] < self.n_faces)
        ok = torch.cat([coord_ok, face_ok[:, None]], dim=1)
        if not bool(ok.all()):
            flat = int((~ok).reshape(-1).nonzero()[0])
            pos = start + flat
            raise ValueError(f"PointTokenizer.decode: token {int(tokens[pos])} at position {pos} is not a valid "
                             f"{ROLE_NAMES[flat % 4]} token (coordinates are 0..{self.levels - 1}, faces "
                             f"{self.levels}..{self.levels + self.n_faces - 1})")
        return rows

    def decode(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens [L]`` -> ``(points [N, 3]`` bin centres in metres, ``binding [N]`` long), as :meth:`decode_rows`."""
        rows = self.decode_rows(tokens)
        return self.dequantize(rows[:, :3]), rows[:, 3]

    def decode_batch(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Well-formed sequences ``tokens [B, L]`` (``BOS`` + whole points, ``lengths [B]`` with EOS) -> bin centres
        ``points [B, N, 3]`` (zeros on padding), ``binding [B, N]`` long (0 on padding), ``mask [B, N]`` bool and
        ``n_points [B]`` long, ``N`` the most points: the positions sampling yields for the same tokens.

        Unlike :meth:`decode` nothing is validated: padding rows are clamped into the box and masked instead.
        """
        n_points = torch.div(lengths - 2, 4, rounding_mode="floor")
        n = int(n_points.max())
        rows = tokens[:, 1 : 1 + 4 * n].reshape(tokens.shape[0], n, 4)  # [B, N, 4]
        mask = torch.arange(n, device=tokens.device)[None] < n_points[:, None]
        points = self.dequantize(rows[..., :3].clamp(0, self.levels - 1)) * mask[..., None]
        binding = (rows[..., 3] - self.levels).clamp(min=0) * mask
        return points, binding, mask, n_points

    # ------------------------------------------------------------------------------------------------------ roles
    @staticmethod
    def role_of_position(positions: Tensor) -> Tensor:
        """Absolute sequence positions (BOS at 0) -> role ids: 0..3 for x, y, z, b; 4 for the BOS slot."""
        return torch.where(positions > 0, (positions - 1) % 4, torch.full_like(positions, 4))

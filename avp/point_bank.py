"""A bank of generated point clouds for the training subjects (no Lightning: inference code may import it), and
the stage-2 model's inputs on them (:func:`bank_inputs`).

The decoder of the full model is *tested* on clouds sampled from the frozen generator, so it should also be *trained*
on them (``DecoderModule(points="generated_bank")``). Sampling a cloud costs one forward per token, so the clouds are
sampled once per training subject and cached on disk:

- one file per subject, ``<root>/<key>/<subject>-<hash>.pt``, written atomically (:mod:`avp.atomic`): DDP ranks,
  which see disjoint or overlapping subjects, never need a collective, and two ranks writing the same subject write
  the same bytes over each other harmlessly;
- ``key`` is a digest of everything the clouds depend on: the generator's weights (its state dict, content-hashed),
  its tokenizer and head model, the sampling configuration, the bank seed and the number of samples per subject, so
  re-running reuses the bank and a different generator or sampling setting uses a fresh folder;
- subjects' clouds are sampled in batched, KV-cached calls, each cloud drawing from its own ``torch.Generator``
  seeded from the bank seed, the subject id (:func:`subject_seed`) and its index: a subject's clouds never depend on
  which batch, rank or order it arrived in (on the same device type and precision, up to the floating-point effects
  of batched matrix products);
- an entry keeps the sampled **tokens** as well as the points: features are recomputed teacher-forced from the tokens
  by the current frozen generator (the features of sampled tokens equal the teacher-forced features of the same
  tokens), so the bank stays small and never stores hidden states.

A file that cannot be read (truncated, corrupt, or written for another key) is sampled again with a warning naming
it; the result is the same clouds, because sampling is seeded per subject.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avp.atomic import atomic_open, atomic_write_json
from avp.models.avatar import AvatarModel, PointInputs
from avp.models.sampling import SamplingConfig
from avp.types import AvatarBatch, Cameras, HeadParams

log = logging.getLogger(__name__)

BANK_FORMAT = 1
"""Version of the per-subject file layout (part of the key: a new layout never reads an old bank)."""

ENTRY_FIELDS = ("tokens", "lengths", "points", "binding", "n_points", "finished")


@dataclass
class BankEntry:
    """``K`` sampled clouds of one subject (``L`` = the longest token sequence, ``N`` = the most points), on the CPU."""

    tokens: Tensor
    """``[K, L]`` long, ``BOS x y z b … EOS`` then PAD (no EOS where sampling stopped at ``max_points``)."""
    lengths: Tensor
    """``[K]`` long, tokens up to and including EOS (or the last b token)."""
    points: Tensor
    """``[K, N, 3]`` float32 dequantised canonical points (bin centres), zeros on padding."""
    binding: Tensor
    """``[K, N]`` long face of each point, 0 on padding."""
    n_points: Tensor
    """``[K]`` long."""
    finished: Tensor
    """``[K]`` bool, False where sampling stopped at ``max_points`` before EOS."""

    @property
    def samples(self) -> int:
        return int(self.tokens.shape[0])

    def body(self, k: int) -> Tensor:
        """``[4 n + 1]`` the ``k``-th cloud's tokens ``BOS x y z b …`` without EOS and PAD."""
        return self.tokens[k, : 1 + 4 * int(self.n_points[k])]

    def check(self, samples: int | None = None) -> None:
        """Raise ``ValueError`` unless the fields are consistent (shapes, dtypes, counts)."""
        K = self.samples
        if samples is not None and K != samples:
            raise ValueError(f"{K} samples, expected {samples}")
        if self.tokens.ndim != 2 or self.tokens.dtype != torch.long:
            raise ValueError(f"tokens must be [K, L] long, got {tuple(self.tokens.shape)} {self.tokens.dtype}")
        n = self.n_points
        if n.shape != (K,) or self.lengths.shape != (K,) or self.finished.shape != (K,):
            raise ValueError("lengths, n_points and finished must be [K]")
        N = int(n.max()) if K else 0
        if self.points.shape != (K, N, 3) or self.binding.shape != (K, N):
            raise ValueError(f"points/binding must be [K, N, 3]/[K, N] = [{K}, {N}], got "
                             f"{tuple(self.points.shape)}/{tuple(self.binding.shape)}")
        expected = torch.where(self.finished, 4 * n + 2, 4 * n + 1)
        if not torch.equal(self.lengths, expected) or int(self.lengths.max()) > self.tokens.shape[1]:
            raise ValueError("lengths do not match n_points/finished or exceed the tokens")
        if int(n.min()) < 1:
            raise ValueError("a sample has no points")


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's content (names, dtypes, shapes and bytes of every tensor, in name order)."""
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        h.update(name.encode() + b"\0")
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def bank_key(generator_digest: str, sampling: SamplingConfig | Mapping[str, Any], seed: int, samples: int,
             extra: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(key, meta)``: the bank folder name (16 hex digits) and the JSON-able description it is a digest of.

    ``generator_digest``: :func:`state_digest` of the generator's weights; ``sampling``: the *effective* sampling
    configuration (its window is the feature window); ``extra``: anything else the clouds depend on (tokenizer
    configuration, head model).
    """
    sampling_dict = dataclasses.asdict(sampling) if dataclasses.is_dataclass(sampling) else dict(sampling)
    meta = {"format": BANK_FORMAT, "generator": generator_digest, "sampling": sampling_dict, "seed": int(seed),
            "samples": int(samples), **({"extra": dict(extra)} if extra else {})}
    text = json.dumps(meta, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], meta


def subject_seed(seed: int, subject: str) -> int:
    """Seed of a subject's sampling: a digest of the bank seed and the subject id (independent of batch and rank)."""
    digest = hashlib.sha256(f"{int(seed)}\0{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def subject_filename(subject: str) -> str:
    """A safe file name for any subject id: its readable part plus a digest (ids differing only in odd characters
    still get different files)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", subject).strip("._")[:80] or "subject"
    return f"{readable}-{hashlib.sha1(subject.encode()).hexdigest()[:10]}.pt"


@torch.no_grad()
def sample_entries(generator_net: Any, conditions: Tensor, shapes: Tensor | None, sampling: SamplingConfig,
                   samples: int, seeds: Sequence[int], static_offsets: Tensor | None = None) -> list[BankEntry]:
    """``samples`` clouds for each of ``B`` subjects in one batched, KV-cached call (the bank's bulk fill).

    Every cloud draws from its own generator, seeded from its subject's seed and its index ``k``
    (:func:`avp.models.sampling.sample` with one generator per row), so a subject's clouds do not depend on which
    subjects share its batch (up to the floating-point effects of batched matrix products).

    Args:
        conditions: ``[B, C, D]`` each subject's condition tokens, encoded alone; shapes: ``[B, S]`` or None.
        seeds: ``B`` subject seeds (:func:`subject_seed`).
        static_offsets: ``[B, V, 3]`` the subjects' tracked static offsets (None: none), for ``bind_nearest``.
    """
    B = conditions.shape[0]
    if len(seeds) != B:
        raise ValueError(f"sample_entries: {B} conditions but {len(seeds)} seeds")
    cond = conditions.repeat_interleave(samples, dim=0)  # [B * K, C, D], subject-major
    shp = None if shapes is None else shapes.repeat_interleave(samples, dim=0)
    rngs = [torch.Generator(device=conditions.device).manual_seed((int(seed) + k) & (2**63 - 1))
            for seed in seeds for k in range(samples)]
    offsets = None if static_offsets is None else static_offsets.repeat_interleave(samples, dim=0)
    out = generator_net.sample(cond, sampling, rngs, shape=shp, static_offset=offsets)
    entries = []
    for b in range(B):
        rows = slice(b * samples, (b + 1) * samples)
        n = out.n_points[rows]
        if int(n.min()) < 1:
            raise ValueError("point bank: a sample has no points (the generator emitted EOS at once); raise "
                             "sampling.min_points")
        N, L = int(n.max()), int(out.lengths[rows].max())
        entry = BankEntry(tokens=out.tokens[rows, :L].cpu(), lengths=out.lengths[rows].cpu(),
                          points=out.points[rows, :N].float().cpu(), binding=out.binding[rows, :N].cpu(),
                          n_points=n.cpu(), finished=out.finished[rows].cpu())
        entry.check(samples)
        entries.append(entry)
    return entries


class PointBank:
    """Generated clouds per subject under ``root/key`` (see the module docstring).

    Args:
        root: the bank's parent folder (e.g. ``runs/decoder/point_bank``); each key gets its own subfolder.
        key, meta: :func:`bank_key`; ``meta`` is written to ``<folder>/bank.json`` for people reading the folder.
        samples: clouds per subject.
    """

    def __init__(self, root: str | Path, key: str, meta: Mapping[str, Any] | None = None, samples: int = 1):
        if samples < 1:
            raise ValueError(f"PointBank: samples must be >= 1, got {samples}")
        self.root = Path(root)
        self.key = key
        self.meta = dict(meta or {})
        self.samples = int(samples)
        self.directory = self.root / key
        self._memory: dict[str, BankEntry] = {}
        self.loaded = 0
        """Entries read from disk by this object."""
        self.built = 0
        """Entries sampled by this object (missing, or unreadable files)."""

    def path(self, subject: str) -> Path:
        return self.directory / subject_filename(subject)

    def _write_meta(self) -> None:
        meta_file = self.directory / "bank.json"
        if not meta_file.exists():
            atomic_write_json(meta_file, {"key": self.key, **self.meta})

    def load(self, subject: str) -> BankEntry | None:
        """The stored entry of ``subject``; None when there is none, or (with a warning naming the file) when the
        file cannot be read or was written for another key or subject: it is then sampled again."""
        file = self.path(subject)
        if not file.exists():
            return None
        try:
            data = torch.load(file, map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise ValueError(f"not a bank entry (a {type(data).__name__})")
            if data.get("format") != BANK_FORMAT or data.get("key") != self.key:
                raise ValueError(f"written for format {data.get('format')} key {data.get('key')}, expected format "
                                 f"{BANK_FORMAT} key {self.key}")
            if data.get("subject") != subject:
                raise ValueError(f"holds subject {data.get('subject')!r}, expected {subject!r}")
            missing = [f for f in ENTRY_FIELDS if not isinstance(data.get(f), Tensor)]
            if missing:
                raise ValueError(f"lacks {missing}")
            entry = BankEntry(**{f: data[f] for f in ENTRY_FIELDS})
            entry.check(self.samples)
        except Exception as e:  # any unreadable file: one clear warning, then it is sampled again
            log.warning("point bank: cannot use %s (%s); sampling subject %r again", file, e, subject)
            return None
        self.loaded += 1
        return entry

    def save(self, subject: str, entry: BankEntry) -> Path:
        """Write ``subject``'s entry atomically (a reader never sees half a file)."""
        entry.check(self.samples)
        self._write_meta()
        file = self.path(subject)
        payload = {"format": BANK_FORMAT, "key": self.key, "subject": subject,
                   **{f: getattr(entry, f).cpu() for f in ENTRY_FIELDS}}
        with atomic_open(file, "wb") as f:
            torch.save(payload, f)
        return file

    def missing(self, subjects: Sequence[str]) -> list[str]:
        """The subjects (in order, once each) that have no usable entry in memory or on disk."""
        out = []
        for subject in dict.fromkeys(subjects):
            if subject in self._memory:
                continue
            entry = self.load(subject)
            if entry is None:
                out.append(subject)
            else:
                self._memory[subject] = entry
        return out

    def put(self, subject: str, entry: BankEntry) -> None:
        """Store a freshly sampled entry (on disk and in memory)."""
        self.save(subject, entry)
        self._memory[subject] = entry
        self.built += 1

    def get(self, subjects: Sequence[str], build: Callable[[int, str], BankEntry]) -> list[BankEntry]:
        """The entries of ``subjects`` (a batch's ids): from memory, else from disk, else ``build(i, subject)``
        (``i``: the position in ``subjects``), which is saved. A subject repeated in ``subjects`` is built once."""
        entries = []
        for i, subject in enumerate(subjects):
            entry = self._memory.get(subject)
            if entry is None:
                entry = self.load(subject)
                if entry is None:
                    entry = build(i, subject)
                    self.built += 1
                    self.save(subject, entry)
                self._memory[subject] = entry
            entries.append(entry)
        return entries


@torch.no_grad()
def bank_entries(model: AvatarModel, bank: PointBank, seed: int, subjects: list[str], portrait: Tensor,
                 portrait_head: HeadParams, shape: Tensor, static_offset: Tensor | None = None,
                 portrait_camera: Cameras | None = None) -> list[BankEntry]:
    """The bank's clouds of ``subjects`` (portraits ``[B, 3, H, W]``, their head parameters ``[B]``, identities
    ``[B, S]``, tracked static offsets ``[B, V, 3]`` or None, the portraits' cameras ``Ks [B, 1, 3, 3]`` or None);
    subjects not in the bank yet are sampled now from
    ``model``'s generator (``bank.samples`` clouds each in one call, cloud ``k`` seeded by
    ``subject_seed(seed, subject) + k``: what :func:`fill_bank` stores) and stored.
    A new subject's condition is encoded alone: the mesh condition's eval-mode surface sampling draws ``[B, n]``
    points from one seeded generator, so a subject's condition (and clouds) would otherwise depend on its
    batch-mates."""

    def build(i: int, subject: str) -> BankEntry:
        one = slice(i, i + 1)
        offset = None if static_offset is None else static_offset[one]
        camera = None if portrait_camera is None else portrait_camera.map(lambda t: t[one])
        condition = model.encode_condition(portrait[one], portrait_head.map(lambda t: t[one]), offset, camera)
        return sample_entries(model.generator, condition, shape[one], model.sampling, bank.samples,
                              [subject_seed(seed, subject)], offset)[0]

    return bank.get(subjects, build)


@torch.no_grad()
def fill_bank(model: AvatarModel, bank: PointBank, seed: int, samples: Iterable[Any], batch_size: int,
              total: int | None = None, rank: int = 0, world_size: int = 1) -> int:
    """Sample the bank's clouds of every subject in ``samples`` (decoded shard samples: ``meta``, ``portrait``,
    ``portrait_head``, ``head``) that it lacks, ``batch_size`` subjects per batched call; subject ``i`` is this rank's
    when ``i % world_size == rank``. Returns how many subjects this rank sampled."""
    from tqdm import tqdm

    device = model.template_bary.device
    batch_size = max(int(batch_size), 1)
    bar = tqdm(total=total, desc="point bank", unit="subject", disable=rank != 0)
    todo: list[Any] = []
    done = 0

    def flush() -> None:
        nonlocal done
        if not todo:
            return
        conditions, shapes, offsets = [], [], []
        for sample in todo:  # each condition alone (see bank_entries)
            portrait = torch.from_numpy(sample.portrait.copy()).permute(2, 0, 1)[None].float().div(255)
            head = HeadParams.from_dict({k: torch.as_tensor(v)[None] for k, v in sample.portrait_head.items()})
            offset = sample.head.get("static_offset")
            offset = None if offset is None else torch.as_tensor(offset, dtype=torch.float32)[None].to(device)
            camera = Cameras.from_arrays(sample.portrait_camera, batched=True).to(device)
            conditions.append(model.encode_condition(portrait.to(device), head.to(device), offset, camera))
            shapes.append(torch.as_tensor(sample.head["shape"], dtype=torch.float32)[None])
            offsets.append(offset)
        subjects = [sample.meta["subject"] for sample in todo]
        if any(o is None for o in offsets) and not all(o is None for o in offsets):
            raise ValueError(f"point bank: subjects {subjects} mix samples with and without a static offset")
        static = None if offsets[0] is None else torch.cat(offsets)
        entries = sample_entries(model.generator, torch.cat(conditions), torch.cat(shapes).to(device),
                                 model.sampling, bank.samples, [subject_seed(seed, s) for s in subjects], static)
        for subject, entry in zip(subjects, entries):
            bank.put(subject, entry)
        done += len(todo)
        todo.clear()

    for i, sample in enumerate(samples):
        bar.update(1)
        if i % world_size != rank or not bank.missing([sample.meta["subject"]]):
            continue
        todo.append(sample)
        if len(todo) == batch_size:
            flush()
    flush()
    bar.close()
    return done


@torch.no_grad()
def bank_inputs(model: AvatarModel, batch: AvatarBatch, condition: Tensor, entries: Sequence[BankEntry],
                use_teacher: Tensor, draw: Tensor) -> PointInputs:
    """The decoder's inputs of a batch (its condition tokens ``[B, C, D]``) on its subjects' bank clouds: row ``i``
    takes cloud ``draw[i]`` of ``entries[i]``, or its teacher cloud where ``use_teacher[i]``. Features are the frozen
    generator's teacher-forced hidden states of the stored tokens (what sampling computed for them)."""
    portrait = batch.portrait
    device, B = portrait.device, portrait.shape[0]
    tok = model.tokenizer
    teacher_mask = batch.teacher.valid_mask()
    seqs, finished = [], []
    for i, entry in enumerate(entries):
        if bool(use_teacher[i]):
            t, n = model.generator.teacher_tokens(batch.teacher.means[i : i + 1], batch.binding[i : i + 1],
                                                  teacher_mask[i : i + 1])
            seqs.append(t[0, : int(n[0])])
            finished.append(True)
        else:
            k = int(draw[i])
            # EOS closes clouds that stopped at max_points too: causal, so no point's features see it
            seqs.append(torch.cat([entry.body(k).to(device), torch.tensor([tok.eos_id], device=device)]))
            finished.append(bool(entry.finished[k]))
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
    tokens = torch.full((B, int(lengths.max())), tok.pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    return model.prepare_tokens(condition, tokens, lengths, torch.tensor(finished, device=device), portrait,
                                batch.portrait_head, batch.head.shape, batch.portrait_camera,
                                static_offset=batch.static_offset)

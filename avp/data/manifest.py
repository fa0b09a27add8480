"""``shards.json``: the list of shards of a dataset folder, their sample counts, SHA-256 sums and splits.

Splits are by subject and decided when shards are written: every shard holds samples of one split only, and no
subject appears in two splits (checked here). Layout::

    {"format": "avp-shards", "version": 1, "schema": 1, "head_model": "builtin-v1", "n_faces": 9216,
     "shards": [{"path": "train-000000.tar", "split": "train", "samples": 64, "sha256": "...", "bytes": 123,
                 "subjects": ["synth-00000", ...]}, ...],
     "splits": {"train": {"shards": 3, "samples": 180, "subjects": [...]}, ...},
     "created_by": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from avp.atomic import atomic_write_json
from avp.data.schema import SCHEMA_VERSION
from avp.data.writer import ShardInfo

MANIFEST_NAME = "shards.json"
SYNTH_PROGRESS = ".synth-progress.json"
"""Written by ``avp data synth`` before its first shard and removed with the manifest: its config, so that a rerun
of an interrupted synthesis keeps the finished shards and renders only the missing subjects."""
MANIFEST_FORMAT = "avp-shards"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Manifest:
    """A parsed ``shards.json``."""

    root: Path
    """The folder that shard paths are relative to."""
    head_model: str
    n_faces: int
    shards: list[ShardInfo]
    schema: int = SCHEMA_VERSION
    created_by: dict[str, Any] = field(default_factory=dict)

    def shards_for(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]

    def samples(self, split: str | None = None) -> int:
        return sum(s.samples for s in self.shards if split is None or s.split == split)

    def subjects(self, split: str) -> list[str]:
        out: list[str] = []
        for s in self.shards_for(split):
            out += [x for x in s.subjects if x not in out]
        return out

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    def to_json(self) -> dict[str, Any]:
        splits = {}
        for split in self.splits:
            splits[split] = {"shards": len(self.shards_for(split)), "samples": self.samples(split),
                             "subjects": self.subjects(split)}
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "schema": self.schema,
                "head_model": self.head_model, "n_faces": self.n_faces,
                "shards": [asdict(s) for s in self.shards], "splits": splits, "created_by": self.created_by}


def split_for_subject(subject: str, fractions: dict[str, float], *, salt: str = "avp-split-v1") -> str:
    """A subject's split from a hash of its id: stable across machines, runs and parallel conversions.

    ``fractions`` maps split names to shares (normalised here), e.g. ``{"train": 0.9, "val": 0.05, "test": 0.05}``.
    """
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be non-negative with a positive sum, got {fractions}")
    u = int(hashlib.sha256(f"{salt}:{subject}".encode()).hexdigest()[:13], 16) / 16**13
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac / total
        if u < acc:
            return name
    return next(reversed(fractions))


def assign_splits(n_subjects: int, fractions: dict[str, float], seed: int) -> list[str]:
    """Splits of subjects ``0..n-1``: counts by rounding (every split with a positive fraction gets at least one
    subject when there are enough subjects, the first split keeps at least one), order by a seeded permutation."""
    import numpy as np

    names = list(fractions)
    total = sum(fractions.values())
    counts = {k: int(round(n_subjects * fractions[k] / total)) for k in names[1:]}
    if n_subjects >= len(names):
        counts = {k: max(c, 1 if fractions[k] > 0 else 0) for k, c in counts.items()}
    while sum(counts.values()) > max(n_subjects - 1, 0):
        biggest = max(counts, key=lambda k: counts[k])
        counts[biggest] -= 1
    labels = [names[0]] * (n_subjects - sum(counts.values()))
    for k in names[1:]:
        labels += [k] * counts[k]
    order = np.random.default_rng(seed).permutation(n_subjects)
    out = [""] * n_subjects
    for label, i in zip(labels, order):
        out[int(i)] = label
    return out


def check_disjoint_subjects(shards: Sequence[ShardInfo], where: str = "manifest") -> None:
    """Raise ``ValueError`` when a subject appears in two splits (the split is by subject)."""
    seen: dict[str, ShardInfo] = {}
    for s in shards:
        for subject in s.subjects:
            other = seen.setdefault(subject, s)
            if other.split != s.split:
                raise ValueError(f"{where}: subject {subject!r} appears in splits {other.split!r} and {s.split!r} "
                                 f"(shards {other.path!r} and {s.path!r}); splits must be by subject")


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    check_disjoint_subjects(manifest.shards, str(Path(root) / MANIFEST_NAME))
    path = Path(root) / MANIFEST_NAME
    atomic_write_json(path, manifest.to_json())
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse and check a ``shards.json`` (or the folder holding it); errors name the file and the field."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not an avp shard manifest (field 'format' must be {MANIFEST_FORMAT!r})")
    if data.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: unknown manifest version {data.get('version')!r} (this avp reads "
                         f"{MANIFEST_VERSION})")
    for name, typ in (("head_model", str), ("n_faces", int), ("shards", list), ("schema", int)):
        if not isinstance(data.get(name), typ):
            raise ValueError(f"{path}: field {name!r} is missing or not {typ.__name__}")
    shards = []
    for i, entry in enumerate(data["shards"]):
        try:
            shards.append(ShardInfo(path=str(entry["path"]), split=str(entry["split"]),
                                    samples=int(entry["samples"]), sha256=str(entry["sha256"]),
                                    bytes=int(entry["bytes"]), subjects=[str(s) for s in entry.get("subjects", [])]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: shards[{i}] is malformed ({type(e).__name__}: {e})") from e
    check_disjoint_subjects(shards, str(path))
    return Manifest(root=path.parent, head_model=data["head_model"], n_faces=data["n_faces"], shards=shards,
                    schema=data["schema"], created_by=dict(data.get("created_by", {})))


def index_directory(root: str | os.PathLike, *, created_by: dict[str, Any] | None = None,
                    progress: bool = False, partial: bool = False) -> Manifest:
    """Rebuild ``shards.json`` from the ``*.tar`` files under ``root`` (e.g. after parallel ``avp data convert``
    runs with ``--no-index``): reads every sample's ``meta.json`` for its split, subject and head model, and hashes
    every shard. Raises :class:`~avp.data.schema.ShardError` on a broken shard, a bad ``meta.json`` or a sample key
    that appears twice (in one shard or in two), and ``ValueError`` when shards disagree (head model, mixed splits
    inside one shard, a subject in two splits), or when ``root`` holds an interrupted ``avp data synth``
    (:data:`SYNTH_PROGRESS`) and ``partial`` is not set."""
    from tqdm import tqdm

    from avp.data.layout import REASON_DUPLICATE, REASON_MANIFEST
    from avp.data.reader import ShardRef, file_sha256, iter_raw_samples
    from avp.data.schema import ShardError, decode_meta

    root = Path(root)
    if (root / SYNTH_PROGRESS).exists() and not partial:
        raise ValueError(f"{root}: an interrupted `avp data synth` has not finished ({SYNTH_PROGRESS} is there): rerun "
                         "the same synth command to finish it, or index the shards written so far with --partial")
    tars = sorted(p for p in root.rglob("*.tar") if not p.name.startswith("."))
    if not tars:
        raise FileNotFoundError(f"{root}: no *.tar shards to index")
    shards: list[ShardInfo] = []
    head_model, n_faces = None, None
    key_shard: dict[str, str] = {}  # sample key -> the shard holding it: a key twice would be counted twice
    for p in tqdm(tars, desc="index", unit="shard", disable=not progress):
        rel = p.relative_to(root).as_posix()
        ref = ShardRef(path=str(p), name=rel)
        splits, subjects, n = set(), [], 0
        for raw in iter_raw_samples(ref, verify=False):
            key = raw["__key__"].decode()
            if key in key_shard:
                raise ShardError(rel, key, None, f"the sample key also appears in shard {key_shard[key]!r}; keys "
                                                 "must be unique in a dataset", reason=REASON_DUPLICATE)
            key_shard[key] = rel
            meta = decode_meta(raw, shard=rel)
            splits.add(meta["split"])
            if meta["subject"] not in subjects:
                subjects.append(meta["subject"])
            if head_model is None:
                head_model, n_faces = meta["head_model"], meta["n_faces"]
            elif (meta["head_model"], meta["n_faces"]) != (head_model, n_faces):
                raise ShardError(rel, key, "meta.json", f"head model {meta['head_model']!r} ({meta['n_faces']} "
                                 f"faces) differs from {head_model!r} ({n_faces} faces) in earlier shards",
                                 "head_model", reason=REASON_MANIFEST)
            n += 1
        if len(splits) != 1:
            raise ValueError(f"{rel}: a shard must hold one split, found {sorted(splits) or 'no samples'}")
        shards.append(ShardInfo(path=rel, split=splits.pop(), samples=n, sha256=file_sha256(p),
                                bytes=p.stat().st_size, subjects=subjects))
    assert head_model is not None and n_faces is not None
    old = {}
    if (root / MANIFEST_NAME).exists():
        try:
            old = read_manifest(root).created_by
        except ValueError:
            old = {}
    manifest = Manifest(root=root, head_model=head_model, n_faces=n_faces, shards=shards,
                        created_by={**old, **(created_by or {})})
    write_manifest(root, manifest)
    return manifest

"""What an evaluation covers: the split's clips (one listing pass over the shards), the protocol's samples over them
(a clip for self-reenactment, a source/driver pair for cross-reenactment, each with its own sampling seed), the frames
and views of each clip, and the raw samples streamed back in shard order.

Nothing here touches a model: a plan depends only on the protocol and the shards, so the same samples, frames, views
and seeds come out whichever methods are evaluated.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avp.eval.protocol import EvalProtocol, ProtocolError


@dataclass
class ClipEntry:
    """One clip of the evaluated split (from the listing pass)."""

    key: str
    subject: str
    sequence: str
    shard: str
    frames: int
    views: int


@dataclass
class EvalSample:
    """One evaluated unit: a clip (self) or a (source, driver) pair (cross)."""

    id: str
    source: str
    """Source clip key (portrait, identity, teacher)."""
    target: str
    """Target clip key (ground truth, or the driving clip)."""
    seed: int
    """Seed of the generated-point sampling for this sample."""
    order: int


def _evenly(items: list[int], k: int | None) -> list[int]:
    if k is None or k >= len(items):
        return items
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in picks]


def portrait_frame(meta: dict[str, Any]) -> int | None:
    """The clip frame the portrait was cut from (converted data records it), or None (synthetic portraits are
    separate renders)."""
    extra = meta.get("extra") or {}
    portrait = extra.get("portrait")
    if not isinstance(portrait, dict) or "timestep" not in portrait:
        return None
    timesteps = extra.get("timesteps")
    t = portrait["timestep"]
    if isinstance(timesteps, list):
        return timesteps.index(t) if t in timesteps else None
    return int(t)


def select_frames(protocol: EvalProtocol, meta: dict[str, Any], key: str) -> list[int]:
    """The clip frame indices the protocol evaluates for a clip with ``meta``."""
    f = protocol.frames
    n = int(meta["frames"])
    if f.indices is not None:
        bad = [i for i in f.indices if i >= n]
        if bad:
            raise ProtocolError(f"frames.indices: clip {key!r} has {n} frames; indices {bad} do not exist")
        frames = list(f.indices)
    else:
        frames = list(range(n))
        skip = portrait_frame(meta) if (protocol.task == "self" and f.skip_portrait_frame) else None
        if skip is not None and skip in frames:
            frames.remove(skip)
        frames = _evenly(frames[:: f.stride], f.max_frames)
    if not frames:
        raise ProtocolError(f"frames: no frame of clip {key!r} ({n} frames) is left to evaluate")
    return frames


def select_views(protocol: EvalProtocol, meta: dict[str, Any], key: str) -> list[int]:
    """The clip camera indices the protocol evaluates."""
    v = protocol.views
    n = int(meta["views"])
    if v.indices is not None:
        bad = [i for i in v.indices if i >= n]
        if bad:
            raise ProtocolError(f"views.indices: clip {key!r} has {n} cameras; indices {bad} do not exist")
        views = list(v.indices)
    else:
        views = list(range(n))
    return _evenly(views, v.max_views)


def sample_seed(base: int, key: str) -> int:
    """Seed of a source clip's sampling: independent of which other clips are evaluated."""
    return zlib.crc32(f"{base}:{key}".encode()) & 0x7FFFFFFF


def file_record(path: str | Path) -> dict[str, Any]:
    """Path, size and SHA-256 of a file (what a run records about its checkpoints)."""
    from avp.data.reader import file_sha256

    p = Path(path).resolve()
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)}


def list_clips(root: str, split: str) -> tuple[list[ClipEntry], dict[str, Any]]:
    """Every clip of ``split`` (one streaming pass over its shards, checksums verified) and a data record."""
    from avp.data.reader import iter_raw_samples, resolve_shards
    from avp.data.schema import decode_meta

    refs, manifest = resolve_shards(root, split)
    if not refs:
        have = manifest.splits if manifest is not None else []
        raise ProtocolError(f"data.split: {root} has no shards of split {split!r} (it has {have})")
    clips = []
    for ref in refs:
        for raw in iter_raw_samples(ref):
            meta = decode_meta(raw, shard=ref.name)
            clips.append(ClipEntry(key=raw["__key__"].decode(), subject=meta["subject"], sequence=meta["sequence"],
                                   shard=ref.name, frames=int(meta["frames"]), views=int(meta["views"])))
    record: dict[str, Any] = {"root": str(root), "split": split, "shards": [r.name for r in refs],
                              "shard_sha256": {r.name: r.sha256 for r in refs}, "clips": len(clips)}
    if manifest is not None:
        record["manifest"] = file_record(Path(manifest.root) / "shards.json")
        record["head_model"] = manifest.head_model
    return clips, record


def plan_samples(protocol: EvalProtocol, clips: list[ClipEntry], limit: int | None = None) -> list[EvalSample]:
    """The protocol's samples over the split's clips, in protocol order (``limit``: only the first ones)."""
    by_subject: dict[str, list[ClipEntry]] = {}
    for c in sorted(clips, key=lambda c: (c.subject, c.key)):
        by_subject.setdefault(c.subject, []).append(c)
    if protocol.data.subjects is not None:
        missing = [s for s in protocol.data.subjects if s not in by_subject]
        if missing:
            raise ProtocolError(f"data.subjects: {missing} are not in split {protocol.data.split!r} (it has "
                                f"{sorted(by_subject)[:10]}{' …' if len(by_subject) > 10 else ''})")
        subjects = list(protocol.data.subjects)
    else:
        subjects = sorted(by_subject)
    if protocol.data.max_subjects is not None:
        subjects = subjects[: protocol.data.max_subjects]
    base = protocol.sampling.seed
    samples: list[EvalSample] = []
    if protocol.task == "self":
        for s in subjects:
            for c in by_subject[s]:
                samples.append(EvalSample(id=c.key, source=c.key, target=c.key, seed=sample_seed(base, c.key),
                                          order=len(samples)))
    else:
        assert protocol.pairs is not None
        if protocol.pairs.explicit is not None:
            pairs = [tuple(p) for p in protocol.pairs.explicit]
            unknown = sorted({s for p in pairs for s in p if s not in by_subject})
            if unknown:
                raise ProtocolError(f"pairs.explicit: subjects {unknown} are not in split {protocol.data.split!r}")
        else:
            n = len(subjects)
            if n < 2:
                raise ProtocolError(f"pairs.shift: cross-reenactment needs at least two subjects; the selection has "
                                    f"{n}")
            if protocol.pairs.shift % n == 0:
                raise ProtocolError(f"pairs.shift: a shift of {protocol.pairs.shift} over {n} subjects pairs every "
                                    "subject with itself")
            pairs = [(subjects[i], subjects[(i + protocol.pairs.shift) % n]) for i in range(n)]
        for a, b in pairs:
            src, drv = by_subject[a][0], by_subject[b][0]
            samples.append(EvalSample(id=f"{src.key}<-{drv.key}", source=src.key, target=drv.key,
                                      seed=sample_seed(base, src.key), order=len(samples)))
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise ProtocolError("data: the protocol selects no sample")
    return samples


def stream_samples(root: str, split: str, keys: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(shard name, raw sample)`` of the wanted keys, in shard order."""
    from avp.data.reader import iter_raw_samples, resolve_shards

    refs, _ = resolve_shards(root, split)
    for ref in refs:
        for raw in iter_raw_samples(ref):
            if raw["__key__"].decode() in keys:
                yield ref.name, raw

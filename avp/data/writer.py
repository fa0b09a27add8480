"""Atomic, reproducible shard writing.

A shard is written under a hidden temporary name (``.<name>.tar.tmp``) and renamed to its final ``<name>.tar`` only
once complete and fsynced, so a crashed writer never leaves a file that looks like a finished shard (readers and
the manifest only know ``*.tar``; the manifest is written last). Members carry fixed metadata (mtime 0, uid/gid 0,
mode 0644), so the same samples give byte-identical shards and SHA-256 sums.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from avp.data.schema import META, ClipSample, encode_sample


@dataclass
class ShardInfo:
    """A finished shard (what the manifest records)."""

    path: str
    """File name relative to the dataset folder."""
    split: str
    samples: int
    sha256: str
    bytes: int
    subjects: list[str] = field(default_factory=list)


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.n += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.n


class TarShardWriter:
    """Write one shard: ``add(members)`` per sample, then ``close()`` renames it into place.

    Used as a context manager; on an exception the temporary file is deleted and nothing appears.
    """

    def __init__(self, path: str | os.PathLike, *, split: str, relative_to: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.split = split
        self.relative_to = Path(relative_to) if relative_to is not None else self.path.parent
        self._file = open(self.tmp, "wb")
        self._hash = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w|")  # type: ignore[arg-type]
        self.samples = 0
        self.subjects: list[str] = []
        self.info: ShardInfo | None = None

    def add(self, members: dict[str, bytes]) -> None:
        """Append one encoded sample (``__key__`` plus member name -> bytes)."""
        key = members["__key__"].decode()
        for name in sorted(k for k in members if not k.startswith("__")):
            data = members[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        subject = _subject_of(members)
        if subject not in self.subjects:
            self.subjects.append(subject)

    def add_sample(self, sample: ClipSample) -> None:
        self.add(encode_sample(sample))

    @property
    def bytes_written(self) -> int:
        return self._hash.n

    def close(self) -> ShardInfo:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        self.info = ShardInfo(path=os.path.relpath(self.path, self.relative_to), split=self.split,
                              samples=self.samples, sha256=self._hash.sha.hexdigest(), bytes=self._hash.n,
                              subjects=list(self.subjects))
        return self.info

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __enter__(self) -> TarShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _subject_of(members: dict[str, bytes]) -> str:
    """The subject ``meta.json`` names (what the manifest lists per shard)."""
    import json

    try:
        return str(json.loads(members[META])["subject"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"sample {members['__key__'].decode()!r}: cannot read the subject from its {META} "
                         f"({type(e).__name__}: {e}); write samples with avp.data.schema.encode_sample") from e


class SplitShardWriter:
    """Spread samples over shards of one split: ``{prefix}{split}-{index:06d}.tar``, at most ``max_samples`` per
    shard, and a shard is finished once it reaches ``max_bytes``. ``start_index``: the first shard's index (a
    resumed run continues after the shards it kept)."""

    def __init__(self, out_dir: str | os.PathLike, split: str, *, max_samples: int = 64,
                 max_bytes: int = 1 << 30, prefix: str = "", start_index: int = 0) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.out_dir, self.split, self.prefix, self.start_index = Path(out_dir), split, prefix, start_index
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shards: list[ShardInfo] = []
        self._current: TarShardWriter | None = None

    def add(self, members: dict[str, bytes]) -> None:
        if self._current is None:
            name = f"{self.prefix}{self.split}-{self.start_index + len(self.shards):06d}.tar"
            self._current = TarShardWriter(self.out_dir / name, split=self.split, relative_to=self.out_dir)
        cur = self._current
        cur.add(members)
        if cur.samples >= self.max_samples or cur.bytes_written >= self.max_bytes:  # finish it now: a crash later
            self.shards.append(cur.close())                                          # must not lose it
            self._current = None

    def close(self) -> list[ShardInfo]:
        if self._current is not None:
            self.shards.append(self._current.close())
            self._current = None
        return self.shards

    def abort(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None


def write_shards(samples: Iterable[dict[str, bytes]], out_dir: str | os.PathLike, *, split_of: dict[str, str],
                 max_samples: int = 64, max_bytes: int = 1 << 30, prefix: str = "",
                 start_index: dict[str, int] | None = None) -> list[ShardInfo]:
    """Write encoded samples into per-split shards; ``split_of`` maps a sample key to its split, ``start_index`` a
    split to the index of its first new shard (default 0).

    Returns the finished shards in writing order. On an exception every unfinished shard is removed.
    """
    writers: dict[str, SplitShardWriter] = {}
    try:
        for members in samples:
            key = members["__key__"].decode()
            split = split_of[key]
            if split not in writers:
                writers[split] = SplitShardWriter(out_dir, split, max_samples=max_samples, max_bytes=max_bytes,
                                                  prefix=prefix, start_index=(start_index or {}).get(split, 0))
            writers[split].add(members)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return [info for w in writers.values() for info in w.close()]


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete ``.*.tar.tmp`` left by a crashed writer; returns what was removed."""
    removed = []
    for p in Path(out_dir).glob(".*.tar.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed

"""Reading shards: locate them (manifest, glob or brace pattern), stream raw samples, verify checksums first.

Raw samples are ``dict`` member name -> bytes with ``__key__`` and ``__shard__`` (WebDataset's grouping: a member
``dir/key.rest`` belongs to sample ``dir/key``). A shard is checked **before any of its samples is yielded**: its
SHA-256 against the manifest, its tar structure (a truncated tar, including one cut exactly between members, which
Python's ``tarfile`` would otherwise end silently), keys that appear twice and the manifest's sample count. So a
consumer never trains on a sample of a shard that turns out to be bad, and in skip mode a bad shard is skipped whole.
Shards up to :data:`BUFFER_LIMIT` bytes are read once into memory and checked there; larger ones are checked by a
first pass that keeps no data, then streamed (a file that changes between the passes fails at its end).
Every error is a :class:`ShardError` naming the shard and the sample/member where it was found.

With a manifest every :class:`ShardRef` carries a :class:`~avp.data.checks.ShardExpectation` (split, subjects, head
model) that decoding checks each ``meta.json`` against.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from avp.data.layout import REASON_CHECKSUM, REASON_DUPLICATE, REASON_MANIFEST, REASON_TAR
from avp.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from avp.data.schema import ShardError, ShardExpectation

END_OF_ARCHIVE = 1024  # two zero blocks end every complete tar
BUFFER_LIMIT = 256 << 20
"""Shards up to this size are read into memory once (hash, parse, then yield: about twice the shard's size per reader
while it is checked); larger ones are read twice, the first pass keeping nothing."""


@dataclass(frozen=True)
class ShardRef:
    """A shard to read, with what the manifest knows about it (``None`` when read from a pattern)."""

    path: str
    """Absolute or working-directory-relative path of the tar."""
    name: str
    """How errors name it (the manifest's relative path, or the file name)."""
    sha256: str | None = None
    samples: int | None = None
    split: str | None = None
    expect: ShardExpectation | None = field(default=None, compare=False)
    """What every sample's ``meta.json`` must agree with (split, subjects, head model), from the manifest."""


class _HashingReader:
    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.sha.update(data)
        self.n += len(data)
        return data


def _split_name(name: str) -> tuple[str, str]:
    """``dir/key.member.ext`` -> (``dir/key``, ``member.ext``) as WebDataset groups members."""
    head, _, base = name.rpartition("/")
    key, dot, member = base.partition(".")
    if not dot:
        return (f"{head}/{key}" if head else key), ""
    return (f"{head}/{key}" if head else key), member


class _TarPass:
    """One pass over a shard's bytes: groups members into samples, checks the structure, hashes every byte.

    :meth:`samples` yields the raw samples (member bytes dropped unless ``keep``); once it is exhausted ``digest``
    holds the SHA-256 of the file and ``count`` the number of samples.
    """

    def __init__(self, f: IO[bytes], ref: ShardRef) -> None:
        self.reader, self.ref = _HashingReader(f), ref
        self.digest: str | None = None
        self.count = 0

    def samples(self, *, keep: bool = True) -> Iterator[dict[str, bytes]]:
        ref = self.ref
        key: str | None = None
        member: str | None = None
        current: dict[str, bytes] = {}
        seen: set[str] = set()
        try:
            tar = tarfile.open(fileobj=self.reader, mode="r|")  # type: ignore[arg-type]
            for info in tar:
                if not info.isfile():
                    continue
                k, member = _split_name(info.name)
                if member == "":
                    raise ShardError(ref.name, k, info.name, "member name has no '.': not a WebDataset sample",
                                     reason=REASON_TAR)
                if k != key:
                    if current:
                        self.count += 1
                        yield current
                    if k in seen:
                        raise ShardError(ref.name, k, member, "the sample key appears twice in the shard (samples "
                                                              "must have unique keys)", reason=REASON_DUPLICATE)
                    seen.add(k)
                    key, current = k, {"__key__": k.encode(), "__shard__": ref.name.encode()}
                if member in current:
                    raise ShardError(ref.name, k, member, "the member appears twice in the sample",
                                     reason=REASON_DUPLICATE)
                fobj = tar.extractfile(info)
                assert fobj is not None
                data = fobj.read()
                current[member] = data if keep else b""
            member = None
            tail_offset = tar.offset
            while self.reader.read(1 << 20):
                pass
            # tarfile ends quietly at the first header it cannot parse (a damaged header looks like the end): a
            # complete archive has nothing but zeros after its last member
            self.reader.f.seek(tail_offset)
            while chunk := self.reader.f.read(1 << 20):
                if chunk.count(0) != len(chunk):
                    raise ShardError(ref.name, key, None, f"corrupt tar: a damaged header or other data at byte "
                                                          f"{tail_offset}, after the last member tarfile could read",
                                     reason=REASON_TAR)
        except ShardError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise ShardError(ref.name, key, member, f"truncated or corrupt tar ({type(e).__name__}: {e})",
                             reason=REASON_TAR) from e
        if self.reader.n - tail_offset < END_OF_ARCHIVE:
            raise ShardError(ref.name, key, None, f"truncated tar: the archive ends after {self.reader.n} bytes "
                                                  "without its end-of-archive marker", reason=REASON_TAR)
        self.digest = self.reader.sha.hexdigest()
        if current:
            self.count += 1
            yield current


def _check_pass(ref: ShardRef, tar_pass: _TarPass, *, verify: bool) -> None:
    """After a complete pass: the checksum and the sample count agree with the manifest."""
    if verify and ref.sha256 is not None and tar_pass.digest != ref.sha256:
        raise ShardError(ref.name, None, None, f"SHA-256 mismatch: the manifest says {ref.sha256}, the file has "
                                               f"{tar_pass.digest}", reason=REASON_CHECKSUM)
    if verify and ref.samples is not None and tar_pass.count != ref.samples:
        raise ShardError(ref.name, None, None, f"the manifest says {ref.samples} samples, the shard has "
                                               f"{tar_pass.count}", reason=REASON_MANIFEST)


def _open(ref: ShardRef) -> IO[bytes]:
    try:
        return open(ref.path, "rb")
    except OSError as e:
        raise ShardError(ref.name, None, None, f"cannot open ({e})", reason=REASON_TAR) from e


def iter_raw_samples(ref: ShardRef, *, verify: bool = True,
                     buffer_limit: int | None = None) -> Iterator[dict[str, bytes]]:
    """Yield the raw samples of one shard in order, once the whole shard has been checked.

    Raises :class:`ShardError` before the first sample on a broken tar, a key that appears twice, and (with
    ``verify`` and a manifest) a SHA-256 or sample-count mismatch. ``buffer_limit``: shards up to this many bytes
    are held in memory for the check (default :data:`BUFFER_LIMIT`); larger ones are read twice.
    """
    limit = BUFFER_LIMIT if buffer_limit is None else buffer_limit
    with _open(ref) as f:
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise ShardError(ref.name, None, None, f"cannot stat ({e})", reason=REASON_TAR) from e
        if size <= limit:
            try:
                data = f.read()
            except OSError as e:
                raise ShardError(ref.name, None, None, f"cannot read ({e})", reason=REASON_TAR) from e
    if size <= limit:
        tar_pass = _TarPass(io.BytesIO(data), ref)
        samples = list(tar_pass.samples())
        del data
        _check_pass(ref, tar_pass, verify=verify)
        yield from samples
        return
    # too large to hold: a first pass checks everything and keeps nothing, the second one yields
    with _open(ref) as f:
        first = _TarPass(f, ref)
        for _ in first.samples(keep=False):
            pass
    _check_pass(ref, first, verify=verify)
    with _open(ref) as f:
        second = _TarPass(f, ref)
        yield from second.samples()
    if second.digest != first.digest:
        raise ShardError(ref.name, None, None, "the shard changed while it was read (its SHA-256 differs between "
                                               "two passes)", reason=REASON_CHECKSUM)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            sha.update(data)
    return sha.hexdigest()


def expand_pattern(pattern: str) -> list[str]:
    """Brace (``{000..009}``, ``{a,b}``) then glob expansion, sorted, duplicates removed."""
    import braceexpand

    out: list[str] = []
    for p in braceexpand.braceexpand(os.path.expanduser(pattern)):
        matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        out += [m for m in matches if m not in out]
    return out


def resolve_shards(root: str | os.PathLike, split: str | None) -> tuple[list[ShardRef], Manifest | None]:
    """The shards of ``split`` under ``root`` and the manifest when there is one.

    ``root`` is a folder holding ``shards.json``, the ``shards.json`` file itself, or a glob/brace pattern of tars;
    in a pattern the literal ``{split}`` is replaced by the split name (``data/{split}-{000..009}.tar``). Without a
    ``{split}`` placeholder a pattern's shards serve every split. Raises ``FileNotFoundError`` naming what is missing.
    """
    root_s = os.fspath(root)
    path = Path(root_s)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path if path.name == MANIFEST_NAME else None
    if manifest_path is not None:
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path}: no shard manifest (write one with `avp data index "
                                    f"{manifest_path.parent}`)")
        manifest = read_manifest(manifest_path)
        refs = manifest_refs(manifest, split)
        for r in refs:
            if not os.path.exists(r.path):
                raise FileNotFoundError(f"{manifest_path}: lists shard {r.name!r}, which does not exist")
        return refs, manifest
    pattern = root_s.replace("{split}", split) if split is not None else root_s.replace("{split}", "*")
    paths = expand_pattern(pattern)
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"shard pattern {root_s!r}: {len(missing)} shards do not exist, e.g. {missing[0]}")
    if not paths:
        raise FileNotFoundError(f"shard pattern {root_s!r} matches no file")
    return [ShardRef(path=p, name=os.path.basename(p)) for p in paths], None


def manifest_refs(manifest: Manifest, split: str | None = None) -> list[ShardRef]:
    """The manifest's shards (of ``split``, or all) as :class:`ShardRef`, each with what its samples must agree
    with: the shard's split and subjects, the manifest's head model, and every subject's split (leakage)."""
    subject_splits = {subject: s.split for s in manifest.shards for subject in s.subjects}
    entries = manifest.shards if split is None else manifest.shards_for(split)
    return [ShardRef(path=str(manifest.root / e.path), name=e.path, sha256=e.sha256, samples=e.samples,
                     split=e.split,
                     expect=ShardExpectation(split=e.split, head_model=manifest.head_model, n_faces=manifest.n_faces,
                                             subjects=frozenset(e.subjects) if e.subjects else None,
                                             subject_splits=subject_splits))
            for e in entries]


def count_samples(ref: ShardRef) -> int:
    """Samples in a shard: from the manifest, or by reading the tar headers."""
    if ref.samples is not None:
        return ref.samples
    keys = set()
    try:
        with tarfile.open(ref.path, "r:") as tar:
            for info in tar:
                if info.isfile():
                    keys.add(_split_name(info.name)[0])
    except (tarfile.TarError, OSError) as e:
        raise ShardError(ref.name, None, None, f"cannot list the tar ({type(e).__name__}: {e})",
                         reason=REASON_TAR) from e
    return len(keys)

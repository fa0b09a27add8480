"""Reading shards: locate them (manifest, glob or brace pattern), stream raw samples, verify checksums.

Raw samples are ``dict`` member name -> bytes with ``__key__`` and ``__shard__`` (WebDataset's grouping: a member
``dir/key.rest`` belongs to sample ``dir/key``). Streaming hashes the shard as it is read; the SHA-256 recorded in
the manifest is compared when the shard ends. A truncated tar (including one cut exactly between members, which
Python's ``tarfile`` would otherwise end silently) and a checksum mismatch raise :class:`ShardError` naming the
shard and the last sample/member read.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from avp.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from avp.data.schema import ShardError

END_OF_ARCHIVE = 1024  # two zero blocks end every complete tar


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


def iter_raw_samples(ref: ShardRef, *, verify: bool = True) -> Iterator[dict[str, bytes]]:
    """Yield the raw samples of one shard in order; raise :class:`ShardError` on a broken or mismatching shard.

    With ``verify`` and a known ``ref.sha256`` the checksum is compared after the last sample (so a consumer that
    stops early skips the check).
    """
    key: str | None = None
    member: str | None = None
    current: dict[str, bytes] = {}
    try:
        f = open(ref.path, "rb")
    except OSError as e:
        raise ShardError(ref.name, None, None, f"cannot open ({e})") from e
    try:
        reader = _HashingReader(f)
        try:
            tar = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[arg-type]
            for info in tar:
                if not info.isfile():
                    continue
                k, member = _split_name(info.name)
                if member == "":
                    raise ShardError(ref.name, k, info.name, "member name has no '.': not a WebDataset sample")
                if k != key:
                    if current:
                        yield current
                    key, current = k, {"__key__": k.encode(), "__shard__": ref.name.encode()}
                fobj = tar.extractfile(info)
                assert fobj is not None
                current[member] = fobj.read()
            member = None
            tail_offset = tar.offset
            while reader.read(1 << 20):
                pass
        except ShardError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise ShardError(ref.name, key, member, f"truncated or corrupt tar ({type(e).__name__}: {e})") from e
        if reader.n - tail_offset < END_OF_ARCHIVE:
            raise ShardError(ref.name, key, None, f"truncated tar: the archive ends after {reader.n} bytes without "
                                                  "its end-of-archive marker")
        if verify and ref.sha256 is not None:
            digest = reader.sha.hexdigest()
            if digest != ref.sha256:
                raise ShardError(ref.name, None, None, f"SHA-256 mismatch: the manifest says {ref.sha256}, the "
                                                       f"file has {digest}")
        if current:
            yield current
    finally:
        f.close()


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
        entries = manifest.shards if split is None else manifest.shards_for(split)
        refs = [ShardRef(path=str(manifest.root / e.path), name=e.path, sha256=e.sha256, samples=e.samples,
                         split=e.split) for e in entries]
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
        raise ShardError(ref.name, None, None, f"cannot list the tar ({type(e).__name__}: {e})") from e
    return len(keys)

"""Bad input: every corruption named in the issue raises a ShardError naming shard, key and member; training can
be configured to skip and count, and fails past ``max_corrupt_fraction``."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from avp.data.manifest import read_manifest, write_manifest
from avp.data.reader import ShardRef, file_sha256, iter_raw_samples, resolve_shards
from avp.data.schema import ShardError, decode_sample, npz_bytes
from avp.data.writer import TarShardWriter
from avp.lit.data import AvatarDataModule
from tests.data.samples import write_dataset


def _validate(root: Path) -> None:
    refs, _ = resolve_shards(root, None)
    for ref in refs:
        for raw in iter_raw_samples(ref):
            decode_sample(raw, shard=ref.name)


def _rewrite(root: Path, shard: str, edit: Callable[[dict[str, bytes]], None], *, update_sha: bool = True) -> str:
    """Re-write one shard with ``edit`` applied to its first sample; returns that sample's key."""
    path = root / shard
    raws = list(iter_raw_samples(ShardRef(path=str(path), name=shard)))
    edit(raws[0])
    with TarShardWriter(path, split="train") as w:
        for raw in raws:
            w.add({k: v for k, v in raw.items() if k != "__shard__"})
    if update_sha:
        m = read_manifest(root)
        for s in m.shards:
            if s.path == shard:
                s.sha256, s.bytes = file_sha256(path), path.stat().st_size
        write_manifest(root, m)
    return raws[0]["__key__"].decode()


def _npz_edit(member: str, array: str, fn: Callable[[np.ndarray], np.ndarray]):
    def edit(raw: dict[str, bytes]) -> None:
        import io

        with np.load(io.BytesIO(raw[member])) as z:
            arrays = {k: z[k] for k in z.files}
        arrays[array] = fn(arrays[array])
        raw[member] = npz_bytes(arrays)

    return edit


def _meta_edit(**changes):
    def edit(raw: dict[str, bytes]) -> None:
        meta = json.loads(raw["meta.json"])
        meta.update(changes)
        raw["meta.json"] = json.dumps(meta).encode()

    return edit


CASES = {
    "missing member": (lambda raw: raw.pop("cameras.npz"), "cameras.npz", "missing member"),
    "missing frame": (lambda raw: raw.pop("t0001.v00.png"), "t0001.v00.png", "missing member"),
    "wrong dtype": (_npz_edit("gaussians.npz", "means", lambda a: a.astype(np.float64)), "gaussians.npz",
                    "dtype float64, expected float32"),
    "wrong shape": (_npz_edit("head.npz", "expr", lambda a: a[:, :2]), "head.npz", "'expr' has shape"),
    "NaN": (_npz_edit("gaussians.npz", "log_scales", lambda a: np.where(a > a.mean(), np.nan, a)),
            "gaussians.npz", "non-finite"),
    "binding out of range": (_npz_edit("gaussians.npz", "binding", lambda a: a + 1000), "gaussians.npz",
                             "outside the head model's faces"),
    "unknown schema version": (_meta_edit(schema=99), "meta.json", "unknown schema version 99"),
    "bad image": (lambda raw: raw.__setitem__("portrait.png", b"not a png"), "portrait.png", "cannot decode image"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_member_corruption_names_shard_key_and_member(tmp_path, case) -> None:
    write_dataset(tmp_path, {"train": 2}, frames=2, views=1, size=8)
    edit, member, problem = CASES[case]
    key = _rewrite(tmp_path, "train-000001.tar", edit)
    with pytest.raises(ShardError) as info:
        _validate(tmp_path)
    e = info.value
    assert (e.shard, e.key, e.member) == ("train-000001.tar", key, member)
    assert problem in str(e) and "train-000001.tar" in str(e) and key in str(e) and member in str(e)


@pytest.mark.parametrize("where", ["mid-member", "between members"])
def test_truncated_tar(tmp_path, where) -> None:
    write_dataset(tmp_path, {"train": 1}, frames=2, views=2, size=8)
    path = tmp_path / "train-000000.tar"
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    middle = members[len(members) // 2]
    # mid-member: inside a member's data; between members: exactly at a header, where tarfile alone ends silently
    cut = middle.offset_data + middle.size // 2 if where == "mid-member" else middle.offset
    path.write_bytes(data[:cut])
    with pytest.raises(ShardError, match=r"shard 'train-000000.tar', sample 'subj000__seq'.*truncated") as info:
        list(iter_raw_samples(ShardRef(path=str(path), name="train-000000.tar")))
    if where == "mid-member":
        assert info.value.member is not None


def test_checksum_mismatch(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 2}, size=8)
    _rewrite(tmp_path, "train-000000.tar", _meta_edit(sequence="changed"), update_sha=False)
    with pytest.raises(ShardError, match=r"shard 'train-000000.tar'.*SHA-256 mismatch: the manifest says"):
        _validate(tmp_path)


def test_training_skips_and_counts_then_fails_past_the_budget(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 4}, frames=1, views=1, size=8)
    _rewrite(tmp_path, "train-000002.tar", _npz_edit("gaussians.npz", "means", lambda a: a * np.nan))
    kwargs = dict(batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=1, shuffle_buffer=0)

    strict = AvatarDataModule(str(tmp_path), **kwargs)
    with pytest.raises(ShardError, match="train-000002.tar.*gaussians.npz"):
        list(strict.train_dataloader())

    lenient = AvatarDataModule(str(tmp_path), skip_corrupt=True, max_corrupt_fraction=0.3, **kwargs)
    batches = list(lenient.train_dataloader())
    assert len(batches) == 4  # the epoch is still full: the skipped sample is replaced by the next one
    assert sum(b.corrupt.skipped for b in batches) == 1
    assert batches[-1].corrupt.total == 1 and batches[-1].corrupt.samples_total == 4
    assert any("gaussians.npz" in m for b in batches for m in b.corrupt.errors)

    tight = AvatarDataModule(str(tmp_path), skip_corrupt=True, max_corrupt_fraction=0.1, **kwargs)
    with pytest.raises(RuntimeError, match="corrupt samples skipped.*max_corrupt_fraction=0.1"):
        list(tight.train_dataloader())

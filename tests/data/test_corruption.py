"""Bad input: every corruption named in the issue raises a ShardError naming shard, key and member; training can
be configured to skip and count, and fails past ``max_corrupt_fraction``."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from avp.data.reader import ShardRef, iter_raw_samples, resolve_shards
from avp.data.schema import ShardError, decode_sample
from avp.lit.data import AvatarDataModule
from tests.data.samples import meta_edit, npz_edit, rewrite_shard, write_dataset


def _validate(root: Path) -> None:
    refs, _ = resolve_shards(root, None)
    for ref in refs:
        for raw in iter_raw_samples(ref):
            decode_sample(raw, shard=ref.name)


_rewrite = rewrite_shard
_npz_edit = npz_edit
_meta_edit = meta_edit


# name -> (edit, member, field, problem)
CASES = {
    "missing member": (lambda raw: raw.pop("cameras.npz"), "cameras.npz", None, "missing member"),
    "missing frame": (lambda raw: raw.pop("t0001.v00.png"), "t0001.v00.png", None, "missing member"),
    "wrong dtype": (_npz_edit("gaussians.npz", "means", lambda a: a.astype(np.float64)), "gaussians.npz", "means",
                    "dtype float64, expected float32"),
    "wrong shape": (_npz_edit("head.npz", "expr", lambda a: a[:, :2]), "head.npz", "expr", "'expr' has shape"),
    "NaN": (_npz_edit("gaussians.npz", "log_scales", lambda a: np.where(a > a.mean(), np.nan, a)),
            "gaussians.npz", "log_scales", "non-finite"),
    "binding out of range": (_npz_edit("gaussians.npz", "binding", lambda a: a + 1000), "gaussians.npz", "binding",
                             "outside the head model's faces"),
    "unknown schema version": (_meta_edit(schema=99), "meta.json", "schema", "unknown schema version 99"),
    "bad image": (lambda raw: raw.__setitem__("portrait.png", b"not a png"), "portrait.png", None,
                  "cannot decode image"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_member_corruption_names_shard_key_and_member(tmp_path, case) -> None:
    write_dataset(tmp_path, {"train": 2}, frames=2, views=1, size=8)
    edit, member, field, problem = CASES[case]
    key = _rewrite(tmp_path, "train-000001.tar", edit)
    with pytest.raises(ShardError) as info:
        _validate(tmp_path)
    e = info.value
    assert (e.shard, e.key, e.member, e.field) == ("train-000001.tar", key, member, field)
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


# ------------------------------------------------------------------------------ checksums before the samples

@pytest.mark.parametrize("buffer_limit", [None, 0], ids=["in memory", "two passes"])
def test_a_tampered_shard_yields_no_sample_before_its_checksum_fails(tmp_path, buffer_limit) -> None:
    write_dataset(tmp_path, {"train": 2}, per_shard=2, size=8, frames=1, views=1)
    rewrite_shard(tmp_path, "train-000000.tar", meta_edit(sequence="tampered"), update_sha=False, index=1)
    (ref,) = resolve_shards(tmp_path, "train")[0]
    samples = iter_raw_samples(ref, buffer_limit=buffer_limit)
    with pytest.raises(ShardError, match="SHA-256 mismatch") as info:
        next(samples)  # the intact first sample is not served either: the shard is refused before it
    assert info.value.reason == "checksum"


def test_a_truncated_shard_yields_no_sample(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 2}, per_shard=2, size=8, frames=1, views=1)
    path = tmp_path / "train-000000.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])  # inside the second sample
    with pytest.raises(ShardError, match="truncated") as info:
        next(iter_raw_samples(ShardRef(path=str(path), name=path.name)))
    assert info.value.reason == "tar"


def test_skip_mode_drops_a_tampered_shard_whole_and_counts_its_samples(tmp_path) -> None:
    """The tampered sample is never trained and its intact neighbour is not counted as corrupt on its own: the shard
    goes, counted as its two samples under ``checksum``."""
    write_dataset(tmp_path, {"train": 4}, per_shard=2, size=8, frames=1, views=1)
    tampered = rewrite_shard(tmp_path, "train-000000.tar", npz_edit("gaussians.npz", "means", lambda a: a + 0.01),
                             update_sha=False)
    dm = AvatarDataModule(str(tmp_path), batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=1,
                          shuffle_buffer=0, samples_per_epoch=2, skip_corrupt=True, max_corrupt_fraction=1.0)
    loader = dm.train_dataloader()
    for _ in range(3):  # shard order is shuffled: an epoch may end before it reaches the tampered shard
        batches = list(loader)
        keys = [k for b in batches for k in b.keys]
        assert sorted(keys) == ["subj002__seq", "subj003__seq"]  # the other shard, in full
        assert tampered not in keys and "subj001__seq" not in keys
    total = batches[-1].corrupt.total
    assert total > 0 and total % 2 == 0 and batches[-1].corrupt.reasons_total == {"checksum": total}


def test_worker_errors_stay_shard_errors(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 2}, size=8, frames=1, views=1)
    rewrite_shard(tmp_path, "train-000001.tar", meta_edit(background=[float("nan"), 1.0, 1.0]))
    dm = AvatarDataModule(str(tmp_path), batch_size=1, num_workers=1, views_per_sample=1, shuffle_buffer=0)
    with pytest.raises(ShardError, match=r"shard 'train-000001.tar'.*field 'background'"):
        list(dm.train_dataloader())


# ----------------------------------------------------------------------------- evaluation splits and budgets

def test_a_skip_after_the_last_validation_batch_counts_against_the_budget(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 1, "val": 3}, size=8, frames=1, views=1)
    rewrite_shard(tmp_path, "val-000002.tar", npz_edit("cameras.npz", "Ks", np.zeros_like))
    kwargs = dict(batch_size=1, num_workers=0, views_per_sample=1, skip_corrupt=True)
    with pytest.raises(RuntimeError, match="val: 1 corrupt samples skipped.*'value': 1.*max_corrupt_fraction=0.1"):
        list(AvatarDataModule(str(tmp_path), max_corrupt_fraction=0.1, **kwargs).val_dataloader())
    batches = list(AvatarDataModule(str(tmp_path), max_corrupt_fraction=0.5, **kwargs).val_dataloader())
    assert [b.subject for b in batches] == [["subj001"], ["subj002"]]
    assert sum(b.corrupt.skipped for b in batches) == 1 and batches[-1].corrupt.total == 1


def test_a_validation_split_that_yields_nothing_fails(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 1, "val": 2}, size=8, frames=1, views=1)
    for shard in ("val-000000.tar", "val-000001.tar"):
        rewrite_shard(tmp_path, shard, meta_edit(background=["a", "b", "c"]))
    dm = AvatarDataModule(str(tmp_path), batch_size=1, num_workers=0, views_per_sample=1, skip_corrupt=True,
                          max_corrupt_fraction=1.0)
    with pytest.raises(RuntimeError, match=r"(?s)the 'val' split yielded no sample: 2 corrupt samples were skipped.*"
                                           r"field 'background'"):
        list(dm.val_dataloader())

"""Atomic, reproducible shard writing; the manifest (splits by subject, checksums, re-indexing); shard patterns."""

from __future__ import annotations

import pytest

from avp.data.manifest import MANIFEST_NAME, Manifest, index_directory, read_manifest, write_manifest
from avp.data.reader import count_samples, file_sha256, resolve_shards
from avp.data.schema import encode_sample
from avp.data.writer import ShardInfo, TarShardWriter, remove_stale_temporaries, write_shards
from tests.data.samples import make_sample, write_dataset


def test_a_crash_leaves_no_shard_that_looks_complete(tmp_path) -> None:
    samples = [encode_sample(make_sample(f"s{i}", seed=i, size=8)) for i in range(3)]

    def crashing():
        yield from samples
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(crashing(), tmp_path, split_of={f"s{i}__seq": "train" for i in range(3)}, max_samples=2)
    # the first shard was complete (renamed); the second was being written and is gone; no manifest exists
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    # a writer killed without cleanup leaves only a hidden temporary, which readers never see
    w = TarShardWriter(tmp_path / "train-000001.tar", split="train")
    w.add(samples[1])
    assert not (tmp_path / "train-000001.tar").exists() and w.tmp.exists()
    assert remove_stale_temporaries(tmp_path) == [w.tmp]


def test_same_samples_give_identical_bytes(tmp_path) -> None:
    infos = []
    for d in ("a", "b"):
        infos.append(write_shards((encode_sample(make_sample(f"s{i}", seed=i, size=8)) for i in range(3)),
                                  tmp_path / d, split_of={f"s{i}__seq": "train" for i in range(3)}, max_samples=2))
    assert [i.sha256 for i in infos[0]] == [i.sha256 for i in infos[1]]
    assert infos[0][0].sha256 == file_sha256(tmp_path / "a" / infos[0][0].path)
    assert [i.samples for i in infos[0]] == [2, 1]


def test_manifest_round_trip_and_reindex(tmp_path) -> None:
    manifest, samples = write_dataset(tmp_path, {"train": 3, "val": 1, "test": 1}, per_shard=2, size=8)
    loaded = read_manifest(tmp_path)
    assert loaded.to_json() == manifest.to_json()
    assert loaded.samples("train") == 3 and loaded.subjects("val") == ["subj003"]
    assert {s.split for s in loaded.shards} == {"train", "val", "test"}
    (tmp_path / MANIFEST_NAME).unlink()
    rebuilt = index_directory(tmp_path)
    assert [(s.path, s.split, s.samples, s.sha256, s.subjects) for s in rebuilt.shards] == \
        [(s.path, s.split, s.samples, s.sha256, s.subjects) for s in sorted(manifest.shards, key=lambda s: s.path)]


def test_a_subject_in_two_splits_is_refused(tmp_path) -> None:
    shards = [ShardInfo("a.tar", "train", 1, "0" * 64, 1, ["bob"]), ShardInfo("b.tar", "val", 1, "0" * 64, 1, ["bob"])]
    with pytest.raises(ValueError, match="subject 'bob' appears in splits 'train' and 'val'"):
        write_manifest(tmp_path, Manifest(root=tmp_path, head_model="h", n_faces=1, shards=shards))


def test_manifest_errors_name_the_file(tmp_path) -> None:
    (tmp_path / MANIFEST_NAME).write_text('{"format": "avp-shards", "version": 7}')
    with pytest.raises(ValueError, match=r"shards.json: unknown manifest version 7"):
        read_manifest(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        resolve_shards(other, "train")


def test_patterns_glob_braces_and_split_placeholder(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 3, "val": 2}, per_shard=1, size=8)
    refs, manifest = resolve_shards(str(tmp_path / "{split}-*.tar"), "val")
    assert manifest is None and [r.name for r in refs] == ["val-000000.tar", "val-000001.tar"]
    refs, _ = resolve_shards(str(tmp_path / "train-{000000..000001}.tar"), "train")
    assert [r.name for r in refs] == ["train-000000.tar", "train-000001.tar"]
    assert [count_samples(r) for r in refs] == [1, 1]
    with pytest.raises(FileNotFoundError, match="do not exist"):
        resolve_shards(str(tmp_path / "train-{000000..000009}.tar"), "train")

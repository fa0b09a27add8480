"""One validation of every field, values included, shared by the reader, ``avp data validate`` and training: every
bad value is refused with an error naming shard, sample, member and field; duplicates and split leakage are refused
by ``validate`` and ``index``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avp.data.cli import main as data_main
from avp.data.cli import validate
from avp.data.manifest import MANIFEST_NAME, index_directory
from avp.data.reader import iter_raw_samples, resolve_shards
from avp.data.schema import ShardError, check_sample, decode_sample
from avp.lit.data import AvatarDataModule
from tests.data.samples import make_sample, meta_edit, npz_edit, rewrite_shard, write_dataset

SHARD = "train-000001.tar"


def _scale_rotation(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[:, :3, :3] *= 2.0
    return a


def _mirror(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[:, 0, :3] *= -1.0
    return a


def _negative_focal(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[:, 0, 0] *= -1.0
    return a


# name -> (edit, member, field, words of the problem)
VALUE_CASES = {
    "background NaN": (meta_edit(background=[math.nan, 1.0, 1.0]), "meta.json", "background", "finite numbers in 0..1"),
    "background strings": (meta_edit(background=["a", "b", "c"]), "meta.json", "background", "must hold 3 numbers"),
    "background above 1": (meta_edit(background=[2.0, 0.0, 0.0]), "meta.json", "background", "in 0..1"),
    "background of 2": (meta_edit(background=[0.5, 0.5]), "meta.json", "background", "must hold 3 numbers"),
    "background huge": (meta_edit(background=[10**400, 0, 0]), "meta.json", "background", "in 0..1"),
    "frames 1e30": (meta_edit(frames=10**30), "meta.json", "frames", "more than 2147483647"),
    "schema true": (meta_edit(schema=True), "meta.json", "schema", "unknown schema version"),
    "width text": (meta_edit(width="8"), "meta.json", "width", "must be an integer"),
    "masks number": (meta_edit(masks=1), "meta.json", "masks", "must be bool"),
    "negative n_expr": (meta_edit(n_expr=-1), "meta.json", "n_expr", "must be >= 0"),
    "sh degree 7": (meta_edit(sh_degree=7), "meta.json", "sh_degree", "expected 0..3"),
    "empty subject": (meta_edit(subject=" "), "meta.json", "subject", "non-empty string"),
    "missing field": (lambda raw: raw.__setitem__("meta.json", json.dumps(
        {k: v for k, v in json.loads(raw["meta.json"]).items() if k != "frames"}).encode()), "meta.json", "frames",
        "missing from meta.json"),
    "all-zero Ks": (npz_edit("cameras.npz", "Ks", np.zeros_like), "cameras.npz", "Ks", "focal lengths"),
    "negative focal": (npz_edit("cameras.npz", "Ks", _negative_focal), "cameras.npz", "Ks", "must be positive"),
    "zero portrait Ks": (npz_edit("portrait_camera.npz", "Ks", np.zeros_like), "portrait_camera.npz", "Ks",
                         "focal lengths"),
    "Ks not pinhole": (npz_edit("cameras.npz", "Ks", lambda a: a + 1.0), "cameras.npz", "Ks", "pinhole"),
    "scaled viewmats": (npz_edit("cameras.npz", "viewmats", _scale_rotation), "cameras.npz", "viewmats", "not rigid"),
    "mirrored viewmats": (npz_edit("cameras.npz", "viewmats", _mirror), "cameras.npz", "viewmats", "det -1"),
    "inf translation": (npz_edit("head.npz", "translation", lambda a: a * np.inf), "head.npz", "translation",
                        "non-finite"),
    "huge expression": (npz_edit("head.npz", "expr", lambda a: a * 1e6), "head.npz", "expr", "more than 100"),
    "portrait head NaN": (npz_edit("portrait_head.npz", "shape", lambda a: a * np.nan), "portrait_head.npz", "shape",
                          "non-finite"),
    "means in millimetres": (npz_edit("gaussians.npz", "means", lambda a: a * 1000 + 50), "gaussians.npz", "means",
                             "more than 10"),
    "log scales overflow": (npz_edit("gaussians.npz", "log_scales", lambda a: a + 100), "gaussians.npz", "log_scales",
                            "outside [-30, 10]"),
    "zero quaternion": (npz_edit("gaussians.npz", "quats", lambda a: a * 0), "gaussians.npz", "quats", "zero norm"),
    "negative binding": (npz_edit("gaussians.npz", "binding", lambda a: a - 1000), "gaussians.npz", "binding",
                         "outside the head model's faces"),
    "camera size": (npz_edit("cameras.npz", "width", lambda a: a + 1), "cameras.npz", "width", "meta says"),
}


def _check(e: ShardError, key: str, member: str, field: str, words: str) -> None:
    assert (e.shard, e.key, e.member, e.field) == (SHARD, key, member, field), str(e)
    for part in (SHARD, key, member, field, words):
        assert part in str(e), (part, str(e))


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_every_bad_value_is_refused_naming_shard_sample_member_and_field(tmp_path, case, capsys) -> None:
    write_dataset(tmp_path, {"train": 2}, frames=2, views=2, size=8)
    edit, member, field, words = VALUE_CASES[case]
    key = rewrite_shard(tmp_path, SHARD, edit)
    # the reader + decoder ...
    refs, _ = resolve_shards(tmp_path, "train")
    with pytest.raises(ShardError) as info:
        for ref in refs:
            for raw in iter_raw_samples(ref):
                decode_sample(raw, shard=ref.name, expect=ref.expect)
    _check(info.value, key, member, field, words)
    # ... `avp data validate` ...
    assert data_main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert all(part in err for part in (SHARD, key, member, field)), err
    # ... and training, with the same error (strict) or a skip counted under the error's reason
    kwargs = dict(batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=1, shuffle_buffer=0)
    with pytest.raises(ShardError) as info:
        list(AvatarDataModule(str(tmp_path), **kwargs).train_dataloader())
    _check(info.value, key, member, field, words)
    batches = list(AvatarDataModule(str(tmp_path), skip_corrupt=True, max_corrupt_fraction=1.0,
                                    **kwargs).train_dataloader())
    assert key not in [k for b in batches for k in b.keys]
    assert batches[-1].corrupt.total == 1 and sum(batches[-1].corrupt.reasons_total.values()) == 1
    assert info.value.reason in batches[-1].corrupt.reasons_total


def test_the_writer_refuses_the_same_values() -> None:
    sample = make_sample("s", seed=0, size=8)
    sample.meta["background"] = [math.nan, 1.0, 1.0]
    with pytest.raises(ShardError, match="field 'background'"):
        check_sample(sample)
    sample = make_sample("s", seed=0, size=8)
    sample.cameras.Ks[:] = 0
    with pytest.raises(ShardError, match="member 'cameras.npz', field 'Ks'.*focal lengths"):
        check_sample(sample)


# name -> (edit of the first sample of the train shard SHARD, field, words)
MANIFEST_CASES = {
    "other head model": (meta_edit(head_model="flame-2023"), "head_model", "differs from the manifest's"),
    "other face count": (meta_edit(n_faces=51), "n_faces", "differs from the manifest's"),
    "split says val": (meta_edit(split="val"), "split", "lists this shard under 'train'"),
    "a held-out test subject": (meta_edit(subject="subj003"), "subject", "belongs to split 'test'"),
    "an unlisted subject": (meta_edit(subject="stranger"), "subject", "not among the manifest's subjects"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_samples_are_checked_against_the_manifest(tmp_path, case, capsys) -> None:
    write_dataset(tmp_path, {"train": 2, "val": 1, "test": 1}, size=8, frames=1, views=1)
    edit, field, words = MANIFEST_CASES[case]
    key = rewrite_shard(tmp_path, SHARD, edit)
    report = validate(str(tmp_path), keep_going=True, progress=False)
    assert len(report["errors"]) == 1 and report["samples"] == 3
    msg = report["errors"][0]
    assert all(part in msg for part in (SHARD, key, "meta.json", f"field {field!r}", words)), msg
    # a single shard named on the command line is checked against its folder's manifest too
    assert data_main(["validate", str(tmp_path / SHARD)]) == 1
    assert words in capsys.readouterr().err
    with pytest.raises(ShardError, match=words):
        list(AvatarDataModule(str(tmp_path), batch_size=1, num_workers=0, shuffle_buffer=0).train_dataloader())


def test_split_leakage_without_a_manifest(tmp_path) -> None:
    """A pattern has no manifest: ``validate`` still refuses one subject in two splits, from the samples' meta."""
    write_dataset(tmp_path, {"train": 2, "test": 1}, size=8, frames=1, views=1)
    rewrite_shard(tmp_path, SHARD, meta_edit(subject="subj002"))  # the test subject, in a train shard
    (tmp_path / MANIFEST_NAME).unlink()
    report = validate(str(tmp_path / "*.tar"), keep_going=True, progress=False)
    assert len(report["errors"]) == 1
    assert report["errors"][0] == (
        "shard 'train-000001.tar', sample 'subj001__seq', member 'meta.json', field 'subject': subject 'subj002' is in "
        "split 'train' here but in split 'test' in shard 'test-000000.tar': the splits leak")


def test_a_key_in_two_shards_is_refused_by_validate_and_index(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 2, "val": 1}, size=8, frames=1, views=1)
    key = "subj000__seq"  # the sample of train-000000.tar
    rewrite_shard(tmp_path, SHARD, lambda raw: raw.__setitem__("__key__", key.encode()))
    with pytest.raises(ShardError, match=rf"shard '{SHARD}', sample '{key}': the sample key also appears in shard "
                                         r"'train-000000.tar'") as info:
        validate(str(tmp_path), progress=False)
    assert info.value.reason == "duplicate"
    with pytest.raises(ShardError, match="also appears in shard 'train-000000.tar'"):
        index_directory(tmp_path)
    assert data_main(["index", str(tmp_path)]) == 2


def test_a_key_twice_in_one_shard_is_refused_everywhere(tmp_path) -> None:
    from avp.data.schema import encode_sample
    from avp.data.writer import TarShardWriter

    write_dataset(tmp_path, {"train": 1}, size=8, frames=1, views=1)
    members = encode_sample(make_sample("dup", seed=5, size=8, frames=1, views=1))
    with TarShardWriter(tmp_path / "train-000001.tar", split="train") as w:
        w.add(members)
        w.add(members)
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(ShardError, match=r"shard 'train-000001.tar', sample 'dup__seq'.*appears twice"):
        index_directory(tmp_path)
    with pytest.raises(ShardError, match="appears twice"):
        validate(str(tmp_path / "*.tar"), progress=False)
    with pytest.raises(ShardError, match="appears twice"):
        list(AvatarDataModule(str(tmp_path / "*.tar"), batch_size=1, num_workers=0).train_dataloader())


def test_index_refuses_a_test_subject_in_a_train_shard(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 2, "test": 1}, size=8, frames=1, views=1)
    rewrite_shard(tmp_path, SHARD, meta_edit(subject="subj002"))
    with pytest.raises(ValueError, match="subject 'subj002' appears in splits .* splits must be by subject"):
        index_directory(tmp_path)

"""A tracked subject's static offset end to end: converter -> shard (``head.npz``) -> reader -> item -> collate ->
``AvatarBatch``, the schema's checks of it, and the evaluation clip, teacher row and viewer that pose with it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avp.data.collate import collate
from avp.data.convert_gaussian_avatars import convert, read_point_cloud_ply
from avp.data.item import sample_to_item
from avp.data.reader import iter_raw_samples, resolve_shards
from avp.data.schema import HEAD, ShardError, decode_sample, encode_sample, npz_bytes
from avp.head import HeadConfig, face_frames, load_head_model, local_to_world_points
from avp.types import HEAD_PARAM_FIELDS, HeadParams
from tests.data.samples import make_sample, npz_edit
from tests.fixtures.flame import write_flame_pickle
from tests.fixtures.gaussian_avatars import write_small_clip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flame_file(tmp_path_factory):
    return write_flame_pickle(tmp_path_factory.mktemp("flame") / "flame2023.pkl", version="2023")


@pytest.fixture(scope="module")
def head(flame_file):
    return load_head_model(HeadConfig(flame_path=str(flame_file), teeth=True))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, head):
    """A GaussianAvatars fixture fit converted into a shard: ``(ga_dir, flame, raw sample, shard name)``."""
    root = tmp_path_factory.mktemp("static_offset")
    ga, export, flame = write_small_clip(root / "in", head.n_faces)
    out = root / "shards"
    convert(head, ga, export, out, size=32, portrait_size=24, split="train", frame_format="png")
    (ref,), _ = resolve_shards(out, "train")
    (raw,) = list(iter_raw_samples(ref))
    return ga, flame, raw, ref.name


def _item(raw: dict, seed: int = 0):
    return sample_to_item(raw, np.random.default_rng(seed), frames_per_sample=2, views_per_sample=2, image_size=None)


def test_a_converted_shard_round_trips_the_static_offset_into_the_batch(head, converted) -> None:
    ga, flame, raw, shard = converted
    sample = decode_sample(raw, shard=shard, decode_frames=False)
    offset = sample.head["static_offset"]
    assert offset.dtype == np.float32 and offset.shape == (head.n_vertices, 3)
    np.testing.assert_array_equal(offset, flame.static_offset[0])  # float32 in, float32 out: bit-identical
    batch = collate([_item(raw, 0), _item(raw, 1)])
    assert batch.static_offset is not None and batch.static_offset.shape == (2, head.n_vertices, 3)
    for row in batch.static_offset:
        np.testing.assert_array_equal(row.numpy(), flame.static_offset[0])
    assert batch.to(torch.float64).static_offset.dtype == torch.float64  # moves with the batch
    # the teacher was canonicalised on the offset mesh: the batch's offset is the one its points live on
    assert head.check_static_offset(batch.static_offset, batch.teacher.means) is not None


def test_shards_without_a_static_offset_read_as_before() -> None:
    sample = make_sample("subj", seed=3)
    encoded = encode_sample(sample)
    # head.npz holds exactly the head fields, bytes unchanged by the optional array's support
    assert encoded[HEAD] == npz_bytes({k: sample.head[k].astype(np.float32) for k in HEAD_PARAM_FIELDS})
    raw = {**encoded, "__shard__": b"old.tar"}
    assert "static_offset" not in decode_sample(raw, shard="old.tar", decode_frames=False).head
    item = _item(raw)
    assert item.static_offset is None and collate([item, item]).static_offset is None


def test_a_batch_mixing_samples_with_and_without_offsets_is_refused(converted) -> None:
    raw = converted[2]
    with_offset = _item(raw)
    without = dataclasses.replace(_item(raw), key="074__FREE", static_offset=None)
    with pytest.raises(ValueError, match=r"\['074__EMO-1'\] carry a static_offset .* \['074__FREE'\] do not"):
        collate([with_offset, without])


@pytest.mark.parametrize(("fn", "problem", "reason"), [
    (lambda a: a.astype(np.float64), "dtype float64, expected float32", "format"),
    (lambda a: np.where(np.arange(len(a))[:, None] == 7, np.nan, a).astype(np.float32), "non-finite", "value"),
    (lambda a: a[:5023], "has 5023 vertices, but head model 'flame2023+teeth' (10144 faces) has 5143", "format"),
    (lambda a: a[:, :2], "shape [5143, 2], expected [*, 3]", "format"),
    (lambda a: a * 1e4, "more than 10", "value"),
])
def test_a_bad_static_offset_is_named(converted, fn, problem, reason) -> None:
    raw = dict(converted[2])
    npz_edit(HEAD, "static_offset", fn)(raw)
    with pytest.raises(ShardError) as e:
        decode_sample(raw, shard="train-074.tar", decode_frames=False)
    err = e.value
    assert (err.shard, err.key, err.member, err.field) == ("train-074.tar", "074__EMO-1", HEAD, "static_offset")
    assert problem in str(err) and err.reason == reason, str(err)


def test_writing_checks_the_static_offset_too(converted) -> None:
    sample = decode_sample(converted[2], shard="train-074.tar")
    sample.head["static_offset"] = sample.head["static_offset"].copy()
    sample.head["static_offset"][3, 1] = np.inf
    with pytest.raises(ShardError, match="member 'head.npz', field 'static_offset': .* non-finite"):
        encode_sample(sample)


def test_evaluation_and_the_viewer_pose_the_fit_on_the_offset_mesh(head, flame_file, converted) -> None:
    """The evaluation clip carries the offset; its teacher row (face frames for GaussianAvatars data) and the viewer's
    GaussianAvatars loader pose the splats exactly as GaussianAvatars does: ``R_f xyz s_f + c_f`` on the posed offset
    mesh."""
    from avp.eval.clips import source_from_sample
    from avp.eval.methods import TeacherMethod
    from avp.view.source import load_source

    ga, flame, raw, shard = converted
    sample = decode_sample(raw, shard=shard, decode_frames=False)
    source = source_from_sample(sample)
    np.testing.assert_array_equal(source.static_offset[0].numpy(), flame.static_offset[0])
    avatar = TeacherMethod(head, "auto").build(source, seed=0)
    assert avatar.animation == "face_frame"
    np.testing.assert_array_equal(avatar.static_offset.numpy(), flame.static_offset[0])

    ply = next(ga.rglob("point_cloud.ply"))
    shown = load_source(ply, flame=str(flame_file)).avatar
    np.testing.assert_array_equal(shown.static_offset.numpy(), flame.static_offset[0])
    np.testing.assert_allclose(shown.cloud.means.numpy(), source.teacher.means.numpy(), atol=2e-6)

    t = 1
    params = HeadParams(**{k: torch.from_numpy(sample.head[k][t] if k != "shape" else sample.head[k])[None]
                           for k in HEAD_PARAM_FIELDS})
    offset = torch.from_numpy(flame.static_offset)  # [1, V, 3]
    posed = head(params, static_offset=offset).vertices[0].double()
    fit = read_point_cloud_ply(ply)
    frames = face_frames(posed, head.faces).gather(torch.from_numpy(fit.binding))
    expected = local_to_world_points(torch.from_numpy(fit.xyz).double(), frames).numpy()
    for a in (avatar, shown):
        got = a.animate(params).means[0].numpy()
        np.testing.assert_allclose(got, expected, atol=2e-5)

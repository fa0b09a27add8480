"""Schema: exact round trip of one sample through encode -> tar -> decode, and in-memory validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avp.data.reader import ShardRef, iter_raw_samples
from avp.data.schema import (
    GAUSSIAN_FIELDS,
    SCHEMA_VERSION,
    ShardError,
    activate,
    decode_sample,
    encode_sample,
    frame_member,
    npz_bytes,
    teacher_cloud,
)
from avp.data.writer import TarShardWriter
from avp.types import HEAD_PARAM_FIELDS
from tests.data.samples import make_sample


def _through_tar(tmp_path, sample):
    with TarShardWriter(tmp_path / "x.tar", split="train") as w:
        w.add(encode_sample(sample))
    (raw,) = list(iter_raw_samples(ShardRef(path=str(tmp_path / "x.tar"), name="x.tar", sha256=w.info.sha256)))
    return raw


def test_round_trip_is_bit_exact(tmp_path) -> None:
    s = make_sample("alice", seed=1, n_points=33, frames=3, views=2, size=12)
    raw = _through_tar(tmp_path, s)
    d = decode_sample(raw, shard="x.tar")
    assert d.key == s.key and d.meta == s.meta and d.meta["schema"] == SCHEMA_VERSION
    np.testing.assert_array_equal(d.portrait, s.portrait)
    np.testing.assert_array_equal(d.frames, s.frames)
    np.testing.assert_array_equal(d.masks, s.masks)
    for name in GAUSSIAN_FIELDS:
        a, b = getattr(d.gaussians, name), getattr(s.gaussians, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    for name in HEAD_PARAM_FIELDS:
        assert d.head[name].tobytes() == s.head[name].tobytes()
        assert d.portrait_head[name].tobytes() == s.portrait_head[name].tobytes()
    assert d.cameras.Ks.tobytes() == s.cameras.Ks.tobytes()
    assert d.cameras.viewmats.tobytes() == s.cameras.viewmats.tobytes()
    assert (d.portrait_camera.width, d.portrait_camera.height) == (s.portrait_camera.width, s.portrait_camera.height)


def test_decoding_a_subset_of_frames_and_views(tmp_path) -> None:
    s = make_sample("bob", seed=2, frames=4, views=3, size=8)
    raw = _through_tar(tmp_path, s)
    d = decode_sample(raw, frame_index=[3, 1], view_index=[2])
    np.testing.assert_array_equal(d.frames, s.frames[[3, 1]][:, [2]])
    np.testing.assert_array_equal(d.masks, s.masks[[3, 1]][:, [2]])
    none = decode_sample(raw, decode_frames=False)
    assert none.frames is None and none.masks is None and none.frame_index.size == 0


def test_jpeg_frames_decode_to_the_stored_size(tmp_path) -> None:
    s = make_sample("carol", seed=3, frame_format="jpg", masks=False, size=16)
    raw = _through_tar(tmp_path, s)
    assert frame_member(0, 0, "jpg") in raw
    d = decode_sample(raw)
    assert d.frames.shape == s.frames.shape and d.frames.dtype == np.uint8 and d.masks is None


def test_encode_refuses_an_inconsistent_sample() -> None:
    s = make_sample("dave", seed=4)
    s.gaussians.means = s.gaussians.means[:-1]
    with pytest.raises(ShardError, match=r"sample 'dave__seq', member 'gaussians.npz'.*39 points"):
        encode_sample(s)
    s = make_sample("dave", seed=4)
    s.head["expr"][0, 0] = np.nan
    with pytest.raises(ShardError, match=r"member 'head.npz'.*'expr' has 1 non-finite"):
        encode_sample(s)
    s = make_sample("dave", seed=4)
    s.frames = s.frames.astype(np.float32)
    with pytest.raises(ShardError, match="frames must be uint8"):
        encode_sample(s)


def test_npz_bytes_are_reproducible() -> None:
    a = {"x": np.arange(5, dtype=np.float32), "y": np.eye(2, dtype=np.int32)}
    assert npz_bytes(a) == npz_bytes(dict(a))


def test_activation_is_the_documented_map() -> None:
    s = make_sample("erin", seed=5, n_points=10)
    g = s.gaussians
    cloud = teacher_cloud(g)
    assert torch.equal(cloud.means[0], torch.from_numpy(g.means))
    assert torch.allclose(cloud.scales[0], torch.from_numpy(np.exp(g.log_scales)))
    assert torch.allclose(cloud.opacities[0], torch.from_numpy(1 / (1 + np.exp(-g.opacity_logits))))
    assert torch.allclose(cloud.quats.norm(dim=-1), torch.ones(1, 10))
    q = torch.tensor([[[2.0, 0, 0, 0]]])
    out = activate(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), torch.zeros(1, 1), q, torch.zeros(1, 1, 1, 3))
    assert torch.equal(out.quats, torch.tensor([[[1.0, 0, 0, 0]]])) and out.opacities.item() == 0.5

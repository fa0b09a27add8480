"""``resample_teacher``: training items of synthetic subjects carry fresh surface samplings of their own teacher,
seeded, with frames and views unchanged; evaluation items and ``resample_teacher: 0`` keep the shard's teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avp.data.item import resampled_teacher
from avp.data.synthetic import SynthConfig, synthesize
from avp.data.synthetic.generate import resample_teacher
from avp.head import HeadConfig, load_head_model
from avp.lit.data import AvatarDataModule
from avp.metrics.point_cloud import chamfer_distance

TINY = dict(views=2, frames=2, size=16, portrait_size=16, points=(60, 90), shard_samples=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(subjects=6, seed=5, val_fraction=0.34, test_fraction=0.0, **TINY), out, workers=1,
               progress=False)
    return out


def _batches(root, p: float, seed: int = 0, epochs: int = 1):
    dm = AvatarDataModule(str(root), batch_size=2, num_workers=0, frames_per_sample=1, views_per_sample=1,
                          shuffle_buffer=0, seed=seed, resample_teacher=p)
    loader = dm.train_dataloader()
    return [batch for _ in range(epochs) for batch in loader], dm


def test_resampled_items_are_other_draws_of_the_same_subject_and_keep_frames_and_views(root) -> None:
    plain, _ = _batches(root, 0.0)
    fresh, _ = _batches(root, 1.0)
    head = load_head_model(HeadConfig())
    for a, b in zip(plain, fresh):
        assert a.keys == b.keys
        assert torch.equal(a.images, b.images) and torch.equal(a.frame_index, b.frame_index)
        assert torch.equal(a.view_index, b.view_index) and torch.equal(a.portrait, b.portrait)
        for i in range(len(a.keys)):
            own = a.teacher.means[i][a.teacher.mask[i]]
            new = b.teacher.means[i][b.teacher.mask[i]]
            assert not (own.shape == new.shape and torch.equal(own, new))
            assert chamfer_distance(new, own) < 0.04  # the same head (which draw it is: the test below)
            # the binding is the resampling's own (each point's face is the one its draw chose)
            assert int(b.binding[i][b.teacher.mask[i]].max()) < head.faces.shape[0]


def test_draws_are_seeded_fresh_per_epoch_and_off_outside_training(root) -> None:
    one, _ = _batches(root, 1.0, epochs=2)
    two, dm = _batches(root, 1.0, epochs=2)
    for a, b in zip(one, two):
        assert torch.equal(a.teacher.means, b.teacher.means)
    half = len(one) // 2
    for a, b in zip(one[:half], one[half:]):  # the same subjects, shuffled or not: new draws each epoch
        by_key = {k: a.teacher.means[i] for i, k in enumerate(a.keys)}
        for i, k in enumerate(b.keys):
            if k in by_key:
                assert not torch.equal(by_key[k], b.teacher.means[i])
    dm.setup("fit")
    plain_dm = AvatarDataModule(str(root), batch_size=2, num_workers=0, frames_per_sample=1, views_per_sample=1)
    plain_dm.setup("fit")
    for a, b in zip(dm.val_dataloader(), plain_dm.val_dataloader()):
        assert torch.equal(a.teacher.means, b.teacher.means)


def test_a_resampled_item_is_the_generator_draw_it_names(root) -> None:
    from avp.benchmark_points import held_out_subjects

    sample = held_out_subjects(root, "train")[0]
    rng = np.random.default_rng(3)
    got = resampled_teacher(sample.meta, rng)
    draw = int(np.random.default_rng(3).integers(2, 2**31))
    want = resample_teacher(sample.meta, load_head_model(HeadConfig()), draw=draw)
    assert np.array_equal(got.means, want.means) and np.array_equal(got.binding, want.binding)


def test_bad_settings_and_subjects_are_refused(root) -> None:
    from avp.benchmark_points import held_out_subjects

    with pytest.raises(ValueError, match="resample_teacher must be a probability"):
        AvatarDataModule(str(root), resample_teacher=1.5)
    meta = dict(held_out_subjects(root, "train")[0].meta)
    with pytest.raises(ValueError, match="resample_teacher needs synthetic subjects of the built-in head"):
        resampled_teacher({**meta, "head_model": "flame-2023"}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="data: resample_teacher: .*not a synthetic subject"):
        resampled_teacher({**meta, "source": "nersemble"}, np.random.default_rng(0))

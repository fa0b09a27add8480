"""``avp data synth --hair-volume``: thicker hair off the scalp, nothing else changes, and resampling follows it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avp.data.synthetic import SynthConfig, make_subject
from avp.data.synthetic.appearance import MAX_HAIR_THICKNESS, sample_appearance
from avp.data.synthetic.generate import resample_teacher
from avp.head import HeadConfig, load_head_model

TINY = SynthConfig(subjects=1, views=1, frames=1, size=16, portrait_size=16, points=(120, 120))


@pytest.fixture(scope="module")
def head():
    return load_head_model(HeadConfig())


def _first_seed_with_hair(style: str) -> int:
    return next(s for s in range(500) if sample_appearance(np.random.default_rng(s)).hair_style == style)


def _style_of_subject(index: int, head) -> str:
    rng = np.random.default_rng([TINY.seed, index])
    rng.normal(0, 1, head.n_shape)  # a subject draws its shape first (generate._identity)
    return sample_appearance(rng).hair_style


@pytest.mark.parametrize("style", ["short", "long", "curly"])
def test_the_volume_scales_only_the_hair_thickness_up_to_the_cap(style: str) -> None:
    seed = _first_seed_with_hair(style)
    plain = sample_appearance(np.random.default_rng(seed))
    thick = sample_appearance(np.random.default_rng(seed), hair_volume=3.0)
    assert thick.hair_thickness == pytest.approx(min(3.0 * plain.hair_thickness, MAX_HAIR_THICKNESS))
    assert thick.hair_thickness > plain.hair_thickness
    for f in dataclasses.fields(plain):
        if f.name != "hair_thickness":
            assert np.array_equal(np.asarray(getattr(plain, f.name)), np.asarray(getattr(thick, f.name))), f.name


def test_volume_one_is_the_default_subject_and_a_resampling_keeps_the_volume(head) -> None:
    index = next(i for i in range(200) if _style_of_subject(i, head) in ("short", "curly"))
    default = make_subject(TINY, index, "train", head)
    same = make_subject(dataclasses.replace(TINY, hair_volume=1.0), index, "train", head)
    assert np.array_equal(default.gaussians.means, same.gaussians.means)
    thick = make_subject(dataclasses.replace(TINY, hair_volume=3.0), index, "train", head)
    assert thick.meta["extra"]["hair_volume"] == 3.0
    assert not np.array_equal(default.gaussians.means, thick.gaussians.means)
    # the hair reaches higher above the head with more volume
    assert thick.gaussians.means[:, 1].max() > default.gaussians.means[:, 1].max()
    # a resampling of the thick subject is thick too: its top is nearer the thick teacher's than the default one's
    resampled = resample_teacher(thick.meta, head)
    top = resampled.means[:, 1].max()
    assert abs(top - thick.gaussians.means[:, 1].max()) < abs(top - default.gaussians.means[:, 1].max())


def test_a_volume_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="hair_volume"):
        SynthConfig(hair_volume=0.0)

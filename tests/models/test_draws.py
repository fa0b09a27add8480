"""Merged draws (``sampling.draws``): farthest-point subsets on analytic clouds, and a conditional generator whose
merged clouds hold only points its single draws sampled, as many as they have on average, re-sorted, with the
teacher-forced hidden states of the merged sequence."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avp.head import load_head_model
from avp.models.conditional import ConditionalPointGenerator
from avp.models.draws import farthest_point_subset, merge_draws
from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig
from avp.models.generator import GeneratorConfig
from avp.models.sampling import SamplingConfig
from avp.types import HeadParams

pytestmark = pytest.mark.usefixtures("one_thread")


def test_farthest_point_subset_spreads_over_clusters_and_ignores_padding() -> None:
    # three tight clusters of 5 points: 3 kept points must be one per cluster, whatever the order
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cloud = (centres[:, None] + 0.01 * torch.randn(3, 5, 3, generator=g)).reshape(15, 3)
    cloud = cloud[torch.randperm(15, generator=g)]
    points = torch.cat([cloud, torch.full((2, 3), 50.0)])[None].repeat(2, 1, 1)  # 2 far padding rows
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[:, 15:] = False
    mask[1, 1:] = False  # cloud 1: a single real point
    index, valid = farthest_point_subset(points, mask, torch.tensor([3, 3]))
    assert index.shape == (2, 3) and valid.tolist() == [[True] * 3, [True, False, False]]
    kept = points[0, index[0]]
    assert sorted(torch.cdist(kept, centres).argmin(-1).tolist()) == [0, 1, 2]
    assert int(index[0, 0]) == 0 and int(index[1, 0]) == 0  # starts at the first real point
    assert bool((index[0] < 15).all())  # padding never taken


def test_merge_draws_keeps_the_mean_count_of_points_from_the_union() -> None:
    g = torch.Generator().manual_seed(1)
    points = torch.rand(4, 6, 3, generator=g)
    binding = torch.randint(0, 9, (4, 6), generator=g)
    n_points = torch.tensor([6, 3, 2, 5])
    mask = torch.arange(6)[None] < n_points[:, None]
    merged, bind, valid = merge_draws(points, binding, mask, n_points, draws=2)
    assert valid.sum(-1).tolist() == [round(4.5), round(3.5)]  # 4 (half to even) and 4
    for b in range(2):
        union = {(tuple(p.tolist()), int(f)) for d in (2 * b, 2 * b + 1)
                 for p, f, m in zip(points[d], binding[d], mask[d]) if m}
        got = [(tuple(p.tolist()), int(f)) for p, f, m in zip(merged[b], bind[b], valid[b]) if m]
        assert len(set(got)) == len(got) and set(got) <= union
    with pytest.raises(ValueError, match="whole number of 3 draws"):
        merge_draws(points, binding, mask, n_points, draws=3)


def test_a_generator_samples_merged_draws() -> None:
    torch.manual_seed(0)
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=32, freeze=False),
                                mesh=MeshEncoderConfig(n_points=8, n_layers=1, n_heads=4))
    net = ConditionalPointGenerator(load_head_model(), condition=condition,
                                    model=GeneratorConfig(n_layers=1, width=32, n_heads=4)).eval()
    portrait = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    params = HeadParams.zeros(2, n_shape=net.head_model.n_shape, n_expr=net.head_model.n_expr)
    with torch.no_grad():
        cond = net.encode_condition(portrait, params)
        config = SamplingConfig(max_points=12, min_points=4, window=64)
        merged = net.sample(cond, dataclasses.replace(config, draws=3), torch.Generator().manual_seed(5))
        single = net.sample(cond.repeat_interleave(3, 0), config, torch.Generator().manual_seed(5))
        assert torch.equal(merged.n_points, torch.round(single.n_points.reshape(2, 3).double().mean(-1)).long())
        for b in range(2):
            rows = single.tokens[3 * b : 3 * b + 3]
            drawn = {tuple(r[1 + 4 * i : 5 + 4 * i].tolist()) for r, n in zip(rows, single.n_points[3 * b :])
                     for i in range(int(n))}
            n = int(merged.n_points[b])
            seq = merged.tokens[b, 1 : 1 + 4 * n].reshape(n, 4)
            assert {tuple(r.tolist()) for r in seq} <= drawn
            assert int(merged.tokens[b, 0]) == net.tokenizer.bos_id
        assert torch.equal(merged.finished, single.finished.reshape(2, 3).all(-1))
        assert torch.equal(merged.lengths, torch.where(merged.finished, 4 * merged.n_points + 2,
                                                       4 * merged.n_points + 1))
        # the merged sequence is sorted like a teacher's and its hidden states are the teacher-forced ones
        again, lengths = net.teacher_tokens(merged.points, merged.binding, merged.mask)
        n = int(merged.n_points.max())
        assert torch.equal(again[:, : 1 + 4 * n], merged.tokens[:, : 1 + 4 * n])
        forced = net.teacher_features(cond, again, lengths, config.window)
        torch.testing.assert_close(merged.point_hidden, forced)
        # a draw stopped at max_points leaves its merged cloud unfinished: no EOS, as in a single draw
        capped = net.sample(cond, dataclasses.replace(config, draws=3, min_points=12), torch.Generator().manual_seed(5))
        assert not bool(capped.finished.any()) and torch.equal(capped.lengths, 4 * capped.n_points + 1)
        assert not bool((capped.tokens == net.tokenizer.eos_id).any())
    with pytest.raises(ValueError, match="draws must be >= 1"):
        SamplingConfig(draws=0).validate()

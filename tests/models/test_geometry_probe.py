"""The geometry probe: its occupancy target on analytic clouds, its loss training the condition encoder, and its
absence by default (the paper's training, unchanged)."""

from __future__ import annotations

import pytest
import torch

from avp.head import load_head_model
from avp.models.geometry_probe import GeometryProbe, GeometryProbeConfig, cell_counts, occupancy_grid
from tests.lit.test_generator import make_batch, tiny_module

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 4.0]])


def test_occupancy_marks_exactly_the_cells_that_hold_a_valid_point() -> None:
    # cell size (0.25, 0.5, 1.0) with 4 cells per axis; the third point is masked out, the fourth lies outside the box
    means = torch.tensor([[[0.1, 0.1, 0.1], [0.9, 1.9, 3.9], [0.5, 1.0, 2.0], [2.0, -1.0, 9.0]]])
    mask = torch.tensor([[True, True, False, True]])
    grid = occupancy_grid(means, mask, BOX, 4).reshape(4, 4, 4)
    expected = torch.zeros(4, 4, 4)
    expected[0, 0, 0] = 1  # the first point
    expected[3, 3, 3] = 1  # the second point
    expected[3, 0, 3] = 1  # the outside point, clamped to the border cells (as the tokenizer clamps)
    assert torch.equal(grid, expected)


def test_occupancy_is_one_per_cell_however_many_points_share_it() -> None:
    means = torch.full((2, 5, 3), 0.05)
    grid = occupancy_grid(means, torch.ones(2, 5, dtype=torch.bool), BOX, 3)
    assert grid.sum(-1).tolist() == [1.0, 1.0] and grid.max() == 1


def test_the_probe_learns_the_occupancy_of_two_clouds_from_their_condition_tokens() -> None:
    torch.manual_seed(0)
    probe = GeometryProbe(16, GeometryProbeConfig(weight=1.0, target="occupancy", cells=4, queries=2))
    condition = torch.randn(2, 6, 16)
    means = torch.rand(2, 20, 3) * BOX[1]
    mask = torch.ones(2, 20, dtype=torch.bool)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    first = float(probe.loss(condition, means, mask, BOX))
    for _ in range(150):
        opt.zero_grad()
        probe.loss(condition, means, mask, BOX).backward()
        opt.step()
    assert float(probe.loss(condition, means, mask, BOX)) < 0.05 * first
    predicted = probe(condition) > 0
    assert torch.equal(predicted, occupancy_grid(means, mask, BOX, 4).bool())


def test_the_density_probe_learns_where_the_points_of_two_clouds_are() -> None:
    torch.manual_seed(0)
    probe = GeometryProbe(16, GeometryProbeConfig(weight=1.0, cells=4, queries=2))
    condition = torch.randn(2, 6, 16)
    means = torch.rand(2, 30, 3) * BOX[1]
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False  # padding does not count
    share = cell_counts(means, mask, BOX, 4)
    share = share / share.sum(-1, keepdim=True)
    # the loss is the cross-entropy against the share of points per cell: its minimum is the share's entropy
    entropy = float(-(share * share.clamp(min=1e-12).log()).sum(-1).mean())
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        probe.loss(condition, means, mask, BOX).backward()
        opt.step()
    assert float(probe.loss(condition, means, mask, BOX)) < entropy + 0.05
    assert torch.allclose(probe(condition).softmax(-1), share, atol=0.02)


def test_cell_counts_count_every_valid_point_once() -> None:
    means = torch.rand(3, 50, 3) * BOX[1]
    mask = torch.rand(3, 50) > 0.3
    counts = cell_counts(means, mask, BOX, 5)
    assert torch.equal(counts.sum(-1), mask.sum(-1).float())
    assert torch.equal(occupancy_grid(means, mask, BOX, 5), (counts > 0).float())


def test_bad_probe_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="weight"):
        GeometryProbe(16, GeometryProbeConfig(weight=-1.0))
    with pytest.raises(ValueError, match="cells"):
        GeometryProbe(16, GeometryProbeConfig(weight=1.0, cells=0))
    with pytest.raises(ValueError, match="target"):
        GeometryProbe(16, GeometryProbeConfig(weight=1.0, target="volume"))


def test_off_by_default_and_on_it_adds_its_loss_and_trains_the_image_encoder() -> None:
    head = load_head_model()
    batch = make_batch(head, 2, 12, seed=0)
    plain = tiny_module()
    assert plain.probe is None and not any(k.startswith("probe.") for k in plain.state_dict())
    torch.manual_seed(0)
    base = plain.training_step(batch, 0)

    probed = tiny_module(geometry_probe={"weight": 0.5, "cells": 4})
    probed.net.load_state_dict(plain.net.state_dict())  # the same network: only the probe differs
    seen = []
    loss = probed.probe.loss

    def recorded(*args):
        seen.append(loss(*args))
        return seen[-1]

    probed.probe.loss = recorded
    torch.manual_seed(0)
    total = probed.training_step(batch, 0)
    [geometry] = seen
    assert float(geometry) > 0 and torch.allclose(total, base + 0.5 * geometry, atol=1e-5)

    # the probe's loss alone reaches the portrait encoder (that is its purpose) but not the Transformer's head
    probed.zero_grad()
    geometry.backward()
    image = probed.net.condition.image
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in image.parameters())
    assert probed.net.transformer.head.weight.grad is None
    assert probed.hparams["geometry_probe"] == {"weight": 0.5, "target": "density", "cells": 4, "queries": 8}

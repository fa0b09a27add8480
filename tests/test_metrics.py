"""Point-cloud metrics: analytic cases and parity with a KD-tree reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from avp import metrics
from avp.metrics import (
    batch_point_cloud_metrics,
    binding_agreement,
    chamfer_distance,
    f_score,
    nearest_neighbors,
    point_cloud_metrics,
)


def test_analytic_cases() -> None:
    a = torch.tensor([[0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.3, 0.4]])
    assert chamfer_distance(a, b) == pytest.approx(0.5)
    assert chamfer_distance(b, b) == 0
    # a superset: a -> b is 0, b -> a is the extra point's distance over 2 points
    sup = torch.cat([a, b])
    assert chamfer_distance(a, sup) == pytest.approx((0 + 0.5 / 2) / 2)
    assert f_score(sup, sup, 1e-6) == 1
    assert f_score(a, b, 0.4) == 0 and f_score(a, b, 0.6) == 1
    # precision 1/2 (one of two predictions near), recall 1: F = 2/3
    assert f_score(sup, a, 0.1) == pytest.approx(2 / 3)


def test_chamfer_and_fscore_match_a_kd_tree_reference() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(700, 3)), rng.normal(size=(500, 3)) * 1.1 + 0.05
    dp, _ = cKDTree(q).query(p)
    dq, _ = cKDTree(p).query(q)
    tp, tq = torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32)
    assert float(chamfer_distance(tp, tq)) == pytest.approx((dp.mean() + dq.mean()) / 2, rel=1e-5)
    tau = 0.2
    prec, rec = (dp <= tau).mean(), (dq <= tau).mean()
    assert float(f_score(tp, tq, tau)) == pytest.approx(2 * prec * rec / (prec + rec), rel=1e-5)


def test_chunking_does_not_change_nearest_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    p, q = torch.randn(300, 3), torch.randn(200, 3)
    d_full, i_full = nearest_neighbors(p, q)
    d_small, i_small = nearest_neighbors(p, q, chunk=7)
    assert torch.equal(i_full, i_small) and torch.allclose(d_full, d_small)


def test_binding_agreement_and_count_ratio() -> None:
    teacher = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    faces = torch.tensor([5, 6, 7])
    gen = teacher + 0.01  # each generated point is nearest to the matching teacher point
    assert binding_agreement(gen, faces, teacher, faces) == 1
    assert binding_agreement(gen, torch.tensor([5, 0, 7]), teacher, faces) == pytest.approx(2 / 3)
    m = point_cloud_metrics(gen[:2], faces[:2], teacher, faces, tau=0.05)
    assert m.count_ratio == pytest.approx(2 / 3) and m.binding_agreement == 1 and m.f_score == pytest.approx(0.8)


def test_empty_clouds() -> None:
    teacher, faces = torch.randn(4, 3), torch.arange(4)
    m = point_cloud_metrics(teacher[:0], faces[:0], teacher, faces, tau=0.1)
    assert math.isnan(m.chamfer) and m.f_score == 0 and m.count_ratio == 0 and math.isnan(m.binding_agreement)
    with pytest.raises(ValueError, match="teacher cloud is empty"):
        point_cloud_metrics(teacher, faces, teacher[:0], faces[:0], tau=0.1)


def test_batched_metrics_respect_masks() -> None:
    pred = torch.randn(2, 5, 3)
    target = torch.randn(2, 6, 3)
    pm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    tm = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    pf, tf = torch.randint(0, 3, (2, 5)), torch.randint(0, 3, (2, 6))
    out = batch_point_cloud_metrics(pred, pf, pm, target, tf, tm, tau=0.5)
    ref = metrics.point_cloud_metrics(pred[0, :3], pf[0, :3], target[0, :4], tf[0, :4], 0.5)
    assert out[0] == ref and out[0].count_ratio == pytest.approx(3 / 4)

"""Point-cloud metrics: analytic cases and parity with a KD-tree reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from avp.metrics import point_cloud
from avp.metrics.point_cloud import (
    batch_point_cloud_metrics,
    binding_agreement,
    chamfer_distance,
    f_score,
    nearest_neighbors,
    point_cloud_metrics,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_chunking_does_not_change_nearest_neighbours() -> None:
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(120, 3, generator=g), torch.randn(80, 3, generator=g)  # over 25 rows: cdist's mm regime
    d_full, i_full = nearest_neighbors(p, q)
    d_small, i_small = nearest_neighbors(p, q, chunk=7)
    assert torch.equal(i_full, i_small) and torch.equal(d_full, d_small)
    # and they are the true nearest neighbours
    d_ref, i_ref = cKDTree(q.double().numpy()).query(p.double().numpy())
    assert np.array_equal(i_full.numpy(), i_ref)
    np.testing.assert_allclose(d_full.numpy(), d_ref, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunk_sizes_give_bitwise_equal_results(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(60, 3, generator=g)
    # near-coincident points and exact duplicates in the reference: ties must resolve the same in every block size
    near = p[:25] + 1e-6 * torch.randn(25, 3, generator=g)
    q = torch.cat([near, p[40:50], p[40:50], torch.randn(20, 3, generator=g)])
    results = [nearest_neighbors(p, q, chunk=c) for c in (1, 7, 64, 10**6)]
    for d, i in results[1:]:
        assert torch.equal(d, results[0][0]) and torch.equal(i, results[0][1])
    # duplicates: the first copy (lowest index) wins the tie
    assert torch.equal(results[0][1][40:50], torch.arange(25, 35))
    assert torch.equal(results[0][0][40:50], torch.zeros(10))
    with pytest.raises(ValueError, match="chunk"):
        nearest_neighbors(p, q, chunk=0)


def test_chamfer_of_near_identical_clouds_is_the_true_tiny_value() -> None:
    g = torch.Generator().manual_seed(3)
    # a head-sized cloud (decimetres, offset from the origin as a real head is) and itself moved by ~1e-6 m
    a = 0.1 * torch.randn(2000, 3, generator=g) + torch.tensor([0.0, 1.6, 0.3])
    b = a + 1e-6 * torch.randn(2000, 3, generator=g)
    a64, b64 = a.double().numpy(), b.double().numpy()  # the float32 clouds, exactly, in float64
    da, _ = cKDTree(b64).query(a64)
    db, _ = cKDTree(a64).query(b64)
    truth = (da.mean() + db.mean()) / 2
    assert 5e-7 < truth < 5e-6  # the clouds are as close as intended
    got = float(chamfer_distance(a, b))
    # the difference of two nearby float32 coordinates is exact, so only the final rounding remains; the
    # |a|^2 + |b|^2 - 2ab formula would be off by ~1e-4 m here (cancellation at |a|^2 ~ 2.6 m^2)
    assert got == pytest.approx(truth, rel=1e-4)
    # float64 clouds are computed in float64
    assert float(chamfer_distance(a.double(), b.double())) == pytest.approx(truth, rel=1e-9)
    assert f_score(a, b, tau=1e-4) == 1 and f_score(a, b + 1e-3, tau=1e-4) == 0


def test_nan_coordinates_give_nan_distances() -> None:
    a = torch.tensor([[0.0, 0, 0], [float("nan"), 0, 0]])
    b = torch.tensor([[0.0, 0, 1]])
    d, _ = nearest_neighbors(a, b, chunk=1)
    assert d[0] == 1 and torch.isnan(d[1])


def test_binding_agreement_and_count_ratio() -> None:
    teacher = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    faces = torch.tensor([5, 6, 7])
    gen = teacher + 0.01  # each generated point is nearest to the matching teacher point
    assert binding_agreement(gen, faces, teacher, faces) == 1
    assert binding_agreement(gen, torch.tensor([5, 0, 7]), teacher, faces) == pytest.approx(2 / 3)
    m = point_cloud_metrics(gen[:2], faces[:2], teacher, faces, tau=0.05)
    assert m.count_ratio == pytest.approx(2 / 3) and m.binding_agreement == 1 and m.f_score == pytest.approx(0.8)


def test_empty_clouds() -> None:
    teacher, faces = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    m = point_cloud_metrics(teacher[:0], faces[:0], teacher, faces, tau=0.1)
    assert math.isnan(m.chamfer) and m.f_score == 0 and m.count_ratio == 0 and math.isnan(m.binding_agreement)
    with pytest.raises(ValueError, match="teacher cloud is empty"):
        point_cloud_metrics(teacher, faces, teacher[:0], faces[:0], tau=0.1)


def test_batched_metrics_respect_masks() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 5, 3, generator=g)
    target = torch.randn(2, 6, 3, generator=g)
    pm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    tm = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    pf, tf = torch.randint(0, 3, (2, 5), generator=g), torch.randint(0, 3, (2, 6), generator=g)
    out = batch_point_cloud_metrics(pred, pf, pm, target, tf, tm, tau=0.5)
    ref = point_cloud.point_cloud_metrics(pred[0, :3], pf[0, :3], target[0, :4], tf[0, :4], 0.5)
    assert out[0] == ref and out[0].count_ratio == pytest.approx(3 / 4)
    assert out[1] == point_cloud.point_cloud_metrics(pred[1], pf[1], target[1], tf[1], 0.5)
    assert out[0] != point_cloud.point_cloud_metrics(pred[0], pf[0], target[0], tf[0], 0.5)  # the masks mattered

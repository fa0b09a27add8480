"""Metrics over several processes where one saw nothing: every process must run the same collectives in compute().

Two ranks are simulated by two threads whose metrics sync through an all-gather made of a barrier (the
``dist_sync_fn`` / ``distributed_available_fn`` hooks torchmetrics offers): a rank that skips a collective the other
runs leaves that one waiting, which here breaks the barrier after a timeout instead of hanging.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torchmetrics import Metric

from avp.metrics.distribution import FID
from avp.metrics.image import PSNR, SSIM
from avp.metrics.unavailable import Unavailable


class ThreadGroup:
    """An all-gather between ``world`` threads (one call per rank per collective, in the same order)."""

    def __init__(self, world: int = 2, timeout: float = 10.0) -> None:
        self.slots: list[Any] = [None] * world
        self.barrier = threading.Barrier(world, timeout=timeout)
        self.calls = [0] * world

    def gather_fn(self, rank: int) -> Callable[..., list[torch.Tensor]]:
        def gather(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
            self.calls[rank] += 1
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            return out

        return gather

    def kwargs(self, rank: int) -> dict[str, Any]:
        return {"dist_sync_fn": self.gather_fn(rank), "distributed_available_fn": lambda: True}


def run_ranks(work: Callable[[int], Any], world: int = 2) -> list[Any]:
    """``work(rank)`` on ``world`` threads; their results (an exception is re-raised)."""
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchmetrics' "compute before update" on the empty rank
                results[rank] = work(rank)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


class FakeInnerFID(Metric):
    """Stands in for torchmetrics' FrechetInceptionDistance (no Inception weights here): summed states, a collective
    in compute like the real one."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("real_features_num_samples", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("fake_features_num_samples", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, real: bool) -> None:
        if real:
            self.real_features_num_samples += images.shape[0]
        else:
            self.fake_features_num_samples += images.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.real_features_num_samples + self.fake_features_num_samples).float()


def test_fid_on_a_rank_without_images_joins_the_others_compute() -> None:
    """Rank 1 saw no image: it still computes (synced counts say there are enough), so rank 0's collective completes
    and both get the same value."""
    group = ThreadGroup()

    def work(rank: int) -> Any:
        fid = FID(**group.kwargs(rank))
        fid.reason, fid._fid = None, [FakeInnerFID(**group.kwargs(rank))]  # as with weights present
        if rank == 0:
            images = torch.rand(3, 3, 8, 8)
            fid.update(images, real=True)
            fid.update(images, real=False)
        return fid.compute()

    values = run_ranks(work)
    assert [float(v) for v in values] == [6.0, 6.0]
    assert group.calls[0] == group.calls[1]


def test_fid_with_too_few_images_over_all_ranks_is_unavailable_on_every_rank() -> None:
    group = ThreadGroup()

    def work(rank: int) -> Any:
        fid = FID(**group.kwargs(rank))
        fid.reason, fid._fid = None, [FakeInnerFID(**group.kwargs(rank))]
        if rank == 1:
            fid.update(torch.rand(1, 3, 8, 8), real=True)
            fid.update(torch.rand(1, 3, 8, 8), real=False)
        return fid.compute()

    assert all(isinstance(v, Unavailable) for v in run_ranks(work))


@pytest.mark.parametrize("metric", [PSNR, SSIM])
def test_masked_image_metrics_on_a_rank_that_saw_no_masked_sample(metric: type) -> None:
    """The decoder's test metrics: a rank whose clips had no masks calls compute like the other and gets the value
    over all ranks."""
    group = ThreadGroup()
    g = torch.Generator().manual_seed(0)
    preds, target = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    mask = torch.ones(2, 1, 16, 16)

    def work(rank: int) -> Any:
        m = metric(masked=True, **group.kwargs(rank))
        if rank == 0:
            m.update(preds, target, mask)
        return m.compute()

    values = run_ranks(work)
    alone = metric(masked=True)
    alone.update(preds, target, mask)
    assert torch.allclose(values[0], alone.compute()) and torch.allclose(values[1], values[0])

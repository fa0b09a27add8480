"""DDP hygiene of the LightningModules on the CPU: per-rank random streams (two ranks simulated by setting the rank)
and non-blocking batch transfers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import seed_everything

from avp.head import load_head_model
from avp.lit.ranks import rank_seed, seed_rank, transfer_batch
from avp.models.encoders import sample_surface
from avp.models.generator import training_windows
from avp.types import AvatarBatch
from tests.lit.test_generator import make_batch, tiny_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def head():
    return load_head_model()


@pytest.fixture(autouse=True)
def _restore_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # seed_everything sets it: restored after each test


def _training_draws(module, head, rank: int) -> dict[str, torch.Tensor]:
    """What a training step draws after ``avp fit`` seeded the process (the same seed on every rank) and fitting
    started on ``rank``: the training windows and the mesh encoder's surface samples."""
    seed_everything(7, verbose=False)  # LightningCLI's seed_everything: the same on every rank
    module._trainer = SimpleNamespace(global_rank=rank)
    try:
        module.on_fit_start()
    finally:
        module._trainer = None
    lengths = torch.tensor([401, 301])
    tokens = torch.randint(0, 10, (2, 401))
    _, _, positions = training_windows(tokens, lengths, 64, pad_id=0)
    verts = head.canonical(torch.zeros(1, head.n_shape))
    points, _ = sample_surface(verts, head.faces, 16, None)
    return {"windows": positions[:, 0], "surface": points}


def test_ranks_draw_different_training_windows_and_surface_samples_reproducibly(head) -> None:
    module = tiny_module()
    rank0, rank1, again = (_training_draws(module, head, r) for r in (0, 1, 0))
    assert not torch.equal(rank0["windows"], rank1["windows"])
    assert not torch.equal(rank0["surface"], rank1["surface"])
    for name in rank0:  # deterministic per (seed, rank)
        assert torch.equal(rank0[name], again[name])


def test_rank_seeds_are_distinct_and_follow_the_run_seed() -> None:
    seeds = {rank_seed(s, r) for s in (0, 1, 7) for r in range(8)}
    assert len(seeds) == 24 and all(0 <= s < 2**63 for s in seeds)
    assert seed_rank(3, seed=11) == rank_seed(11, 3) and torch.initial_seed() == rank_seed(11, 3)


def test_batches_move_with_non_blocking_copies(head, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pinned batch is copied asynchronously only when ``.to`` gets ``non_blocking=True`` (Lightning's default hook
    calls ``batch.to(device)`` on objects with a ``.to``); never on the CPU."""
    module = tiny_module()
    batch = make_batch(head, 2, 12, seed=0)
    calls: list[dict] = []
    original = AvatarBatch.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AvatarBatch, "to", spy)
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)  # an accelerator stand-in
    assert calls == [{"non_blocking": True}] and moved.portrait.device.type == "meta"
    assert moved.binding.dtype == torch.long and moved.teacher.mask.dtype == torch.bool
    calls.clear()
    on_cpu = transfer_batch(batch, torch.device("cpu"))
    assert all(not c.get("non_blocking") for c in calls) and on_cpu.portrait.device.type == "cpu"
    assert transfer_batch({"x": torch.ones(2)}, torch.device("meta"))["x"].device.type == "meta"


def test_training_conditions_on_the_tracked_mesh_like_inference(head) -> None:
    """A batch's static offset reaches the generator's training condition (as it reaches sampling at inference)."""
    module = tiny_module()
    module.eval()
    batch = make_batch(head, 2, 12, seed=3)
    offset = torch.zeros(2, head.n_vertices, 3)
    offset[:, :, 1] = 0.02  # the tracked mesh 2 cm above the bare one
    tracked = AvatarBatch(**{**vars(batch), "static_offset": offset})
    with torch.no_grad():
        _, _, bare = module._tokens_and_condition(batch)
        _, _, moved = module._tokens_and_condition(tracked)
        expected = module.net.encode_condition(tracked.portrait, tracked.portrait_head, offset)
    assert torch.equal(moved, expected) and not torch.allclose(moved, bare)

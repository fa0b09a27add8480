"""What must differ between DDP ranks, and how batches reach the device.

Random streams. ``seed_everything`` (LightningCLI's ``seed_everything``) seeds every rank with the same seed, so every
rank would draw the same random numbers: the same training-window offsets, mesh-surface samples of the condition
encoder, bank draws and dropout masks, wasting the data parallelism on correlated draws. When fitting starts, each
module reseeds the global RNGs (torch on every device, numpy, ``random``) from ``(seed, rank)``
(:func:`seed_rank`): different per rank, deterministic per ``(seed, rank)``. What must agree across ranks keeps
its own explicit seeds (template points, validation sampling, the point bank, the data stream's shard order).

Resuming. The reseeding happens at every fit start, a resumed one included, where it would replay the random numbers
of the run's first steps. :class:`avp.lit.callbacks.FaultTolerance` (every ``avp fit`` has one) therefore saves each
rank's generator states (:func:`rng_state`) in checkpoints and puts them back (:func:`set_rng_state`) before the
first training step of the resumed run: the draws continue exactly where the checkpoint's run left them.

Batches. Lightning moves an object with a ``.to`` method by calling ``batch.to(device)``, without ``non_blocking``,
so a batch in pinned memory (``data.pin_memory: true``) is copied synchronously. :func:`transfer_batch` passes
``non_blocking=True`` for accelerator targets (never for the CPU or MPS, as Lightning's own rule for tensors).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

__all__ = ["rank_seed", "rng_state", "seed_rank", "set_rng_state", "transfer_batch"]

_BLOCKING = ("cpu", "mps")


def rank_seed(seed: int, rank: int) -> int:
    """A seed for ``rank`` of a run seeded with ``seed``: deterministic, different for every rank (63 bits)."""
    state = np.random.SeedSequence([int(seed) % 2**64, int(rank)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def seed_rank(rank: int, seed: int | None = None) -> int:
    """Reseed torch (all devices), numpy and ``random`` with :func:`rank_seed` and return the seed used.

    ``seed``: the run's seed; None takes the one ``seed_everything`` set (``PL_GLOBAL_SEED``), else torch's initial
    seed of this process.
    """
    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
    derived = rank_seed(seed, rank)
    random.seed(derived)
    np.random.seed(derived % 2**32)  # noqa: NPY002 (the legacy global stream is what seed_everything seeds)
    torch.manual_seed(derived)
    return derived


def rng_state() -> dict[str, Any]:
    """The global generators' states of this process: torch (CPU, and every CUDA device when CUDA is initialised),
    numpy's legacy global stream and ``random``, as tensors and plain Python values (a checkpoint holding them
    loads with ``torch.load(weights_only=True)``); :func:`set_rng_state` puts them back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (what seed_everything seeds)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [int(version), list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where this process has as many devices)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def transfer_batch(batch: Any, device: torch.device) -> Any:
    """``batch`` on ``device``: objects with ``.to`` (an :class:`~avp.types.AvatarBatch`) get ``non_blocking=True``
    on accelerators, so pinned batches copy asynchronously; anything else moves as Lightning moves it."""
    device = torch.device(device)
    if device.type not in _BLOCKING and not isinstance(batch, torch.Tensor) and callable(getattr(batch, "to", None)):
        return batch.to(device, non_blocking=True)
    return move_data_to_device(batch, device)

"""Device selection for command-line tools (library code takes its device from its input tensors)."""

from __future__ import annotations

import torch

ACCELERATOR = "cuda"


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device(ACCELERATOR if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == ACCELERATOR and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but torch sees no CUDA device")
    return device

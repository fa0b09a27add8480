"""Which head model to build: the configuration schema recorded in checkpoints and shard metadata."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HeadConfig:
    """Selects and sizes the head model (``load_head_model(HeadConfig(...))``)."""

    flame_path: str | None = None
    """FLAME pickle (2020 ``generic_model.pkl`` or 2023 ``flame2023.pkl``); None builds the built-in procedural head."""
    n_shape: int | None = None
    """Shape (identity) components to keep; None keeps all (FLAME: 300, built-in: all of its basis)."""
    n_expr: int | None = None
    """Expression components to keep; None keeps all (FLAME: 100, built-in: all of its basis)."""
    teeth: bool = True
    """FLAME only: append GaussianAvatars' teeth (5,143 vertices, 10,144 faces). The built-in head always has teeth."""
    flame_masks_path: str | None = None
    """FLAME only, optional: ``FLAME_masks.pkl`` (FLAME's vertex masks) to derive semantic ``face_regions``."""
    flame_version: str | None = None
    """FLAME only: the release (``"2020"`` or ``"2023"``), recorded in the model name and shards and checked against
    the fits converted with it; None reads it from the file name (``flame2023.pkl``, ``generic_model.pkl`` = 2020)."""

"""Resuming a plain ``avp fit`` the way a Lightning user expects: in the same run folder, from a readable checkpoint.

Lightning resolves ``--ckpt_path last`` inside the *new* run's folder (the logger's next ``version_N``), finds
nothing there and starts over from step 0 with only a warning; an explicit checkpoint resumes into a new version
folder, so TensorBoard shows the same steps twice. Here, before anything is built:

- ``last``: the newest ``<save_dir>/<name>/version_K/checkpoints/last.ckpt`` of the configured logger (the run is
  named by the logger's ``save_dir``/``name``: what ``avp fit --config …`` wrote with the same config), and the
  logger continues in ``version_K``; with none, the fit starts fresh and says so;
- an explicit ``…/<name>/version_K/checkpoints/X.ckpt`` of that logger: the logger continues in ``version_K``;
- the checkpoint must read: a truncated or foreign file is refused with its path before any work starts.

:class:`~avp.lit.callbacks.FaultTolerance` (installed by ``avp fit``) then makes checkpoint writes atomic, purges
the TensorBoard events the killed process wrote after its checkpoint, so each step is logged once, and puts back the
checkpoint's RNG states; with the DataModule's stream position (epoch and batches trained) the resumed run's losses
are the uninterrupted run's. ``docs/resume.md`` describes it and the kill -9 trials that check it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

VERSION_DIR = re.compile(r"^version_(\d+)$")
LIGHTNING_NAMES = ("best", "hpc", "registry")
"""Other ``ckpt_path`` keywords, left to Lightning."""


def run_root(logger: Any) -> Path | None:
    """``<save_dir>/<name>`` of a logger config (``class_path`` + ``init_args``), or None when it has no save_dir."""
    args = getattr(logger, "init_args", None)
    save_dir = getattr(args, "save_dir", None) if args is not None else None
    if save_dir is None:
        return None
    name = getattr(args, "name", None)
    return Path(save_dir) / name if name else Path(save_dir)


def find_last_checkpoint(root: Path) -> tuple[Path, int] | None:
    """The newest ``version_K/checkpoints/last.ckpt`` under ``root`` and its ``K`` (None when there is none)."""
    found = []
    for ckpt in root.glob("version_*/checkpoints/last.ckpt"):
        match = VERSION_DIR.match(ckpt.parent.parent.name)
        if match and ckpt.is_file():
            found.append((ckpt.stat().st_mtime_ns, int(match.group(1)), ckpt))
    if not found:
        return None
    _, version, ckpt = max(found)
    return ckpt, version


def version_of(ckpt: Path, root: Path) -> int | None:
    """``K`` when ``ckpt`` lies in ``root/version_K/checkpoints/``."""
    ckpt, root = ckpt.resolve(), root.resolve()
    if ckpt.parent.name != "checkpoints" or ckpt.parent.parent.parent != root:
        return None
    match = VERSION_DIR.match(ckpt.parent.parent.name)
    return int(match.group(1)) if match else None


def check_readable(ckpt: Path) -> None:
    """Raises ``ValueError`` naming ``ckpt`` when it is not a readable checkpoint (truncated, empty, foreign)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # whatever torch raises for a broken file (EOFError, RuntimeError, UnpicklingError)
        raise ValueError(f"checkpoint {ckpt} cannot be read ({type(e).__name__}: {e}): it is truncated or not a "
                         f"checkpoint; resume from another one in {ckpt.parent}") from e
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"checkpoint {ckpt} is not a Lightning checkpoint (no state_dict)")


def resolve_resume(config: Any) -> None:
    """Rewrite a ``fit`` config namespace in place: ``ckpt_path`` resolved, the logger's ``version`` set to the
    folder the checkpoint belongs to (see the module docstring)."""
    ckpt_path = getattr(config, "ckpt_path", None)
    if ckpt_path is None:
        return
    logger = getattr(config.trainer, "logger", None)
    root = run_root(logger) if logger is not None and not isinstance(logger, bool | list) else None
    if ckpt_path == "last":
        if root is None:
            return  # no run folder to look in: Lightning's own resolution
        found = find_last_checkpoint(root)
        if found is None:
            rank_zero_info(f"avp fit: --ckpt_path last: no {root}/version_*/checkpoints/last.ckpt yet; "
                           "a new run starts")
            config.ckpt_path = None
            return
        ckpt, version = found
        config.ckpt_path = str(ckpt)
        logger.init_args.version = version
        rank_zero_info(f"avp fit: resuming {ckpt} in {root / f'version_{version}'}")
    elif ckpt_path in LIGHTNING_NAMES:
        return
    else:
        ckpt = Path(ckpt_path)
        if not ckpt.is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt}: no such checkpoint")
        version = version_of(ckpt, root) if root is not None else None
        if version is not None:
            logger.init_args.version = version
    check_readable(Path(config.ckpt_path))

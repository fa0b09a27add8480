"""Checkpoints that are never half-written: a temp file beside the target, fsync, then an atomic rename.

``AtomicCheckpointIO`` replaces Lightning's ``TorchCheckpointIO`` (``trainer.plugins`` or installed by
:class:`avp.lit.callbacks.FaultTolerance`). A process killed at any instant leaves either the previous checkpoint or
the new one under the final name, never a truncated file; the leftover temp file is hidden (``.name.*.tmp``) so
``ckpt_path="last"`` and the sweep's resume logic never pick it up, and :func:`remove_stale_temps` clears it later.

A save can also be *deferred*: written and synced, but renamed into place only on :meth:`AtomicCheckpointIO.commit`.
The fault-tolerance callback defers saves made inside the training loop until the metrics of the step they contain
have been logged and flushed, so a resumed run's logs continue exactly where its checkpoint ends (no step lost,
none duplicated).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temp_prefix(name: str) -> str:
    return f".{name}."


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_temp(checkpoint: dict[str, Any], path: str) -> str:
    """Serialise ``checkpoint`` into a hidden temp file in ``path``'s directory, fsynced; returns the temp path."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(name), suffix=TEMP_SUFFIX, dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; a checkpoint gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def commit_temp(tmp: str, path: str) -> None:
    """Atomically move a finished temp file to its final name (and make the rename durable)."""
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files left by a writer that was killed mid-save; call only while no save is in flight."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file() and ".ckpt." in p.name]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic renames, optionally deferred until :meth:`commit`.

    Remote (``scheme://``) paths go through Lightning's own writer: object stores replace objects atomically.
    """

    def __init__(self) -> None:
        super().__init__()
        self.defer = False
        """While true, local saves stay in hidden temp files until :meth:`commit`."""
        self.before_commit: Callable[[], None] | None = None
        """Called once before pending checkpoints are renamed into place (the callback flushes the loggers here)."""
        self._pending: dict[str, str] = {}
        self.saved_steps: dict[str, int] = {}
        """Final path -> ``global_step`` of the last checkpoint saved (or pending) there by this process."""

    @property
    def pending(self) -> list[str]:
        """Final paths whose checkpoints are written but not yet renamed into place."""
        return list(self._pending)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = os.fspath(path)
        if "://" in path:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO.save_checkpoint got storage_options={storage_options!r}; like TorchCheckpointIO"
                " it accepts none (use a custom CheckpointIO for those)"
            )
        tmp = write_temp(checkpoint, path)
        self.saved_steps[path] = int(checkpoint.get("global_step", -1))
        if self.defer:
            previous = self._pending.pop(path, None)
            if previous is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(previous)
            self._pending[path] = tmp
        else:
            commit_temp(tmp, path)

    def commit(self) -> list[str]:
        """Rename every pending checkpoint into place (after ``before_commit``); returns their final paths."""
        if not self._pending:
            return []
        if self.before_commit is not None:
            self.before_commit()
        done = []
        for path, tmp in list(self._pending.items()):
            commit_temp(tmp, path)
            del self._pending[path]
            done.append(path)
        return done

    def remove_checkpoint(self, path: Any) -> None:
        tmp = self._pending.pop(os.fspath(path), None)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        if self._pending:
            log.warning("AtomicCheckpointIO: %d deferred checkpoint(s) were never committed: %s",
                        len(self._pending), ", ".join(self._pending))
        super().teardown()

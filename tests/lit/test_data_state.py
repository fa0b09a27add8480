"""The DataModule in a fit: skip counts reach TensorBoard by default, a validation split that yields nothing fails
the run, and the training stream's position lives in checkpoints (a resumed run does not replay epoch 0's order, and
one resumed mid-epoch continues at the batch the interrupted run would have trained next)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from avp.lit.data import AvatarDataModule, CorruptSamplesLogger
from avp.types import AvatarBatch
from tests.data.samples import meta_edit, npz_edit, rewrite_shard, write_dataset
from tests.lit.test_data import _TeacherMean

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


class _Recorder(_TeacherMean):
    """Records which subjects each training epoch, and each step, saw."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: dict[int, list[str]] = {}
        self.steps: dict[int, tuple[int, int, list[str]]] = {}

    def training_step(self, batch: AvatarBatch, batch_idx: int) -> torch.Tensor:
        self.epochs.setdefault(self.current_epoch, []).extend(batch.subject)
        self.steps[self.global_step] = (self.current_epoch, batch_idx, list(batch.subject))
        return super().training_step(batch, batch_idx)


def test_skip_counts_reach_tensorboard_without_any_configured_callback(tmp_path) -> None:
    root = tmp_path / "d"
    write_dataset(root, {"train": 3, "val": 2}, frames=1, views=1, size=8)
    rewrite_shard(root, "train-000001.tar", npz_edit("cameras.npz", "Ks", np.zeros_like))
    rewrite_shard(root, "val-000000.tar", meta_edit(background=[math.nan, 1.0, 1.0]))
    dm = AvatarDataModule(str(root), batch_size=1, num_workers=0, views_per_sample=1, shuffle_buffer=0,
                          skip_corrupt=True, max_corrupt_fraction=1.0)
    trainer = Trainer(max_epochs=1, logger=TensorBoardLogger(tmp_path, name="tb"), enable_checkpointing=False,
                      log_every_n_steps=1, num_sanity_val_steps=0, **QUIET)
    trainer.fit(_TeacherMean(), datamodule=dm)
    assert sum(isinstance(cb, CorruptSamplesLogger) for cb in trainer.callbacks) == 1
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars["train/data_corrupt_skipped"][-1] >= 1
    assert scalars["train/data_corrupt/value"][-1] == scalars["train/data_corrupt_skipped"][-1]
    assert scalars["val/data_corrupt_skipped"] == [1.0]


def test_a_configured_logger_is_not_doubled_and_strict_runs_get_none(tmp_path) -> None:
    write_dataset(tmp_path / "d", {"train": 2}, frames=1, views=1, size=8)
    for skip, callbacks, expected in ((True, [CorruptSamplesLogger()], 1), (False, [], 0)):
        dm = AvatarDataModule(str(tmp_path / "d"), batch_size=1, num_workers=0, views_per_sample=1,
                              skip_corrupt=skip)
        trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, callbacks=callbacks, **QUIET)
        trainer.fit(_TeacherMean(), datamodule=dm)
        assert sum(isinstance(cb, CorruptSamplesLogger) for cb in trainer.callbacks) == expected


def test_a_fit_whose_validation_split_yields_nothing_fails(tmp_path) -> None:
    root = tmp_path / "d"
    write_dataset(root, {"train": 2, "val": 2}, frames=1, views=1, size=8)
    for shard in ("val-000000.tar", "val-000001.tar"):
        rewrite_shard(root, shard, npz_edit("gaussians.npz", "means", lambda a: a * np.nan))
    dm = AvatarDataModule(str(root), batch_size=1, num_workers=0, views_per_sample=1, skip_corrupt=True,
                          max_corrupt_fraction=1.0)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0, **QUIET)
    with pytest.raises(RuntimeError, match="the 'val' split yielded no sample: 2 corrupt samples were skipped"):
        trainer.fit(_TeacherMean(), datamodule=dm)


def _subjects(loader) -> list[str]:
    return [s for b in loader for s in b.subject]


def test_the_stream_position_round_trips_through_the_state_dict(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 6}, frames=1, views=1, size=8)
    kwargs = dict(batch_size=1, num_workers=0, views_per_sample=1, samples_per_epoch=3, shuffle_buffer=6)
    dm = AvatarDataModule(str(tmp_path), **kwargs)
    loader = dm.train_dataloader()
    epochs = [_subjects(loader) for _ in range(3)]
    assert epochs[0] != epochs[2] and epochs[1] != epochs[2]  # orders differ per epoch (else this proves nothing)
    assert dm.state_dict() == {"train_epoch": 3, "train_batches": 0, "seed": 0}
    resumed = AvatarDataModule(str(tmp_path), **kwargs)
    resumed.load_state_dict({"train_epoch": 2, "seed": 0})
    assert _subjects(resumed.train_dataloader()) == epochs[2]
    with pytest.raises(ValueError, match="train_epoch must be >= 0"):
        resumed.load_state_dict({"train_epoch": -1})


def test_a_resumed_fit_continues_the_order_instead_of_replaying_epoch_0(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_dataset(root, {"train": 6}, frames=1, views=1, size=8)
    kwargs = dict(batch_size=1, num_workers=0, views_per_sample=1, samples_per_epoch=3, shuffle_buffer=6)
    trainer_kwargs = dict(logger=False, enable_checkpointing=False, **QUIET)

    straight = _Recorder()
    Trainer(max_epochs=3, **trainer_kwargs).fit(straight, datamodule=AvatarDataModule(str(root), **kwargs))
    assert straight.epochs[0] != straight.epochs[1] != straight.epochs[2]

    first = _Recorder()
    trainer = Trainer(max_epochs=1, **trainer_kwargs)
    trainer.fit(first, datamodule=AvatarDataModule(str(root), **kwargs))
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["AvatarDataModule"] == {"train_epoch": 1, "train_batches": 0,
                                                                         "seed": 0}
    resumed = _Recorder()
    Trainer(max_epochs=3, **trainer_kwargs).fit(resumed, datamodule=AvatarDataModule(str(root), **kwargs),
                                                ckpt_path=ckpt)
    assert first.epochs[0] == straight.epochs[0]
    assert resumed.epochs == {1: straight.epochs[1], 2: straight.epochs[2]}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_pass_resumed_mid_epoch_leaves_out_exactly_the_trained_batches(tmp_path: Path, num_workers: int) -> None:
    write_dataset(tmp_path, {"train": 6}, frames=1, views=1, size=8)
    kwargs = dict(batch_size=1, num_workers=num_workers, views_per_sample=1, samples_per_epoch=6, shuffle_buffer=6)
    loader = AvatarDataModule(str(tmp_path), **kwargs).train_dataloader()
    epochs = [_subjects(loader) for _ in range(2)]
    assert len(epochs[1]) == 6 and epochs[0] != epochs[1]
    for done in (1, 3, 4, 5):  # with two workers: batches alternate between them, either may be ahead
        resumed = AvatarDataModule(str(tmp_path), **kwargs)
        resumed.load_state_dict({"train_epoch": 1, "train_batches": done, "seed": 0})
        assert resumed.state_dict() == {"train_epoch": 1, "train_batches": done, "seed": 0}
        loader = resumed.train_dataloader()
        assert _subjects(loader) == epochs[1][done:], done
        assert _subjects(loader) == _subjects(AvatarDataModule(str(tmp_path), **kwargs)._loader("train", epoch=2))
    with pytest.raises(ValueError, match="train_batches must be >= 0"):
        resumed.load_state_dict({"train_epoch": 1, "train_batches": -1})


def test_a_fit_resumed_mid_epoch_continues_at_the_batch_it_would_have_trained_next(tmp_path: Path) -> None:
    """Checkpoints of every step (mid-epoch, and the last batch of an epoch before its validation): a fit resumed
    from any of them trains, step for step, the batches the uninterrupted fit trained."""
    root = tmp_path / "d"
    write_dataset(root, {"train": 6, "val": 1}, frames=1, views=1, size=8)
    kwargs = dict(batch_size=1, num_workers=0, views_per_sample=1, samples_per_epoch=4, shuffle_buffer=6)
    trainer_kwargs = dict(logger=False, max_steps=10, num_sanity_val_steps=0, **QUIET)

    straight = _Recorder()
    every_step = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="s{step}", every_n_train_steps=1,
                                 save_top_k=-1, auto_insert_metric_name=False)
    Trainer(callbacks=[every_step], **trainer_kwargs).fit(straight, datamodule=AvatarDataModule(str(root), **kwargs))
    assert sorted(straight.steps) == list(range(10))
    mid = torch.load(tmp_path / "ckpt" / "s6.ckpt", weights_only=False)["AvatarDataModule"]
    assert mid == {"train_epoch": 1, "train_batches": 2, "seed": 0}  # 4 batches per epoch: 2 of epoch 1 trained
    end = torch.load(tmp_path / "ckpt" / "s8.ckpt", weights_only=False)["AvatarDataModule"]
    assert end == {"train_epoch": 2, "train_batches": 0, "seed": 0}
    for step in (3, 4, 6, 8):
        resumed = _Recorder()
        Trainer(enable_checkpointing=False, **trainer_kwargs).fit(
            resumed, datamodule=AvatarDataModule(str(root), **kwargs), ckpt_path=tmp_path / "ckpt" / f"s{step}.ckpt")
        assert resumed.steps == {s: v for s, v in straight.steps.items() if s >= step}, step

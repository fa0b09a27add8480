"""A plain `avp fit` resumes as a Lightning user expects: `--ckpt_path last` (or an explicit checkpoint of the run)
continues in the same run folder at the checkpoint's step, TensorBoard has each step once, and a broken checkpoint
is refused with its path."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from avp.compare import read_scalars
from tests.lit.toy import run_cli, toy_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path: Path, max_steps: int) -> Path:
    config = toy_config(max_steps=max_steps)
    config["trainer"].update({
        "default_root_dir": str(tmp_path), "limit_val_batches": 0,
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(tmp_path / "runs"), "name": "toy", "default_hp_metric": False}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"every_n_train_steps": 4, "save_last": True, "save_top_k": -1,
                                     "filename": "step{step}", "auto_insert_metric_name": False}}]})
    path = tmp_path / f"toy{max_steps}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _steps(run: Path) -> list[int]:
    return [s for s, _ in read_scalars(run)["train/loss"]]


def test_ckpt_path_last_continues_the_same_run_with_each_step_logged_once(tmp_path: Path) -> None:
    run_cli(["fit", "--config", str(_config(tmp_path, 6))], cwd=tmp_path)
    run = tmp_path / "runs" / "toy" / "version_0"
    assert _steps(run) == list(range(6))
    # as if the process died after step 6 was logged but with only step 4's checkpoint on disk
    shutil.copyfile(run / "checkpoints" / "step4.ckpt", run / "checkpoints" / "last.ckpt")
    # event files are named by their creation second and then a per-process counter (.9, .10): files of two fits in
    # the same second would be read out of order, the older run's purge marker wiping the newer run's steps
    time.sleep(1.1)
    cli = run_cli(["fit", "--config", str(_config(tmp_path, 9)), "--ckpt_path", "last"], cwd=tmp_path)
    assert cli.trainer.global_step == 9
    assert sorted(p.name for p in (tmp_path / "runs" / "toy").iterdir()) == ["version_0"]  # no version_1
    assert _steps(run) == list(range(9))  # steps 4 and 5 of the first process purged, each step once
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 9
    # an explicit checkpoint of the run resumes into its folder too
    time.sleep(1.1)
    cli = run_cli(["fit", "--config", str(_config(tmp_path, 11)), "--ckpt_path",
                   str(run / "checkpoints" / "last.ckpt")], cwd=tmp_path)
    assert cli.trainer.global_step == 11 and _steps(run) == list(range(11))
    assert sorted(p.name for p in (tmp_path / "runs" / "toy").iterdir()) == ["version_0"]


def test_ckpt_path_last_without_a_checkpoint_starts_a_new_run(tmp_path: Path) -> None:
    cli = run_cli(["fit", "--config", str(_config(tmp_path, 3)), "--ckpt_path", "last"], cwd=tmp_path)
    assert cli.trainer.global_step == 3 and _steps(tmp_path / "runs" / "toy" / "version_0") == [0, 1, 2]


def test_a_truncated_checkpoint_is_refused_with_its_path(tmp_path: Path) -> None:
    broken = tmp_path / "runs" / "toy" / "version_0" / "checkpoints" / "last.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"")  # a kill during a non-atomic write leaves this
    with pytest.raises(ValueError, match=rf"checkpoint {broken} cannot be read .*truncated or not a checkpoint"):
        run_cli(["fit", "--config", str(_config(tmp_path, 3)), "--ckpt_path", "last"], cwd=tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run_cli(["fit", "--config", str(_config(tmp_path, 3)), "--ckpt_path", str(tmp_path / "nope.ckpt")],
                cwd=tmp_path)

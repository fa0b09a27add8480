"""The fit progress bar counts steps towards max_steps across epochs (resumed runs included) and writes lines
without a terminal; `avp fit` installs it unless the config has its own bar or turns bars off."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from avp.lit.progress import StepProgressBar, format_duration
from tests.lit.toy import ToyData, ToyRegression, run_cli, toy_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Seen(StepProgressBar):
    """Records the bar's position after every training step."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[int, int | None]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled:
            self.seen.append((self.train_progress_bar.n, self.train_progress_bar.total))


def _fit(bar: StepProgressBar, tmp_path: Path, max_steps: int, ckpt_path: str | None = None) -> Trainer:
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, callbacks=[bar],
                      enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0)
    # 64 samples in batches of 16: 4 steps per epoch, so the fit spans several epochs
    trainer.fit(ToyRegression(), ToyData(n_train=64, batch_size=16), ckpt_path=ckpt_path)
    return trainer


def test_the_bar_spans_the_whole_fit_not_one_epoch(tmp_path: Path) -> None:
    bar = Seen(lines=False)
    trainer = _fit(bar, tmp_path, max_steps=10)
    assert trainer.current_epoch >= 2  # several epochs...
    assert bar.seen == [(step, 10) for step in range(1, 11)]  # ...one bar: step k of 10
    resumed = Seen(lines=False)
    _fit(resumed, tmp_path, max_steps=14, ckpt_path=str(next(tmp_path.rglob("*.ckpt"))))
    assert resumed.seen == [(step, 14) for step in range(11, 15)]  # a resumed fit starts at its checkpoint


def test_without_a_terminal_it_writes_lines_with_an_eta(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bar = Seen(lines=True, line_every_s=0)
    with caplog.at_level(logging.INFO):
        _fit(bar, tmp_path, max_steps=6)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fit: step")]
    assert [line.split(" (")[0] for line in lines] == [f"fit: step {k}/6" for k in range(1, 7)]
    assert all("steps/s, ETA " in line for line in lines) and bar.seen == []  # no bar drawn
    assert "(100%)" in lines[-1] and "ETA 0 s" in lines[-1]


def test_durations_read_naturally() -> None:
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 7380)] == ["0 s", "59 s", "1 min 01 s",
                                                                     "59 min 59 s", "2 h 03 min"]


@pytest.mark.parametrize(("trainer_args", "expected"), [
    ({}, StepProgressBar),
    ({"enable_progress_bar": False}, None),
    ({"callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}]}, TQDMProgressBar),
])
def test_avp_fit_installs_the_step_bar_unless_told_otherwise(tmp_path: Path, trainer_args: dict, expected) -> None:
    config = toy_config(max_steps=2)
    config["trainer"].update({"enable_progress_bar": True, "default_root_dir": str(tmp_path), **trainer_args})
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    cli = run_cli(["fit", "--config", str(tmp_path / "toy.yaml")], cwd=tmp_path)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, TQDMProgressBar)]
    if expected is None:
        assert bars == [] and cli.trainer.progress_bar_callback is None
    else:
        assert [type(b) for b in bars] == [expected] and cli.trainer.global_step == 2

"""kill -9 of `avp fit` at random moments, resumed with `--ckpt_path last`: same run folder, each step logged once,
no unreadable last.ckpt, and a loss curve identical to an uninterrupted run's (issue #18).

    nice -n 10 env OMP_NUM_THREADS=1 python -m pytest tests/lit/test_kill_resume.py -m slow -v

The slow trial runs the real generator stage (configs/generator/base.yaml + configs/debug/generator.yaml, smaller)
on tiny synthetic shards as `avp fit` subprocesses, each started through :data:`LAUNCHER`: test-only instrumentation
that records when a checkpoint write starts/ends and is committed, and (in the killed runs) writes checkpoints in
slow chunks so a kill can land inside ``torch.save``. The fast tests check the two things an exact resume needs in
process: the training stream continues at the checkpoint's batch, and the global RNGs continue where they were.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from avp.lit.callbacks import RNG_STATES_KEY, FaultTolerance
from avp.lit.checkpointing import TEMP_SUFFIX
from avp.lit.ranks import seed_rank
from avp.lit.resume import check_readable
from tests.lit.toy import GENERATOR_CONFIGS, run_env, tiny_shards

ROOT = Path(__file__).resolve().parents[2]

TRIALS = 10
MAX_STEPS = 36
STEPS_PER_EPOCH = 4  # samples_per_epoch 8, batch 2: most checkpoints (one per step) are taken mid-epoch
SEED = 18  # the number: the kill schedule

LAUNCHER = r"""
import io, json, os, sys, time
import torch

EVENTS = os.environ["AVP_KILL_EVENTS"]
CHUNK_DELAY = float(os.environ.get("AVP_KILL_CHUNK_DELAY", "0"))


def emit(**event):
    with open(EVENTS, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "t": time.monotonic(), **event}) + "\n")


real_save = torch.save


def chunked_save(obj, f, *args, **kwargs):
    if not hasattr(f, "write"):
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data, n = buf.getvalue(), 4
    step = obj.get("global_step") if isinstance(obj, dict) else None
    for i in range(n):
        f.write(data[i * len(data) // n : (i + 1) * len(data) // n])
        f.flush()
        if i == 0:
            emit(event="writing", step=step, name=getattr(f, "name", None))
        time.sleep(CHUNK_DELAY)
    emit(event="written", step=step)


torch.save = chunked_save

import avp.lit.checkpointing as ckpt
from avp.lit.callbacks import FaultTolerance

real_commit = ckpt.commit_temp


def commit_temp(tmp, path):
    real_commit(tmp, path)
    emit(event="committed", path=os.fspath(path))


ckpt.commit_temp = commit_temp
real_train_start = FaultTolerance.on_train_start


def on_train_start(self, trainer, pl_module):
    emit(event="train_start", step=int(trainer.global_step), ckpt=trainer.ckpt_path and str(trainer.ckpt_path))
    return real_train_start(self, trainer, pl_module)


FaultTolerance.on_train_start = on_train_start

from avp.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _config(shards: Path) -> dict:
    return {
        "trainer": {"max_steps": MAX_STEPS, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                    "limit_val_batches": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"init_args": {"name": "kill"}},
                    # one checkpoint per step (replaces the configs' val-loss ModelCheckpoint and LR monitor)
                    "callbacks": [{"class_path": "avp.lit.callbacks.ResumeCheckpoint",
                                   "init_args": {"every_n_train_steps": 1}}]},
        "model": {"init_args": {"val_sample_subjects": 1, "val_sampling": {"max_points": 24}}},
        "data": {"init_args": {"root": str(shards), "samples_per_epoch": 2 * STEPS_PER_EPOCH}},
    }


class _Fit:
    """`avp fit --ckpt_path last` through the launcher, in ``cwd`` (the config logs to ``cwd/runs/kill``)."""

    def __init__(self, cwd: Path, events: Path, config: Path, chunk_delay: float) -> None:
        self.cwd, self.events, self.config = cwd, events, config
        self.env = {**run_env(), "AVP_KILL_EVENTS": str(events), "AVP_KILL_CHUNK_DELAY": str(chunk_delay)}

    def start(self, log: Path) -> subprocess.Popen:
        configs = [a for c in [*GENERATOR_CONFIGS, str(self.config)] for a in ("--config", str(ROOT / c))]
        cmd = [sys.executable, "-c", LAUNCHER, "fit", *configs, "--ckpt_path", "last"]
        with open(log, "w") as out:
            return subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT)


def _events(path: Path, pid: int | None = None) -> list[dict]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [e for e in lines if pid is None or e["pid"] == pid]


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def _wait(proc: subprocess.Popen, events: Path, what: str, count: int, log: Path, timeout: float = 300) -> dict:
    """The ``count``-th event ``what`` of ``proc``; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in _events(events, proc.pid) if e["event"] == what]
        if len(found) >= count:
            return found[count - 1]
        if proc.poll() is not None:
            raise AssertionError(f"avp fit ended (rc {proc.returncode}) before its {what} #{count}:\n"
                                 f"{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} #{count} within {timeout} s"
        time.sleep(0.005)


def _started_from(event: dict, cwd: Path) -> tuple[int, str | None]:
    """(step, absolute checkpoint path or None) of a ``train_start`` event."""
    return event["step"], event["ckpt"] and str((cwd / event["ckpt"]).resolve())


def _checkpoint_step(path: Path) -> int:
    check_readable(path)  # raises on a truncated, empty or foreign file
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_exactly(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    shards = tiny_shards(tmp_path_factory.getbasetemp())
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(_config(shards)))

    # the uninterrupted reference (plain writes)
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    ref = _Fit(ref_dir, tmp_path / "reference.jsonl", config, chunk_delay=0)
    proc = ref.start(tmp_path / "reference.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    ref_run = ref_dir / "runs" / "kill" / "version_0"
    reference = dict(_scalars(ref_run, "train/loss"))
    assert sorted(reference) == list(range(MAX_STEPS))

    # the killed run: chunked (slow) checkpoint writes so that a kill can land inside one
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    events = tmp_path / "killed.jsonl"
    fit = _Fit(run_dir, events, config, chunk_delay=0.1)
    run = run_dir / "runs" / "kill" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    rng = random.Random(SEED)
    kinds = ["write"] * (TRIALS // 2) + ["anytime"] * (TRIALS - TRIALS // 2)
    rng.shuffle(kinds)
    trials: list[dict] = []
    expected_start: tuple[int, str | None] = (0, None)
    for i, kind in enumerate(kinds):
        log = tmp_path / f"attempt{i}.log"
        proc = fit.start(log)
        start = _wait(proc, events, "train_start", 1, log)
        assert _started_from(start, run_dir) == expected_start, (i, start, expected_start)
        if kind == "write":
            # inside torch.save of the k-th checkpoint this process writes (the first one has none on disk yet)
            k = rng.randint(2 if expected_start[1] is None else 1, 3)
            _wait(proc, events, "writing", k, log)
        else:
            # a random instant after the k-th commit: in a step, a validation, a write or between them
            k = rng.randint(1, 3)
            _wait(proc, events, "committed", k, log)
            time.sleep(rng.uniform(0.0, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mine = _events(events, proc.pid)
        writes = [e["event"] for e in mine if e["event"] in ("writing", "written")]
        mid_write = bool(writes) and writes[-1] == "writing"
        temps = list(last.parent.glob(f".*{TEMP_SUFFIX}"))
        if mid_write:
            assert temps, "a kill inside a write must leave the temp file, not a partial last.ckpt"
        assert last.is_file() and last.stat().st_size > 0
        step = _checkpoint_step(last)  # never a corrupt last.ckpt
        assert step >= expected_start[0]
        trials.append({"kind": kind, "k": k, "mid_write": mid_write, "resumed_at": expected_start[0],
                       "checkpoint_step": step, "pending_temp": bool(temps)})
        expected_start = (step, str(last.resolve()))

    log = tmp_path / "final.log"
    proc = fit.start(log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    start = [_started_from(e, run_dir) for e in _events(events, proc.pid) if e["event"] == "train_start"]
    assert start == [expected_start]

    report = "\n".join(json.dumps(t) for t in trials)
    print(f"kill trials:\n{report}")
    assert sum(t["mid_write"] for t in trials) >= 3, report
    assert trials[-1]["checkpoint_step"] < MAX_STEPS
    # the same run folder, continued; no temp file left
    assert sorted(p.name for p in (run_dir / "runs" / "kill").iterdir()) == ["version_0"]
    assert not list(last.parent.glob(".*"))
    assert _checkpoint_step(last) == MAX_STEPS
    # every train step logged once, and the loss of every step the uninterrupted run's
    logged = _scalars(run, "train/loss")
    assert [s for s, _ in logged] == list(range(MAX_STEPS)), report
    diffs = {s: abs(v - reference[s]) for s, v in logged if abs(v - reference[s]) > 1e-6}
    assert not diffs, f"steps whose loss differs from the uninterrupted run: {diffs}\n{report}"
    ref_val = _scalars(ref_run, "val/loss")
    val = _scalars(run, "val/loss")
    assert [s for s, _ in val] == [s for s, _ in ref_val]
    assert np.allclose([v for _, v in val], [v for _, v in ref_val], rtol=0, atol=1e-6)
    # and the final weights
    final = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    expected = torch.load(ref_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert final.keys() == expected.keys()
    for name, value in final.items():
        assert torch.allclose(value, expected[name], rtol=0, atol=1e-6), name


class _Draws(pl.LightningModule):
    """Draws from every global RNG in each training step (as the generator's windows and mesh samples do) and in
    validation; reseeds per rank at fit start as the real modules do (avp.lit.ranks)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.draws: dict[int, tuple[float, float, float]] = {}

    def on_fit_start(self) -> None:
        seed_rank(self.global_rank, seed=7)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.draws[self.global_step] = (torch.rand(()).item(), float(np.random.rand()), random.random())  # noqa: NPY002
        return (batch[0].mean() - self.w) ** 2

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        torch.rand(5), np.random.rand(5), random.random()  # noqa: NPY002 (draws a training step must not see)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int) -> torch.utils.data.DataLoader:
    # a generator of its own, as AvatarDataModule's loaders: PyTorch's default draws each epoch's worker seed from
    # the global RNG, at a point of the loop a resumed run cannot reproduce
    data = torch.utils.data.TensorDataset(torch.arange(float(n))[:, None])
    return torch.utils.data.DataLoader(data, batch_size=2, generator=torch.Generator())


def test_a_resumed_fit_continues_the_random_draws_instead_of_replaying_them(tmp_path: Path) -> None:
    """Resumed from a checkpoint of any step (mid-epoch, or the last batch of an epoch before its validation), the
    training steps draw the numbers the uninterrupted fit drew: the checkpoint holds the RNG states, put back after
    the module's fit-start reseeding, and validation (which draws too) leaves the training stream alone."""
    kwargs = dict(max_steps=10, logger=False, num_sanity_val_steps=1, enable_progress_bar=False,
                  enable_model_summary=False, accelerator="cpu")
    straight = _Draws()
    every_step = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="s{step}", every_n_train_steps=1,
                                              save_top_k=-1, auto_insert_metric_name=False)
    pl.Trainer(callbacks=[FaultTolerance(status_file=None), every_step], **kwargs).fit(straight, _loader(8), _loader(2))
    assert sorted(straight.draws) == list(range(10))
    assert len(torch.load(tmp_path / "s4.ckpt", weights_only=True)[RNG_STATES_KEY]) == 1  # plain values, one rank
    for step in (2, 4, 5):  # 4 batches per epoch
        resumed = _Draws()
        pl.Trainer(callbacks=[FaultTolerance(status_file=None)], enable_checkpointing=False, **kwargs).fit(
            resumed, _loader(8), _loader(2), ckpt_path=tmp_path / f"s{step}.ckpt")
        assert resumed.draws == {s: d for s, d in straight.draws.items() if s >= step}, step

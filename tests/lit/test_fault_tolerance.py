"""Fault tolerance: SIGKILL mid-training resumes at the checkpoint's step with continuous logs; atomic checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from avp.lit.checkpointing import AtomicCheckpointIO, remove_stale_temps
from avp.sweep.run import find_resume_checkpoint
from avp.sweep.spec import read_status
from tests.lit.toy import plan_sweep, run_env, toy_config

ROOT = Path(__file__).resolve().parents[2]


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception:
        return None


def test_sigkill_mid_training_resumes_at_checkpoint_step_with_continuous_logs(tmp_path: Path) -> None:
    """Killed in the worst place: a checkpoint of step 20 has just been saved, its last step not yet logged.

    The checkpoint must not be visible yet (else the resumed run skips a step the logs never got), so the run
    resumes from the step-10 checkpoint; the steps the killed process logged after it are purged, not duplicated.
    """
    max_steps, every = 40, 10
    marker = tmp_path / "paused"
    model = {"step_delay": 0.02, "pause_at_step": 2 * every, "pause_marker": str(marker)}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(toy_config(max_steps=max_steps, model=model)))
    spec = {"name": "ft", "out": str(tmp_path / "runs"), "base": [str(tmp_path / "toy.yaml")],
            "checkpoint_every_n_steps": every, "runs": {"toy": {}}}
    [run] = plan_sweep(spec, tmp_path)
    cmd = [sys.executable, "-m", "avp.sweep.run", str(run.run_dir)]
    last = run.checkpoint_dir / "last.ckpt"

    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "training never reached the pause"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_status(run.run_dir)["state"] == "running"  # the killed process never got to say anything else
    assert find_resume_checkpoint(run.run_dir) == last and checkpoint_step(last) == every
    logged_before = [s for s, _ in scalars(run.log_dir, "train/loss")]
    assert logged_before == list(range(2 * every - 1))  # it had logged past the checkpoint it resumes from

    resumed = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    status = read_status(run.run_dir)
    assert status["state"] == "finished" and status["global_step"] == max_steps
    first, second = status["attempts"]
    assert first["resumed_from"] is None and "end_state" not in first
    assert second["resumed_from"] == str(last) and second["resumed_step"] == every

    # same log directory, continued: every step exactly once, no gap at the resume point
    assert sorted(p.name for p in run.run_dir.iterdir() if p.is_dir()) == ["checkpoints", "tb"]
    assert len(list(run.log_dir.glob("events.out.tfevents.*"))) == 2
    loss = scalars(run.log_dir, "train/loss")
    assert [s for s, _ in loss] == list(range(max_steps))
    values = dict(loss)
    assert values[every] < 0.5 * values[0]  # weights came back from the checkpoint, not from scratch
    val_steps = [s for s, _ in scalars(run.log_dir, "val/loss")]
    assert val_steps and val_steps == sorted(set(val_steps))
    assert checkpoint_step(last) == max_steps
    assert not list(run.checkpoint_dir.glob(".*"))  # the killed process's uncommitted temp file was cleared


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"global_step": 2, "bad": Unpicklable()}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_deferred_saves_appear_only_on_commit_after_the_flush_hook(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    flushed = []
    io.before_commit = lambda: flushed.append(io.load_checkpoint(path)["global_step"])
    io.defer = True
    io.save_checkpoint({"global_step": 2}, path)
    io.save_checkpoint({"global_step": 3}, path)  # supersedes the pending one
    assert io.load_checkpoint(path)["global_step"] == 1 and io.pending == [str(path)]
    assert io.commit() == [str(path)]
    assert flushed == [1]  # the hook ran while the old checkpoint was still in place
    assert io.load_checkpoint(path)["global_step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    io.save_checkpoint({"global_step": 4}, tmp_path / "other.ckpt")
    io.remove_checkpoint(tmp_path / "other.ckpt")  # removing a pending save drops its temp file
    assert io.commit() == [] and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


KILLED_WRITER = """
import io, sys, time, torch
from avp.lit.checkpointing import AtomicCheckpointIO
path, marker = sys.argv[1], sys.argv[2]
real_save = torch.save
def half_then_hang(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    open(marker, "w").close()
    time.sleep(600)
torch.save = half_then_hang
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(100_000)}, path)
"""


def test_a_writer_killed_mid_write_never_replaces_a_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    path = run_dir / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(100_000)}, path)
    marker = tmp_path / "half-written"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(marker)], cwd=ROOT, env=run_env())
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the writer never got half-way"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    [temp] = [p for p in path.parent.iterdir() if p.name != "last.ckpt"]
    assert temp.name.startswith(".last.ckpt.") and 0 < temp.stat().st_size  # the half-written file is there...
    good = torch.load(path, weights_only=False)
    assert good["global_step"] == 1 and bool((good["w"] == 1).all())  # ...but the final name is untouched
    assert find_resume_checkpoint(run_dir) == path  # and resume never picks the temp file
    assert remove_stale_temps(path.parent) == [temp] and not temp.exists()

"""SLURM: a real sweep through sbatch (one run with 2 DDP tasks), requeue on the pre-timeout signal, compare.

Needs a running cluster (``.ci/slurm-up.sh`` brings up a single-node one; ``.ci/run`` does it before the suite).
Every test skips, quoting why, when ``sinfo`` does not answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from avp import cli
from avp.compare import read_scalars
from avp.sweep.spec import read_status
from tests.lit.toy import GENERATOR_CONFIGS, tiny_shards, toy_config

ROOT = Path(__file__).resolve().parents[1]  # the jobs' working directory: tests.lit.toy must import there
STATUS_FILE = Path(os.environ.get("AVP_SLURM_STATUS", "/tmp/avp-slurm-status"))


def slurm_unavailable() -> str | None:
    """Why SLURM cannot be used here, or None when ``sinfo`` answers."""
    hint = ""
    if STATUS_FILE.exists():
        hint = f"; .ci/slurm-up.sh said: {STATUS_FILE.read_text().strip()}"
    if shutil.which("sinfo") is None:
        return f"SLURM is not installed (no sinfo on PATH){hint}; run .ci/slurm-up.sh as root"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 30 s{hint}"
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"sinfo failed: {proc.stderr.strip() or 'no nodes'}{hint}; run .ci/slurm-up.sh as root"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = slurm_unavailable()
    if reason is not None:
        pytest.skip(reason)


def avp(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The ``avp`` console script's dispatch, in this process (the jobs themselves are separate processes)."""
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def job_state(job: str, tries: int = 20) -> str | None:
    """The job's state as ``squeue`` shows it, None once it has left the queue.

    A busy controller makes ``squeue`` fail now and then (socket timeouts); that is retried, never read as "gone".
    """
    for _ in range(tries):
        proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.strip() or None
        if "Invalid job id" in proc.stderr:
            return None
        time.sleep(0.5)
    raise AssertionError(f"squeue -j {job} failed {tries} times: {proc.stderr.strip()}")


def wait_until_restartable(job: str, pids: list[int], timeout: float = 120.0) -> None:
    """Wait until a requeued job may be forced to start again on the same node.

    Requeueing revokes the job's credential on the node, compared by creation time in whole seconds: a start forced
    (``StartTime=now``) within the second of the requeue is refused ("Job credential revoked") and the job fails.
    A real requeue waits ~2 minutes (BeginTime) and never meets this. So: the old incarnation's step daemons and
    training processes are gone (this single-node cluster shares our process table), and two seconds have passed.
    """
    requeued = time.time()
    deadline = time.monotonic() + timeout
    while True:
        stepds = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."], capture_output=True, text=True).stdout
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        if not stepds.strip() and not alive:
            break
        assert time.monotonic() < deadline, f"job {job}: step daemons {stepds.split()} / pids {alive} still running"
        time.sleep(0.5)
    time.sleep(max(0.0, requeued + 2.0 - time.time()))


def job_report(job: str, run_dir: Path) -> str:
    """What SLURM and the job's own log say, for assertion messages."""
    sacct = subprocess.run(["sacct", "-n", "-P", "-D", "-j", job, "-o", "JobID,State,ExitCode,Start,End,Reason"],
                           capture_output=True, text=True)
    logs = "".join(p.read_text()[-3000:] for p in sorted((run_dir / "slurm").glob("*.out")))
    return f"\nsacct: {sacct.stdout.strip() or sacct.stderr.strip()}\nstatus: {read_status(run_dir)}\nlog tail:\n{logs}"


def test_a_two_run_sweep_through_sbatch_with_ddp_then_compare(slurm, tmp_path: Path, capsys,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    shards = tiny_shards(tmp_path_factory.getbasetemp())
    spec = {
        "name": "slurm-ci", "out": str(tmp_path / "runs"), "base": GENERATOR_CONFIGS,
        "overrides": {"data.init_args.root": str(shards), "trainer.max_steps": 8},
        "runs": {"single": {}, "ddp": {"launcher": {"tasks_per_node": 2}}},
        "launcher": {"cpus_per_task": 1, "mem_gb": 1, "time_min": 10, "signal_delay_s": 60},
    }
    spec_path = tmp_path / "slurm.sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    code, out, err = avp(capsys, "sweep", str(spec_path), "--launcher", "slurm", "--wait", "--timeout", "600",
                         "--workdir", str(ROOT))
    assert code == 0, out[-4000:] + err[-4000:]

    runs = {name: tmp_path / "runs" / name / "seed0" for name in ("single", "ddp")}
    for name, run_dir in runs.items():
        status = read_status(run_dir)
        assert status["state"] == "finished" and status["global_step"] == 8, (name, status)
        attempt = status["attempts"][-1]
        assert attempt["cluster_environment"] == "SLURMEnvironment" and attempt["slurm_job_id"]
        assert attempt["world_size"] == (2 if name == "ddp" else 1)
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 8
        scalars = read_scalars(run_dir / "tb")
        assert scalars["train/loss"] and scalars["val/loss"]
        script = (run_dir / "slurm" / "job.sbatch").read_text()
        assert "#SBATCH --signal=USR1@60" in script and "#SBATCH --requeue" in script
    ddp_log = next((runs["ddp"] / "slurm").glob("*.out")).read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in ddp_log  # Lightning took rank and world size from srun
    assert "#SBATCH --ntasks-per-node=2" in (runs["ddp"] / "slurm" / "job.sbatch").read_text()

    # idempotent: finished runs are skipped, nothing is submitted again
    jobs = {name: (run_dir / "slurm" / "jobs.txt").read_text() for name, run_dir in runs.items()}
    code, out, err = avp(capsys, "sweep", str(spec_path), "--launcher", "slurm", "--workdir", str(ROOT))
    assert code == 0 and out.count("finished: skip") == 2, out + err
    assert jobs == {name: (run_dir / "slurm" / "jobs.txt").read_text() for name, run_dir in runs.items()}

    # the sweep's own logs compare into a table and plots
    out = tmp_path / "compare"
    code, printed, err = avp(capsys, "compare", str(tmp_path / "runs"), "--out", str(out))
    assert code == 0 and "| ddp | 1 |" in printed, err
    table = (out / "table.md").read_text()
    assert "| single | 1 |" in table and "| ddp | 1 |" in table and "val/loss ↓" in table
    assert (out / "ablation.png").stat().st_size > 0 and (out / "curves_val_loss.png").stat().st_size > 0
    rows = (out / "table.csv").read_text().splitlines()
    assert rows[0].startswith("variant,seeds,") and [r.split(",")[0] for r in rows[1:]] == ["single", "ddp"]


def test_the_pre_timeout_signal_checkpoints_requeues_and_resumes(slurm, tmp_path: Path, capsys) -> None:
    max_steps = 300
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(toy_config(max_steps=max_steps, model={"step_delay": 0.03})))
    spec = {"name": "requeue", "out": str(tmp_path / "runs"), "base": [str(tmp_path / "toy.yaml")],
            "checkpoint_every_n_steps": 10, "runs": {"toy": {}},
            "launcher": {"cpus_per_task": 1, "mem_gb": 1, "time_min": 10}}
    spec_path = tmp_path / "requeue.sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    code, out, err = avp(capsys, "sweep", str(spec_path), "--launcher", "slurm", "--workdir", str(ROOT))
    assert code == 0, out + err
    run_dir = tmp_path / "runs" / "toy" / "seed0"
    job = (run_dir / "slurm" / "jobs.txt").read_text().split()[-1]

    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():  # training is under way
        assert job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), \
            f"job {job} ended before the signal" + job_report(job, run_dir)
        assert time.monotonic() < deadline, f"job {job} never started training" + job_report(job, run_dir)
        time.sleep(0.5)
    # what SLURM sends signal_delay_s before the time limit (sbatch --signal=USR1@…), sent now
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    while read_status(run_dir).get("state") != "requeued":
        assert time.monotonic() < deadline, f"job {job} did not requeue" + job_report(job, run_dir)
        time.sleep(0.5)
    # a requeued job waits (Reason=BeginTime, ~2 min) before it may start again; let it start now
    while job_state(job) != "PENDING":
        assert time.monotonic() < deadline, f"job {job} is {job_state(job)}, not PENDING" + job_report(job, run_dir)
        time.sleep(0.5)
    wait_until_restartable(job, [attempt["pid"] for attempt in read_status(run_dir)["attempts"]])
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    while job_state(job) is not None:
        assert time.monotonic() < deadline + 300, f"job {job} still {job_state(job)}" + job_report(job, run_dir)
        time.sleep(1)

    status = read_status(run_dir)
    assert status["state"] == "finished" and status["global_step"] == max_steps, job_report(job, run_dir)
    first, second = status["attempts"]
    assert first["end_state"] == "requeued" and 0 < first["end_step"] < max_steps
    # from the requeue checkpoint (or last.ckpt, when the periodic save fell on the same batch: same state)
    assert (run_dir / "checkpoints" / "last-requeue.ckpt").is_file()
    assert second["resumed_from"] in {str(run_dir / "checkpoints" / n) for n in ("last-requeue.ckpt", "last.ckpt")}
    assert second["resumed_step"] == first["end_step"]
    assert first["slurm_job_id"] == second["slurm_job_id"] == job and second["slurm_restart_count"] == "1"
    steps = [s for s, _ in read_scalars(run_dir / "tb")["train/loss"]]
    assert steps == list(range(max_steps))  # one log, continued across the requeue, each step once
    log = "".join(p.read_text() for p in (run_dir / "slurm").glob("*.out"))
    assert "restart 1" in log
    assert json.loads((run_dir / "run.json").read_text())["resources"]["signal_delay_s"] == 120

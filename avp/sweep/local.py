"""Local launcher: runs a sweep's runs one after another on this machine, each as its own process.

Each run is ``python -m avp.sweep.run RUN_DIR`` (so a later ``avp sweep`` resumes it exactly as SLURM would); with
``tasks_per_node > 1`` Lightning starts the DDP processes itself. Output goes to ``RUN_DIR/fit.log`` (appended
across attempts) unless ``stream`` is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avp.sweep.spec import PlannedRun, SpecError, read_status

LOG_FILE = "fit.log"


@dataclass
class LocalResult:
    run: PlannedRun
    returncode: int
    state: str
    """The run's status after the attempt (``finished``, ``failed``, …; ``unknown`` if it never wrote one)."""
    seconds: float
    global_step: int | None


def run_env(run: PlannedRun) -> dict[str, str]:
    """Environment of a run: its workdir importable (configs may name project-local classes), threads capped."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(run.workdir), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", str(run.resources.cpus_per_task))
    return env


def run_command(run: PlannedRun) -> list[str]:
    return [run.resources.python or sys.executable, "-m", "avp.sweep.run", str(run.run_dir)]


def check_local(runs: Sequence[PlannedRun]) -> None:
    for run in runs:
        if run.resources.nodes > 1:
            raise SpecError(f"run {run.name}: nodes={run.resources.nodes} needs --launcher slurm")


def launch_local(runs: Sequence[PlannedRun], *, stream: bool = False, echo=print) -> list[LocalResult]:
    """Run each run to completion (or failure), in order; a failed run does not stop the others."""
    check_local(runs)
    results = []
    for i, run in enumerate(runs, 1):
        echo(f"[{i}/{len(runs)}] {run.name}: running (log: {run.run_dir / LOG_FILE})")
        start = time.perf_counter()
        if stream:
            proc = subprocess.run(run_command(run), cwd=run.workdir, env=run_env(run))
        else:
            with open(Path(run.run_dir) / LOG_FILE, "ab") as log:
                proc = subprocess.run(run_command(run), cwd=run.workdir, env=run_env(run), stdout=log,
                                      stderr=subprocess.STDOUT)
        status = read_status(run.run_dir)
        result = LocalResult(run, proc.returncode, status.get("state", "unknown"), time.perf_counter() - start,
                             status.get("global_step"))
        results.append(result)
        ok = proc.returncode == 0 and result.state == "finished"
        detail = f"step {result.global_step}" if ok else f"exit code {proc.returncode}, state {result.state}"
        echo(f"[{i}/{len(runs)}] {run.name}: {'finished' if ok else 'FAILED'} in {result.seconds:.1f} s ({detail})")
        if not ok and not stream:
            tail = (Path(run.run_dir) / LOG_FILE).read_text(errors="replace").splitlines()[-15:]
            echo("\n".join("    " + line for line in tail))
    return results

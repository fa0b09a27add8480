"""``avp sweep SPEC.yaml --launcher local|slurm [--dry-run]``: plan, create and launch a sweep's runs.

Idempotent: a finished run is skipped, an unfinished one resumes from its newest checkpoint, a run with a SLURM job
still pending/running is left alone, and a run folder whose config no longer matches the spec is refused.
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from avp.sweep.local import launch_local, run_command
from avp.sweep.run import find_resume_checkpoint
from avp.sweep.spec import PlannedRun, SpecError, expand, load_spec, read_status, resolve_run_config, write_run

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def build_parser() -> ArgumentParser:
    from avp.tool_parser import tool_parser

    p = tool_parser("avp sweep", __doc__.split("\n\n")[0], epilog="spec format: experiments/README.md")
    p.add_argument("spec", type=str,
                   help="sweep spec YAML (base configs, deltas, seeds, overrides, launcher resources)")
    p.add_argument("--launcher", type=Literal["local", "slurm"], default="local",
                   help="run here one after another, or submit one sbatch job per run (default: local)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned runs (configs are still parsed and validated); write and launch nothing")
    p.add_argument("--only", type=str, nargs="+", metavar="PATTERN",
                   help="only runs whose name (variant/seedK) or variant matches one of these globs")
    p.add_argument("--workdir", type=str,
                   help="resolve relative paths and run from here (default: the spec's workdir or .)")
    p.add_argument("--wait", action="store_true", help="slurm: wait until every submitted job has ended")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="slurm --wait: give up after this many seconds")
    p.add_argument("--stream", action="store_true", help="local: show each run's output instead of RUN_DIR/fit.log")
    return p


def _state(run: PlannedRun, launcher: str) -> tuple[str, bool]:
    """(what will happen, whether it launches)."""
    if read_status(run.run_dir).get("state") == "finished":
        return "finished: skip", False
    if launcher == "slurm" and (run.run_dir / "slurm" / "jobs.txt").exists():
        from avp.sweep.slurm import active_job

        job = active_job(run)
        if job is not None:
            return f"queued as job {job}: skip", False
    ckpt = find_resume_checkpoint(run.run_dir)
    return (f"resume from {ckpt.relative_to(run.run_dir)}" if ckpt else "new"), True


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec, workdir=args.workdir)
        runs = expand(spec)
        if args.only:
            runs = [r for r in runs if any(fnmatch.fnmatch(r.name, p) or fnmatch.fnmatch(r.variant, p)
                                           for p in args.only)]
            if not runs:
                raise SpecError(f"--only {' '.join(args.only)} matches no run of {args.spec}")
        configs = {run.name: resolve_run_config(run) for run in runs}
        plan = [(run, *_state(run, args.launcher)) for run in runs]
        rows = [["run", "seed", "world", "state", "folder"]]
        rows += [[r.name, str(r.seed), str(r.resources.world_size), s, str(r.run_dir)] for r, s, _ in plan]
        todo = [r for r, _, go in plan if go]
        print(f"sweep {spec.name}: {len(runs)} run(s), {len(todo)} to launch ({args.launcher})\n{_table(rows)}")
        if args.dry_run:
            if todo:
                print(f"\ncommand of {todo[0].name}: {' '.join(run_command(todo[0]))}")
                if args.launcher == "slurm":
                    from avp.sweep.slurm import sbatch_script

                    print(f"\nbatch script of {todo[0].name}:\n{sbatch_script(todo[0])}")
            return 0
        for run in runs:
            write_run(run, configs[run.name])
    except SpecError as e:
        print(f"avp sweep: {e}", file=sys.stderr)
        return 2
    if not todo:
        return 0
    if args.launcher == "local":
        results = launch_local(todo, stream=args.stream)
        failed = [r.run.name for r in results if r.returncode != 0 or r.state != "finished"]
        if failed:
            print(f"avp sweep: {len(failed)} run(s) did not finish: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0

    from avp.sweep.slurm import SlurmError, accounting_states, launch_slurm, wait

    try:
        jobs = launch_slurm(todo)
        if not args.wait:
            return 0
        wait(list(jobs.values()), timeout=args.timeout)
    except (SlurmError, TimeoutError) as e:
        print(f"avp sweep: {e}", file=sys.stderr)
        return 1
    states = accounting_states(list(jobs.values()))
    failed = []
    for run in todo:
        status = read_status(run.run_dir)
        job = jobs[run.name]
        print(f"{run.name}: job {job} {states.get(job, '?')}, run {status.get('state', 'not started')}"
              f" at step {status.get('global_step', '-')} (log: {Path(run.run_dir) / 'slurm' / (job + '.out')})")
        if status.get("state") != "finished":
            failed.append(run.name)
    return 1 if failed else 0

"""Per-run entry point: ``python -m avp.sweep.run RUN_DIR [extra avp fit args]``.

Both launchers start this (SLURM through ``srun``, once per task). It exits at once when the run's status says
``finished``; otherwise it picks the newest checkpoint (``checkpoints/last*.ckpt``, or an ``hpc_ckpt_*.ckpt`` from
Lightning's own requeue handler) and replaces itself with ``python -m avp.cli fit --config RUN_DIR/config.yaml
[--ckpt_path CKPT]``. Every task of a DDP job resolves the same checkpoint: nothing writes while a job starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from avp.sweep.spec import CHECKPOINT_SUBDIR, CONFIG_FILE, read_status


def resume_candidates(run_dir: Path) -> list[Path]:
    """Checkpoints a run can resume from; hidden temp files of interrupted saves never match."""
    run_dir = Path(run_dir)
    return [p for p in [*(run_dir / CHECKPOINT_SUBDIR).glob("last*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
            if p.is_file()]


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest resumable checkpoint of a run folder, or None for a fresh start."""
    candidates = resume_candidates(run_dir)
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def fit_command(run_dir: Path, extra: list[str] | None = None) -> list[str]:
    """The ``avp fit`` command line that starts or resumes the run in ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    cmd = [sys.executable, "-m", "avp.cli", "fit", "--config", str(run_dir / CONFIG_FILE)]
    ckpt = find_resume_checkpoint(run_dir)
    if ckpt is not None:
        cmd += ["--ckpt_path", str(ckpt)]
    return cmd + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    run_dir = Path(argv[0]).resolve()
    if not (run_dir / CONFIG_FILE).is_file():
        print(f"avp.sweep.run: {run_dir / CONFIG_FILE} does not exist (create runs with `avp sweep SPEC`)",
              file=sys.stderr)
        return 2
    if read_status(run_dir).get("state") == "finished":
        print(f"avp.sweep.run: {run_dir} is finished; nothing to do")
        return 0
    cmd = fit_command(run_dir, argv[1:])
    print("avp.sweep.run:", " ".join(cmd), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 1  # not reached: execv replaces the process


if __name__ == "__main__":
    sys.exit(main())

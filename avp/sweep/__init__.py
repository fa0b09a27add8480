"""Ablation sweeps: a spec expands variants × seeds into ``avp fit`` runs, launched locally or through SLURM.

- :mod:`avp.sweep.spec`: the spec format, expansion and the merged config of each run.
- :mod:`avp.sweep.run`: the per-run entry point (``python -m avp.sweep.run RUN_DIR``): skips a finished run,
  resumes an unfinished one from its newest checkpoint, then becomes ``avp fit`` (exec, so SLURM's signals and
  environment reach Lightning directly).
- :mod:`avp.sweep.local` / :mod:`avp.sweep.slurm`: the launchers; :mod:`avp.sweep.cli`: ``avp sweep``.

Nothing here imports Lightning: configs are parsed by :func:`avp.cli.build_cli`, training runs in subprocesses.
"""

"""The console script: help texts, verb dispatch and config errors."""

from __future__ import annotations

import subprocess
import sys

from avp import cli


def run_avp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avp.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_top_level_help_lists_every_verb(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in [*cli.LIGHTNING_VERBS, *cli.TOOLS]:
        assert f"  {verb} " in out


def test_unknown_verb_is_refused(capsys) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown verb 'frobnicate'" in capsys.readouterr().err


def test_fit_help_is_lightning_cli() -> None:
    proc = run_avp("fit", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout and "--trainer" in proc.stdout and "--model" in proc.stdout


def test_bench_lists_benchmarks(capsys) -> None:
    assert cli.main(["bench", "--list"]) == 0
    assert "benchmarks:" in capsys.readouterr().out

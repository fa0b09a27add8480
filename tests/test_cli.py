"""The console script: help texts, verb dispatch and config errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_predict_adds_the_prediction_writer_unless_the_config_lists_one(tmp_path) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import BasePredictionWriter

    from avp.lit.predict import PredictionWriter

    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False,
             "default_root_dir": str(tmp_path)}
    trainer = Trainer(**quiet)
    writer = cli.add_prediction_writer(trainer)
    assert isinstance(writer, PredictionWriter) and writer.output_dir is None and writer in trainer.callbacks
    assert cli.add_prediction_writer(trainer) is writer  # added once
    own = PredictionWriter(output_dir=str(tmp_path / "mine"))
    trainer = Trainer(callbacks=[own], **quiet)
    assert cli.add_prediction_writer(trainer) is own
    assert sum(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks) == 1


def test_predict_help_names_what_it_writes(capsys) -> None:
    assert cli.main(["--help"]) == 0
    assert "predictions" in capsys.readouterr().out


@pytest.mark.parametrize("verb", ["fit", "benchmark", "demo"])
def test_a_yaml_syntax_error_names_the_config_file_and_line(verb: str, tmp_path, capsys) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("trainer:\n  max_steps: 3\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: {lr: [1, 2\n")
    assert cli.main([verb, "--config", str(good), f"--config={bad}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"avp {verb}: config file {bad} (line 3, column 1): not valid YAML: ")
    assert str(good) not in err

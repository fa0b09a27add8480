"""Sweep specs, expansion into runs with merged configs, batch scripts, the local launcher and idempotency."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from avp.compare import compare
from avp.sweep import cli as sweep_cli
from avp.sweep.run import find_resume_checkpoint, fit_command
from avp.sweep.run import main as run_main
from avp.sweep.slurm import sbatch_script
from avp.sweep.spec import SpecError, expand, load_spec, read_status, resolve_run_config, write_run
from tests.lit.toy import toy_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A complete toy config, a delta and an overlay with a callback, beside each other in tmp_path."""
    config = toy_config(max_steps=6)
    config["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"monitor": "val/loss", "save_last": True,
                                                     "dirpath": "/somewhere/else"}}]
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "lr.yaml").write_text("# bases: toy.yaml\nmodel:\n  init_args:\n    lr: 0.01\n")
    (tmp_path / "features.yaml").write_text("model:\n  init_args:\n    in_features: 4\n"
                                            "data:\n  init_args:\n    in_features: 4\n")
    return tmp_path


def write_spec(directory: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def base_spec(d: Path, **extra) -> dict:
    return {"name": "toy", "out": str(d / "runs"), "base": [str(d / "toy.yaml")], **extra,
            "runs": extra.pop("runs", None) or {"full": {}}}


# ---------------------------------------------------------------------------------------------------- specs
def test_a_spec_expands_variants_times_seeds_in_order(toy: Path) -> None:
    spec = load_spec(write_spec(toy, base_spec(toy, seeds=2, runs={
        "full": None, "low-lr": str(toy / "lr.yaml"),
        "small": {"deltas": [str(toy / "features.yaml")], "overrides": {"trainer.max_steps": 3},
                  "launcher": {"tasks_per_node": 2, "time_min": 5, "signal_delay_s": 60}}})), workdir=ROOT)
    runs = expand(spec)
    assert [r.name for r in runs] == ["full/seed0", "full/seed1", "low-lr/seed0", "low-lr/seed1",
                                      "small/seed0", "small/seed1"]
    assert [r.index for r in runs] == list(range(6))
    assert runs[2].configs == [toy / "toy.yaml", toy / "lr.yaml"]
    assert runs[4].run_dir == toy / "runs" / "small" / "seed0"
    assert runs[4].resources.world_size == 2 and runs[0].resources.world_size == 1
    assert runs[4].overrides == {"trainer.max_steps": 3}


@pytest.mark.parametrize("change,message", [
    # types, unknown and missing keys: jsonargparse's errors (they name the key), after the file and the key path
    ({"bogus": 1}, "sweep.yaml: Option 'bogus' is not accepted"),
    ({"runs": {"a": {"delta": "x.yaml"}}}, "runs.a: Option 'delta' is not accepted"),
    ({"launcher": {"gpus": 2}}, "launcher: Option 'gpus' is not accepted"),
    ({"launcher": {"nodes": "many"}}, 'launcher: Parser key "nodes"'),
    ({"launcher": {"setup": "module load cuda"}}, 'launcher: Parser key "setup"'),
    ({"runs": {"a": {"launcher": {"time_min": 1.5}}}}, 'runs.a.launcher: Parser key "time_min"'),
    ({"runs": {"a": {"deltas": 3}}}, 'runs.a: Parser key "deltas"'),
    ({"runs": ["full"]}, 'Parser key "runs"'),
    ({"overrides": ["trainer.max_steps=3"]}, 'Parser key "overrides"'),
    ({"seeds": "three"}, 'Parser key "seeds"'),
    ({"checkpoint_every_n_steps": "often"}, 'Parser key "checkpoint_every_n_steps"'),
    # ranges, paths, names and consistency: ours
    ({"runs": {"a": "missing.yaml"}}, "runs.a.deltas: missing.yaml does not exist"),
    ({"base": ["nope.yaml"]}, "base: nope.yaml does not exist"),
    ({"seeds": [1, 1]}, "seeds: expected a count or a list of distinct integers"),
    ({"seeds": 0}, "seeds: a count must be >= 1"),
    ({"launcher": {"time_min": 1}}, "signal_delay_s (120) must be shorter than time_min (1 min)"),
    ({"launcher": {"gpus_per_node": 4, "tasks_per_node": 2}}, "must equal gpus_per_node"),
    ({"launcher": {"nodes": 0}}, "launcher.nodes: expected an integer >= 1"),
    ({"runs": {"a/b": {}}}, "is not a usable folder name"),
    ({"overrides": {"trainer max": 1}}, "is not a dotted config key"),
    ({"checkpoint_every_n_steps": 0}, "checkpoint_every_n_steps: expected an integer >= 1"),
])
def test_spec_errors_name_the_file_and_key(toy: Path, change: dict, message: str) -> None:
    spec = {**base_spec(toy), **change}
    path = write_spec(toy, spec)
    with pytest.raises(SpecError) as info:
        load_spec(path, workdir=toy)
    assert str(path) in str(info.value) and message in str(info.value)


def test_override_values_reach_the_cli_as_written(toy: Path) -> None:
    """The spec's parser checks that overrides are a mapping but leaves their values alone: the real CLI parses
    each one when the run's config is resolved (text that reads as null or a number stays text until then)."""
    overrides = {"trainer.max_steps": 3, "model.init_args.name": "null", "trainer.precision": "32"}
    spec = load_spec(write_spec(toy, base_spec(toy, overrides=overrides, runs={
        "v": {"overrides": {"trainer.log_every_n_steps": "1e1"}, "launcher": {"partition": "7"}}})), workdir=ROOT)
    assert spec.overrides == overrides
    assert spec.variants[0].overrides == {"trainer.log_every_n_steps": "1e1"}
    assert spec.variants[0].resources.partition == "7"


def test_a_missing_required_key_and_bad_yaml_are_named(toy: Path) -> None:
    path = write_spec(toy, {"base": [str(toy / "toy.yaml")]})
    with pytest.raises(SpecError, match="required: runs"):
        load_spec(path)
    path.write_text("base: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


# ---------------------------------------------------------------------------------------------------- merged configs
def test_the_merged_config_applies_base_delta_overrides_and_the_sweep_settings(toy: Path) -> None:
    spec = load_spec(write_spec(toy, base_spec(toy, seeds=[7], checkpoint_every_n_steps=5,
                                               overrides={"model.init_args.lr": 0.2, "trainer.max_steps": 9},
                                               runs={"v": {"deltas": [str(toy / "lr.yaml")],
                                                           "overrides": {"trainer.max_steps": 4},
                                                           "launcher": {"tasks_per_node": 2}}})), workdir=ROOT)
    [run] = expand(spec)
    text = resolve_run_config(run)
    assert text.startswith("# avp sweep toy: run v/seed7")
    cfg = yaml.safe_load(text)
    assert cfg["seed_everything"] == 7
    assert cfg["model"]["init_args"]["lr"] == 0.2  # spec overrides come after the delta (0.01)
    assert cfg["trainer"]["max_steps"] == 4  # the variant's override comes last
    trainer = cfg["trainer"]
    assert trainer["default_root_dir"] == str(run.run_dir)
    assert (trainer["accelerator"], trainer["devices"], trainer["num_nodes"], trainer["strategy"]) == \
        ("cpu", 2, 1, "ddp")
    [logger] = trainer["logger"]
    assert logger["class_path"].endswith("TensorBoardLogger")
    assert {k: logger["init_args"][k] for k in ("save_dir", "name", "version")} == \
        {"save_dir": str(run.run_dir), "name": "", "version": "tb"}
    own, resume, fault = trainer["callbacks"]
    assert own["init_args"]["dirpath"] == str(run.checkpoint_dir) and own["init_args"]["save_last"] is False
    assert own["init_args"]["monitor"] == "val/loss"
    assert resume == {"class_path": "avp.lit.callbacks.ResumeCheckpoint",
                      "init_args": {"dirpath": str(run.checkpoint_dir), "every_n_train_steps": 5}}
    assert fault["class_path"] == "avp.lit.callbacks.FaultTolerance"


def test_a_bad_override_fails_naming_the_run_and_the_key(toy: Path) -> None:
    [run] = expand(load_spec(write_spec(toy, base_spec(toy, overrides={"model.init_args.learning_rate": 1})),
                             workdir=ROOT))
    with pytest.raises(SpecError) as info:
        resolve_run_config(run)
    assert "run full/seed0" in str(info.value) and "learning_rate" in str(info.value)


def test_a_started_run_keeps_its_config(toy: Path) -> None:
    path = write_spec(toy, base_spec(toy))
    [run] = expand(load_spec(path, workdir=ROOT))
    write_run(run, resolve_run_config(run))
    changed = base_spec(toy, overrides={"trainer.max_steps": 99})
    [run2] = expand(load_spec(write_spec(toy, changed), workdir=ROOT))
    write_run(run2, resolve_run_config(run2))  # not started yet: the new config replaces the old
    assert "max_steps: 99" in run.config_path.read_text()
    (run.run_dir / "status.json").write_text('{"state": "running"}')
    [run3] = expand(load_spec(write_spec(toy, base_spec(toy)), workdir=ROOT))
    with pytest.raises(SpecError, match="was started with a different config"):
        write_run(run3, resolve_run_config(run3))


# ---------------------------------------------------------------------------------------------------- launchers
def test_the_batch_script_carries_the_resources(toy: Path) -> None:
    spec = load_spec(write_spec(toy, base_spec(toy, launcher={
        "nodes": 2, "gpus_per_node": 4, "cpus_per_task": 6, "mem_gb": 64, "time_min": 1500, "partition": "gpu",
        "account": "lab", "signal_delay_s": 300, "setup": ["module load cuda/12"], "sbatch_args": ["--qos=high"],
        "python": "/opt/venv/bin/python"})), workdir=ROOT)
    [run] = expand(spec)
    script = sbatch_script(run)
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=65536M", "#SBATCH --time=1-01:00:00",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --signal=USR1@300",
                 "#SBATCH --requeue", f"#SBATCH --chdir={ROOT}", "#SBATCH --qos=high", "module load cuda/12",
                 f"srun --kill-on-bad-exit=1 /opt/venv/bin/python -m avp.sweep.run {run.run_dir}"]:
        assert line in script.splitlines(), line
    assert script.index("module load") < script.index("srun")
    trainer = yaml.safe_load(resolve_run_config(run))["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["num_nodes"]) == ("gpu", 4, 2)


def test_resume_picks_the_newest_checkpoint_and_never_a_temp_file(tmp_path: Path) -> None:
    assert find_resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last, hpc, temp = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt", \
        tmp_path / "checkpoints" / ".last.ckpt.abc.tmp"
    for i, path in enumerate([hpc, last, temp]):
        path.write_bytes(b"x")
        os.utime(path, ns=(10**9 * (i + 1),) * 2)
    assert find_resume_checkpoint(tmp_path) == last
    os.utime(hpc, ns=(10**10,) * 2)
    assert find_resume_checkpoint(tmp_path) == hpc
    (tmp_path / "config.yaml").write_text("{}")
    assert fit_command(tmp_path)[-2:] == ["--ckpt_path", str(hpc)]


def test_the_run_entry_point_skips_a_finished_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / "status.json").write_text('{"state": "finished"}')
    assert run_main([str(tmp_path)]) == 0 and "finished; nothing to do" in capsys.readouterr().out
    assert run_main([str(tmp_path / "absent")]) == 2


def test_dry_run_plans_and_writes_nothing(toy: Path, capsys) -> None:
    path = write_spec(toy, base_spec(toy, seeds=2))
    assert sweep_cli.main([str(path), "--launcher", "slurm", "--dry-run", "--workdir", str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert "sweep toy: 2 run(s), 2 to launch (slurm)" in out and "full/seed1" in out and "#SBATCH" in out
    assert not (toy / "runs").exists()
    bad = write_spec(toy, {**base_spec(toy), "launcher": {"gpu": 1}}, "bad.yaml")
    assert sweep_cli.main([str(bad), "--dry-run"]) == 2
    assert "launcher: Option 'gpu' is not accepted" in capsys.readouterr().err


def test_a_local_sweep_runs_each_seed_skips_finished_runs_and_compares(toy: Path, capsys) -> None:
    path = write_spec(toy, base_spec(toy, seeds=2))
    assert sweep_cli.main([str(path), "--workdir", str(ROOT)]) == 0
    runs = [toy / "runs" / "full" / f"seed{s}" for s in (0, 1)]
    for run_dir in runs:
        status = read_status(run_dir)
        assert status["state"] == "finished" and status["global_step"] == 6
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "fit.log").is_file()
    capsys.readouterr()
    assert sweep_cli.main([str(path), "--workdir", str(ROOT)]) == 0  # again: nothing to do
    out = capsys.readouterr().out
    assert out.count("finished: skip") == 2 and "0 to launch" in out

    result = compare([toy / "runs"], toy / "compare", plots=False)
    assert [r.seed for r in result.runs] == [0, 1] and {r.variant for r in result.runs} == {"full"}
    assert "| full | 2 |" in result.markdown  # the two seeds are one row, mean ± std
    assert " ± " in result.markdown.split("| full | 2 |")[1].splitlines()[0]


def test_the_run_record_names_the_code_that_runs_even_from_a_scratch_workdir(toy: Path, tmp_path: Path) -> None:
    from avp.provenance import git_sha
    from avp.sweep.spec import run_record

    scratch = tmp_path / "scratch"  # a work folder outside any git checkout, as on a cluster's scratch space
    scratch.mkdir()
    [run] = expand(load_spec(write_spec(toy, base_spec(toy)), workdir=scratch))
    record = run_record(run)
    assert record["git"] == git_sha() and record["git"] is not None  # avp's own checkout
    assert record["workdir_git"] is None and record["workdir"] == str(scratch)

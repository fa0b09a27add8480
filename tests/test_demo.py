"""`make demo` in miniature: the benchmark's rows with one seed, then avatars, on a seconds-sized configuration (in
this process); what each step wrote (read back), the resume logic and the configs it refuses; the same through the
real command line (`avp demo` subprocesses, every step its own process) is the slow test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from avp.benchmark import ROWS, BenchmarkRow
from avp.benchmark import build_parser as benchmark_parser
from avp.benchmark import config_from_namespace as benchmark_config
from avp.benchmark_report import ROW_LABELS
from avp.demo import Demo, DemoConfig, build_parser, config_from_namespace, main
from avp.export.video import read_video

REPO = Path(__file__).resolve().parents[1]
SMALL_DATA = {"val_fraction": 0.17, "test_fraction": 0.17, "views": 2, "frames": 2, "size": 32, "portrait_size": 64}
# the generator's own dataset, as small as the decoders' (another seed: the two share no subject)
GENERATOR_DATA = {"subjects": 6, **SMALL_DATA, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 7}
QUICK = {
    "data": {"subjects": 12, **SMALL_DATA, "points": [60, 90]},
    "generator_data": {**GENERATOR_DATA, "points": [60, 90]},
    "generator": {"max_steps": 3, "batch_size": 2, "samples_per_epoch": 4},
    "decoder": {"max_steps": 3, "batch_size": 1, "samples_per_epoch": 2},
    "eval": {"limit": 1, "overrides": ["render.resolution=32", "face.resolution=128", "face.akd_resolution=128",
                                       "frames.max_frames=1"]},
    "avatarize": {"frames": 4, "orbit_frames": 4, "size": 64, "fit_steps": 20},
    "sheet": {"subjects": 1, "size": 64},
}


def _demo(out: Path, quick: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avp.cli", "demo", "--config", "configs/demo.yaml", "--config",
                           str(quick), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800)


def _parse(*configs: str | Path, extra: tuple[str, ...] = ()) -> DemoConfig:
    return config_from_namespace(build_parser().parse_args([a for c in configs for a in ("--config", str(c))]
                                                           + list(extra)))


def test_the_demo_config_is_the_benchmark_with_one_seed_and_wrong_keys_are_named() -> None:
    config = _parse(REPO / "configs" / "demo.yaml")
    bench = benchmark_config(benchmark_parser().parse_args(["--config", str(REPO / "configs" / "benchmark.yaml")]))
    assert isinstance(config, DemoConfig) and config.generator.max_steps > 0
    assert all((REPO / c).is_file() for s in (config.generator, config.decoder) for c in s.configs)
    # the same rows and the same settings as the benchmark; only the sizes differ
    assert list(config.rows) == list(ROWS) and config.rows == bench.rows
    assert config.decoder.delta == bench.decoder.delta and config.generator.delta == bench.generator.delta
    assert config.decoder.configs == bench.decoder.configs and config.generator.configs == bench.generator.configs
    assert config.data.hair_volume == bench.data.hair_volume == 2.5
    assert config.generator_data is not None and config.generator_data.seed != config.data.seed
    assert (config.eval, config.points) == (bench.eval, bench.points)
    demo_bench = config.benchmark()
    assert demo_bench.seeds == [config.seed] and demo_bench.generator_seeds == 1
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(REPO / "configs" / "demo.yaml"), "--generator.max_stepz", "3"])


def test_a_config_without_the_full_row_or_with_an_unknown_row_is_refused_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    no_full = tmp_path / "no_full.yaml"  # rows replace the whole mapping of the configs before
    template = {"eval_points": "template", "delta": {"model": {"init_args": {"points": "template"}}}}
    no_full.write_text(yaml.safe_dump({"rows": {"template": template}}))
    with pytest.raises(ValueError, match=r"avp demo: rows\.full is missing"):
        _parse(REPO / "configs" / "demo.yaml", no_full)
    with pytest.raises(ValueError, match=r"rows\.full"):  # the demo checks what it is given, not only its CLI
        Demo(DemoConfig(rows={"template": BenchmarkRow(**template)}), tmp_path / "never", sys.executable)
    out = tmp_path / "refused"
    assert main(["--config", str(REPO / "configs" / "demo.yaml"), "--config", str(no_full), "--out", str(out)]) == 2
    assert "rows.full" in capsys.readouterr().err and not out.exists()
    fancy = tmp_path / "fancy.yaml"
    fancy.write_text(yaml.safe_dump({"rows": {"full": {}, "fancy": {}}}))
    with pytest.raises(ValueError, match=r"avp demo: rows \['fancy'\] are not benchmark rows"):
        _parse(REPO / "configs" / "demo.yaml", fancy)


def _stage_delta(model: dict, data: dict | None = None) -> dict:
    delta = {"trainer": {"limit_val_batches": 1, "enable_model_summary": False, "log_every_n_steps": 1,
                         "enable_progress_bar": False},
             "model": {"init_args": model}}
    return {**delta, "data": {"init_args": data}} if data else delta


# the stage deltas replace configs/demo.yaml's whole `delta` (its models are sized for minutes, not seconds)
TINY_DECODER = {"sampling": {"max_points": 16, "bind_nearest": 16}, "template_points": 16,
                "decoder": {"width": 16, "n_layers": 1, "n_heads": 2, "feature_hidden": 16, "n_frequencies": 2}}
FAST = {
    "data": {"subjects": 12, **SMALL_DATA, "points": [40, 60]},
    "generator_data": {**GENERATOR_DATA, "points": [40, 60]},
    "generator": {"max_steps": 2, "batch_size": 2, "samples_per_epoch": 4, "delta": _stage_delta({
        "tokenizer": {"levels": 64}, "model": {"n_layers": 1, "width": 32, "n_heads": 2}, "train_window": 256,
        "condition": {"image": {"image_size": 64, "tiny_width": 32, "tiny_depth": 1, "tiny_heads": 2,
                                "tiny_patch": 16}, "mesh": {"n_points": 16, "n_layers": 1, "n_heads": 2}},
        "val_sampling": {"max_points": 16, "bind_nearest": 16}, "val_sample_subjects": 1})},
    "decoder": {"max_steps": 2, "batch_size": 1, "samples_per_epoch": 2,
                "delta": _stage_delta(TINY_DECODER, {"image_size": 32})},
    "eval": {"limit": 1, "overrides": ["render.resolution=32", "face.enabled=false", "frames.max_frames=1"]},
    "avatarize": {"frames": 2, "orbit_frames": 3, "size": 32, "fit_steps": 5},
    "sheet": {"subjects": 1, "size": 32},
}
# the steps with a .done marker: two datasets, the generator, a fit per row that trains (the resampled-teacher row
# evaluates the teacher row's decoder), an evaluation per row, the avatars
STEPS = ("data", "generator-data", "generator-seed0", *(f"{r}-seed0" for r in ROWS if r != "resampled_teacher"),
         *(f"eval-{r}-seed0" for r in ROWS), "avatarize")
SKIPS = len(STEPS) + 1
"""The "already done" lines of a finished demo: each step once, the teacher row's fit twice (the resampled-teacher row
checks it too)."""


def _table_rows(table: str) -> list[str]:
    """The row labels of a markdown table (the first cell of each line after the header separator)."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [line.split("|")[1].strip() for line in lines[2:]]


def test_the_demo_runs_the_benchmark_rows_with_one_seed_makes_avatars_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(REPO)  # the demo config names the stage configs relative to the repository
    for var in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # `avp fit` seeds through the environment: restore it after
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(FAST))
    config = _parse("configs/demo.yaml", fast)
    out = tmp_path / "demo"
    try:
        Demo(config, out, sys.executable, in_process=True).run()
        first = capsys.readouterr().out

        # the data: the configured subjects split three ways; the generator learns from its own dataset
        manifest = json.loads((out / "data" / "shards.json").read_text())
        assert sum(s["samples"] for s in manifest["splits"].values()) == 12
        assert set(manifest["splits"]) == {"train", "val", "test"}
        generator = yaml.safe_load((out / "runs" / "generator" / "seed0" / "version_0" / "config.yaml").read_text())
        assert generator["data"]["init_args"]["root"] == str(out / "generator_data")
        assert generator["trainer"]["max_steps"] == 2 and generator["model"]["init_args"]["model"]["width"] == 32
        # one decoder per training row, seed 0 only, each with its row's delta on top of the decoder stage
        assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
            ["generator", *(r for r in ROWS if r != "resampled_teacher")])
        for row in ROWS:
            if row == "resampled_teacher":
                continue
            assert [p.name for p in (out / "runs" / row).iterdir()] == ["seed0"], row
            ckpt = torch.load(out / "runs" / row / "seed0" / "version_0" / "checkpoints" / "last.ckpt",
                              map_location="cpu", weights_only=False)
            assert ckpt["global_step"] == 2, row
        template = torch.load(out / "runs" / "template" / "seed0" / "version_0" / "checkpoints" / "last.ckpt",
                              map_location="cpu", weights_only=False)
        assert template["hyper_parameters"]["points"] == "template"
        assert template["hyper_parameters"]["template_points"] == 16
        # the benchmark's results: every row, one seed, n = 1 for every metric
        results = json.loads((out / "results.json").read_text())
        assert results["seeds"] == [0] and results["generator_seeds"] == 1 and list(results["rows"]) == list(ROWS)
        for row, metrics in results["rows"].items():
            assert {"psnr", "psnr_mask", "ssim", "ssim_mask", "chamfer", "fscore_1cm"} <= set(metrics), row
            assert {name: m["n"] for name, m in metrics.items()} == dict.fromkeys(metrics, 1), row
            assert 0 < metrics["psnr"]["mean"] < 50, row
        # the summary: the benchmark's table verbatim, exactly the config's rows, single values (no spread)
        readme = (out / "README.md").read_text()
        table = (out / "table.md").read_text()
        assert table.strip() and table in readme
        assert _table_rows(table) == [ROW_LABELS[r] for r in config.rows]
        assert "±" not in "\n".join(line for line in table.splitlines() if line.startswith("|"))
        assert "nan" not in table.lower() and "no std" in table
        # the contact sheet (one subject, six columns of the configured size) and the learning curves
        sheet = Image.open(out / "contact_sheet.png")
        assert sheet.width >= 6 * 32 and sheet.height >= 32
        assert "![contact sheet](contact_sheet.png)" in readme and (out / "curves.png").stat().st_size > 0
        # avatars of the synthetic portrait and of the photo by the full row's decoder, videos of the set lengths
        full = str(out / "runs" / "full" / "seed0" / "version_0" / "checkpoints" / "last.ckpt")
        for who in ("synthetic", "photo"):
            folder = out / "avatars" / who
            report = json.loads((folder / "fit_report.json").read_text())
            assert report["driving"]["frames"] == 2 and report["avatar"]["seed"] == 0
            assert full in json.dumps(report["checkpoints"]), who
            for name, frames in (("driven.mp4", 2), ("orbit.mp4", 3)):
                video = np.stack(list(read_video(folder / name)))
                assert video.shape == (frames, 32, 32, 3), f"{who}/{name}"
            assert f"`avatars/{who}/driven.mp4`" in readme
            assert f"`avatars/{who}/gaussian_avatars/point_cloud.ply`" in readme
        sources = {who: json.loads((out / "avatars" / who / "fit_report.json").read_text())["portrait"]["head_source"]
                   for who in ("synthetic", "photo")}
        # the synthetic portrait's known head parameters are used; the photo's are fitted to its landmarks
        assert sources == {"synthetic": "given (no detection or landmark fit)", "photo": "landmark fit"}
        assert f"tensorboard --logdir {out / 'runs'}" in readme
        timings = json.loads((out / "timings.json").read_text())
        assert set(timings) == {*STEPS, "last_run_wall_s"}  # every step timed (values are not asserted)
        assert first.count("$ avp avatarize") == 2

        # a second run finds every step done: nothing is retrained or re-evaluated; the results are re-summarised
        checkpoint = out / "runs" / "full" / "seed0" / "version_0" / "checkpoints" / "last.ckpt"
        evaluated = out / "eval" / "full" / "seed0" / "metrics.json"
        before = checkpoint.read_bytes(), evaluated.read_text()
        Demo(config, out, sys.executable, in_process=True).run()
        again = capsys.readouterr().out
        assert again.count("already done") == SKIPS and "$ avp" not in again
        assert (checkpoint.read_bytes(), evaluated.read_text()) == before
        # a changed avatar setting redoes the avatars and nothing else
        changed = _parse("configs/demo.yaml", fast, extra=("--avatarize.fit_steps", "4"))
        Demo(changed, out, sys.executable, in_process=True).run()
        third = capsys.readouterr().out
        assert third.count("already done") == SKIPS - 1 and third.count("$ avp ") == 2
        assert third.count("$ avp avatarize") == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_whole_pipeline_runs_in_miniature_and_resumes(tmp_path: Path) -> None:
    quick = tmp_path / "quick.yaml"
    quick.write_text(yaml.safe_dump(QUICK))
    out = tmp_path / "demo"
    proc = _demo(out, quick)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for path in ("data/shards.json", "generator_data/shards.json",
                 *(f"runs/{run}/seed0/version_0/checkpoints/last.ckpt" for run in ("generator", "full", "template")),
                 "eval/full/seed0/metrics.json",
                 "table.md", "results.json", "curves.png", "contact_sheet.png", "README.md", "timings.json",
                 "configs/generator-seed0/1-run.yaml"):
        assert (out / path).is_file(), path
    for who in ("synthetic", "photo"):
        for name in ("driven.mp4", "orbit.mp4", "gaussian_avatars/point_cloud.ply", "avatar_world.ply"):
            assert (out / "avatars" / who / name).is_file(), f"{who}/{name}"
    assert list((out / "runs" / "full").rglob("events.out.tfevents*"))
    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == list(ROWS) and results["seeds"] == [0]
    readme = (out / "README.md").read_text()
    assert "| Row |" in readme and "tensorboard --logdir" in readme
    # a second run finds every step done and only rewrites the summary
    again = _demo(out, quick)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done") == SKIPS


def _merged(base: dict, delta: dict) -> dict:
    """Key-by-key merge of nested dicts, later values winning (the reference the layers must agree with)."""
    out = dict(base)
    for key, value in delta.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("run", ["generator", "full", "ar_position_only", "template", "teacher_points"])
def test_the_stage_layers_parse_as_their_key_by_key_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          run: str) -> None:
    from avp.cli import build_cli

    monkeypatch.chdir(REPO)
    config = _parse("configs/demo.yaml")
    bench = Demo(config, tmp_path / "demo", sys.executable).benchmark
    layers = bench.generator_layers(0) if run == "generator" else bench.decoder_layers(run, config.seed)
    merged: dict = {}
    for path in layers:
        merged = _merged(merged, yaml.safe_load(path.read_text()))
    single = tmp_path / "merged.yaml"
    single.write_text(yaml.safe_dump(merged))

    def parse(paths: list) -> dict:
        parsed = build_cli([a for p in paths for a in ("--config", str(p))], run=False,
                           instantiate=False).config.as_dict()
        parsed.pop("config")  # the files given, which differ by construction
        return parsed

    bases = (config.generator if run == "generator" else config.decoder).configs
    assert len(layers) >= 3 and parse([*bases, *layers]) == parse([*bases, single])

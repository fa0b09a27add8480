"""`make demo` in miniature: every step of the demo on a seconds-sized configuration (in this process), what each
step wrote (read back), and the resume logic; the same through the real command line (`avp demo` subprocesses, every
step its own process) is the slow test."""

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

from avp.demo import Demo, DemoConfig, build_parser, config_from_namespace
from avp.export.video import read_video

REPO = Path(__file__).resolve().parents[1]
QUICK = {
    "data": {"subjects": 12, "val_fraction": 0.17, "test_fraction": 0.17, "views": 2, "frames": 2, "size": 32,
             "portrait_size": 64, "points": [60, 90]},
    "generator": {"max_steps": 3, "batch_size": 2, "samples_per_epoch": 4},
    "decoder": {"max_steps": 3, "batch_size": 1, "samples_per_epoch": 2},
    "template": {"max_steps": 3, "batch_size": 1, "samples_per_epoch": 2},
    "eval": {"limit": 1, "overrides": ["render.resolution=32", "face.resolution=128", "face.akd_resolution=128",
                                       "frames.max_frames=1"]},
    "avatarize": {"frames": 4, "orbit_frames": 4, "size": 64, "fit_steps": 20},
    "sheet": {"subjects": 1, "size": 64},
}


def _demo(out: Path, quick: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avp.cli", "demo", "--config", "configs/demo.yaml", "--config",
                           str(quick), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_the_demo_config_parses_and_wrong_keys_are_named() -> None:
    parser = build_parser()
    config = config_from_namespace(parser.parse_args(["--config", str(REPO / "configs" / "demo.yaml")]))
    assert isinstance(config, DemoConfig) and config.generator.max_steps > 0
    assert all((REPO / c).is_file() for s in (config.generator, config.decoder, config.template) for c in s.configs)
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(REPO / "configs" / "demo.yaml"), "--generator.max_stepz", "3"])


def _stage_delta(model: dict, data: dict | None = None) -> dict:
    delta = {"trainer": {"limit_val_batches": 1, "enable_model_summary": False, "log_every_n_steps": 1},
             "model": {"init_args": model}}
    return {**delta, "data": {"init_args": data}} if data else delta


# the demo's stage deltas replace configs/demo.yaml's whole `delta` (its models are sized for minutes, not seconds)
TINY_DECODER = {"sampling": {"max_points": 16, "bind_nearest": 16}, "template_points": 16,
                "decoder": {"width": 16, "n_layers": 1, "n_heads": 2, "feature_hidden": 16, "n_frequencies": 2}}
FAST = {
    "data": {"subjects": 12, "val_fraction": 0.17, "test_fraction": 0.17, "views": 2, "frames": 2, "size": 32,
             "portrait_size": 64, "points": [40, 60]},
    "generator": {"max_steps": 2, "batch_size": 2, "samples_per_epoch": 4, "delta": _stage_delta({
        "tokenizer": {"levels": 64}, "model": {"n_layers": 1, "width": 32, "n_heads": 2}, "train_window": 256,
        "condition": {"image": {"image_size": 64, "tiny_width": 32, "tiny_depth": 1, "tiny_heads": 2,
                                "tiny_patch": 16}, "mesh": {"n_points": 16, "n_layers": 1, "n_heads": 2}},
        "val_sampling": {"max_points": 16, "bind_nearest": 16}, "val_sample_subjects": 1})},
    "decoder": {"max_steps": 2, "batch_size": 1, "samples_per_epoch": 2,
                "delta": _stage_delta(TINY_DECODER, {"image_size": 32})},
    "template": {"max_steps": 2, "batch_size": 1, "samples_per_epoch": 2,
                 "delta": _stage_delta(TINY_DECODER, {"image_size": 32})},
    "eval": {"limit": 1, "overrides": ["render.resolution=32", "face.enabled=false", "frames.max_frames=1"]},
    "avatarize": {"frames": 2, "orbit_frames": 3, "size": 32, "fit_steps": 5},
    "sheet": {"subjects": 1, "size": 32},
}
STEPS = ("data", "generator", "decoder", "template", "eval", "avatarize", "sheet")


def test_every_step_writes_what_it_should_and_a_rerun_redoes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(REPO)  # the demo config names the stage configs relative to the repository
    for var in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # `avp fit` seeds through the environment: restore it after
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(FAST))
    config = config_from_namespace(build_parser().parse_args(["--config", "configs/demo.yaml", "--config",
                                                              str(fast)]))
    out = tmp_path / "demo"
    try:
        Demo(config, out, sys.executable, in_process=True).run()
        first = capsys.readouterr().out

        # 1. data: the configured subjects, split three ways
        manifest = json.loads((out / "data" / "shards.json").read_text())
        assert sum(s["samples"] for s in manifest["splits"].values()) == 12
        assert set(manifest["splits"]) == {"train", "val", "test"}
        # 2-4. each stage trained for its max_steps with the demo's layers on top of its configs (written by avp
        # demo; LightningCLI saves the config it ran with)
        assert sorted(p.name for p in (out / "configs" / "generator").iterdir()) == [
            "1-run.yaml", "2-delta.yaml", "3-budget.yaml"]
        written = yaml.safe_load((out / "runs" / "generator" / "version_0" / "config.yaml").read_text())
        assert written["trainer"]["max_steps"] == 2 and written["model"]["init_args"]["model"]["width"] == 32
        assert written["data"]["init_args"]["root"] == str(out / "data")
        for stage in ("generator", "decoder", "template"):
            ckpt = torch.load(out / "runs" / stage / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                              weights_only=False)
            assert ckpt["global_step"] == 2, stage
            assert list((out / "runs" / stage).rglob("events.out.tfevents*")), stage
        template = torch.load(out / "runs" / "template" / "version_0" / "checkpoints" / "last.ckpt",
                              map_location="cpu", weights_only=False)
        assert template["hyper_parameters"]["points"] == "template"
        assert template["hyper_parameters"]["template_points"] == 16
        # 5. eval: one held-out sample, every row, the teacher within 8-bit rounding of its own renders
        metrics = json.loads((out / "eval" / "metrics.json").read_text())
        assert list(metrics["methods"]) == ["generated", "teacher_points", "template", "teacher"]
        assert metrics["n_samples"] == 1 and metrics["protocol"]["overrides"] == FAST["eval"]["overrides"]
        assert metrics["methods"]["teacher"]["metrics"]["psnr"] > 50
        for key in ("generated", "teacher_points", "template"):
            assert 0 < metrics["methods"][key]["metrics"]["psnr"] < 50, key
        # 6. avatars of the synthetic portrait and of the photo, videos of the configured lengths
        for who in ("synthetic", "photo"):
            folder = out / "avatars" / who
            report = json.loads((folder / "fit_report.json").read_text())
            assert report["driving"]["frames"] == 2 and report["avatar"]["seed"] == 0
            for name, frames in (("driven.mp4", 2), ("orbit.mp4", 3)):
                video = np.stack(list(read_video(folder / name)))
                assert video.shape == (frames, 32, 32, 3), f"{who}/{name}"
        sources = {who: json.loads((out / "avatars" / who / "fit_report.json").read_text())["portrait"]["head_source"]
                   for who in ("synthetic", "photo")}
        # the synthetic portrait's known head parameters are used; the photo's are fitted to its landmarks
        assert sources == {"synthetic": "given (no detection or landmark fit)", "photo": "landmark fit"}
        # the contact sheet: one row per subject, six columns of the configured size
        sheet = Image.open(out / "contact_sheet.png")
        assert sheet.width >= 6 * 32 and sheet.height >= 32
        # the summary: the eval table verbatim, every avatar output, the TensorBoard command, timings of every step
        readme = (out / "README.md").read_text()
        table = (out / "eval" / "table.md").read_text()
        assert table.strip() and table in readme
        assert f"tensorboard --logdir {out / 'runs'}" in readme
        for who in ("synthetic", "photo"):
            assert f"`avatars/{who}/driven.mp4`" in readme and f"`avatars/{who}/gaussian_avatars/point_cloud.ply`" \
                in readme
        timings = json.loads((out / "timings.json").read_text())
        assert set(timings) == {*STEPS, "last_run_wall_s"}  # every step timed (values are not asserted)
        for i in range(1, 7):
            assert f"==> {i}/6 " in first

        # a second run finds every step done: nothing is retrained or rewritten but the summary
        checkpoint = out / "runs" / "decoder" / "version_0" / "checkpoints" / "last.ckpt"
        before = checkpoint.read_bytes(), (out / "eval" / "metrics.json").read_text()
        Demo(config, out, sys.executable, in_process=True).run()
        again = capsys.readouterr().out
        assert again.count("already done") == len(STEPS) and "$ avp" not in again
        assert (checkpoint.read_bytes(), (out / "eval" / "metrics.json").read_text()) == before
        # a changed sheet size redoes the sheet (the last step) and nothing else
        changed = config_from_namespace(build_parser().parse_args([
            "--config", "configs/demo.yaml", "--config", str(fast), "--sheet.subjects", "2"]))
        Demo(changed, out, sys.executable, in_process=True).run()
        third = capsys.readouterr().out
        assert third.count("already done") == len(STEPS) - 1 and "contact sheet" in third
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_whole_pipeline_runs_in_miniature_and_resumes(tmp_path: Path) -> None:
    quick = tmp_path / "quick.yaml"
    quick.write_text(yaml.safe_dump(QUICK))
    out = tmp_path / "demo"
    proc = _demo(out, quick)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for path in ("data/shards.json", "runs/generator/version_0/checkpoints/last.ckpt",
                 "runs/decoder/version_0/checkpoints/last.ckpt", "runs/template/version_0/checkpoints/last.ckpt",
                 "eval/table.md", "eval/metrics.json", "contact_sheet.png", "README.md", "timings.json",
                 "configs/generator.yaml"):
        assert (out / path).is_file(), path
    for who in ("synthetic", "photo"):
        for name in ("driven.mp4", "orbit.mp4", "gaussian_avatars/point_cloud.ply", "avatar_world.ply"):
            assert (out / "avatars" / who / name).is_file(), f"{who}/{name}"
    assert list((out / "runs" / "decoder").rglob("events.out.tfevents*"))
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "template" in text and "teacher" in text
    readme = (out / "README.md").read_text()
    assert "| Method |" in readme and "tensorboard --logdir" in readme
    # a second run finds every step done and only rewrites the summary
    again = _demo(out, quick)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done") == 7


def _merged(base: dict, delta: dict) -> dict:
    """Key-by-key merge of nested dicts, later values winning (the reference the layers must agree with)."""
    out = dict(base)
    for key, value in delta.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("stage", ["generator", "decoder", "template"])
def test_the_stage_layers_parse_as_their_key_by_key_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          stage: str) -> None:
    from avp.cli import build_cli

    monkeypatch.chdir(REPO)
    config = config_from_namespace(build_parser().parse_args(["--config", "configs/demo.yaml"]))
    layers = Demo(config, tmp_path / "demo", sys.executable).stage_configs(stage)
    merged = {}
    for path in layers:
        merged = _merged(merged, yaml.safe_load(path.read_text()))
    single = tmp_path / "merged.yaml"
    single.write_text(yaml.safe_dump(merged))

    def parse(paths: list) -> dict:
        parsed = build_cli([a for p in paths for a in ("--config", str(p))], run=False,
                           instantiate=False).config.as_dict()
        parsed.pop("config")  # the files given, which differ by construction
        return parsed

    bases = getattr(config, stage).configs
    assert len(layers) >= 3 and parse([*bases, *layers]) == parse([*bases, single])

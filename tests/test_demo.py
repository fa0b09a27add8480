"""`make demo` in miniature: every step of the demo on a tiny configuration, its outputs, and the resume logic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from avp.demo import DemoConfig, build_parser, config_from_namespace

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

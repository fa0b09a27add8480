"""DDP on the CPU: a 2-process gloo fit through the sweep machinery; what both ranks logged agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from avp.sweep.spec import read_status
from tests.lit.toy import (
    DECODER_CONFIGS,
    GENERATOR_CONFIGS,
    add_callback,
    plan_sweep,
    run_env,
    set_callback_args,
    tiny_shards,
    toy_config,
    trained_generator,
)

ROOT = Path(__file__).resolve().parents[2]


def test_two_process_ddp_fit_logs_the_same_synced_loss_on_both_ranks(tmp_path: Path) -> None:
    steps = 12
    record = tmp_path / "record"
    config = toy_config(max_steps=steps, model={"record_dir": str(record)})
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    spec = {"name": "ddp", "out": str(tmp_path / "runs"), "base": [str(tmp_path / "toy.yaml")],
            "runs": {"ddp": {"launcher": {"tasks_per_node": 2}}}}
    [run] = plan_sweep(spec, tmp_path)
    trainer = yaml.safe_load(run.config_path.read_text())["trainer"]
    assert (trainer["strategy"], trainer["devices"], trainer["accelerator"]) == ("ddp", 2, "cpu")

    proc = subprocess.run([sys.executable, "-m", "avp.sweep.run", str(run.run_dir)], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = read_status(run.run_dir)
    assert status["state"] == "finished" and status["global_step"] == steps
    assert status["attempts"][-1]["world_size"] == 2 and status["attempts"][-1]["strategy"] == "DDPStrategy"

    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
    assert all(r["world_size"] == 2 and r["step"] == list(range(steps)) for r in ranks)
    synced0, synced1 = ranks[0]["synced"], ranks[1]["synced"]
    local0, local1 = ranks[0]["local"], ranks[1]["local"]
    # each rank trained on its own shard of the data...
    assert all(abs(a - b) > 1e-6 for a, b in zip(local0, local1))
    # ...and logged the same value: the mean over ranks (sync_dist)
    assert synced0 == pytest.approx(synced1, rel=1e-6, abs=1e-7)
    assert synced0 == pytest.approx([(a + b) / 2 for a, b in zip(local0, local1)], rel=1e-5, abs=1e-6)
    # gradients were all-reduced: both replicas end with the same weights
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-6, abs=1e-7)

    acc = EventAccumulator(str(run.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged] == list(range(steps))
    assert [v for _, v in logged] == pytest.approx(synced0, rel=1e-5)
    assert logged[-1][1] < logged[0][1]


def test_real_generator_debug_config_under_ddp_logs_the_same_val_loss_on_both_ranks(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The generator stage (configs/generator/base.yaml + configs/debug/generator.yaml) on tiny synthetic shards."""
    shards = tiny_shards(tmp_path_factory.getbasetemp())
    spec = {"name": "gen-ddp", "out": str(tmp_path / "runs"), "base": GENERATOR_CONFIGS,
            "overrides": {"data.init_args.root": str(shards), "trainer.max_steps": 8},
            "runs": {"ddp": {"launcher": {"tasks_per_node": 2}}}}
    [run] = plan_sweep(spec, tmp_path)
    record = tmp_path / "record"
    add_callback(run.config_path, "tests.lit.toy.RecordMetrics", out_dir=str(record), keys=["val/loss"])

    proc = subprocess.run([sys.executable, "-m", "avp.sweep.run", str(run.run_dir)], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = read_status(run.run_dir)
    assert status["state"] == "finished" and status["global_step"] == 8
    assert status["attempts"][-1]["world_size"] == 2
    assert (run.checkpoint_dir / "last.ckpt").is_file()

    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["pid"] != ranks[1]["pid"] and all(r["world_size"] == 2 for r in ranks)
    m0, m1 = ranks[0]["metrics"], ranks[1]["metrics"]
    assert m0 and m0.keys() == m1.keys()
    for step in m0:  # val/loss is logged with sync_dist: both ranks hold the reduced value
        assert m0[step]["val/loss"] == pytest.approx(m1[step]["val/loss"], rel=1e-6)
    acc = EventAccumulator(str(run.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("val/loss")}
    assert logged == pytest.approx({int(s): v["val/loss"] for s, v in m0.items()}, rel=1e-6)


def test_real_decoder_debug_config_under_ddp_with_image_logging_agrees_on_both_ranks(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The decoder stage (configs/decoder/base.yaml + configs/debug/decoder.yaml) under 2-process gloo DDP with its
    shipped DecoderImageLogger writing PNGs every step: rank 0 writes them while rank 1 goes on (reading
    ``trainer.log_dir`` behind a rank check used to kill rank 1 at step 1); validation metrics agree on both ranks."""
    base = tmp_path_factory.getbasetemp()
    shards, generator = tiny_shards(base), trained_generator(base)
    steps = 4  # 4 training clips, 1 per rank per step: 2 steps per epoch, a validation after each
    spec = {"name": "dec-ddp", "out": str(tmp_path / "runs"), "base": DECODER_CONFIGS,
            "overrides": {"data.init_args.root": str(shards), "model.init_args.generator_ckpt": str(generator),
                          "data.init_args.image_size": 32, "data.init_args.val_split": "train",  # 2 clips per rank
                          "trainer.max_steps": steps, "trainer.log_every_n_steps": 1},
            "runs": {"ddp": {"launcher": {"tasks_per_node": 2}}}}
    [run] = plan_sweep(spec, tmp_path)
    set_callback_args(run.config_path, "DecoderImageLogger", every_n_steps=1, save_png=True)
    record = tmp_path / "record"
    keys = ["val/loss", "val/loss_l1", "val/psnr", "val/ssim"]
    add_callback(run.config_path, "tests.lit.toy.RecordMetrics", out_dir=str(record), keys=keys)

    proc = subprocess.run([sys.executable, "-m", "avp.sweep.run", str(run.run_dir)], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = read_status(run.run_dir)
    assert status["state"] == "finished" and status["global_step"] == steps
    assert status["attempts"][-1]["world_size"] == 2
    ckpt = torch.load(run.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == steps and any(k.startswith("model.decoder.") for k in ckpt["state_dict"])

    images = sorted(p.name for p in (run.log_dir / "images").glob("*.png"))
    assert images == [*(f"train_step{s:07d}.png" for s in range(1, steps + 1)), "val_step0000002.png",
                      "val_step0000004.png"]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["pid"] != ranks[1]["pid"] and all(r["world_size"] == 2 for r in ranks)
    m0, m1 = ranks[0]["metrics"], ranks[1]["metrics"]
    assert len(m0) == 2 and m0.keys() == m1.keys()
    for step in m0:  # losses are logged with sync_dist, PSNR/SSIM are torchmetrics synced over ranks
        assert set(m0[step]) == set(keys)
        assert m0[step] == pytest.approx(m1[step], rel=1e-6), step
    acc = EventAccumulator(str(run.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("val/psnr")}
    assert sorted(logged.values()) == pytest.approx(sorted(v["val/psnr"] for v in m0.values()), rel=1e-6)

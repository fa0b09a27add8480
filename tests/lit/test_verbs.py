"""`avp fit / validate / test / predict` end to end for both stages, with the shipped configs (base + debug) on tiny
synthetic shards, checking what each verb writes: checkpoints, TensorBoard scalars, PNG grids, predicted clouds and
avatars (file contents, not only names), and the fit-time config rules through the CLI.

One 2-step generator fit (shared with tests/lit/test_ddp.py through tests.lit.toy.trained_generator) and one 2-step
decoder fit per module; the other verbs load their checkpoints. Runs are in-process (LightningCLI, as `avp` runs
it); the generator's predict runs as a real `python -m avp.cli predict` process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from avp.export.ply import FLAME_PARAM_NAMES, read_flame_param_npz, read_gaussian_avatars_ply, read_splat_ply
from avp.lit.decoder import DecoderModule
from avp.lit.generator import GeneratorModule
from avp.lit.image_logging import LABEL_HEIGHT
from avp.lit.predict import read_point_ply
from tests.lit.toy import (
    DECODER_CONFIGS,
    FAST_DECODER_FLAGS,
    GENERATOR_CONFIGS,
    run_cli,
    run_env,
    tiny_shards,
    trained_generator,
)

ROOT = Path(__file__).resolve().parents[2]
GEN = [a for c in GENERATOR_CONFIGS for a in ("--config", c)]
DEC = [a for c in DECODER_CONFIGS for a in ("--config", c)]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard holds for one run folder: tag -> [(step, value)]."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_version(runs: Path) -> Path:
    [version] = sorted(runs.glob("version_*"))
    return version


def assert_finite(values: dict[str, list[tuple[int, float]]], keys: list[str]) -> None:
    missing = [k for k in keys if k not in values]
    assert not missing, f"not logged: {missing}; logged: {sorted(values)}"
    for key in keys:
        assert values[key] and all(math.isfinite(v) for _, v in values[key]), (key, values[key])


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_shards(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def generator_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_generator(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def test_subjects(shards: Path) -> list[str]:
    return json.loads((shards / "shards.json").read_text())["splits"]["test"]["subjects"]


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory: pytest.TempPathFactory, shards: Path, generator_ckpt: Path) -> Path:
    """A 2-step `avp fit` of the decoder stage (base + debug configs), PNG grids every step; its run folder."""
    cwd = tmp_path_factory.mktemp("decoder-fit")
    debug = yaml.safe_load((ROOT / DECODER_CONFIGS[1]).read_text())
    callbacks = debug["trainer"]["callbacks"]
    [logger] = [c for c in callbacks if c["class_path"].endswith("DecoderImageLogger")]
    logger["init_args"].update(every_n_steps=1, save_png=True)
    (cwd / "pngs.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    run_cli(["fit", *DEC, "--config", str(cwd / "pngs.yaml"), f"--data.init_args.root={shards}",
             f"--model.init_args.generator_ckpt={generator_ckpt}", *FAST_DECODER_FLAGS], cwd=cwd)
    return only_version(cwd / "runs" / "decoder-debug")


def _decoder_eval(verb: str, tmp_path: Path, shards: Path, generator_ckpt: Path, ckpt: Path) -> Path:
    run_cli([verb, *DEC, f"--data.init_args.root={shards}", f"--model.init_args.generator_ckpt={generator_ckpt}",
             "--data.init_args.image_size=32", "--model.init_args.sampling.max_points=24", *QUIET,
             f"--ckpt_path={ckpt}"], cwd=tmp_path)
    return only_version(tmp_path / "runs" / "decoder-debug")


# ------------------------------------------------------------------------------------------------- generator
def test_generator_fit_writes_a_loadable_checkpoint_config_and_metrics(generator_ckpt: Path) -> None:
    run = generator_ckpt.parents[1]
    module = GeneratorModule.load_from_checkpoint(str(generator_ckpt), map_location="cpu")
    assert module.hparams["model"]["n_layers"] == 2 and module.hparams["condition"]["image"]["arch"] == "tiny"
    assert torch.load(generator_ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    assert "GeneratorModule" in (run / "config.yaml").read_text()
    logged = scalars(run)
    assert_finite(logged, ["train/loss", "val/loss", "val/acc_x", "val/acc_b", "val/chamfer", "val/fscore"])
    assert len(logged["val/loss"]) == 1  # one validation: at the end of the 2-step epoch


def test_generator_validate_logs_validation_metrics(tmp_path: Path, shards: Path, generator_ckpt: Path) -> None:
    # the checkpoint stopped after epoch 1: a fit would sample clouds at epoch 5, `avp validate` samples anyway
    cli = run_cli(["validate", *GEN, f"--data.init_args.root={shards}", *QUIET, f"--ckpt_path={generator_ckpt}",
                   "--model.init_args.val_sample_every_n_epochs=5"], cwd=tmp_path)
    logged = scalars(only_version(tmp_path / "runs" / "generator-debug"))
    keys = ["val/loss", "val/acc_x", "val/acc_y", "val/acc_z", "val/acc_b", "val/acc_eos", "val/chamfer",
            "val/fscore", "val/count_ratio", "val/binding_agreement", "val/finished_fraction"]
    assert_finite(logged, keys)
    assert logged["val/loss"][0][1] == pytest.approx(float(cli.trainer.callback_metrics["val/loss"]))


def test_generator_test_logs_heldout_loss_accuracy_and_cloud_metrics(tmp_path: Path, shards: Path,
                                                                     generator_ckpt: Path) -> None:
    cli = run_cli(["test", *GEN, f"--data.init_args.root={shards}", *QUIET, f"--ckpt_path={generator_ckpt}"],
                  cwd=tmp_path)
    logged = scalars(only_version(tmp_path / "runs" / "generator-debug"))
    keys = ["test/loss", "test/acc_x", "test/acc_y", "test/acc_z", "test/acc_b", "test/acc_eos", "test/chamfer",
            "test/fscore", "test/count_ratio", "test/binding_agreement", "test/finished_fraction"]
    assert_finite(logged, keys)
    assert not any(k.startswith("val/") for k in logged), sorted(logged)
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/loss"]) > 0 and float(metrics["test/chamfer"]) > 0
    assert 0 <= float(metrics["test/acc_x"]) <= 1 and 0 <= float(metrics["test/fscore"]) <= 1


def test_generator_predict_writes_one_cloud_per_test_subject(tmp_path: Path, shards: Path, generator_ckpt: Path,
                                                             test_subjects: list[str]) -> None:
    """The real console path: `python -m avp.cli predict` installs the prediction writer by itself."""
    proc = subprocess.run([sys.executable, "-m", "avp.cli", "predict", *(str(ROOT / a) if a.startswith("configs/")
                                                                        else a for a in GEN),
                           f"--data.init_args.root={shards}", *QUIET, f"--ckpt_path={generator_ckpt}"],
                          cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = only_version(tmp_path / "runs" / "generator-debug") / "predictions"
    assert sorted(p.name for p in out.iterdir()) == sorted(test_subjects)
    tokenizer = GeneratorModule.load_from_checkpoint(str(generator_ckpt), map_location="cpu").tokenizer
    max_points = 24  # val_sampling.max_points of the trained checkpoint (FAST_GENERATOR_FLAGS)
    for subject in test_subjects:
        with np.load(out / subject / "cloud.npz") as z:
            cloud = {k: z[k] for k in z.files}
        assert set(cloud) == {"tokens", "points", "binding", "n_points", "finished", "seed"}
        tokens, n = torch.from_numpy(cloud["tokens"]), int(cloud["n_points"])
        assert 1 <= n <= max_points and cloud["points"].shape == (n, 3) and cloud["binding"].shape == (n,)
        assert int(tokens[0]) == tokenizer.bos_id
        assert len(tokens) == 1 + 4 * n + int(bool(cloud["finished"]))
        if cloud["finished"]:
            assert int(tokens[-1]) == tokenizer.eos_id
        rows = tokens[1 : 1 + 4 * n].reshape(n, 4)
        np.testing.assert_allclose(cloud["points"], tokenizer.dequantize(rows[:, :3]).numpy(), atol=1e-6)
        np.testing.assert_array_equal(cloud["binding"], (rows[:, 3] - tokenizer.levels).numpy())
        points, binding = read_point_ply(out / subject / "points.ply")
        assert points.shape == (n, 3)
        np.testing.assert_allclose(points, cloud["points"], atol=1e-6)
        np.testing.assert_array_equal(binding, cloud["binding"])
    assert "avp predict: wrote" in proc.stdout + proc.stderr


def test_generator_fit_refuses_a_frozen_random_image_encoder_naming_both_keys(tmp_path: Path, shards: Path) -> None:
    with pytest.raises(ValueError) as info:
        run_cli(["fit", *GEN, f"--data.init_args.root={shards}", *QUIET,
                 "--model.init_args.condition.image.freeze=true"], cwd=tmp_path)
    message = str(info.value)
    assert "model.condition.image.freeze" in message and "model.condition.image.pretrained_path" in message
    assert not list(tmp_path.rglob("*.ckpt"))


# --------------------------------------------------------------------------------------------------- decoder
def test_decoder_fit_writes_a_checkpoint_png_grids_and_metrics(decoder_run: Path, generator_ckpt: Path) -> None:
    ckpt = decoder_run / "checkpoints" / "last.ckpt"
    module = DecoderModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    assert module.hparams["generator_hparams"]["model"]["n_layers"] == 2  # self-contained: the generator inside
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    logged = scalars(decoder_run)
    assert_finite(logged, ["train/loss", "train/loss_l1", "val/loss", "val/psnr", "val/ssim"])
    pngs = sorted(p.name for p in (decoder_run / "images").glob("*.png"))
    assert pngs == ["train_step0000001.png", "train_step0000002.png", "val_step0000002.png"]
    with Image.open(decoder_run / "images" / "val_step0000002.png") as im:
        # a label row, then 2 views (rows) x 3 panels (target | render | error) of 32 px, padding 2
        assert im.size == (3 * 32 + 4 * 2, LABEL_HEIGHT + 2 * 32 + 3 * 2) and im.mode == "RGB"


def test_decoder_validate_logs_image_metrics(tmp_path: Path, shards: Path, generator_ckpt: Path,
                                             decoder_run: Path) -> None:
    run = _decoder_eval("validate", tmp_path, shards, generator_ckpt, decoder_run / "checkpoints" / "last.ckpt")
    logged = scalars(run)
    assert_finite(logged, ["val/loss", "val/loss_l1", "val/loss_ssim", "val/psnr", "val/ssim"])
    assert 0 < logged["val/ssim"][0][1] <= 1 and logged["val/psnr"][0][1] > 0


def test_decoder_test_logs_test_metrics(tmp_path: Path, shards: Path, generator_ckpt: Path,
                                        decoder_run: Path) -> None:
    run = _decoder_eval("test", tmp_path, shards, generator_ckpt, decoder_run / "checkpoints" / "last.ckpt")
    logged = scalars(run)
    assert_finite(logged, ["test/loss", "test/psnr", "test/ssim", "test/points"])
    assert logged["test/points"][0][1] >= 1
    assert not any(k.startswith("val/") for k in logged), sorted(logged)


def test_decoder_predict_writes_the_avatarize_exports_per_test_subject(tmp_path: Path, shards: Path,
                                                                       generator_ckpt: Path, decoder_run: Path,
                                                                       test_subjects: list[str]) -> None:
    from avp.export.avatar import load_avatar

    run = _decoder_eval("predict", tmp_path, shards, generator_ckpt, decoder_run / "checkpoints" / "last.ckpt")
    out = run / "predictions"
    assert sorted(p.name for p in out.iterdir()) == sorted(test_subjects)
    module = DecoderModule.load_from_checkpoint(str(decoder_run / "checkpoints" / "last.ckpt"), map_location="cpu")
    head_model = module.model.head_model
    for subject in test_subjects:
        folder = out / subject
        avatar = load_avatar(folder / "avatar")
        n = avatar.n_points
        assert 1 <= n <= 24 and avatar.meta["points"] == "generated" and avatar.meta["subject"] == subject
        assert avatar.cloud.means.shape == (1, n, 3) and avatar.portrait is not None
        ga = read_gaussian_avatars_ply(folder / "gaussian_avatars" / "point_cloud.ply")
        assert ga.n_points == n and ga.sh_degree == 3  # the debug decoder's degree 0, padded for GaussianAvatars
        np.testing.assert_array_equal(ga.binding, avatar.binding.numpy())
        assert int(ga.binding.max()) < head_model.n_faces
        params = read_flame_param_npz(folder / "gaussian_avatars" / "flame_param.npz")
        T, V = 1, head_model.n_vertices  # the debug data config draws one frame per clip
        assert set(params) == {"shape", *FLAME_PARAM_NAMES, "static_offset", "dynamic_offset"}
        assert params["shape"].shape == (head_model.n_shape,) and params["expr"].shape == (T, head_model.n_expr)
        for key in ("rotation", "neck_pose", "jaw_pose", "translation"):
            assert params[key].shape == (T, 3), key
        assert params["eyes_pose"].shape == (T, 6)
        assert params["static_offset"].shape == (1, V, 3) and params["dynamic_offset"].shape == (T, V, 3)
        assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in params.values())
        np.testing.assert_allclose(params["shape"], avatar.shape.numpy(), atol=1e-6)
        world = read_splat_ply(folder / "avatar_world.ply")
        assert world.n_points == n and np.isfinite(world.xyz).all()
        # the world ply is the rest pose of the canonical splats
        rest = avatar.animate(avatar.neutral(1)).means[0].numpy()
        np.testing.assert_allclose(world.xyz, rest, atol=1e-5)


def test_decoder_fit_refuses_position_only_inputs_with_cross_attention(tmp_path: Path, shards: Path,
                                                                      generator_ckpt: Path) -> None:
    with pytest.raises(ValueError) as info:
        run_cli(["fit", *DEC, f"--data.init_args.root={shards}", f"--model.init_args.generator_ckpt={generator_ckpt}",
                 *QUIET, "--model.init_args.decoder.inputs=position", "--model.init_args.points=generated"],
                cwd=tmp_path)
    message = str(info.value)
    assert "model.decoder.inputs" in message and "model.decoder.cross_attention" in message
    assert "Rules of this stage" in message and "model.loss.l1" in message  # every rule is listed

"""GeneratorModule: a Lightning fit on in-memory batches (losses, per-role accuracy, sampled-cloud metrics, the
TensorBoard picture, checkpoint round trip), the windowed step, head-model checks and the configs."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from avp.head import load_head_model
from avp.lit.generator import GeneratorModule
from avp.lit.optim import warmup_cosine
from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig
from avp.models.generator import GeneratorConfig
from avp.models.sampling import SamplingConfig
from avp.types import AvatarBatch, Cameras, GaussianCloud, HeadParams, as_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(head, batch: int, n_points: int, seed: int, ragged: bool = True) -> AvatarBatch:
    """Teacher clouds sampled on each subject's canonical head (bound to the sampled face), random portraits;
    ``ragged``: the first cloud is 5 points shorter (padding)."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(batch, head.n_shape, generator=g) * 0.5
    verts = head.canonical(shape)  # [B, V, 3]
    faces = torch.randint(0, head.n_faces, (batch, n_points), generator=g)
    bary = torch.rand(batch, n_points, 3, generator=g)
    bary = bary / bary.sum(-1, keepdim=True)
    tri = verts[torch.arange(batch)[:, None, None], head.faces[faces]]  # [B, N, 3, 3]
    means = (bary[..., None] * tri).sum(-2)
    mask = torch.ones(batch, n_points, dtype=torch.bool)
    if ragged:
        mask[0, n_points - 5 :] = False
    portrait_head = HeadParams.zeros(batch, n_shape=head.n_shape, n_expr=head.n_expr)
    portrait_head.shape = shape
    quats = torch.zeros(batch, n_points, 4)
    quats[..., 0] = 1
    teacher = GaussianCloud(means=means, quats=quats, scales=torch.full((batch, n_points, 3), 0.003),
                            opacities=torch.ones(batch, n_points), sh=torch.zeros(batch, n_points, 1, 3), mask=mask)
    return AvatarBatch(
        subject=[f"s{seed}-{i}" for i in range(batch)], portrait=torch.rand(batch, 3, 64, 64, generator=g),
        portrait_head=portrait_head, teacher=teacher, binding=faces * mask, images=torch.zeros(batch, 0, 0, 3, 8, 8),
        cameras=Cameras(Ks=torch.eye(3).expand(batch, 0, 3, 3), viewmats=torch.eye(4).expand(batch, 0, 4, 4),
                        width=8, height=8),
        head=HeadParams.zeros(batch, 0, n_shape=head.n_shape, n_expr=head.n_expr),
    )


class MemoryData(LightningDataModule):
    def __init__(self, train: list[AvatarBatch], val: list[AvatarBatch], head_model_name: str):
        super().__init__()
        self.train, self.val, self.head_model_name = train, val, head_model_name

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)


def tiny_module(**kw) -> GeneratorModule:
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=64, freeze=False),
                                mesh=MeshEncoderConfig(n_points=32, n_layers=1, n_heads=4))
    args = {"condition": condition, "model": GeneratorConfig(n_layers=2, width=32, n_heads=4), "train_window": 64,
            "lr": 3e-3, "warmup_steps": 2, "val_sampling": SamplingConfig(max_points=40), "val_sample_subjects": 2,
            "fscore_tau": 0.01, **kw}
    return GeneratorModule(**args)


def test_fit_logs_losses_accuracy_cloud_metrics_and_a_picture_and_checkpoints_rebuild(tmp_path) -> None:
    head = load_head_model()
    module = tiny_module()
    data = MemoryData([make_batch(head, 2, 30, s) for s in range(2)], [make_batch(head, 2, 30, 9)], head.name)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=4, logger=TensorBoardLogger(tmp_path, name="gen"),
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0, log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/acc_x", "val/acc_y", "val/acc_z", "val/acc_b", "val/fscore",
                "val/count_ratio", "val/binding_agreement", "val/chamfer", "val/finished_fraction"):
        assert key in metrics, key
    assert math.isfinite(float(metrics["val/loss"])) and 0 <= float(metrics["val/acc_b"]) <= 1
    assert 0 < float(metrics["val/count_ratio"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(trainer.logger.log_dir))).Reload()
    assert "val/clouds" in events.Tags()["images"]

    last = tmp_path / "ckpt" / "last.ckpt"
    restored = GeneratorModule.load_from_checkpoint(last)
    assert restored.hparams["head_model_name"] == head.name and restored.hparams["train_window"] == 64
    batch = data.val[0]
    module.eval()
    restored.eval()
    with torch.no_grad():
        cond = module.net.encode_condition(batch.portrait, batch.portrait_head)
        tokens, _ = module.net.teacher_tokens(batch.teacher.means, batch.binding, batch.teacher.mask)
        a = module.net(tokens, cond).logits
        b = restored.net(tokens, restored.net.encode_condition(batch.portrait, batch.portrait_head)).logits
    assert torch.equal(a, b)
    assert not any(k.startswith("net.head_model") for k in torch.load(last, weights_only=True)["state_dict"])


def test_a_fit_with_guidance_dropout_trains_the_null_condition_and_validates_guided(tmp_path) -> None:
    head = load_head_model()
    torch.manual_seed(0)
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=64, freeze=False),
                                mesh=MeshEncoderConfig(n_points=32, n_layers=1, n_heads=4), guidance_dropout=0.5)
    module = tiny_module(condition=condition, val_sampling=SamplingConfig(max_points=40, guidance=2.0))
    null_before = module.net.null_condition.detach().clone()
    data = MemoryData([make_batch(head, 4, 20, s) for s in range(2)], [make_batch(head, 2, 20, 9)], head.name)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, num_sanity_val_steps=0,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert not torch.equal(module.net.null_condition.detach(), null_before)  # the null condition was trained
    assert math.isfinite(float(trainer.callback_metrics["val/chamfer"]))  # guided clouds were sampled
    restored = GeneratorModule.load_from_checkpoint(tmp_path / "last.ckpt")
    assert torch.equal(restored.net.null_condition, module.net.null_condition)
    assert restored.val_sampling.guidance == 2.0


def test_the_module_overfits_one_cloud_and_greedy_sampling_gives_it_back() -> None:
    """Fitted (through the Trainer) on one 12-point cloud, the module memorises it: teacher-forced loss a small
    fraction of its start and of log(vocab), every token role predicted exactly, and greedy sampling emits the
    teacher's tokens, so the cloud metrics validation logs are those of the teacher itself."""
    head = load_head_model()
    batch = make_batch(head, 1, 12, 0, ragged=False)
    module = tiny_module(warmup_steps=5, weight_decay=0.0, val_sample_subjects=1,
                         val_sampling=SamplingConfig(temperature=0, max_points=40))
    data = MemoryData([batch], [batch], head.name)
    quiet = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False)
    before = Trainer(**quiet).validate(module, datamodule=data, verbose=False)[0]
    Trainer(**quiet, max_steps=200, limit_val_batches=0, num_sanity_val_steps=0).fit(module, datamodule=data)
    after = Trainer(**quiet).validate(module, datamodule=data, verbose=False)[0]

    log_vocab = math.log(module.tokenizer.vocab_size)
    assert before["val/loss"] > 0.5 * log_vocab  # an untrained model is near chance
    assert after["val/loss"] < 0.1 * before["val/loss"] and after["val/loss"] < 0.05 * log_vocab
    for role in ("x", "y", "z", "b", "eos"):
        assert after[f"val/acc_{role}"] == 1, role
    assert before["val/binding_agreement"] < 1
    assert after["val/count_ratio"] == 1 and after["val/finished_fraction"] == 1
    assert after["val/binding_agreement"] == 1 and after["val/fscore"] == 1
    # Chamfer: only the quantisation (bin centres vs the exact points), at most half a bin diagonal
    assert after["val/chamfer"] <= float(module.tokenizer.bin_size.norm()) / 2

    module.eval()
    with torch.no_grad():
        tokens, lengths = module.net.teacher_tokens(batch.teacher.means, batch.binding, batch.teacher.mask)
        condition = module.net.encode_condition(batch.portrait, batch.portrait_head)
        out = module.net.sample(condition, module.val_sampling)
    assert out.lengths.tolist() == lengths.tolist()
    assert torch.equal(out.tokens[:, : int(lengths[0])], tokens[:, : int(lengths[0])])
    points, faces = module.tokenizer.decode(tokens[0])
    assert torch.equal(out.points[0], points) and torch.equal(out.binding[0], faces)
    assert sorted(faces.tolist()) == sorted(batch.binding[0].tolist())  # the teacher's own faces


def test_training_step_with_a_covering_window_is_the_full_sequence_loss() -> None:
    head = load_head_model()
    module = tiny_module(train_window=10_000)
    module.log = lambda *a, **k: None
    batch = make_batch(head, 2, 20, 3)
    module.train()
    torch.manual_seed(1)
    loss = module.training_step(batch, 0)
    torch.manual_seed(1)  # the same mesh-surface draw for the condition
    tokens, _ = module.net.teacher_tokens(batch.teacher.means, batch.binding, batch.teacher.mask)
    cond = module.net.encode_condition(batch.portrait, batch.portrait_head)
    logits = module.net(tokens[:, :-1], cond).logits
    full = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=module.tokenizer.pad_id)
    assert torch.allclose(loss, full, atol=1e-6)


def test_head_model_mismatches_are_clear_errors(tmp_path) -> None:
    head = load_head_model()
    data = MemoryData([make_batch(head, 2, 10, 0)], [], head_model_name="flame2023+teeth")
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="shards were written for head model 'flame2023\\+teeth'.*'builtin-v1'"):
        trainer.fit(tiny_module(), datamodule=data)
    with pytest.raises(ValueError, match="trained with head model 'other'"):
        tiny_module(head_model_name="other")


def test_configs_from_dicts_and_the_schedule() -> None:
    cfg = as_config(ConditionConfig, {"image": {"arch": "tiny"}, "use_mesh": False})
    assert cfg.image.arch == "tiny" and cfg.image.image_size == 224 and not cfg.use_mesh
    assert isinstance(cfg.mesh, MeshEncoderConfig)
    with pytest.raises(ValueError, match="unknown fields \\['widht'\\]"):
        as_config(GeneratorConfig, {"widht": 3})
    f = warmup_cosine(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == 1 and f(10) == 1
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert warmup_cosine(10, math.inf, 0.1)(50) == 1


def test_base_and_debug_configs_parse_and_the_debug_model_trains_with_the_same_code(monkeypatch) -> None:
    from avp.cli import build_cli

    monkeypatch.setattr(sys, "argv", ["avp"])  # LightningCLI also looks at the command line

    base = CONFIGS / "generator" / "base.yaml"
    debug = CONFIGS / "debug" / "generator.yaml"
    cli = build_cli(["--config", str(base), "--config", str(debug)], run=False, instantiate=False)
    init = cli.config.model.init_args.as_dict()
    assert init["model"]["n_layers"] == 2 and init["condition"]["image"]["arch"] == "tiny"
    full = build_cli(["--config", str(base)], run=False, instantiate=False).config
    gpu = full.model.init_args.as_dict()
    assert (gpu["model"]["n_layers"], gpu["model"]["width"], gpu["model"]["n_heads"]) == (24, 1024, 16)
    assert gpu["train_window"] == 12000 and gpu["lr"] == 1e-4 and full.trainer.precision == "bf16-mixed"
    assert full.data.class_path == "avp.lit.data.AvatarDataModule"
    module = GeneratorModule(**init).train()
    module.log = lambda *a, **k: None
    batch = make_batch(load_head_model(), 2, 24, 0)
    optimizer = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(8):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_checkpoint_hyperparameters_are_plain_data() -> None:
    module = tiny_module()
    for key in ("head", "tokenizer", "condition", "model", "val_sampling"):
        assert isinstance(module.hparams[key], dict)
    assert dataclasses.asdict(as_config(GeneratorConfig, module.hparams["model"])) == module.hparams["model"]


def test_the_cloud_figure_draws_every_point_of_both_clouds_with_a_colour_legend() -> None:
    from avp.lit.generator import cloud_figure

    g = torch.Generator().manual_seed(0)
    teacher = torch.rand(50, 3, generator=g) * 0.2
    generated = torch.cat([torch.rand(40, 3, generator=g) * 0.2, torch.tensor([[0.5, -0.3, 0.4]])])  # one outlier
    fig = cloud_figure(generated, teacher, "subject")
    plots = [ax for ax in fig.axes if ax.get_title()]
    assert len(plots) == 4 and len(fig.axes) == 8  # four panels, each with its colour bar
    for ax in plots:  # limits cover both clouds: the generated outlier is inside every panel
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        a = 0 if "front" in ax.get_title() else 2
        assert x0 <= float(generated[-1, a]) <= x1 and y0 <= -0.3 <= y1
    assert {ax.get_ylabel() for ax in fig.axes if not ax.get_title()} == {"colour: z (m)", "colour: x (m)"}

"""DecoderModule: frozen generator, point sources, checkpoints, bad generator checkpoints, LPIPS policy, a short fit
with logged losses and images, and an overfit of one synthetic subject.

The generator checkpoint is a tiny random GeneratorModule saved by a Trainer (the format `avp fit` writes): its
features are fixed per point, which is all the decoder stage needs. The subject comes from the data helper's
synthetic generator (built-in head, teacher Gaussians rendered into 64x64 views).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from avp.data.synthetic.generate import SynthConfig, synthesize
from avp.head import HeadConfig, animate_gaussians
from avp.lit.data import AvatarDataModule
from avp.lit.decoder import DecoderModule
from avp.lit.generator import GeneratorModule
from avp.lit.image_logging import DecoderImageLogger
from avp.metrics.image import psnr
from avp.models.avatar import Avatar
from avp.types import AvatarBatch
from tests.fixtures.flame import write_flame_pickle

TINY_DECODER = {"width": 64, "n_layers": 2, "n_heads": 4, "feature_hidden": 128, "n_frequencies": 6,
                "splat": {"init_scale": 0.012, "max_scale": 0.06}}


def _trainer(**kw) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **kw)


def _save(module: torch.nn.Module, path: Path) -> Path:
    trainer = _trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def generator_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    gen = GeneratorModule(
        condition={"image": {"arch": "tiny", "image_size": 64, "freeze": False},
                   "mesh": {"n_points": 32, "n_layers": 1, "n_heads": 4}},
        model={"n_layers": 2, "width": 64, "n_heads": 4}, train_window=256)
    return _save(gen, tmp_path_factory.mktemp("gen") / "generator.ckpt")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(SynthConfig(subjects=1, views=4, frames=2, size=64, portrait_size=64, points=(300, 400),
                           val_fraction=0.0, test_fraction=0.0), out, workers=1, progress=False)
    return out


def _batch(root: Path, views: int = 2, frames: int = 1) -> AvatarBatch:
    dm = AvatarDataModule(str(root), batch_size=1, num_workers=0, frames_per_sample=frames, views_per_sample=views,
                          val_split="train")
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _module(ckpt: Path, **kw) -> DecoderModule:
    return DecoderModule(str(ckpt), decoder=kw.pop("decoder", TINY_DECODER), loss=kw.pop("loss", {"lpips": 0.0}),
                         feature_window=kw.pop("feature_window", 4096), **kw)


def test_gradients_reach_the_decoder_and_never_the_generator(generator_ckpt: Path, shards: Path) -> None:
    module = _module(generator_ckpt)
    module.train()
    assert not module.model.generator.training, "the frozen generator must stay in eval mode"
    assert module.model.decoder.training
    assert all(not p.requires_grad for p in module.model.generator.parameters())
    batch = _batch(shards)
    terms, rgb, target, avatar = module.loss_step(batch, "teacher")
    assert rgb.shape == target.shape == (1, 1, 2, 3, 64, 64)
    terms.total.backward()
    assert all(p.grad is None for p in module.model.generator.parameters())
    decoder = module.model.decoder
    missing = [n for n, p in decoder.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(v) for v in terms.as_dict().values())
    # the decoder only is optimised
    opt = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in opt.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.model.decoder.parameters()}


def test_point_sources(generator_ckpt: Path, shards: Path) -> None:
    module = _module(generator_ckpt, template_points=200, sampling={"max_points": 24, "temperature": 1.0}).eval()
    batch = _batch(shards)
    tok = module.model.tokenizer
    teacher = module.prepare_batch(batch, "teacher")
    n = int(teacher.n_points[0])
    assert 0 < n <= int(batch.teacher.valid_mask().sum())  # deduplicated after quantisation
    assert teacher.features.shape == (1, n, 4, module.model.generator.transformer.config.width)
    # every decoded point is the bin centre of a teacher point with the same face
    d = torch.cdist(teacher.points[0], batch.teacher.means[0])
    nearest = d.argmin(1)
    assert float(d.min(1).values.max()) <= float(tok.bin_size.norm()) / 2 + 1e-6
    assert torch.equal(batch.binding[0][nearest], teacher.binding[0])

    template = module.prepare_batch(batch, "template")
    m = int(template.n_points[0])
    assert 0 < m <= 200
    # template points lie on their faces of the subject's neutral head (up to quantisation)
    assert float(template.rig.offsets.norm(dim=-1).max()) <= float(tok.bin_size.norm()) / 2 + 1e-5
    again = module.prepare_batch(batch, "template")
    assert torch.equal(template.points, again.points), "template points are deterministic"

    generated = module.prepare_batch(batch, "generated", torch.Generator().manual_seed(0))
    k = int(generated.n_points[0])
    assert 1 <= k <= 24 and generated.features.shape[:3] == (1, k, 4)
    assert torch.isfinite(generated.features).all()
    # the features of sampled points are the generator's teacher-forced features of the same tokens: feeding the
    # sampled cloud back as teacher points gives the same points, faces and (up to KV-cache rounding) features
    forced = module.model.prepare(batch.portrait, batch.portrait_head, points="teacher", teacher_means=generated.points,
                            teacher_binding=generated.binding, teacher_mask=generated.mask,
                            shape=batch.head.shape)
    assert int(forced.n_points[0]) == k
    assert torch.equal(forced.points, generated.points) and torch.equal(forced.binding, generated.binding)
    torch.testing.assert_close(forced.features, generated.features, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(forced.features[0, 0], forced.features[0, -1])  # per-point, not one shared vector


def test_avatarize_gives_an_animatable_avatar(generator_ckpt: Path, shards: Path) -> None:
    model = _module(generator_ckpt, sampling={"max_points": 16}).model.eval()
    batch = _batch(shards)

    def avatarize() -> Avatar:
        inputs = model.prepare(batch.portrait, batch.portrait_head, generator=torch.Generator().manual_seed(1))
        return model.avatar(inputs, model.decode(inputs), portrait_head=batch.portrait_head)

    avatar = avatarize()
    N = avatar.cloud.n_points
    assert avatar.binding.shape == (N,) and avatar.rig.n_points == N
    assert int(avatar.binding.max()) < model.head_model.n_faces
    posed = animate_gaussians(avatar.rig, avatar.cloud, batch.head, mode="lbs")
    assert posed.means.shape == (batch.head.global_rot.shape[1], N, 3)
    same = avatarize()
    torch.testing.assert_close(same.cloud.means, avatar.cloud.means)
    with pytest.raises(ValueError, match="teacher"):
        model.prepare(batch.portrait, batch.portrait_head, points="teacher")


def test_checkpoint_round_trip_is_self_contained(generator_ckpt: Path, shards: Path, tmp_path: Path) -> None:
    # a generator checkpoint that disappears after the decoder is built: the decoder checkpoint must not need it
    g = torch.Generator().manual_seed(0)
    gen_copy = tmp_path / "gen-copy.ckpt"
    gen_copy.write_bytes(generator_ckpt.read_bytes())
    module = _module(gen_copy, animation="face_frame", decoder={**TINY_DECODER, "cross_attention": True,
                                                                 "sh_degree": 1})
    batch = _batch(shards)
    with torch.no_grad():  # move the decoder away from its initialisation
        for p in module.model.decoder.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=g))
    path = _save(module, tmp_path / "decoder.ckpt")
    gen_copy.unlink()
    restored = DecoderModule.load_from_checkpoint(path, map_location="cpu")
    assert restored.model.animation == "face_frame" and restored.model.decoder.config.cross_attention
    module.eval()
    restored.eval()
    with torch.no_grad():
        a_terms, a_rgb, _, a = module.loss_step(batch, "teacher")
        b_terms, b_rgb, _, b = restored.loss_step(batch, "teacher")
    for name in ("means", "quats", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(a.cloud, name), getattr(b.cloud, name), rtol=0, atol=0)
    torch.testing.assert_close(a_rgb, b_rgb, rtol=0, atol=0)
    torch.testing.assert_close(a_terms.total, b_terms.total, rtol=0, atol=0)


def _tampered(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_incompatible_generator_checkpoints_are_refused(generator_ckpt: Path, tmp_path: Path) -> None:
    def other_vocabulary(ckpt: dict) -> None:  # trained on a head model with 10 more faces
        for key in ("net.transformer.token_embedding.weight", "net.transformer.head.weight"):
            w = ckpt["state_dict"][key]
            ckpt["state_dict"][key] = torch.cat([w, w[:10]])

    with pytest.raises(ValueError, match=r"vocabulary of \d+ tokens.*other head-model topology"):
        _module(_tampered(generator_ckpt, tmp_path / "vocab.ckpt", other_vocabulary))

    def other_head(ckpt: dict) -> None:
        ckpt["hyper_parameters"]["head_model_name"] = "flame2023+teeth"

    with pytest.raises(ValueError, match="flame2023"):
        _module(_tampered(generator_ckpt, tmp_path / "head.ckpt", other_head))

    # the configured head model (a FLAME file) is not the one the generator was trained on
    flame = write_flame_pickle(tmp_path / "generic_model.pkl")
    with pytest.raises(ValueError, match=r"trained with head model 'builtin"):
        _module(generator_ckpt, head=HeadConfig(flame_path=str(flame)))

    def not_a_generator(ckpt: dict) -> None:
        ckpt["hyper_parameters"] = {"decoder": {}}

    with pytest.raises(ValueError, match="not a GeneratorModule checkpoint"):
        _module(_tampered(generator_ckpt, tmp_path / "other.ckpt", not_a_generator))
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        _module(tmp_path / "garbage.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        _module(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="generator_ckpt is required"):
        DecoderModule()


def test_lpips_weight_without_pretrained_weights_is_refused(generator_ckpt: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    module = _module(generator_ckpt, loss={"lpips": 0.1})  # building (e.g. for inference) is fine
    with pytest.raises(ValueError, match=r"loss.lpips is 0.1 but LPIPS has no pretrained weights"):
        module.setup("fit")
    assert not module.val_lpips.available  # val/lpips is then not logged at all
    _module(generator_ckpt, loss={"lpips": 0.0}).setup("fit")


def test_fit_logs_every_loss_term_and_images(generator_ckpt: Path, shards: Path, tmp_path: Path) -> None:
    module = _module(generator_ckpt, lr=3e-3, warmup_steps=1)
    dm = AvatarDataModule(str(shards), batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=2,
                          val_split="train")
    images = DecoderImageLogger(every_n_steps=2)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0,
                      logger=TensorBoardLogger(str(tmp_path), name="dec"), callbacks=[images],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1)
    trainer.fit(module, dm)
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/loss_l1", "train/loss_ssim", "train/loss_reg", "train/loss_reg_offset",
                "train/loss_reg_scale", "val/loss", "val/psnr", "val/ssim"):
        assert key in logged, f"{key} not logged ({sorted(logged)})"
    assert "train/loss_lpips" not in logged and "val/lpips" not in logged  # no weights here: no number
    assert 0 < float(logged["val/ssim"]) <= 1
    names = sorted(p.name for p in images.written)
    assert any(n.startswith("train_step") for n in names) and any(n.startswith("val_step") for n in names)
    from PIL import Image

    grid = Image.open(images.written[0])
    assert grid.width > 3 * 64 and grid.height > 2 * 64  # target | render | error, one row per view


def test_test_loop_logs_image_metrics_masked_and_unmasked(generator_ckpt: Path, shards: Path) -> None:
    """``avp test`` runs the decoder's test_step: masked and unmasked PSNR/SSIM agree with a direct computation."""
    from avp.metrics.image import psnr

    module = _module(generator_ckpt, points="teacher")
    dm = AvatarDataModule(str(shards), batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=2,
                          test_split="train")
    trainer = _trainer(limit_test_batches=1)
    trainer.test(module, dm)
    logged = trainer.callback_metrics
    for key in ("test/loss", "test/psnr", "test/ssim", "test/psnr_masked", "test/ssim_masked", "test/points"):
        assert key in logged, f"{key} not logged ({sorted(logged)})"
    assert "test/lpips" not in logged
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    _, rgb, target, _ = module.loss_step(batch, "teacher")
    expected = psnr(rgb.flatten(0, 2).clamp(0, 1), target.flatten(0, 2)).mean()
    assert float(logged["test/psnr"]) == pytest.approx(float(expected), abs=1e-4)
    assert float(logged["test/psnr_masked"]) != pytest.approx(float(logged["test/psnr"]), abs=1e-3)


def test_overfits_one_synthetic_subject(generator_ckpt: Path, shards: Path) -> None:
    """Training views of one subject (2 views, 64x64): PSNR >= 28 dB from the decoder alone, on the CPU."""
    torch.manual_seed(0)
    module = _module(generator_ckpt, loss={"lpips": 0.0, "reg": 0.0})
    batch = _batch(shards, views=2, frames=1)
    prepared = module.prepare_batch(batch, "teacher")  # the frozen parts once: the batch never changes
    steps = 300
    opt = torch.optim.Adam(module.model.decoder.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[225], gamma=0.1)
    start = time.perf_counter()
    for _ in range(steps):
        terms, *_ = module.loss_step(batch, "teacher", prepared=prepared)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        _, rgb, target, _ = module.loss_step(batch, "teacher", prepared=prepared)
    value = float(psnr(rgb.flatten(0, 2).clamp(0, 1), target.flatten(0, 2)).mean())
    print(f"overfit: PSNR {value:.2f} dB after {steps} steps in {time.perf_counter() - start:.0f} s")
    assert value >= 28.0


def test_ema_decay_checkpoints_the_average_of_the_step_weights(generator_ckpt: Path, shards: Path,
                                                               tmp_path: Path) -> None:
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StepWeights(Callback):
        def __init__(self) -> None:
            self.seen: list[dict[str, torch.Tensor]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seen.append({k: v.detach().clone() for k, v in pl_module.model.decoder.state_dict().items()})

    d = 0.5
    torch.manual_seed(0)
    module = _module(generator_ckpt, lr=3e-3, warmup_steps=1, ema_decay=d)
    dm = AvatarDataModule(str(shards), batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=2,
                          val_split="train")
    steps = StepWeights()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=3, limit_val_batches=0, num_sanity_val_steps=0,
                      logger=False, callbacks=[steps, ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3)],
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, dm)
    w1, w2, w3 = steps.seen
    ckpt = torch.load(next(tmp_path.glob("*.ckpt")), map_location="cpu", weights_only=False)
    prefix = "model.decoder."
    moved = 0
    for name, last in w3.items():
        average = d * d * w1[name] + d * (1 - d) * w2[name] + (1 - d) * last
        torch.testing.assert_close(ckpt["state_dict"][prefix + name], average)
        torch.testing.assert_close(ckpt["current_model_state"][prefix + name], last, rtol=0, atol=0)
        torch.testing.assert_close(module.model.decoder.state_dict()[name], average)  # fit ends on the average
        moved += int(not torch.equal(average, last))
    assert moved > 0  # the steps moved the weights, so the average is not the last step's
    restored = DecoderModule.load_from_checkpoint(next(tmp_path.glob("*.ckpt")), map_location="cpu")
    for name, average in module.model.decoder.state_dict().items():
        torch.testing.assert_close(restored.model.decoder.state_dict()[name], average)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_out_of_range_is_refused(generator_ckpt: Path, decay: float) -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        _module(generator_ckpt, ema_decay=decay)

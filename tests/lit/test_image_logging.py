"""The decoder's image grids: a row per view of target | render | error panels, under a row naming the panels; in
TensorBoard each grid sits at the step of the scalars logged with it, and previews reach the CPU only when logged."""

from __future__ import annotations

import pytest
import torch

from avp.lit.image_logging import LABEL_HEIGHT, PANEL_LABELS, DecoderImageLogger, visual_grid


def test_each_panel_column_is_named_and_the_panels_are_untouched() -> None:
    g = torch.Generator().manual_seed(0)
    panels = torch.rand(2, 3, 3, 20, 30, generator=g)  # 2 views, 3 panels of 30 x 20 px
    bare = visual_grid(panels, labels=None)
    grid = visual_grid(panels)
    assert grid.shape == (3, LABEL_HEIGHT + bare.shape[1], bare.shape[2])
    assert torch.equal(grid[:, LABEL_HEIGHT:], bare)  # the labels only add a row
    header = grid[:, :LABEL_HEIGHT]
    for column in range(3):  # ink above every panel (2 px padding, 30 px panels)
        x0 = 2 + column * 32
        assert header[:, :, x0:x0 + 30].min() < 0.5, PANEL_LABELS[column]
    assert header[:, :, 2 + 2 * 32 + 30:].min() == 1.0  # nothing right of the last column
    with pytest.raises(ValueError, match="2 labels for 3 panels"):
        visual_grid(panels, labels=("a", "b"))


# ---------------------------------------------------------------------------- a decoder fit, read back from its events

@pytest.fixture(scope="module")
def decoder_fit(tmp_path_factory: pytest.TempPathFactory):
    """A 5-step decoder fit (validation every 2 steps, train grids every 2 steps) that counts every copy of the preview
    panels (``[V, 3 panels, 3, H, W]``) to the CPU."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from avp.lit.data import AvatarDataModule
    from avp.lit.decoder import DecoderModule
    from avp.losses import LossWeights
    from avp.models.decoder import DecoderConfig
    from tests.portrait.tiny_models import build_tiny_checkpoints

    root = tmp_path_factory.getbasetemp() / "tiny_avp_checkpoints"  # shared with the avatarize tests
    root.mkdir(exist_ok=True)
    ckpts = build_tiny_checkpoints(root)
    copies: list[tuple[int, ...]] = []

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def method(self: torch.Tensor, *args, **kwargs):
            to_host = name == "cpu" or any(str(a) == "cpu" for a in (*args, kwargs.get("device")))
            if to_host and self.dim() == 5 and self.shape[1:3] == (3, 3):
                copies.append(tuple(self.shape))
            return original(self, *args, **kwargs)

        return method

    torch.manual_seed(0)
    module = DecoderModule(generator_ckpt=str(ckpts.generator),
                           decoder=DecoderConfig(width=32, n_layers=1, n_heads=4, feature_hidden=32, n_frequencies=4),
                           loss=LossWeights(lpips=0.0), template_points=64, warmup_steps=1, eval_points="teacher")
    data = AvatarDataModule(str(ckpts.shards), batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=2,
                            image_size=32, shuffle_buffer=4)
    images = DecoderImageLogger(every_n_steps=2, save_png=False)
    out = tmp_path_factory.mktemp("decoder_fit")
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=5, val_check_interval=2, check_val_every_n_epoch=None,
                      limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1, callbacks=[images],
                      logger=TensorBoardLogger(str(out), name="dec", default_hp_metric=False),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("cpu", "to"):
            mp.setattr(torch.Tensor, name, counting(name))
        trainer.fit(module, data)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc, copies, module


def test_images_sit_at_the_step_of_the_scalars_logged_with_them(decoder_fit) -> None:
    acc, _, _ = decoder_fit
    steps = lambda tag, kind="Scalars": [e.step for e in getattr(acc, kind)(tag)]
    # validation after optimiser steps 2 and 4: its scalars and its grid share one x in TensorBoard
    assert steps("val/loss") == steps("val/psnr") == [1, 3]
    assert steps("val/images", "Images") == steps("val/loss")
    # train grids after optimiser steps 1, 2 and 4, each at the step of its batch's train/* scalars
    assert steps("train/loss") == [0, 1, 2, 3, 4]
    assert steps("train/images", "Images") == [0, 1, 3]


def test_previews_reach_the_cpu_only_when_a_grid_is_logged(decoder_fit) -> None:
    acc, copies, module = decoder_fit
    logged = len(acc.Images("train/images")) + len(acc.Images("val/images"))
    assert logged == 5
    assert len(copies) == logged  # not one per training step (5) plus one per validation (2)
    # the module keeps its panels on its own device, and a rank other than 0 never copies them
    assert module.last_visuals["train"].shape[1:3] == (3, 3)
    copies.clear()
    quiet = DecoderImageLogger(every_n_steps=1, save_png=False)
    from types import SimpleNamespace

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("avp.lit.image_logging.host_panels", lambda panels: copies.append(panels) or panels)
        quiet._emit(SimpleNamespace(is_global_zero=False, global_step=2, loggers=[]), module, "train")
    assert copies == []

"""Tiny trained checkpoints for the photo -> avatar tests: a few Lightning steps of each stage on tiny synthetic shards.

Built once per test session (a process-wide cache keyed by the folder pytest hands out), so the pipeline and the
``avp avatarize`` tests share them. The models are untrained in any useful sense; the tests check the plumbing
(files, shapes, frame counts, round trips), never the quality.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

MAX_POINTS = 48
"""Points sampled per avatar in the tests (keeps autoregressive sampling to ~200 tokens)."""


@dataclass(frozen=True)
class TinyCheckpoints:
    generator: Path
    decoder: Path
    shards: Path


_BUILT: dict[str, TinyCheckpoints] = {}


def _trainer(max_steps: int) -> Trainer:
    from lightning.pytorch import Trainer

    return Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)


def build_tiny_checkpoints(root: Path) -> TinyCheckpoints:
    """Synthesize 4 tiny subjects, fit the generator and then the decoder for 2 steps each, save both checkpoints."""
    key = str(root)
    if key not in _BUILT:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                # Lightning's notes about the frozen generator's eval mode and an unused srun are expected here
                warnings.filterwarnings("ignore", message=".*(eval mode|srun|LeafSpec|__len__).*")
                _BUILT[key] = _build(root)
        finally:
            torch.set_num_threads(threads)
    return _BUILT[key]


def _build(root: Path) -> TinyCheckpoints:
    from avp.data.synthetic.generate import SynthConfig, synthesize
    from avp.lit.data import AvatarDataModule
    from avp.lit.decoder import DecoderModule
    from avp.lit.generator import GeneratorModule
    from avp.losses import LossWeights
    from avp.models.decoder import DecoderConfig
    from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig
    from avp.models.generator import GeneratorConfig
    from avp.models.sampling import SamplingConfig

    shards = root / "shards"
    synthesize(SynthConfig(subjects=4, views=2, frames=2, size=32, portrait_size=64, points=(120, 200),
                           val_fraction=0.25, test_fraction=0.0, shard_samples=8), shards, workers=1, progress=False,
               overwrite=True)
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=64, freeze=False),
                                mesh=MeshEncoderConfig(n_points=32, n_layers=1, n_heads=4))
    gen = GeneratorModule(condition=condition, model=GeneratorConfig(n_layers=2, width=32, n_heads=4),
                          train_window=64, warmup_steps=1, val_sample_every_n_epochs=0)
    data = AvatarDataModule(str(shards), batch_size=2, num_workers=0, frames_per_sample=0, views_per_sample=0,
                            shuffle_buffer=4)
    trainer = _trainer(2)
    trainer.fit(gen, datamodule=data)
    generator = root / "generator.ckpt"
    trainer.save_checkpoint(generator)

    dec = DecoderModule(generator_ckpt=str(generator),
                        decoder=DecoderConfig(width=32, n_layers=1, n_heads=4, feature_hidden=32, n_frequencies=4,
                                              sh_degree=1),
                        loss=LossWeights(lpips=0.0), sampling=SamplingConfig(max_points=MAX_POINTS),
                        template_points=64, warmup_steps=1)
    data = AvatarDataModule(str(shards), batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=1,
                            image_size=32, shuffle_buffer=4)
    trainer = _trainer(2)
    trainer.fit(dec, datamodule=data)
    decoder = root / "decoder.ckpt"
    trainer.save_checkpoint(decoder)
    return TinyCheckpoints(generator=generator, decoder=decoder, shards=shards)

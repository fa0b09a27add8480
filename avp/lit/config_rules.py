"""Combinations of settings that parse but make no sense to train, refused when fitting starts.

Each rule names the config keys involved (as ``--model.…`` / ``--data.…`` flags name them). The modules call
:func:`check_generator_fit` / :func:`check_decoder_fit` from ``setup("fit")``, before the first step; validation,
test, predict and checkpoint loading are not affected (a decoder rebuilds its frozen generator without the image
encoder's weights file, for instance). The errors list every rule of the stage, so one message tells what is allowed.
"""

from __future__ import annotations

from typing import Any

from avp.losses import LossWeights
from avp.models.decoder import DecoderConfig
from avp.models.encoders import ConditionConfig

GENERATOR_FIT_RULES = (
    "model.condition.image.freeze: true needs model.condition.image.pretrained_path (local DINOv2 weights): a frozen "
    "randomly initialised image encoder gives random image tokens (set pretrained_path, or freeze: false to train "
    "the encoder); checked when model.condition.use_image is true",
)
DECODER_FIT_RULES = (
    "model.decoder.inputs: position on generated points (model.points: generated or generated_bank) needs "
    "model.decoder.cross_attention: false: the AR-position-only ablation must not see the generator's portrait and "
    "head-mesh tokens through cross-attention (template points may: the paper's LAM-style 'FLAME position' row)",
    "at least one of model.loss.l1, model.loss.ssim and model.loss.lpips must be > 0: otherwise nothing compares the "
    "renders with the frames",
    "model.loss.lpips > 0 needs real LPIPS weights (model.lpips_weights_path or $TORCH_HOME); checked when the "
    "LPIPS network loads",
    "data.frames_per_sample >= 1 and data.views_per_sample >= 1: the decoder trains on rendered target frames",
)


def generator_fit_errors(condition: ConditionConfig) -> list[str]:
    """The generator rules ``condition`` breaks (empty: none)."""
    errors = []
    image = condition.image
    if condition.use_image and image.freeze and not image.pretrained_path:
        errors.append("model.condition.image.freeze is true but model.condition.image.pretrained_path is null: the "
                      f"{image.arch} image encoder would stay frozen at its random initialisation")
    return errors


def decoder_fit_errors(decoder: DecoderConfig, loss: LossWeights, frames_per_sample: int | None = None,
                       views_per_sample: int | None = None, points: str = "generated") -> list[str]:
    """The decoder rules the configs break (empty: none); the data counts are skipped when None; ``points``: the
    module's training point source."""
    errors = []
    if decoder.inputs == "position" and decoder.cross_attention and points in ("generated", "generated_bank"):
        errors.append(f"model.decoder.inputs is 'position' but model.decoder.cross_attention is true with "
                      f"model.points {points!r}")
    if max(loss.l1, loss.ssim, loss.lpips) <= 0:
        errors.append(f"model.loss.l1, model.loss.ssim and model.loss.lpips are all 0 (l1={loss.l1}, "
                      f"ssim={loss.ssim}, lpips={loss.lpips})")
    for key, value in (("data.frames_per_sample", frames_per_sample), ("data.views_per_sample", views_per_sample)):
        if value is not None and value < 1:
            errors.append(f"{key} is {value}")
    return errors


def _raise(owner: str, errors: list[str], rules: tuple[str, ...]) -> None:
    if errors:
        raise ValueError(f"{owner}: refusing to fit: " + "; ".join(errors) + ".\nRules of this stage:\n"
                         + "\n".join(f"  - {rule}" for rule in rules))


def check_generator_fit(module: Any) -> None:
    """Raise a ValueError naming the keys when a :class:`~avp.lit.generator.GeneratorModule` breaks a fit rule."""
    _raise("GeneratorModule", generator_fit_errors(module.net.condition.config), GENERATOR_FIT_RULES)


def check_decoder_fit(module: Any, datamodule: Any = None) -> None:
    """Raise a ValueError naming the keys when a :class:`~avp.lit.decoder.DecoderModule` (and its DataModule, when it
    is an :class:`~avp.lit.data.AvatarDataModule`) breaks a fit rule."""
    stream = getattr(datamodule, "config", None)
    errors = decoder_fit_errors(module.model.decoder.config, module.loss_weights,
                                getattr(stream, "frames_per_sample", None), getattr(stream, "views_per_sample", None),
                                getattr(module, "points_source", "generated"))
    _raise("DecoderModule", errors, DECODER_FIT_RULES)

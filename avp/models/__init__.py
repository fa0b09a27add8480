"""Pure ``nn.Module`` models: point tokenizer, condition encoders, AR point generator (and the Gaussian decoder).

The first stage without Lightning is ``avp.models.conditional.ConditionalPointGenerator`` (head model + tokenizer +
condition encoder + :class:`PointGenerator` + the decoding loop of :mod:`avp.models.sampling`), and the second stage's
pure model is ``avp.models.avatar.AvatarModel``; neither is re-exported here, so that importing the small parts does
not build on the head model and the renderer.
"""

from __future__ import annotations

from avp.models.encoders import (
    ConditionConfig,
    ConditionEncoder,
    ImageEncoder,
    ImageEncoderConfig,
    MeshEncoderConfig,
    MeshPointEncoder,
    load_vit_weights,
    sample_surface,
)
from avp.models.generator import GeneratorConfig, GeneratorOutput, PointGenerator, point_features, training_windows
from avp.models.tokenizer import PointTokenizer, TokenizerConfig

__all__ = [
    "ConditionConfig",
    "ConditionEncoder",
    "GeneratorConfig",
    "GeneratorOutput",
    "ImageEncoder",
    "ImageEncoderConfig",
    "MeshEncoderConfig",
    "MeshPointEncoder",
    "PointGenerator",
    "PointTokenizer",
    "TokenizerConfig",
    "load_vit_weights",
    "point_features",
    "sample_surface",
    "training_windows",
]

"""Rebuild any stage's networks from a checkpoint written by ``avp fit``, without Lightning.

A checkpoint is a dict with ``hyper_parameters`` (the LightningModule's ``__init__`` arguments, configs as plain dicts)
and ``state_dict`` (the module's parameters under its attribute names: the generator's network under ``net.``, the
stage-2 model under ``model.``). Everything here reads those two entries, so inference (:mod:`avp.pipeline`) and
evaluation (:mod:`avp.eval`) never import Lightning; the training modules use the same builders, so a network is built
one way whether it is trained or loaded. Errors name the file and the missing key.

- :func:`read_generator_checkpoint`, :func:`build_generator`, :func:`load_generator_state`: the stage-1 network;
- :func:`build_avatar_model`: the stage-2 model from a decoder's hyper-parameters (and, when given, its frozen
  generator's checkpoint);
- :func:`load_avatar_model`: a decoder checkpoint -> :class:`~avp.models.avatar.AvatarModel` with its weights;
- :func:`check_same_generator`: a generator checkpoint must be the decoder's frozen one.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avp.head import HeadConfig, load_head_model
from avp.models.avatar import AvatarModel
from avp.models.conditional import ConditionalPointGenerator
from avp.models.decoder import DecoderConfig, GaussianDecoder
from avp.models.encoders import ConditionConfig
from avp.models.generator import GeneratorConfig
from avp.models.sampling import SamplingConfig
from avp.models.tokenizer import TokenizerConfig
from avp.types import as_config

GENERATOR_KEYS = ("head", "tokenizer", "condition", "model", "head_model_name")
"""Hyper-parameters every generator checkpoint holds."""
DECODER_KEYS = ("generator_hparams", "decoder")
"""Hyper-parameters every decoder checkpoint holds (besides the generator's)."""
GENERATOR_PREFIX = "net."
AVATAR_MODEL_PREFIX = "model."


def submodule_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a LightningModule's ``state_dict`` under attribute ``prefix`` (e.g. ``net.``), unprefixed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def upgrade_decoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A decoder ``state_dict`` in the current layout: checkpoints written before the stage-2 model existed held its
    two networks at the top level (``generator.*``, ``decoder.*``), now under ``model.``. Current ones pass through."""
    if any(k.startswith(AVATAR_MODEL_PREFIX) for k in state):
        return state
    return {(AVATAR_MODEL_PREFIX + k if k.startswith(("generator.", "decoder.")) else k): v for k, v in state.items()}


def _load(file: Path, what: str) -> dict[str, Any]:
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # any unreadable file gets the same clear message
        raise ValueError(f"cannot read {what} checkpoint {file}: {e}") from e
    return ckpt


def read_generator_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(hyper_parameters, state_dict)`` of a generator checkpoint, with errors naming the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"DecoderModule: generator checkpoint {file} does not exist (model.generator_ckpt: "
                                "a checkpoint written by `avp fit` of the generator stage)")
    try:
        ckpt = _load(file, "generator")
    except ValueError as e:
        raise ValueError(f"DecoderModule: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"DecoderModule: {file} is not a Lightning checkpoint (no state_dict/hyper_parameters)")
    hp = dict(ckpt["hyper_parameters"])
    missing = [k for k in GENERATOR_KEYS if k not in hp]
    if missing:
        raise ValueError(f"DecoderModule: {file} is not a GeneratorModule checkpoint: its hyper_parameters lack "
                         f"{missing} (found {sorted(hp)})")
    return hp, ckpt["state_dict"]


def generator_hparams(hparams: Mapping[str, Any], head: HeadConfig | None = None) -> dict[str, Any]:
    """A copy of a generator's hyper-parameters that builds without reading pretrained encoder files (the weights
    come from a state dict right after), with ``head`` replacing its head config when given."""
    # keys with a leading underscore (``_class_path``) are LightningCLI's, not constructor arguments
    hp = copy.deepcopy({k: v for k, v in dict(hparams).items() if not k.startswith("_")})
    image = hp.get("condition", {}).get("image") if isinstance(hp.get("condition"), dict) else None
    if isinstance(image, dict) and "pretrained_path" in image:
        image["pretrained_path"] = None
    if head is not None:
        hp["head"] = dataclasses.asdict(head)
    return hp


def build_generator(hparams: Mapping[str, Any], head: HeadConfig | None, source: str) -> ConditionalPointGenerator:
    """The generator network of a generator's hyper-parameters (random weights), optionally with another head config
    (the same head model, e.g. a FLAME file moved); raises naming ``source`` when the head models disagree."""
    hp = generator_hparams(hparams)
    trained = hp.get("head_model_name")
    if head is not None:
        configured = load_head_model(head)
        if configured.name != trained:
            raise ValueError(f"DecoderModule: the generator {source} was trained with head model {trained!r} but "
                             f"model.head builds {configured.name!r}; its binding vocabulary does not fit this head "
                             "model (use the generator's head config, or a generator trained on this head model)")
        hp["head"] = dataclasses.asdict(head)
    try:
        head_model = load_head_model(as_config(HeadConfig, hp["head"]))
        if trained is not None and trained != head_model.name:
            raise ValueError(f"this checkpoint was trained with head model {trained!r} but the head config builds "
                             f"{head_model.name!r}; pass the same head config (model.head)")
        net = ConditionalPointGenerator(head_model, as_config(TokenizerConfig, hp["tokenizer"]),
                                        as_config(ConditionConfig, hp["condition"]),
                                        as_config(GeneratorConfig, hp["model"]))
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise ValueError(f"DecoderModule: cannot rebuild the generator of {source}: {e}") from e
    if net.tokenizer.n_faces != head_model.n_faces:
        raise ValueError(f"DecoderModule: the generator {source} has a vocabulary for {net.tokenizer.n_faces} faces "
                         f"but head model {head_model.name!r} has {head_model.n_faces}")
    return net


def load_generator_state(net: ConditionalPointGenerator, state: Mapping[str, Tensor], source: str) -> None:
    """Load a generator checkpoint's ``state_dict`` (``net.`` entries) into ``net``; a vocabulary of another head-model
    topology, or weights of another size, raise naming ``source``."""
    net_state = submodule_state(state, GENERATOR_PREFIX)
    embedding = net_state.get("transformer.token_embedding.weight")
    tok = net.tokenizer
    if embedding is not None and embedding.shape[0] != tok.vocab_size:
        faces = embedding.shape[0] - tok.levels - 3
        raise ValueError(
            f"DecoderModule: generator {source} has a vocabulary of {embedding.shape[0]} tokens "
            f"({tok.levels} levels + {faces} faces + 3 specials) but head model "
            f"{net.head_model.name!r} has {tok.n_faces} faces ({tok.vocab_size} tokens): it was "
            "trained on another head-model topology; retrain the generator on this head model")
    try:
        net.load_state_dict(net_state)
    except RuntimeError as e:
        raise ValueError(f"DecoderModule: generator {source} does not match its own configuration "
                         f"(vocabulary, tokenizer or model size): {e}") from e


def build_avatar_model(hparams: Mapping[str, Any], *, generator_ckpt: str | Path | None = None,
                       head: HeadConfig | None = None) -> tuple[AvatarModel, dict[str, Any]]:
    """The stage-2 model of a decoder's hyper-parameters -> ``(model, generator hyper-parameters)``.

    The frozen generator comes from ``hparams["generator_hparams"]`` (a decoder checkpoint's own copy, weights loaded
    later with the decoder's) or, when those are None, from ``generator_ckpt`` with its weights. ``head`` replaces the
    head config (it must build the generator's head model). The returned generator hyper-parameters are what a
    decoder checkpoint stores.
    """
    hp = dict(hparams)
    if head is None and hp.get("head") is not None:
        head = as_config(HeadConfig, hp["head"])
    if hp.get("generator_hparams") is not None:
        gen_hp, state, source = dict(hp["generator_hparams"]), None, "stored in this checkpoint"
    elif generator_ckpt is not None:
        gen_hp, state = read_generator_checkpoint(generator_ckpt)
        source = f"checkpoint {generator_ckpt}"
    else:
        raise ValueError("DecoderModule: model.generator_ckpt is required (a GeneratorModule checkpoint written "
                         "by `avp fit --config configs/generator/base.yaml`)")
    generator = build_generator(gen_hp, head, source)
    if state is not None:
        load_generator_state(generator, state, source)
    width = generator.transformer.config.width
    decoder = GaussianDecoder(as_config(DecoderConfig, hp.get("decoder")), feature_dim=width,
                              bounds=generator.tokenizer.bounds, condition_dim=width)
    gen_hp = generator_hparams(gen_hp, head)
    head_config = head or as_config(HeadConfig, gen_hp["head"])
    model = AvatarModel(generator, decoder, head_config, sampling=as_config(SamplingConfig, hp.get("sampling")),
                        feature_window=int(hp.get("feature_window") or gen_hp.get("train_window", 12000)),
                        template_points=hp.get("template_points", 4096), template_seed=hp.get("template_seed", 0),
                        animation=hp.get("animation", "lbs"), render_backend=hp.get("render_backend", "auto"))
    return model, gen_hp


def read_decoder_checkpoint(path: str | Path) -> dict[str, Any]:
    """A decoder checkpoint (``hyper_parameters`` and ``state_dict``), with errors naming the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"decoder checkpoint {file} does not exist (no such decoder checkpoint: one is "
                                "written by `avp fit` of the decoder stage)")
    ckpt = _load(file, "decoder")
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    missing = [k for k in DECODER_KEYS if k not in hp]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        missing.append("state_dict")
    if missing:
        raise ValueError(f"{file} is not a DecoderModule checkpoint (it lacks {missing}: found hyper_parameters "
                         f"{sorted(hp)[:8]}); pass a checkpoint written by `avp fit` of the decoder stage")
    ckpt["state_dict"] = upgrade_decoder_state(ckpt["state_dict"])
    return ckpt


def load_avatar_model(path: str | Path, *, head: HeadConfig | None = None,
                      device: torch.device | str = "cpu") -> tuple[AvatarModel, dict[str, Any]]:
    """A decoder checkpoint -> ``(AvatarModel in eval mode on device, its hyper-parameters)``.

    ``head`` replaces the trained head config (e.g. the FLAME file lives elsewhere here): it must build the same
    head model.
    """
    ckpt = read_decoder_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    model, _ = build_avatar_model(hp, head=head)
    state = submodule_state(ckpt["state_dict"], AVATAR_MODEL_PREFIX)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit the model its hyper-parameters build: {e}") from e
    return model.to(device).eval(), hp


def trained_head_config(decoder_ckpt: str | Path, flame_path: str | Path) -> HeadConfig:
    """The head config a decoder checkpoint was trained with, with its FLAME file moved to ``flame_path``."""
    try:
        hp = _load(Path(decoder_ckpt), "decoder")["hyper_parameters"]
        trained = hp.get("head") or hp["generator_hparams"]["head"]
    except Exception as e:
        raise ValueError(f"{decoder_ckpt}: cannot read its head config ({type(e).__name__}: {e})") from e
    return HeadConfig(**{**dict(trained), "flame_path": str(flame_path)})


def check_same_generator(model: AvatarModel, path: str | Path) -> None:
    """The generator checkpoint must be the one whose frozen copy the decoder holds (its features trained it)."""
    _, state = read_generator_checkpoint(path)
    net = submodule_state(state, GENERATOR_PREFIX)
    own = model.generator.state_dict()
    missing = sorted(set(own) - set(net))
    differing = [k for k, v in own.items() if k in net and (net[k].shape != v.shape or
                                                            not torch.equal(net[k].to(v.device, v.dtype), v))]
    if missing or differing:
        detail = f"missing {missing[:3]}" if missing else f"{len(differing)} of {len(own)} tensors differ, e.g. " \
                                                           f"{differing[:3]}"
        raise ValueError(f"generator checkpoint {path} is not the generator the decoder was trained on ({detail}); "
                         "the decoder checkpoint holds its own frozen generator: omit the generator or pass that one")

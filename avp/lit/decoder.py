"""``DecoderModule``: trains the conditioned Gaussian decoder (stage 2) with the AR generator frozen.

Per training batch (PAPER.md §3, §5.2):

1. the frozen generator (loaded from ``generator_ckpt``, a checkpoint written by ``avp fit`` of the generator stage)
   encodes the portrait into condition tokens and runs **teacher-forced** over the tokens of the points, under
   ``torch.no_grad()``, with the contexts sampling uses (windows of the generator's training length when a
   sequence is longer); the points are the tokens' dequantised bin centres, so training sees exactly the positions
   and features that sampling produces at inference;
2. the :class:`~avp.models.decoder.GaussianDecoder` turns points + the hidden states of their 4 tokens into splats;
3. each point is bound to its face of the subject's neutral head (``HeadModel.rig``) and every target frame's
   expression and pose animate the splats (``lbs``, the paper's, or ``face_frame``, GaussianAvatars');
4. the sampled target views are rendered (``avp.render.render``) over the clip's background and compared with the
   frames: ``1 L1 + 0.5 (1 - SSIM) + 0.1 LPIPS + 0.1 Reg`` (weights in ``loss``, ``Reg`` in ``reg``; see
   :mod:`avp.losses`).

Where the points come from is the ``points`` switch (``eval_points`` for validation/test): ``teacher`` (the shard's
teacher cloud, the paper's training), ``generated`` (sampled by :mod:`avp.sampling` from the portrait, features from
the same forward: the full pipeline), ``template`` (a fixed set of points on the subject's neutral head-model
surface, the paper's "FLAME position" ablation; they go through the generator teacher-forced like teacher points,
so only their positions differ). For training only, ``generated_bank`` trains on what ``generated`` tests: clouds
sampled once per training subject from the frozen generator and cached on disk next to the run
(:class:`~avp.point_bank.PointBank`, keyed by the generator's weights and the sampling settings), their features
recomputed teacher-forced from the stored tokens; ``points_mix`` replaces each sample's bank cloud by its teacher
cloud with that probability.

Checkpoints are self-contained: the frozen generator's weights are part of this module's state and its
hyper-parameters are stored under ``generator_hparams``, so ``load_from_checkpoint`` never needs the generator file.
LPIPS (loss and ``val/lpips``) uses only real pretrained weights (:func:`avp.eval.lpips.load_lpips`); a non-zero
LPIPS weight without them is refused when fitting starts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from avp.eval.image_metrics import PSNR, SSIM
from avp.eval.lpips import LPIPS, load_lpips
from avp.eval.unavailable import Unavailable
from avp.head import HeadConfig, load_head_model
from avp.head.rig import PointRig, animate_gaussians
from avp.lit.generator import GeneratorModule, as_config
from avp.lit.optim import adamw_warmup_cosine
from avp.losses import LossTerms, LossWeights, RegConfig, total_loss
from avp.models.conditional import ConditionalPointGenerator
from avp.models.decoder import DecoderConfig, DecoderOutput, GaussianDecoder
from avp.models.pixel_aligned import pixel_features
from avp.point_bank import BankEntry, PointBank, bank_key, sample_entries, state_digest, subject_seed
from avp.render import render
from avp.sampling import SamplingConfig
from avp.types import AvatarBatch, Cameras, GaussianCloud, HeadParams, TensorContainer

PointSource = Literal["teacher", "generated", "template"]
POINT_SOURCES = ("teacher", "generated", "template")
TrainPointSource = Literal["teacher", "generated", "template", "generated_bank"]
TRAIN_POINT_SOURCES = (*POINT_SOURCES, "generated_bank")
"""``generated_bank``: clouds sampled once per training subject from the frozen generator and cached on disk
(:mod:`avp.point_bank`), training only."""
ANIMATION_MODES = ("lbs", "face_frame")


@dataclass
class DecodedAvatar(TensorContainer):
    """Canonical avatars of a batch: what the decoder made of ``B`` subjects' points (``N`` = the most points)."""

    cloud: GaussianCloud
    """``[B, N]`` activated Gaussians in the subject's canonical space (with ``mask``)."""
    binding: Tensor
    """``[B, N]`` long head-model face of every point (0 on padding)."""
    rig: PointRig
    """The points bound to the head model (animate with ``avp.head.animate_gaussians(rig, cloud, params)``)."""
    points: Tensor
    """``[B, N, 3]`` the dequantised points the splats were decoded at (before the decoder's offsets)."""
    offsets: Tensor
    """``[B, N, 3]`` the decoder's position offsets (metres)."""
    n_points: Tensor
    """``[B]`` long, real points per avatar."""
    finished: Tensor
    """``[B]`` bool: False where sampling stopped at ``max_points`` before EOS (True for teacher/template points)."""


@dataclass
class PointInputs(TensorContainer):
    """What the frozen parts give the decoder for ``B`` avatars (``N`` = the most points): see
    :meth:`DecoderModule.prepare`."""

    points: Tensor
    """``[B, N, 3]`` dequantised canonical points (zeros on padding)."""
    binding: Tensor
    """``[B, N]`` long face of each point (0 on padding)."""
    mask: Tensor
    """``[B, N]`` bool, True for real points."""
    n_points: Tensor
    """``[B]`` long."""
    features: Tensor
    """``[B, N, 4, D]`` the generator's final hidden states at each point's 4 token positions."""
    condition: Tensor
    """``[B, C, D]`` the generator's condition tokens."""
    finished: Tensor
    """``[B]`` bool (False: sampling stopped at ``max_points``)."""
    rig: PointRig
    """The points bound to the head model."""
    pixel: Tensor | None = None
    """``[B, N, C]`` portrait colours where each point projects (decoder ``appearance: pixel``), else None."""


def _as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _strip_pretrained_paths(hparams: dict[str, Any]) -> dict[str, Any]:
    """A copy of a generator's hyper-parameters that builds without reading pretrained encoder files (the weights
    come from a state dict right after)."""
    # keys with a leading underscore (``_class_path``) are LightningCLI's, not constructor arguments
    hp = copy.deepcopy({k: v for k, v in dict(hparams).items() if not k.startswith("_")})
    image = hp.get("condition", {}).get("image") if isinstance(hp.get("condition"), dict) else None
    if isinstance(image, dict) and "pretrained_path" in image:
        image["pretrained_path"] = None
    return hp


def read_generator_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(hyper_parameters, state_dict)`` of a GeneratorModule checkpoint, with errors naming the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"DecoderModule: generator checkpoint {file} does not exist (model.generator_ckpt: "
                                "a checkpoint written by `avp fit` of the generator stage)")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # any unreadable file gets the same clear message
        raise ValueError(f"DecoderModule: cannot read generator checkpoint {file}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"DecoderModule: {file} is not a Lightning checkpoint (no state_dict/hyper_parameters)")
    hp = dict(ckpt["hyper_parameters"])
    missing = [k for k in ("head", "tokenizer", "condition", "model", "head_model_name") if k not in hp]
    if missing:
        raise ValueError(f"DecoderModule: {file} is not a GeneratorModule checkpoint: its hyper_parameters lack "
                         f"{missing} (found {sorted(hp)})")
    return hp, ckpt["state_dict"]


def build_generator(hparams: dict[str, Any], head: HeadConfig | None, source: str) -> ConditionalPointGenerator:
    """The generator network of a GeneratorModule's hyper-parameters, optionally with another head config (same
    head model, e.g. a FLAME file moved); raises naming ``source`` when the head models disagree."""
    hp = _strip_pretrained_paths(hparams)
    if head is not None:
        configured = load_head_model(head)
        trained = hp["head_model_name"]
        if configured.name != trained:
            raise ValueError(f"DecoderModule: the generator {source} was trained with head model {trained!r} but "
                             f"model.head builds {configured.name!r}; its binding vocabulary does not fit this head "
                             "model (use the generator's head config, or a generator trained on this head model)")
        hp["head"] = dataclasses.asdict(head)
    try:
        module = GeneratorModule(**hp)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise ValueError(f"DecoderModule: cannot rebuild the generator of {source}: {e}") from e
    net = module.net
    head_model = net.head_model
    if net.tokenizer.n_faces != head_model.n_faces:
        raise ValueError(f"DecoderModule: the generator {source} has a vocabulary for {net.tokenizer.n_faces} faces "
                         f"but head model {head_model.name!r} has {head_model.n_faces}")
    return net


def template_binding(head_model: nn.Module, n_points: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed set of surface points on the head model: ``face_idx [M]`` long and barycentric ``bary [M, 3]``.

    Faces are drawn area-weighted on the mean head (``v_template``) with a seeded generator and barycentric
    coordinates uniform on each triangle, so the set is the same for every subject and run; evaluate it on a
    subject's neutral head with :func:`template_points`.
    """
    if n_points < 1:
        raise ValueError(f"DecoderModule: template_points must be >= 1, got {n_points}")
    verts = head_model.v_template.detach().double().cpu()
    faces = head_model.faces.cpu()
    tri = verts[faces]  # [F, 3, 3]
    areas = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1) / 2
    g = torch.Generator().manual_seed(seed)
    face_idx = torch.multinomial(areas.float(), n_points, replacement=True, generator=g)
    u, v = torch.rand(n_points, generator=g), torch.rand(n_points, generator=g)
    su = u.sqrt()
    bary = torch.stack([1 - su, su * (1 - v), su * v], dim=-1)  # uniform on a triangle
    return face_idx, bary.float()


def template_points(head_model: nn.Module, face_idx: Tensor, bary: Tensor, shape: Tensor) -> Tensor:
    """Points ``[B, M, 3]`` on the neutral heads of ``shape [B, S]`` at the template's faces and barycentrics."""
    verts = head_model.canonical(shape)  # [B, V, 3]
    corners = head_model.tensors(shape)["faces"][face_idx]  # [M, 3]
    tri = verts[:, corners]  # [B, M, 3, 3]
    return (bary.to(verts.dtype)[None, :, :, None] * tri).sum(-2)


class DecoderModule(LightningModule):
    """Stage 2: frozen generator features + points -> Gaussians, trained through multi-view renders.

    Args:
        generator_ckpt: GeneratorModule checkpoint written by ``avp fit`` of the generator stage (frozen here).
        decoder: :class:`~avp.models.decoder.DecoderConfig` (size, ``inputs`` ablation, parameterisation).
        loss: :class:`~avp.losses.LossWeights` (paper: l1 1, ssim 0.5, lpips 0.1, reg 0.1).
        reg: :class:`~avp.losses.RegConfig` (offset and scale regularisers).
        head: the head model that animates the splats; None uses the generator checkpoint's head config. A head
            model other than the generator's (name, faces) is an error.
        points: training points: ``teacher`` | ``generated`` | ``template`` | ``generated_bank`` (clouds sampled
            once per training subject and cached: see :mod:`avp.point_bank`).
        eval_points: validation/test points (None: as ``points``, ``generated`` for ``generated_bank``);
            ``generated`` evaluates the full pipeline.
        points_mix: with ``points: generated_bank``, the probability per sample of training on its teacher cloud
            instead of a bank cloud (0: bank clouds only).
        bank_dir: folder of the generated-points bank (None: ``<logger root>/point_bank``, the logger's
            ``save_dir/name`` shared by its versions, else ``<trainer.default_root_dir>/point_bank``); the clouds
            live in a subfolder named by a digest of the generator's weights, ``sampling``, ``bank_seed`` and
            ``bank_samples``, so a re-run reuses them and another generator or sampling setting samples afresh.
        bank_samples: clouds per training subject in the bank (one is drawn per step).
        bank_seed: seed of the bank (each subject's sampling is seeded from it and the subject id).
        bank_fill_batch: when fitting with ``points: generated_bank`` starts, sample every training subject missing
            from the bank, this many subjects per batched call (ranks split the subjects and meet at a barrier);
            0 samples subjects one at a time when a batch first needs them.
        template_points: number of template points (``points: template``).
        template_seed: seed of the template set.
        animation: ``lbs`` (paper) or ``face_frame`` (GaussianAvatars' rigid triangle frames).
        sampling: how ``generated`` points are sampled (its ``window`` is replaced by the feature window).
        feature_window: generator context for teacher-forced features (None: the generator's training window).
        lpips_net: LPIPS backbone (``alex`` | ``vgg`` | ``squeeze``), for the loss and ``val/lpips``.
        lpips_weights_path: torchvision backbone weights file for LPIPS (e.g. ``alexnet-owt-7be5be79.pth``); None
            reads ``$TORCH_HOME/hub/checkpoints``. Without weights ``loss.lpips`` must be 0 and ``val/lpips`` is not
            logged.
        render_backend: ``auto`` (gsplat on CUDA, torch otherwise) | ``torch`` | ``gsplat``.
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with linear warm-up and cosine decay.
        seed: seed of generated-point sampling in validation.
        generator_hparams: filled in automatically (the generator's hyper-parameters): a checkpoint of this module
            rebuilds its frozen generator from them without ``generator_ckpt``.
    """

    def __init__(
        self,
        generator_ckpt: str | None = None,
        decoder: DecoderConfig = DecoderConfig(),  # noqa: B008 (configs are read, never mutated)
        loss: LossWeights = LossWeights(),  # noqa: B008
        reg: RegConfig = RegConfig(),  # noqa: B008
        head: HeadConfig | None = None,
        points: TrainPointSource = "teacher",
        eval_points: PointSource | None = None,
        points_mix: float = 0.0,
        bank_dir: str | None = None,
        bank_samples: int = 1,
        bank_seed: int = 0,
        bank_fill_batch: int = 16,
        template_points: int = 4096,
        template_seed: int = 0,
        animation: Literal["lbs", "face_frame"] = "lbs",
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008
        feature_window: int | None = None,
        lpips_net: str = "alex",
        lpips_weights_path: str | None = None,
        render_backend: Literal["auto", "torch", "gsplat"] = "auto",
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 500,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
        generator_hparams: dict[str, Any] | None = None,
    ):
        super().__init__()
        dec_cfg = as_config(DecoderConfig, decoder)
        loss_cfg = as_config(LossWeights, loss)
        reg_cfg = as_config(RegConfig, reg)
        head_cfg = None if head is None else as_config(HeadConfig, head)
        sampling_cfg = as_config(SamplingConfig, sampling)
        if points not in TRAIN_POINT_SOURCES:
            raise ValueError(f"DecoderModule: points must be one of {TRAIN_POINT_SOURCES}, got {points!r}")
        if eval_points is not None and eval_points not in POINT_SOURCES:
            hint = (" (the bank holds clouds of the training subjects; evaluate with 'generated')"
                    if eval_points == "generated_bank" else "")
            raise ValueError(f"DecoderModule: eval_points must be one of {POINT_SOURCES}, got {eval_points!r}{hint}")
        if not 0.0 <= points_mix <= 1.0:
            raise ValueError(f"DecoderModule: points_mix must be in [0, 1], got {points_mix}")
        if points_mix > 0 and points != "generated_bank":
            raise ValueError(f"DecoderModule: points_mix mixes teacher clouds into bank clouds and needs "
                             f"points: generated_bank, got points: {points!r}")
        if bank_samples < 1:
            raise ValueError(f"DecoderModule: bank_samples must be >= 1, got {bank_samples}")
        if animation not in ANIMATION_MODES:
            raise ValueError(f"DecoderModule: animation must be one of {ANIMATION_MODES}, got {animation!r}")
        if min(loss_cfg.l1, loss_cfg.ssim, loss_cfg.lpips, loss_cfg.reg) < 0:
            raise ValueError(f"DecoderModule: loss weights must be >= 0, got {loss_cfg}")

        # ---- the frozen generator
        if generator_hparams is not None:
            gen_hp, state, source = dict(generator_hparams), None, "stored in this checkpoint"
        elif generator_ckpt is not None:
            gen_hp, state = read_generator_checkpoint(generator_ckpt)
            source = f"checkpoint {generator_ckpt}"
        else:
            raise ValueError("DecoderModule: model.generator_ckpt is required (a GeneratorModule checkpoint written "
                             "by `avp fit --config configs/generator/base.yaml`)")
        self.generator = build_generator(gen_hp, head_cfg, source)
        if state is not None:
            net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
            embedding = net_state.get("transformer.token_embedding.weight")
            tok = self.generator.tokenizer
            if embedding is not None and embedding.shape[0] != tok.vocab_size:
                faces = embedding.shape[0] - tok.levels - 3
                raise ValueError(
                    f"DecoderModule: generator {source} has a vocabulary of {embedding.shape[0]} tokens "
                    f"({tok.levels} levels + {faces} faces + 3 specials) but head model "
                    f"{self.generator.head_model.name!r} has {tok.n_faces} faces ({tok.vocab_size} tokens): it was "
                    "trained on another head-model topology; retrain the generator on this head model")
            try:
                self.generator.load_state_dict(net_state)
            except RuntimeError as e:
                raise ValueError(f"DecoderModule: generator {source} does not match its own configuration "
                                 f"(vocabulary, tokenizer or model size): {e}") from e
        self.generator.requires_grad_(False)
        self.generator.eval()
        self.feature_window = int(feature_window or gen_hp.get("train_window", 12000))
        self.sampling = dataclasses.replace(sampling_cfg, window=self.feature_window)
        self.sampling.validate()

        # ---- the decoder
        width = self.generator.transformer.config.width
        self.decoder = GaussianDecoder(dec_cfg, feature_dim=width, bounds=self.generator.tokenizer.bounds,
                                       condition_dim=width)
        self.loss_weights, self.reg_config = loss_cfg, reg_cfg
        self.points_source: str = points
        self.eval_points_source: str = eval_points or ("generated" if points == "generated_bank" else points)
        self.points_mix = float(points_mix)
        self._bank: PointBank | None = None  # built on first use (needs the trainer's folders)
        self.animation: str = animation
        self.render_backend: str = render_backend
        face_idx, bary = template_binding(self.head_model, template_points, template_seed)
        self.register_buffer("template_face_idx", face_idx, persistent=False)
        self.register_buffer("template_bary", bary, persistent=False)

        # ---- LPIPS: the loss's network is loaded when fitting starts; the metric reports itself unavailable
        self._lpips: list[nn.Module] = []  # outside the module tree: never in checkpoints
        self.val_psnr, self.val_ssim = PSNR(), SSIM()
        self.val_lpips = LPIPS(lpips_net, lpips_weights_path)
        self.test_psnr, self.test_ssim = PSNR(), SSIM()
        self.test_psnr_masked, self.test_ssim_masked = PSNR(masked=True), SSIM(masked=True)
        self.test_lpips = LPIPS(lpips_net, lpips_weights_path)
        self.last_visuals: dict[str, Tensor] = {}
        """``{"train": [V, 3, 3, H, W], "val": …}``: target, render, error of the first sample's first frame of the
        latest step (for :class:`avp.lit.image_logging.DecoderImageLogger`)."""

        gen_hp = _strip_pretrained_paths(gen_hp)
        if head_cfg is not None:
            gen_hp["head"] = dataclasses.asdict(head_cfg)
        # ``_class_path`` lets LightningCLI rebuild the module from ``--ckpt_path`` alone (load_from_checkpoint
        # drops it)
        self.save_hyperparameters({
            "_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "generator_ckpt": generator_ckpt, "decoder": _as_dict(dec_cfg), "loss": _as_dict(loss_cfg),
            "reg": _as_dict(reg_cfg), "head": None if head_cfg is None else _as_dict(head_cfg), "points": points,
            "eval_points": eval_points, "points_mix": points_mix, "bank_dir": bank_dir, "bank_samples": bank_samples,
            "bank_seed": bank_seed, "bank_fill_batch": bank_fill_batch, "template_points": template_points,
            "template_seed": template_seed,
            "animation": animation, "sampling": _as_dict(sampling_cfg), "feature_window": feature_window,
            "lpips_net": lpips_net, "lpips_weights_path": lpips_weights_path, "render_backend": render_backend,
            "lr": lr, "weight_decay": weight_decay, "betas": tuple(betas), "warmup_steps": warmup_steps,
            "min_lr_ratio": min_lr_ratio, "seed": seed, "generator_hparams": gen_hp,
        })

    # ------------------------------------------------------------------------------------------------ frozen parts
    def train(self, mode: bool = True) -> DecoderModule:
        """Train mode for the decoder only: the frozen generator always stays in eval mode."""
        super().train(mode)
        self.generator.eval()
        return self

    @property
    def tokenizer(self) -> Any:
        return self.generator.tokenizer

    @property
    def head_model(self) -> nn.Module:
        """The head model (the generator's; unregistered: rebuilt from its config, never in checkpoints)."""
        return self.generator.head_model

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        shards_head = getattr(datamodule, "head_model_name", None)
        if shards_head is not None and shards_head != self.head_model.name:
            raise ValueError(f"DecoderModule: the shards were written for head model {shards_head!r} but the "
                             f"generator and decoder use {self.head_model.name!r}; train on data of the same head "
                             "model")
        if stage == "fit":
            from avp.lit.config_rules import check_decoder_fit

            check_decoder_fit(self, datamodule)  # settings that parse but make no sense to train
            self._load_lpips_for_loss()

    def _load_lpips_for_loss(self) -> None:
        if self.loss_weights.lpips <= 0 or self._lpips:
            return
        model, reason = load_lpips(self.hparams.lpips_net, self.hparams.lpips_weights_path)
        if model is None:
            raise ValueError(f"DecoderModule: loss.lpips is {self.loss_weights.lpips} but LPIPS has no pretrained "
                             f"weights here ({reason}). Give model.lpips_weights_path, or set model.loss.lpips: 0 "
                             "(configs/debug/decoder.yaml does); a random backbone is never used for a loss")
        self._lpips.append(model)

    def lpips_module(self, like: Tensor) -> nn.Module | None:
        """The loss's LPIPS network on ``like``'s device (None when the LPIPS weight is 0)."""
        if self.loss_weights.lpips <= 0:
            return None
        self._load_lpips_for_loss()
        model = self._lpips[0]
        if next(model.parameters()).device != like.device:
            self._lpips[0] = model = model.to(like.device)
        return model

    # ----------------------------------------------------------------------------------------------- points
    def _rows_to_points(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Token sequences ``[B, L]`` -> dequantised ``points [B, N, 3]``, ``binding [B, N]``, ``mask [B, N]``,
        ``n_points [B]`` (bin centres: the positions sampling yields)."""
        tok = self.tokenizer
        n_points = torch.div(lengths - 2, 4, rounding_mode="floor")
        n = int(n_points.max())
        rows = tokens[:, 1 : 1 + 4 * n].reshape(tokens.shape[0], n, 4)  # [B, N, 4]
        mask = torch.arange(n, device=tokens.device)[None] < n_points[:, None]
        points = tok.dequantize(rows[..., :3].clamp(0, tok.levels - 1)) * mask[..., None]
        binding = (rows[..., 3] - tok.levels).clamp(min=0) * mask
        return points, binding, mask, n_points

    @torch.no_grad()
    def _teacher_forced(self, condition: Tensor, means: Tensor, binding: Tensor,
                        mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Tokenise clouds (sorted, deduplicated), run the frozen generator over them -> points, binding, mask,
        n_points and features ``[B, N, 4, D]``."""
        tokens, lengths = self.generator.teacher_tokens(means, binding, mask)
        points, bind, pmask, n_points = self._rows_to_points(tokens, lengths)
        features = self.generator.teacher_features(condition, tokens, lengths, self.feature_window,
                                                   self.sampling.keep)
        return points, bind, pmask, n_points, features

    def _template_cloud(self, shape: Tensor) -> tuple[Tensor, Tensor]:
        """The template points on each subject's neutral head: ``means [B, M, 3]``, ``binding [B, M]``."""
        face_idx = self.template_face_idx.to(shape.device)
        means = template_points(self.head_model, face_idx, self.template_bary.to(shape.device), shape)
        return means, face_idx[None].expand(shape.shape[0], -1)

    # ------------------------------------------------------------------------------------- generated-points bank
    def bank_root(self) -> Path:
        """The bank's parent folder: ``bank_dir``, else ``<logger root>/point_bank`` (the logger's ``save_dir/name``:
        the same on every rank and for every version of the experiment), else ``<default_root_dir>/point_bank``."""
        if self.hparams.bank_dir is not None:
            return Path(self.hparams.bank_dir)
        if self._trainer is None:
            raise ValueError("DecoderModule: points: generated_bank outside a Trainer needs model.bank_dir (the "
                             "folder of the generated-points bank)")
        logger = self.trainer.logger
        root = getattr(logger, "root_dir", None) if logger is not None else None
        return Path(root or self.trainer.default_root_dir) / "point_bank"

    @property
    def point_bank(self) -> PointBank:
        """The generated-points bank of this frozen generator and sampling (made on first use; the key digests the
        generator's weights, so it is computed once)."""
        if self._bank is None:
            hp = self.hparams
            extra = {"tokenizer": dict(hp.generator_hparams.get("tokenizer") or {}),
                     "head_model": self.head_model.name}
            key, meta = bank_key(state_digest(self.generator.state_dict()), self.sampling, hp.bank_seed,
                                 hp.bank_samples, extra)
            self._bank = PointBank(self.bank_root(), key, meta, hp.bank_samples)
        return self._bank

    @torch.no_grad()
    def bank_entries(self, subjects: list[str], portrait: Tensor, portrait_head: HeadParams,
                     shape: Tensor) -> list[BankEntry]:
        """The bank's clouds of ``subjects`` (portraits ``[B, 3, H, W]``, their head parameters ``[B]``, identities
        ``[B, S]``); subjects not in the bank yet are sampled now (``bank_samples`` clouds each in one call, cloud
        ``k`` seeded by ``subject_seed(bank_seed, subject) + k``: what :meth:`fill_bank` stores) and stored. A new
        subject's condition is encoded alone: the mesh condition's eval-mode surface sampling draws ``[B, n]`` points
        from one seeded generator, so a subject's condition (and clouds) would otherwise depend on its batch-mates."""
        bank = self.point_bank
        seed = self.hparams.bank_seed

        def build(i: int, subject: str) -> BankEntry:
            one = slice(i, i + 1)
            condition = self.encode_condition(portrait[one], portrait_head.map(lambda t: t[one]))
            return sample_entries(self.generator, condition, shape[one], self.sampling, bank.samples,
                                  [subject_seed(seed, subject)])[0]

        return bank.get(subjects, build)

    @torch.no_grad()
    def fill_bank(self, samples: Iterable[Any], total: int | None = None, rank: int = 0, world_size: int = 1) -> int:
        """Sample the bank's clouds of every subject in ``samples`` (decoded shard samples: ``meta``, ``portrait``,
        ``portrait_head``, ``head``) that it lacks, ``bank_fill_batch`` subjects per batched call; subject ``i`` is
        this rank's when ``i % world_size == rank``. Returns how many subjects this rank sampled."""
        from tqdm import tqdm

        bank, device = self.point_bank, self.template_bary.device
        seed = self.hparams.bank_seed
        batch_size = max(int(self.hparams.bank_fill_batch), 1)
        bar = tqdm(total=total, desc="point bank", unit="subject", disable=rank != 0)
        todo: list[Any] = []
        done = 0

        def flush() -> None:
            nonlocal done
            if not todo:
                return
            conditions, shapes = [], []
            for sample in todo:  # each condition alone (see bank_entries)
                portrait = torch.from_numpy(sample.portrait.copy()).permute(2, 0, 1)[None].float().div(255)
                head = HeadParams.from_dict({k: torch.as_tensor(v)[None] for k, v in sample.portrait_head.items()})
                conditions.append(self.encode_condition(portrait.to(device), head.to(device)))
                shapes.append(torch.as_tensor(sample.head["shape"], dtype=torch.float32)[None])
            subjects = [sample.meta["subject"] for sample in todo]
            entries = sample_entries(self.generator, torch.cat(conditions), torch.cat(shapes).to(device),
                                     self.sampling, bank.samples, [subject_seed(seed, s) for s in subjects])
            for subject, entry in zip(subjects, entries):
                bank.put(subject, entry)
            done += len(todo)
            todo.clear()

        for i, sample in enumerate(samples):
            bar.update(1)
            if i % world_size != rank or not bank.missing([sample.meta["subject"]]):
                continue
            todo.append(sample)
            if len(todo) == batch_size:
                flush()
        flush()
        bar.close()
        return done

    def on_fit_start(self) -> None:
        if self.points_source != "generated_bank" or self.hparams.bank_fill_batch <= 0:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "shards"):
            return  # no shard list to walk: subjects are sampled as batches first need them
        from avp.data.reader import count_samples, iter_raw_samples
        from avp.data.schema import decode_sample

        refs = datamodule.shards("train")
        samples = (decode_sample(raw, shard=ref.name, decode_frames=False) for ref in refs
                   for raw in iter_raw_samples(ref))
        self.fill_bank(samples, total=sum(count_samples(ref) for ref in refs), rank=self.global_rank,
                       world_size=self.trainer.world_size)
        self.trainer.strategy.barrier("point_bank")  # every rank, unconditionally: the bank is complete after it

    @torch.no_grad()
    def prepare_bank(self, batch: AvatarBatch, use_teacher: Tensor | None = None,
                     draw: Tensor | None = None) -> PointInputs:
        """:meth:`prepare` with the bank's clouds of the batch's subjects (``points: generated_bank``).

        Features are the frozen generator's teacher-forced hidden states of the stored tokens (what sampling
        computed for them). ``use_teacher [B]`` bool: rows that take the teacher cloud instead (default: each with
        probability ``points_mix``); ``draw [B]`` long: which of the ``bank_samples`` clouds each row takes
        (default: uniform). Both defaults draw from the global RNG (seeded by ``seed_everything``).
        """
        shape = batch.head.shape[:, 0] if batch.head.shape.ndim == 3 else batch.head.shape
        portrait = batch.portrait
        device, B = portrait.device, portrait.shape[0]
        condition = self.encode_condition(portrait, batch.portrait_head)
        entries = self.bank_entries(list(batch.subject), portrait, batch.portrait_head, shape)
        if use_teacher is None:  # (no draw when there is nothing to choose: the global RNG stream is left alone)
            use_teacher = torch.rand(B) < self.points_mix if self.points_mix > 0 else torch.zeros(B, dtype=torch.bool)
        if draw is None:
            K = self.point_bank.samples
            draw = torch.randint(K, (B,)) if K > 1 else torch.zeros(B, dtype=torch.long)
        tok = self.tokenizer
        teacher_mask = batch.teacher.valid_mask()
        seqs, finished = [], []
        for i, entry in enumerate(entries):
            if bool(use_teacher[i]):
                t, n = self.generator.teacher_tokens(batch.teacher.means[i : i + 1], batch.binding[i : i + 1],
                                                     teacher_mask[i : i + 1])
                seqs.append(t[0, : int(n[0])])
                finished.append(True)
            else:
                k = int(draw[i])
                # EOS closes clouds that stopped at max_points too: causal, so no point's features see it
                seqs.append(torch.cat([entry.body(k).to(device), torch.tensor([tok.eos_id], device=device)]))
                finished.append(bool(entry.finished[k]))
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
        tokens = torch.full((B, int(lengths.max())), tok.pad_id, dtype=torch.long, device=device)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
        pts, bind, mask, n_points = self._rows_to_points(tokens, lengths)
        features = self.generator.teacher_features(condition, tokens, lengths, self.feature_window,
                                                   self.sampling.keep)
        pts = pts.float()
        rig = self.head_model.rig(bind, pts, shape.to(pts.dtype))
        pixel = self._pixel_features(portrait, batch.portrait_head, batch.extras.get("portrait_cameras"), rig, mask)
        return PointInputs(points=pts, binding=bind, mask=mask, n_points=n_points, features=features,
                           condition=condition, finished=torch.tensor(finished, device=device), rig=rig, pixel=pixel)

    @torch.no_grad()
    def encode_condition(self, portrait: Tensor, portrait_head: HeadParams) -> Tensor:
        """Condition tokens ``[B, C, D]`` of the frozen generator (portrait ``[B, 3, H, W]`` + its head fit)."""
        return self.generator.encode_condition(portrait, portrait_head)

    @torch.no_grad()
    def prepare(self, portrait: Tensor, portrait_head: HeadParams, *, points: PointSource = "generated",
                teacher_means: Tensor | None = None, teacher_binding: Tensor | None = None,
                teacher_mask: Tensor | None = None, shape: Tensor | None = None,
                sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                on_step: Callable[[int, int], None] | None = None,
                portrait_camera: Cameras | None = None) -> PointInputs:
        """Everything the decoder consumes, from the frozen parts (no gradients): points, their hidden states, the
        condition tokens and the rig.

        Args:
            portrait: ``[B, 3, H, W]`` in 0..1; portrait_head: its head parameters ``[B]``.
            points: ``generated`` (sampled from the portrait), ``teacher`` (needs ``teacher_means [B, N, 3]``,
                ``teacher_binding [B, N]``, optional ``teacher_mask [B, N]``) or ``template``.
            shape: ``[B, S]`` the subject's identity for the rig and template points (default: the portrait's).
            sampling: overrides of :attr:`sampling` for ``generated`` (its window is the feature window).
            generator: RNG of the sampling (on the portrait's device).
            on_step: progress of the sampling, ``on_step(position, max_position)`` (see :func:`avp.sampling.sample`).
            portrait_camera: the portrait's camera (``Ks [B, 1, 3, 3]`` or ``[B, 3, 3]``); required when the decoder's
                ``appearance`` is ``pixel``.
        """
        if points not in POINT_SOURCES:
            raise ValueError(f"DecoderModule: points must be one of {POINT_SOURCES}, got {points!r}")
        shape = portrait_head.shape if shape is None else shape
        condition = self.encode_condition(portrait, portrait_head)
        B = portrait.shape[0]
        finished = torch.ones(B, dtype=torch.bool, device=portrait.device)
        if points == "generated":
            cfg = self.sampling if sampling is None else dataclasses.replace(sampling, window=self.feature_window)
            out = self.generator.sample(condition, cfg, generator, on_step, shape=shape)
            pts, bind, mask, n_points = out.points, out.binding, out.mask, out.n_points
            features, finished = out.point_hidden, out.finished
        else:
            if points == "teacher":
                if teacher_means is None or teacher_binding is None:
                    raise ValueError("DecoderModule: points='teacher' needs teacher_means and teacher_binding")
                means, binding, tmask = teacher_means, teacher_binding, teacher_mask
            else:
                means, binding = self._template_cloud(shape)
                tmask = None
            pts, bind, mask, n_points, features = self._teacher_forced(condition, means, binding, tmask)
        if int(n_points.min()) < 1:
            raise ValueError("DecoderModule: a sample has no points (the generator emitted EOS at once); raise "
                             "sampling.min_points")
        pts = pts.float()
        rig = self.head_model.rig(bind, pts, shape.to(pts.dtype))
        pixel = self._pixel_features(portrait, portrait_head, portrait_camera, rig, mask)
        return PointInputs(points=pts, binding=bind, mask=mask, n_points=n_points, features=features,
                           condition=condition, finished=finished, rig=rig, pixel=pixel)

    def _pixel_features(self, portrait: Tensor, portrait_head: HeadParams, portrait_camera: Cameras | None,
                        rig: PointRig, mask: Tensor) -> Tensor | None:
        """The portrait's colours at the points posed as in the portrait (``appearance: pixel``), else None."""
        config = self.decoder.config
        if config.appearance != "pixel":
            return None
        if portrait_camera is None:
            raise ValueError("DecoderModule: decoder.appearance 'pixel' needs the portrait's camera (portrait_camera); "
                             "shards carry it in portrait_camera.npz, a photo gets it from its head fit")
        B = portrait.shape[0]
        head = portrait_head.map(lambda t: t[:, None].to(rig.points.dtype))  # [B, 1]: one frame, the portrait's
        posed = rig.deform(head, mode=self.animation).means[:, 0]  # [B, N, 3]
        Ks = portrait_camera.Ks.reshape(B, 3, 3).to(posed)
        viewmats = portrait_camera.viewmats.reshape(B, 4, 4).to(posed)
        return pixel_features(portrait, posed, mask, Ks, viewmats, levels=config.pixel_levels)

    def decode_prepared(self, inputs: PointInputs) -> tuple[DecoderOutput, DecodedAvatar]:
        """The decoder on prepared inputs (gradients flow into the decoder only)."""
        dec = self.decoder(inputs.points, inputs.features.to(inputs.points.dtype), inputs.mask, inputs.condition,
                           inputs.pixel)
        avatar = DecodedAvatar(cloud=dec.cloud, binding=inputs.binding, rig=inputs.rig, points=inputs.points,
                               offsets=dec.offsets, n_points=inputs.n_points, finished=inputs.finished)
        return dec, avatar

    def decode(self, portrait: Tensor, portrait_head: HeadParams, **kwargs: Any) -> tuple[DecoderOutput,
                                                                                              DecodedAvatar]:
        """Points -> canonical Gaussians and their rig: :meth:`prepare` (same arguments) then
        :meth:`decode_prepared`."""
        return self.decode_prepared(self.prepare(portrait, portrait_head, **kwargs))

    def prepare_batch(self, batch: AvatarBatch, points: TrainPointSource,
                      generator: torch.Generator | None = None) -> PointInputs:
        """:meth:`prepare` for an :class:`AvatarBatch` (the subject's shape from ``batch.head``); ``generated_bank``:
        :meth:`prepare_bank`."""
        if points == "generated_bank":
            return self.prepare_bank(batch)
        shape = batch.head.shape[:, 0] if batch.head.shape.ndim == 3 else batch.head.shape
        return self.prepare(batch.portrait, batch.portrait_head, points=points, teacher_means=batch.teacher.means,
                            teacher_binding=batch.binding, teacher_mask=batch.teacher.valid_mask(), shape=shape,
                            generator=generator, portrait_camera=batch.extras.get("portrait_cameras"))

    def decode_batch(self, batch: AvatarBatch, points: PointSource,
                     generator: torch.Generator | None = None) -> tuple[DecoderOutput, DecodedAvatar]:
        """:meth:`decode` of an :class:`AvatarBatch`."""
        return self.decode_prepared(self.prepare_batch(batch, points, generator))

    # ------------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def avatarize(self, portrait: Tensor, portrait_head: HeadParams, *, points: PointSource = "generated",
                  sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                  shape: Tensor | None = None) -> DecodedAvatar:
        """Portrait -> animatable avatar: canonical Gaussians, their binding and the :class:`PointRig`.

        Args:
            portrait: ``[B, 3, H, W]`` in 0..1.
            portrait_head: ``[B]`` head parameters estimated for the portrait (its ``shape`` is the identity).
            points: ``generated`` (the method) or ``template`` (the fixed-surface baseline).
            sampling: temperature / top-k / top-p / max_points (default: the module's ``sampling``).
            generator: seeded RNG on the portrait's device for reproducible sampling.
            shape: ``[B, S]`` identity to bind to (default ``portrait_head.shape``).

        Animate with ``avp.head.animate_gaussians(avatar.rig, avatar.cloud, params [B, T], mode=self.animation)``.
        """
        if points == "teacher":
            raise ValueError("DecoderModule.avatarize: points='teacher' needs a teacher cloud; use decode_batch")
        was_training = self.training
        self.eval()
        try:
            _, avatar = self.decode(portrait, portrait_head, points=points, sampling=sampling, generator=generator,
                                    shape=shape)
        finally:
            self.train(was_training)
        return avatar

    def render_frames(self, avatar: DecodedAvatar, head: HeadParams, cameras: Cameras,
                      background: Tensor | float | None = None) -> Tensor:
        """Animate ``avatar`` to ``head [B, T]`` and render every frame from ``cameras`` (``Ks [B, V, 3, 3]``).

        ``background``: ``[B, 3]`` per avatar, ``[3]``, a float or None (black). Runs in float32 outside autocast
        (the renderer and the skinning need it). Returns ``rgb [B, T, V, 3, H, W]``.
        """
        device = avatar.points.device
        with torch.autocast(device_type=device.type, enabled=False):
            cloud = avatar.cloud.map(lambda t: t.float() if t.is_floating_point() else t)
            head = head.map(lambda t: t.float())
            B, T = head.global_rot.shape[:2]
            posed = animate_gaussians(avatar.rig, cloud, head, mode=self.animation)  # [B * T, N]
            V = cameras.Ks.shape[-3]
            Ks, viewmats = cameras.Ks.float(), cameras.viewmats.float()
            if Ks.ndim == 3:
                Ks, viewmats = Ks.expand(B, V, 3, 3), viewmats.expand(B, V, 4, 4)
            rep = lambda x: x[:, None].expand(B, T, *x.shape[1:]).flatten(0, 1)
            cams = Cameras(Ks=rep(Ks), viewmats=rep(viewmats), width=cameras.width, height=cameras.height)
            bg = background
            if isinstance(background, Tensor):
                if background.shape not in ((3,), (B, 3)):
                    raise ValueError(f"render_frames: background must be [3] or [B, 3] = [{B}, 3], got "
                                     f"{tuple(background.shape)}")
                bg = rep(background.float().to(device).expand(B, 3))[:, None].expand(B * T, V, 3)
            out = render(posed, cams, background=bg, backend=self.render_backend)
        return out.rgb.unflatten(0, (B, T))  # [B, T, V, 3, H, W]

    # ------------------------------------------------------------------------------------------------ training
    def loss_step(self, batch: AvatarBatch, points: PointSource, generator: torch.Generator | None = None,
                  prepared: PointInputs | None = None) -> tuple[LossTerms, Tensor, Tensor, DecodedAvatar]:
        """Decode, animate, render and score one batch -> (loss terms, renders and targets ``[B, T, V, 3, H, W]``,
        the decoded avatars). ``prepared``: :meth:`prepare_batch` of this batch, reused (e.g. when overfitting)."""
        if batch.images.numel() == 0:
            raise ValueError("DecoderModule: the batch has no target frames; set data.frames_per_sample and "
                             "data.views_per_sample >= 1")
        if prepared is None:
            prepared = self.prepare_batch(batch, points, generator)
        dec, avatar = self.decode_prepared(prepared)
        rgb = self.render_frames(avatar, batch.head, batch.cameras, batch.extras.get("background"))
        target = batch.images.to(rgb.dtype)
        with torch.autocast(device_type=rgb.device.type, enabled=False):
            terms = total_loss(rgb.flatten(0, 2), target.flatten(0, 2), dec.offsets.float(),
                               dec.cloud.scales.float(), dec.cloud.mask, self.loss_weights, self.reg_config,
                               self.lpips_module(rgb))
        return terms, rgb, target, avatar

    def _log_terms(self, stage: str, terms: LossTerms, batch_size: int) -> None:
        for name, value in terms.as_dict().items():
            if name == "loss_lpips" and self.loss_weights.lpips <= 0:
                continue  # not computed: no number rather than a misleading 0
            self.log(f"{stage}/{name}", value.detach(), prog_bar=name == "loss", batch_size=batch_size,
                     sync_dist=stage != "train")

    def _keep_visuals(self, stage: str, rgb: Tensor, target: Tensor) -> None:
        r, t = rgb[0, 0].detach().float().clamp(0, 1), target[0, 0].detach().float()  # [V, 3, H, W]
        error = (r - t).abs().mean(1, keepdim=True).expand_as(r)
        self.last_visuals[stage] = torch.stack([t, r, error], dim=1).cpu()  # [V, 3 panels, 3, H, W]

    def training_step(self, batch: AvatarBatch, batch_idx: int) -> Tensor:
        terms, rgb, target, avatar = self.loss_step(batch, self.points_source)
        B = batch.batch_size
        self._log_terms("train", terms, B)
        self.log("train/points", avatar.n_points.float().mean(), batch_size=B)
        self.log("train/opacity", avatar.cloud.opacities[avatar.cloud.valid_mask()].float().mean().detach(),
                 batch_size=B)
        self._keep_visuals("train", rgb, target)
        return terms.total

    def on_validation_epoch_start(self) -> None:
        self.last_visuals.pop("val", None)

    def _stage_metrics(self, stage: str) -> dict[str, nn.Module]:
        names = ("psnr", "ssim", "lpips") + (("psnr_masked", "ssim_masked") if stage == "test" else ())
        return {name: getattr(self, f"{stage}_{name}") for name in names}

    def _evaluation_step(self, stage: str, batch: AvatarBatch, batch_idx: int) -> None:
        """Validation and test: ``eval_points`` (``generated`` = the full pipeline, sampled with a per-batch seed)."""
        generator = None
        if self.eval_points_source == "generated":
            generator = torch.Generator(device=batch.portrait.device).manual_seed(self.hparams.seed + batch_idx)
        terms, rgb, target, avatar = self.loss_step(batch, self.eval_points_source, generator)
        B = batch.batch_size
        self._log_terms(stage, terms, B)
        pred, tgt = rgb.flatten(0, 2).float().clamp(0, 1), target.flatten(0, 2).float()
        for name, metric in self._stage_metrics(stage).items():
            if name.endswith("_masked"):
                if batch.masks is not None:
                    metric.update(pred, tgt, batch.masks.flatten(0, 2).to(pred))
            else:
                metric.update(pred, tgt)
        if stage == "test":
            self.log("test/points", avatar.n_points.float().mean(), batch_size=B)
        if stage not in self.last_visuals:
            self._keep_visuals(stage, rgb, target)

    def _evaluation_epoch_end(self, stage: str) -> None:
        metrics = self._stage_metrics(stage)
        # compute() syncs over ranks (a collective): whether a metric saw images is decided over all ranks, never per
        # rank (shards where only some clips carry masks would otherwise leave one rank waiting in compute)
        seen = torch.tensor([float(m.update_count) for m in metrics.values()], device=self.device)
        if self._trainer is not None:
            seen = self.trainer.strategy.reduce(seen, reduce_op="sum")
        for (name, metric), count in zip(metrics.items(), seen.tolist()):
            if count == 0:
                continue  # e.g. masked metrics on shards without masks
            value = metric.compute()
            metric.reset()
            if isinstance(value, Unavailable):
                continue  # e.g. LPIPS without pretrained weights: no number at all
            self.log(f"{stage}/{name}", value, sync_dist=False)

    def validation_step(self, batch: AvatarBatch, batch_idx: int) -> None:
        self._evaluation_step("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.last_visuals.pop("test", None)

    def test_step(self, batch: AvatarBatch, batch_idx: int) -> None:
        """``avp test``: the loss terms and image metrics on the DataModule's test split (frames and views drawn per
        clip); the versioned evaluation protocol with identity/landmark metrics is ``avp eval``."""
        self._evaluation_step("test", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    def predict_step(self, batch: AvatarBatch, batch_idx: int) -> list[Any]:
        """``avp predict``: one avatar per subject of the predict split from its portrait, on ``eval_points`` when set,
        else on ``generated`` points (as ``avp avatarize``), sampled per subject with ``seed`` ->
        :class:`avp.lit.predict.PredictedAvatar`; :class:`avp.lit.predict.PredictionWriter` writes the exports of
        ``avp avatarize`` (``avatar/``, GaussianAvatars ``point_cloud.ply`` + ``flame_param.npz``, world-space ply)."""
        from avp.lit.predict import decoder_predictions

        return decoder_predictions(self, batch)

    # --------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        return adamw_warmup_cosine(self.decoder.named_parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                                   betas=hp.betas, warmup_steps=hp.warmup_steps, min_lr_ratio=hp.min_lr_ratio,
                                   total_steps=total)

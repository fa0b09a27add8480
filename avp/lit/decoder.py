"""``DecoderModule``: trains the conditioned Gaussian decoder (stage 2) with the AR generator frozen: the Lightning
glue (losses, logging, metrics, the generated-points bank's folder, optimiser) around the pure stage-2 model
:class:`~avp.models.avatar.AvatarModel` (``self.model``), which holds the networks and the maths.

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
teacher cloud, the paper's training), ``generated`` (sampled by :mod:`avp.models.sampling` from the portrait, features
from the same forward: the full pipeline), ``template`` (a fixed set of points on the subject's neutral head-model
surface, the paper's "FLAME position" ablation; they go through the generator teacher-forced like teacher points,
so only their positions differ). For training only, ``generated_bank`` trains on what ``generated`` tests: clouds
sampled once per training subject from the frozen generator and cached on disk next to the run
(:class:`~avp.point_bank.PointBank`, keyed by the generator's weights and the sampling settings), their features
recomputed teacher-forced from the stored tokens; ``points_mix`` replaces each sample's bank cloud by its teacher
cloud with that probability.

Checkpoints are self-contained: the frozen generator's weights are part of this module's state (``model.``) and its
hyper-parameters are stored under ``generator_hparams``, so neither ``load_from_checkpoint`` nor
:func:`avp.checkpoints.load_avatar_model` (which rebuilds the model without Lightning) needs the generator file.
LPIPS (loss and ``val/lpips``) uses only real pretrained weights (:func:`avp.metrics.lpips.load_lpips`); a non-zero
LPIPS weight without them is refused when fitting starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor, nn

from avp.checkpoints import build_avatar_model, upgrade_decoder_state
from avp.head import HeadConfig
from avp.lit.optim import adamw_warmup_cosine
from avp.lit.ranks import seed_rank, transfer_batch
from avp.losses import LossTerms, LossWeights, RegConfig, total_loss
from avp.metrics.image import PSNR, SSIM
from avp.metrics.lpips import LPIPS, load_lpips
from avp.metrics.unavailable import Unavailable
from avp.models.avatar import ANIMATION_MODES, POINT_SOURCES, PointInputs, PointSource
from avp.models.decoder import DecoderConfig, DecoderOutput
from avp.models.sampling import SamplingConfig
from avp.point_bank import PointBank, bank_entries, bank_inputs, bank_key, fill_bank, state_digest
from avp.types import AvatarBatch, as_config

TrainPointSource = Literal["teacher", "generated", "template", "generated_bank"]
TRAIN_POINT_SOURCES = (*POINT_SOURCES, "generated_bank")
"""``generated_bank``: clouds sampled once per training subject from the frozen generator and cached on disk
(:mod:`avp.point_bank`), training only."""


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
        ema_decay: an exponential moving average of the weights with this decay per step (Lightning's
            ``EMAWeightAveraging``), used for validation and written to the checkpoints' ``state_dict`` (the raw
            weights go to ``current_model_state``, so a resumed fit continues both); 0 trains without one. At the
            benchmark's 450 steps a decay of 0.99 lowered every row (the decoders still improve fast there, so the
            average lags: docs/benchmark/EXPERIMENTS.md exp23); it is meant for longer runs.
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
        ema_decay: float = 0.0,
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
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"DecoderModule: ema_decay must be in [0, 1) (0: no average), got {ema_decay}")
        if min(loss_cfg.l1, loss_cfg.ssim, loss_cfg.lpips, loss_cfg.reg) < 0:
            raise ValueError(f"DecoderModule: loss weights must be >= 0, got {loss_cfg}")


        # ---- the pure stage-2 model: the frozen generator (from generator_ckpt, or from generator_hparams in a
        # checkpoint of this module), the decoder, the template and the rig
        self.save_hyperparameters()  # every __init__ argument, as given (configs are stored as dicts below)
        self.model, gen_hp = build_avatar_model(self.hparams, generator_ckpt=generator_ckpt, head=head_cfg)
        self.loss_weights, self.reg_config = loss_cfg, reg_cfg
        self.points_source: str = points
        self.eval_points_source: str = eval_points or ("generated" if points == "generated_bank" else points)
        self.points_mix = float(points_mix)
        self._bank: PointBank | None = None  # built on first use (needs the trainer's folders)

        # ---- LPIPS: the loss's network is loaded when fitting starts; the metric reports itself unavailable
        self._lpips: list[nn.Module] = []  # outside the module tree: never in checkpoints
        self.val_psnr, self.val_ssim = PSNR(), SSIM()
        self.val_lpips = LPIPS(lpips_net, lpips_weights_path)
        self.test_psnr, self.test_ssim = PSNR(), SSIM()
        self.test_psnr_masked, self.test_ssim_masked = PSNR(masked=True), SSIM(masked=True)
        self.test_lpips = LPIPS(lpips_net, lpips_weights_path)
        self.last_visuals: dict[str, Tensor] = {}
        """``{"train": [V, 3, 3, H, W], "val": …}``: target, render, error of the first sample's first frame of the
        latest step, detached, on the module's device (:class:`avp.lit.image_logging.DecoderImageLogger` copies them
        to the CPU on rank 0 when it logs them; no step pays a device sync for a preview nobody logs)."""

        # checkpoints hold plain dicts (loadable with weights_only) and the generator's hyper-parameters, so they
        # rebuild without generator_ckpt; ``_class_path`` lets LightningCLI rebuild the module from ``--ckpt_path``
        # alone (load_from_checkpoint drops it)
        configs = {"decoder": dec_cfg, "loss": loss_cfg, "reg": reg_cfg, "head": head_cfg, "sampling": sampling_cfg}
        self.save_hyperparameters({
            **{name: None if config is None else dataclasses.asdict(config) for name, config in configs.items()},
            "generator_hparams": gen_hp, "_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
        })

    def configure_callbacks(self) -> list[Callback]:
        if self.hparams.ema_decay <= 0:
            return []
        return [EMAWeightAveraging(decay=self.hparams.ema_decay, use_buffers=False)]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = upgrade_decoder_state(checkpoint["state_dict"])  # older layouts load too

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        shards_head = getattr(datamodule, "head_model_name", None)
        if shards_head is not None and shards_head != self.model.head_model.name:
            raise ValueError(f"DecoderModule: the shards were written for head model {shards_head!r} but the "
                             f"generator and decoder use {self.model.head_model.name!r}; train on data of the same "
                             "head model")
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
                     "head_model": self.model.head_model.name}
            key, meta = bank_key(state_digest(self.model.generator.state_dict()), self.model.sampling, hp.bank_seed,
                                 hp.bank_samples, extra)
            self._bank = PointBank(self.bank_root(), key, meta, hp.bank_samples)
        return self._bank

    def fill_bank(self, samples: Iterable[Any], total: int | None = None, rank: int = 0, world_size: int = 1) -> int:
        """:func:`avp.point_bank.fill_bank` of this module's bank (``bank_seed``, ``bank_fill_batch`` subjects per
        call) -> how many subjects this rank sampled."""
        return fill_bank(self.model, self.point_bank, self.hparams.bank_seed, samples, self.hparams.bank_fill_batch,
                         total=total, rank=rank, world_size=world_size)

    def on_fit_start(self) -> None:
        seed_rank(self.global_rank)  # training draws differ per rank, deterministic (avp.lit.ranks)
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
        """The model's inputs on the bank's clouds of the batch's subjects (``points: generated_bank``; see
        :func:`avp.point_bank.bank_inputs`).

        ``use_teacher [B]`` bool: rows that take the teacher cloud instead (default: each with probability
        ``points_mix``); ``draw [B]`` long: which of the ``bank_samples`` clouds each row takes (default: uniform).
        Both defaults draw from the global RNG (seeded by ``seed_everything``, reseeded per rank when fitting starts:
        :mod:`avp.lit.ranks`).
        """
        B = batch.batch_size
        condition = self.model.encode_condition(batch.portrait, batch.portrait_head, batch.static_offset,
                                                batch.portrait_camera)
        entries = bank_entries(self.model, self.point_bank, self.hparams.bank_seed, list(batch.subject),
                               batch.portrait, batch.portrait_head, batch.head.shape, batch.static_offset,
                               batch.portrait_camera)
        if use_teacher is None:  # (no draw when there is nothing to choose: the global RNG stream is left alone)
            use_teacher = torch.rand(B) < self.points_mix if self.points_mix > 0 else torch.zeros(B, dtype=torch.bool)
        if draw is None:
            K = self.point_bank.samples
            draw = torch.randint(K, (B,)) if K > 1 else torch.zeros(B, dtype=torch.long)
        return bank_inputs(self.model, batch, condition, entries, use_teacher, draw)

    def prepare_batch(self, batch: AvatarBatch, points: TrainPointSource,
                      generator: torch.Generator | None = None) -> PointInputs:
        """:meth:`AvatarModel.prepare <avp.models.avatar.AvatarModel.prepare>` for an :class:`AvatarBatch` (the
        subject's shape from ``batch.head``); ``generated_bank``: :meth:`prepare_bank`."""
        if points == "generated_bank":
            return self.prepare_bank(batch)
        return self.model.prepare_batch(batch, points, generator=generator)

    # ------------------------------------------------------------------------------------------------ training
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return transfer_batch(batch, device)  # non_blocking: pinned batches copy asynchronously

    def loss_step(self, batch: AvatarBatch, points: TrainPointSource, generator: torch.Generator | None = None,
                  prepared: PointInputs | None = None) -> tuple[LossTerms, Tensor, Tensor, DecoderOutput]:
        """Decode, animate, render and score one batch -> (loss terms, renders and targets ``[B, T, V, 3, H, W]``,
        the decoder's output). ``prepared``: :meth:`prepare_batch` of this batch, reused (e.g. when overfitting)."""
        if batch.images.numel() == 0:
            raise ValueError("DecoderModule: the batch has no target frames; set data.frames_per_sample and "
                             "data.views_per_sample >= 1")
        if prepared is None:
            prepared = self.prepare_batch(batch, points, generator)
        dec = self.model.decode(prepared)
        rgb = self.model.render_batch(dec.cloud, prepared.rig, batch.head, batch.cameras, batch.background)
        target = batch.images.to(rgb.dtype)
        with torch.autocast(device_type=rgb.device.type, enabled=False):
            terms = total_loss(rgb.flatten(0, 2), target.flatten(0, 2), dec.offsets.float(),
                               dec.cloud.scales.float(), dec.cloud.mask, self.loss_weights, self.reg_config,
                               self.lpips_module(rgb))
        return terms, rgb, target, dec

    def _log_terms(self, stage: str, terms: LossTerms, batch_size: int) -> None:
        for name, value in terms.as_dict().items():
            if name == "loss_lpips" and self.loss_weights.lpips <= 0:
                continue  # not computed: no number rather than a misleading 0
            self.log(f"{stage}/{name}", value.detach(), prog_bar=name == "loss", batch_size=batch_size,
                     sync_dist=stage != "train")

    def _keep_visuals(self, stage: str, rgb: Tensor, target: Tensor) -> None:
        r, t = rgb[0, 0].detach().float().clamp(0, 1), target[0, 0].detach().float()  # [V, 3, H, W]
        error = (r - t).abs().mean(1, keepdim=True).expand_as(r)
        self.last_visuals[stage] = torch.stack([t, r, error], dim=1)  # [V, 3 panels, 3, H, W], on the device

    def training_step(self, batch: AvatarBatch, batch_idx: int) -> Tensor:
        terms, rgb, target, dec = self.loss_step(batch, self.points_source)
        B = batch.batch_size
        self._log_terms("train", terms, B)
        self.log("train/points", dec.cloud.valid_mask().sum(1).float().mean(), batch_size=B)
        self.log("train/opacity", dec.cloud.opacities[dec.cloud.valid_mask()].float().mean().detach(), batch_size=B)
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
        terms, rgb, target, dec = self.loss_step(batch, self.eval_points_source, generator)
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
            self.log("test/points", dec.cloud.valid_mask().sum(1).float().mean(), batch_size=B)
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
        return adamw_warmup_cosine(self.model.decoder.named_parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                                   betas=hp.betas, warmup_steps=hp.warmup_steps, min_lr_ratio=hp.min_lr_ratio,
                                   total_steps=total)

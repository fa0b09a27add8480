"""``GeneratorModule``: trains the autoregressive point generator (stage 1) with next-token cross-entropy.

Training cuts every teacher sequence into one random window of ``train_window`` input tokens (the paper: 12,000)
starting at BOS or at a point boundary, with the condition always attached and the window's absolute positions
(:func:`avp.models.generator.training_windows`); sequences that fit are trained whole. Windows and the mesh
encoder's surface samples come from the global RNG, which fitting reseeds per DDP rank from ``(seed, rank)``
(:mod:`avp.lit.ranks`), so ranks draw different windows, reproducibly. Validation computes the
teacher-forced loss and per-role accuracy with exactly the contexts sampling uses
(:func:`avp.models.sampling.context_windows`), and every ``val_sample_every_n_epochs`` epochs samples clouds for the
first ``val_sample_subjects`` validation subjects and logs Chamfer distance, F-score@tau, point-count ratio and binding
agreement against the teacher, plus a picture of generated vs teacher points.

Checkpoints carry the head, tokenizer, condition and model configs (plain dicts, so ``load_from_checkpoint`` works
with ``weights_only`` loading) and the name of the head model; the head model itself is rebuilt from its config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from avp.head import HeadConfig, load_head_model
from avp.lit.optim import adamw_warmup_cosine
from avp.lit.ranks import seed_rank, transfer_batch
from avp.lit.tensorboard import scalar_step
from avp.metrics.point_cloud import PointCloudMetrics, batch_point_cloud_metrics
from avp.models.conditional import ConditionalPointGenerator
from avp.models.encoders import ConditionConfig
from avp.models.generator import GeneratorConfig, role_cross_entropy, role_logits, training_windows
from avp.models.geometry_probe import GeometryProbe, GeometryProbeConfig
from avp.models.sampling import SamplingConfig, context_windows
from avp.models.tokenizer import ROLE_NAMES, PointTokenizer, TokenizerConfig
from avp.types import AvatarBatch, as_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

class GeneratorModule(LightningModule):
    """Stage 1: portrait (+ head fit) -> point-cloud tokens.

    Args:
        head: head model (``flame_path: null`` = the built-in head); its faces define the binding vocabulary.
        tokenizer: quantisation levels, point order, strict box.
        condition: image / mesh condition encoders.
        model: AR Transformer size.
        train_window: input tokens per training window (paper: 12,000); also the sampling context.
        lr: AdamW peak learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay on matrices (not on biases, norms and embeddings).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps, then cosine decay to ``min_lr_ratio * lr`` at the last training step.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        val_sampling: how validation clouds are sampled (its ``window`` is replaced by ``train_window``).
        val_sample_every_n_epochs: sample validation clouds every this many epochs (0: never).
        val_sample_subjects: validation subjects sampled per such epoch (per rank).
        fscore_tau: F-score distance threshold in metres.
        geometry_probe: an auxiliary occupancy loss on the condition tokens (:mod:`avp.models.geometry_probe`;
            ``weight: 0``, off, is the paper's training).
        seed: seed of the validation sampling.
        head_model_name: the head model a checkpoint was trained with (filled in automatically; a mismatch with
            the head model built from ``head`` is an error).
    """

    def __init__(
        self,
        head: HeadConfig = HeadConfig(),  # noqa: B008 (configs are read, never mutated)
        tokenizer: TokenizerConfig = TokenizerConfig(),  # noqa: B008
        condition: ConditionConfig = ConditionConfig(),  # noqa: B008
        model: GeneratorConfig = GeneratorConfig(),  # noqa: B008
        train_window: int = 12000,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        val_sampling: SamplingConfig = SamplingConfig(),  # noqa: B008
        val_sample_every_n_epochs: int = 1,
        val_sample_subjects: int = 4,
        fscore_tau: float = 0.005,
        geometry_probe: GeometryProbeConfig = GeometryProbeConfig(),  # noqa: B008
        seed: int = 0,
        head_model_name: str | None = None,
    ):
        super().__init__()
        head_cfg = as_config(HeadConfig, head)
        tok_cfg = as_config(TokenizerConfig, tokenizer)
        cond_cfg = as_config(ConditionConfig, condition)
        model_cfg = as_config(GeneratorConfig, model)
        sampling_cfg = as_config(SamplingConfig, val_sampling)
        probe_cfg = as_config(GeometryProbeConfig, geometry_probe)
        probe_cfg.validate()
        if train_window < 8:
            raise ValueError(f"GeneratorModule: train_window must be at least 8 tokens, got {train_window}")
        head_model = load_head_model(head_cfg)
        if head_model_name is not None and head_model_name != head_model.name:
            raise ValueError(f"GeneratorModule: this checkpoint was trained with head model {head_model_name!r} but "
                             f"the head config builds {head_model.name!r}; pass the same head config (model.head)")
        self.save_hyperparameters()  # every __init__ argument, as given (normalised below)
        self.net = ConditionalPointGenerator(head_model, tok_cfg, cond_cfg, model_cfg)
        # beside the network, not in it: loaders of the generator (avp.checkpoints) read only ``net.`` weights
        self.probe = GeometryProbe(model_cfg.width, probe_cfg) if probe_cfg.weight > 0 else None
        self.probe_weight = probe_cfg.weight
        self.train_window = int(train_window)
        self.val_sampling = dataclasses.replace(sampling_cfg, window=self.train_window)
        self.val_sampling.validate()
        # checkpoints hold plain dicts (loadable with weights_only) with every config field and the head model's name
        # filled in; ``_class_path`` lets LightningCLI rebuild the module from ``--ckpt_path`` alone
        # (load_from_checkpoint drops it)
        configs = {"head": head_cfg, "tokenizer": tok_cfg, "condition": cond_cfg, "model": model_cfg,
                   "val_sampling": sampling_cfg, "geometry_probe": probe_cfg}
        self.save_hyperparameters({
            **{name: dataclasses.asdict(config) for name, config in configs.items()},
            "train_window": self.train_window, "betas": tuple(betas), "head_model_name": head_model.name,
            "_class_path": f"{type(self).__module__}.{type(self).__qualname__}",
        })
        self._val_metrics: list[PointCloudMetrics] = []
        self._val_finished: list[bool] = []
        self._val_sampled = 0
        self._val_figure_done = False

    @property
    def tokenizer(self) -> PointTokenizer:
        return self.net.tokenizer

    @property
    def head_model(self) -> torch.nn.Module:
        return self.net.head_model

    # ------------------------------------------------------------------------------------------------ checks
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        shards_head = getattr(datamodule, "head_model_name", None)
        if shards_head is not None and shards_head != self.head_model.name:
            raise ValueError(
                f"GeneratorModule: the shards were written for head model {shards_head!r} but the model uses "
                f"{self.head_model.name!r}; set model.head to the head model of the data (or rebuild the shards)")
        if stage == "fit":
            from avp.lit.config_rules import check_generator_fit

            check_generator_fit(self)  # settings that parse but make no sense to train (avp.lit.config_rules)

    def on_fit_start(self) -> None:
        seed_rank(self.global_rank)  # windows and mesh samples differ per rank, deterministic (avp.lit.ranks)

    # ----------------------------------------------------------------------------------------------- batches
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return transfer_batch(batch, device)  # non_blocking: pinned batches copy asynchronously

    def _tokens_and_condition(self, batch: AvatarBatch) -> tuple[Tensor, Tensor, Tensor]:
        teacher = batch.teacher
        tokens, lengths = self.net.teacher_tokens(teacher.means, batch.binding, teacher.valid_mask())
        condition = self.net.encode_condition(batch.portrait, batch.portrait_head, batch.static_offset,
                                            batch.portrait_camera)
        return tokens, lengths, condition

    def training_step(self, batch: AvatarBatch, batch_idx: int) -> Tensor:
        tokens, lengths, condition = self._tokens_and_condition(batch)
        inputs, targets, positions = training_windows(tokens, lengths, self.train_window, self.tokenizer.pad_id)
        transformer, tok = self.net.transformer, self.tokenizer
        seen = self.net.drop_condition(condition)  # classifier-free guidance's null condition, when trained
        if transformer.config.head == "role":  # softmax over each slot's role only, no [B, T, vocab] logits
            out = transformer(inputs, seen, positions, return_logits=False)
            loss = role_cross_entropy(out.hidden, transformer.head.weight, targets, positions, tok.levels, tok.n_faces,
                                      tok.pad_id)
        else:
            out = self.net(inputs, seen, positions)
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=tok.pad_id)
        B = tokens.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        if self.probe is not None:
            geometry = self._geometry_loss(batch, condition)
            self.log("train/geometry_loss", geometry, batch_size=B)
            loss = loss + self.probe_weight * geometry
        self.log("train/tokens", (targets != self.tokenizer.pad_id).sum().float(), batch_size=B)
        clamped = self.tokenizer.count_out_of_box(batch.teacher.means, batch.teacher.valid_mask()).sum()
        self.log("train/out_of_box_points", clamped.float(), batch_size=B, reduce_fx="sum")
        return loss

    def _geometry_loss(self, batch: AvatarBatch, condition: Tensor) -> Tensor:
        return self.probe.loss(condition, batch.teacher.means, batch.teacher.valid_mask(), self.tokenizer.bounds)

    def validation_step(self, batch: AvatarBatch, batch_idx: int) -> None:
        self._evaluation_step("val", batch, batch_idx)

    def test_step(self, batch: AvatarBatch, batch_idx: int) -> None:
        """``avp test``: the validation computations on the test split, logged as ``test/*``: teacher-forced loss and
        per-role token accuracy, and cloud metrics (Chamfer, F-score, count ratio, binding agreement, finished
        fraction) of clouds sampled with ``val_sampling`` for **every** test subject (limit them with
        ``trainer.limit_test_batches``)."""
        self._evaluation_step("test", batch, batch_idx)

    def _evaluation_step(self, stage: str, batch: AvatarBatch, batch_idx: int) -> None:
        tokens, lengths, condition = self._tokens_and_condition(batch)
        pad, eos = self.tokenizer.pad_id, self.tokenizer.eos_id
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        loss_sum = tokens.new_zeros((), dtype=torch.float32)
        hits = torch.zeros(5, device=tokens.device)
        counts = torch.zeros(5, device=tokens.device)  # x, y, z, b, eos
        transformer, tok = self.net.transformer, self.tokenizer
        for start, first, last in context_windows(inputs.shape[1], self.train_window, self.val_sampling.keep):
            if transformer.config.head == "role":  # logits per role group; accuracy = argmax within the role's set
                positions = torch.arange(start, last + 1, device=tokens.device)
                out = transformer(inputs[:, start : last + 1], condition, positions, return_logits=False)
                groups = role_logits(out.hidden[:, first - start :], transformer.head.weight,
                                     targets[:, first : last + 1], positions[first - start :], tok.levels,
                                     tok.n_faces, pad)
                group_loss, group_hits, group_counts = groups.token_stats()
                loss_sum, hits, counts = loss_sum + group_loss, hits + group_hits, counts + group_counts
                continue
            out = self.net(inputs[:, start : last + 1], condition, torch.arange(start, last + 1, device=tokens.device))
            logits = out.logits[:, first - start :].float()  # [B, T, V]
            target = targets[:, first : last + 1]
            loss_sum += F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=pad, reduction="sum")
            correct = logits.argmax(-1) == target
            role = PointTokenizer.role_of_position(torch.arange(first + 1, last + 2, device=tokens.device))
            for r in range(4):
                sel = (role == r)[None] & (target != pad) & (target != eos)
                hits[r] += (correct & sel).sum()
                counts[r] += sel.sum()
            sel = target == eos
            hits[4] += (correct & sel).sum()
            counts[4] += sel.sum()
        n_tokens = int(counts.sum())
        B = tokens.shape[0]
        if self.probe is not None:
            self.log(f"{stage}/geometry_loss", self._geometry_loss(batch, condition), batch_size=B, sync_dist=True)
        self.log(f"{stage}/loss", loss_sum / max(n_tokens, 1), batch_size=max(n_tokens, 1), sync_dist=True)
        for r, name in enumerate((*ROLE_NAMES, "eos")):  # every non-empty cloud has all five kinds of target
            self.log(f"{stage}/acc_{name}", hits[r] / counts[r].clamp(min=1), batch_size=max(int(counts[r]), 1),
                     sync_dist=True)
        if stage == "test":  # every test subject
            self._sample_and_score(batch, condition, B, batch_idx)
        elif self._sampling_epoch() and self._val_sampled < self.hparams.val_sample_subjects:
            k = min(B, self.hparams.val_sample_subjects - self._val_sampled)
            self._sample_and_score(batch, condition[:k], k, batch_idx)

    def predict_step(self, batch: AvatarBatch, batch_idx: int) -> list[Any]:
        """``avp predict``: one cloud per subject of the predict split, sampled with ``val_sampling`` and ``seed``
        (per subject: independent of batch size and ranks) -> :class:`avp.lit.predict.GeneratedCloud` (tokens,
        points, binding); :class:`avp.lit.predict.PredictionWriter` writes ``points.ply`` + ``cloud.npz``."""
        from avp.lit.predict import generator_predictions

        return generator_predictions(self, batch)

    # ------------------------------------------------------------------------------------- validation sampling
    def _sampling_epoch(self) -> bool:
        every = self.hparams.val_sample_every_n_epochs
        if every <= 0 or self._trainer is None or self.trainer.sanity_checking:
            return False
        if self.trainer.state.fn == "validate":
            return True  # `avp validate` of a checkpoint: whatever epoch it stopped at
        return (self.current_epoch + 1) % every == 0

    def _sample_and_score(self, batch: AvatarBatch, condition: Tensor, k: int, batch_idx: int) -> None:
        generator = torch.Generator(device=condition.device).manual_seed(self.hparams.seed + batch_idx)
        offset = None if batch.static_offset is None else batch.static_offset[:k]
        out = self.net.sample(condition, self.val_sampling, generator, shape=batch.portrait_head.shape[:k],
                              static_offset=offset)
        teacher = batch.teacher
        mask = teacher.valid_mask()[:k]
        metrics = batch_point_cloud_metrics(out.points, out.binding, out.mask, teacher.means[:k], batch.binding[:k],
                                            mask, self.hparams.fscore_tau)
        self._val_metrics += metrics
        self._val_finished += out.finished.tolist()
        self._val_sampled += k
        if not self._val_figure_done and self.trainer.is_global_zero:
            self._val_figure_done = True
            self._log_figure(out.points[0][out.mask[0]], teacher.means[0][mask[0]], batch.subject[0])

    def on_validation_epoch_start(self) -> None:
        self._val_metrics, self._val_finished = [], []
        self._val_sampled = 0
        self._val_figure_done = False

    def on_validation_epoch_end(self) -> None:
        if self._sampling_epoch():
            self._log_cloud_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self._log_cloud_metrics("test")

    def _log_cloud_metrics(self, stage: str) -> None:
        # sums and counts reduced over ranks (every rank calls reduce, also one that sampled nothing)
        values = {
            "chamfer": [m.chamfer for m in self._val_metrics],
            "fscore": [m.f_score for m in self._val_metrics],
            "count_ratio": [m.count_ratio for m in self._val_metrics],
            "binding_agreement": [m.binding_agreement for m in self._val_metrics],
            "finished_fraction": [float(f) for f in self._val_finished],
        }
        stats = torch.tensor([[sum(v for v in vs if not math.isnan(v)), sum(not math.isnan(v) for v in vs)]
                              for vs in values.values()], dtype=torch.float64, device=self.device)  # [K, 2]
        stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        for (name, _), (total, count) in zip(values.items(), stats.tolist()):
            if count > 0:
                self.log(f"{stage}/{name}", total / count)  # already the same on every rank

    def _log_figure(self, generated: Tensor, teacher: Tensor, subject: str) -> None:
        writers = [lg.experiment for lg in self.loggers if hasattr(lg.experiment, "add_figure")]
        if not writers:
            return
        figure = cloud_figure(generated.float().cpu(), teacher.float().cpu(), subject)
        stage = "test" if self.trainer.testing else "val"
        for writer in writers:
            # at the step of the val scalars logged with it (avp.lit.tensorboard.scalar_step), not one to the right
            writer.add_figure(f"{stage}/clouds", figure, global_step=scalar_step(self.trainer), close=False)

    # --------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        return adamw_warmup_cosine(self.named_parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=hp.betas,
                                   warmup_steps=hp.warmup_steps, min_lr_ratio=hp.min_lr_ratio, total_steps=total)


def cloud_figure(generated: Tensor, teacher: Tensor, title: str = "") -> Figure:
    """Front (x-y) and side (z-y) scatter plots of the teacher and a generated cloud (``[N, 3]`` each).

    A bare ``Figure`` (no pyplot, no GUI backend): TensorBoard renders it with Agg.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 8.6), dpi=80)
    axes = fig.subplots(2, 2)
    both = torch.cat([generated, teacher]) if generated.numel() else teacher
    # both rows of a view share limits covering both clouds: a point outside the teacher's box is drawn, not clipped
    lo, hi = both.min(0).values.numpy(), both.max(0).values.numpy()
    views = ((0, 1, "front (x, y)", "z (m)"), (2, 1, "side (z, y)", "x (m)"))
    for row, (cloud, name) in enumerate(((teacher, "teacher"), (generated, "generated"))):
        for col, (a, b, label, depth) in enumerate(views):
            ax = axes[row, col]
            if cloud.numel():
                dots = ax.scatter(cloud[:, a].numpy(), cloud[:, b].numpy(), s=1, c=cloud[:, 2 - a].numpy(),
                                  cmap="viridis", vmin=lo[2 - a], vmax=hi[2 - a])
                fig.colorbar(dots, ax=ax, shrink=0.8, label=f"colour: {depth}")
            ax.set_xlim(lo[a], hi[a])
            ax.set_ylim(lo[b], hi[b])
            ax.set_aspect("equal")
            ax.set_title(f"{name} {label}: {cloud.shape[0]} points", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{title}\nrows: teacher, generated; axes in metres, shared by both rows", fontsize=10)
    fig.tight_layout()
    return fig

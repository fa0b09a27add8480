"""``avp predict``: what each stage's predict loop makes, and :class:`PredictionWriter`, which writes it into the run.

The predict split is the DataModule's test split. Both stages predict **per subject** with the module's ``seed``
(as ``avp avatarize --seed``), so a subject's output does not depend on the batch size or the number of ranks.

- Generator (:meth:`avp.lit.generator.GeneratorModule.predict_step`): one cloud per subject sampled from its
  portrait with ``val_sampling`` (window: ``train_window``) -> :class:`GeneratedCloud`, written as::

      <out>/<subject>/points.ply   x y z (float, metres, canonical space) + binding (int: head-model face)
      <out>/<subject>/cloud.npz    tokens [L] int64 (BOS x y z b ... EOS), points [N, 3] float32 (the dequantised
                                   tokens), binding [N] int64, n_points, finished (EOS reached), seed

- Decoder (:meth:`avp.lit.decoder.DecoderModule.predict_step`): one avatar per subject from its portrait, on
  ``eval_points`` when that is set, else on ``generated`` points (the method, as ``avp avatarize``) ->
  :class:`PredictedAvatar`, written with the same exports as ``avp avatarize``::

      <out>/<subject>/avatar/                          save_avatar: avatar.json, avatar.npz, portrait.png
                                                       (avp.export.load_avatar reads it back)
      <out>/<subject>/gaussian_avatars/point_cloud.ply GaussianAvatars' face-local splats (binding_0)
      <out>/<subject>/gaussian_avatars/flame_param.npz the clip's drawn frames as GaussianAvatars motion (with the
                                                       subject's static_offset when its shard has one)
      <out>/<subject>/avatar_world.ply                 INRIA 3DGS ply in world space, rest pose
      <out>/<subject>/sibr/                            with the writer's ``sibr: true`` (as ``avp avatarize
                                                       --sibr``): the same splats as an INRIA/SIBR model folder

``<out>`` is ``<log_dir>/predictions`` (the logger's version folder, e.g. ``runs/decoder/version_3/predictions``, or
``default_root_dir`` without a logger) unless ``output_dir`` is given. ``avp predict`` installs the writer when the
config has none (:mod:`avp.cli`); a config may list it to choose ``output_dir``::

    trainer:
      callbacks:
        - class_path: avp.lit.predict.PredictionWriter
          init_args: {output_dir: out/predictions, sibr: true}

Every file is written atomically (a temporary file renamed over the target); a repeated subject (DDP pads the last
batches with wrapped-around samples) is written again with identical content.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from avp.atomic import atomic_open
from avp.lit.callbacks import local_log_dir
from avp.types import AvatarBatch, Cameras, HeadParams

if TYPE_CHECKING:
    from avp.models.avatar import Avatar

POINT_PLY_FIELDS = (("x", "f4"), ("y", "f4"), ("z", "f4"), ("binding", "i4"))
"""Properties of a generated cloud's ``points.ply`` (one ``vertex`` element)."""

SIBR_VIEW_SIZE = 512
"""Image size (pixels, square) of the views in a predicted avatar's ``sibr/cameras.json`` (``avp avatarize``'s
default ``--size``)."""


def subject_dirname(subject: str) -> str:
    """A subject id as a folder name (anything but letters, digits, ``.``, ``_``, ``-`` becomes ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(subject)).strip(".")
    return name or "subject"


def _write_npz(path: Path, arrays: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


def write_point_ply(path: str | Path, points: np.ndarray, binding: np.ndarray) -> Path:
    """A plain point cloud ``.ply`` (``x y z`` float, ``binding`` int per vertex) that point-cloud viewers open."""
    from plyfile import PlyData, PlyElement

    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    binding = np.asarray(binding).reshape(-1)
    if binding.shape[0] != points.shape[0]:
        raise ValueError(f"write_point_ply: {points.shape[0]} points but {binding.shape[0]} bindings")
    vertex = np.empty(points.shape[0], dtype=list(POINT_PLY_FIELDS))
    vertex["x"], vertex["y"], vertex["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertex["binding"] = binding.astype(np.int32)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        PlyData([PlyElement.describe(vertex, "vertex")]).write(f)
    return path


def read_point_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(points [N, 3] float32, binding [N] int64)`` of a :func:`write_point_ply` file."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    points = np.stack([np.asarray(vertex[k], dtype=np.float32) for k in ("x", "y", "z")], axis=-1)
    return points, np.asarray(vertex["binding"], dtype=np.int64)


# ------------------------------------------------------------------------------------------------ predictions
@dataclass
class GeneratedCloud:
    """The generator's prediction for one subject (CPU arrays)."""

    subject: str
    tokens: np.ndarray
    """``[L]`` int64: ``BOS x y z b … EOS`` (no EOS when sampling stopped at ``max_points``)."""
    points: np.ndarray
    """``[N, 3]`` float32 dequantised canonical points (bin centres of the tokens)."""
    binding: np.ndarray
    """``[N]`` int64 head-model face of every point."""
    finished: bool
    """True when the model emitted EOS (False: stopped at ``max_points``)."""
    seed: int

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def write(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        return [
            write_point_ply(directory / "points.ply", self.points, self.binding),
            _write_npz(directory / "cloud.npz", {
                "tokens": self.tokens.astype(np.int64), "points": self.points.astype(np.float32),
                "binding": self.binding.astype(np.int64), "n_points": np.int64(self.n_points),
                "finished": np.bool_(self.finished), "seed": np.int64(self.seed)}),
        ]


@dataclass
class PredictedAvatar:
    """The decoder's prediction for one subject: the avatar and the motion of its clip's drawn frames (CPU)."""

    subject: str
    avatar: Avatar
    motion: HeadParams
    """``[T]`` head parameters (GaussianAvatars' ``flame_param.npz``)."""

    def write(self, directory: str | Path, *, sibr: bool = False) -> list[Path]:
        """The exports of ``avp avatarize`` into ``directory``; ``sibr`` adds ``sibr/`` (its ``--sibr``: an INRIA 3DGS
        model folder of the avatar at rest, 9 views of the training framing over +-60 degrees of yaw)."""
        from avp.export.avatar import save_avatar
        from avp.export.ply import (
            to_gaussian_avatars,
            write_flame_param_npz,
            write_gaussian_avatars_ply,
            write_splat_ply,
        )

        directory = Path(directory)
        avatar = self.avatar
        head_model = avatar.head_model
        save_avatar(avatar, directory / "avatar")
        written = [directory / "avatar" / name for name in ("avatar.json", "avatar.npz", "portrait.png")
                   if (directory / "avatar" / name).is_file()]
        offset = avatar.static_offset  # [V, 3] a tracked subject's (GaussianAvatars' mesh), or None
        ga = to_gaussian_avatars(avatar.cloud, avatar.binding, head_model, avatar.shape.cpu(), static_offset=offset)
        written.append(write_gaussian_avatars_ply(directory / "gaussian_avatars" / "point_cloud.ply", ga))
        written.append(write_flame_param_npz(directory / "gaussian_avatars" / "flame_param.npz", self.motion,
                                             head_model.n_vertices, static_offset=offset))
        world = avatar.animate(avatar.neutral(1))
        written.append(write_splat_ply(directory / "avatar_world.ply", world))
        if sibr:
            from avp.export.inria import write_inria_model

            views = avatar.view_cameras(torch.linspace(-60.0, 60.0, 9), size=SIBR_VIEW_SIZE)
            written += list(write_inria_model(directory / "sibr", world, views, white_background=True).values())
        return written


def _subject_batch(batch: AvatarBatch, b: int) -> AvatarBatch:
    """Sample ``b`` of a batch as a batch of one (tensors with the batch dimension are sliced, others kept)."""
    B = batch.batch_size
    one = batch.map(lambda t: t[b : b + 1] if t.dim() > 0 and t.shape[0] == B else t)
    return dataclasses.replace(one, subject=[batch.subject[b]], keys=None if batch.keys is None else [batch.keys[b]])


@torch.no_grad()
def generator_predictions(module: Any, batch: AvatarBatch) -> list[GeneratedCloud]:
    """:meth:`GeneratorModule.predict_step`: sample one cloud per subject with ``val_sampling`` and ``seed``, the
    whole batch in one call. Each subject draws from its own generator seeded with ``seed``, so its cloud is the one
    it gets sampled alone (a cloud does not depend on its batch); clouds that end early emit padding while the
    others go on."""
    seed = int(module.hparams.seed)
    offset = batch.static_offset  # [B, V, 3] tracked subjects' (mesh tokens and nearest faces on it), or None
    condition = module.net.encode_condition(batch.portrait, batch.portrait_head, offset, batch.portrait_camera)
    generators = [torch.Generator(device=condition.device).manual_seed(seed) for _ in batch.subject]
    s = module.net.sample(condition, module.val_sampling, generators, shape=batch.portrait_head.shape,
                          static_offset=offset)
    out = []
    for b, subject in enumerate(batch.subject):
        n, length = int(s.n_points[b]), int(s.lengths[b])
        out.append(GeneratedCloud(
            subject=str(subject), tokens=s.tokens[b, :length].cpu().numpy().astype(np.int64),
            points=s.points[b, :n].float().cpu().numpy(), binding=s.binding[b, :n].cpu().numpy().astype(np.int64),
            finished=bool(s.finished[b]), seed=seed))
    return out


def _portrait_camera(one: AvatarBatch) -> Cameras | None:
    """The portrait camera of a batch of one as an avatar records it (``Ks [1, 3, 3]``), if the batch has it."""
    camera = one.portrait_camera
    if camera is None:
        return None
    return Cameras(Ks=camera.Ks[0].float(), viewmats=camera.viewmats[0].float(), width=camera.width,
                   height=camera.height)


@torch.no_grad()
def decoder_predictions(module: Any, batch: AvatarBatch) -> list[PredictedAvatar]:
    """:meth:`DecoderModule.predict_step`: one avatar per subject on ``eval_points`` (when set) or generated
    points, sampled with the module's ``sampling`` and ``seed``."""
    from avp.provenance import git_sha

    if batch.head.global_rot.dim() != 3 or batch.head.global_rot.shape[1] == 0:
        raise ValueError("DecoderModule.predict_step: the batch has no clip frames; set data.frames_per_sample >= 1 "
                         "(the avatar's identity and its GaussianAvatars motion come from the clip's frames)")
    source = module.hparams.eval_points or "generated"
    seed = int(module.hparams.seed)
    model = module.model
    trainer = module._trainer
    checkpoint = None if trainer is None or trainer.ckpt_path is None else str(trainer.ckpt_path)
    sha = git_sha()
    out = []
    for b, subject in enumerate(batch.subject):
        one = _subject_batch(batch, b)
        generator = None
        if source == "generated":
            generator = torch.Generator(device=one.portrait.device).manual_seed(seed)
        inputs = module.prepare_batch(one, source, generator)
        meta = {"subject": str(subject), "seed": seed, "points": source,
                "sampling": dataclasses.asdict(model.sampling) if source == "generated" else None,
                "finished": bool(inputs.finished[0]), "n_points": int(inputs.n_points[0]),
                "checkpoints": {"decoder": checkpoint}, "source": "avp predict", "git": sha}
        avatar = model.avatar(inputs, model.decode(inputs), portrait_head=one.portrait_head, portrait=one.portrait[0],
                              portrait_camera=_portrait_camera(one), meta=meta)
        frames = one.head.map(lambda t: t[0].float())  # [T], the identity [S]
        motion = dataclasses.replace(frames, shape=frames.shape.expand(frames.global_rot.shape[0], -1))  # all [T]
        out.append(PredictedAvatar(subject=str(subject), avatar=avatar.to("cpu"), motion=motion.to("cpu")))
    return out


# ----------------------------------------------------------------------------------------------------- writer
class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns (objects with ``subject`` and ``write(directory)``, e.g.
    :class:`GeneratedCloud`, :class:`PredictedAvatar`) under ``<output_dir>/<subject>/`` after every batch.

    Args:
        output_dir: where predictions go; None: ``<log_dir>/predictions`` (the run's log folder, see the module
            docstring).
        return_predictions: also keep every prediction in memory for ``trainer.predict``'s return value; False
            (default) writes them only, so a large split does not accumulate (``trainer.predict`` returns None).
        sibr: also write each predicted avatar as an INRIA/SIBR model folder, ``<subject>/sibr/`` (``cfg_args``,
            ``cameras.json``, ``input.ply``, ``point_cloud/iteration_30000/point_cloud.ply``; what ``avp avatarize
            --sibr`` writes, see :func:`avp.export.inria.write_inria_model`); decoder predictions only (a generated
            cloud has no splats).
    """

    def __init__(self, output_dir: str | None = None, return_predictions: bool = False, sibr: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.return_predictions = return_predictions
        self.sibr = bool(sibr)
        self.directory: Path | None = None
        """The folder predictions are written to (set in ``setup``)."""
        self.written: list[Path] = []
        """Files written by this process."""
        self.subjects: list[str] = []
        """Subjects written by this process, in order."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        # outputs are named by subject id, never by sample index: the loop's note that it cannot infer the indices
        # of a streaming loader is noise here
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched")
        if self.output_dir is not None:
            self.directory = Path(self.output_dir)
        else:
            # ``trainer.log_dir`` is a collective (rank 0's folder, broadcast): every rank runs this hook
            self.directory = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.return_predictions:
            trainer.predict_loop.return_predictions = False

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if self.directory is None:  # not set up through a Trainer's predict (called by hand): no collective here
            self.directory = Path(self.output_dir) if self.output_dir else local_log_dir(trainer) / "predictions"
        items = prediction if isinstance(prediction, (list, tuple)) else [prediction]
        for item in items:
            if not (hasattr(item, "write") and hasattr(item, "subject")):
                raise TypeError(f"PredictionWriter: predict_step must return objects with .subject and .write(dir) "
                                f"(avp.lit.predict.GeneratedCloud / PredictedAvatar), got {type(item).__name__}")
            directory = self.directory / subject_dirname(item.subject)
            if isinstance(item, PredictedAvatar):
                self.written += item.write(directory, sibr=self.sibr)
            else:
                self.written += item.write(directory)
            self.subjects.append(str(item.subject))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank_zero_info(f"avp predict: wrote {len(set(self.subjects))} subjects ({len(self.written)} files) under "
                       f"{self.directory}" + (" (rank 0; every rank writes its own subjects)"
                                              if trainer.world_size > 1 else ""))

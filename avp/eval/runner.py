"""Full-pipeline evaluation of an avatar model on a protocol (``avp eval``): every number regenerable from its folder.

For every held-out sample of the protocol (a clip for self-reenactment, a source/driver pair for cross-reenactment)
and every method (row of the table):

1. avatarize the source: portrait -> points -> Gaussian decoder -> canonical splats and their binding
   (:meth:`avp.models.avatar.AvatarModel.prepare` / ``decode`` / ``avatar``). Methods:

   - ``generated``: the full pipeline, points *sampled* by the generator from the portrait (seeded per clip);
   - ``teacher_points``: the same decoder on the shard's teacher points (teacher-forced features), which separates
     the generator's error from the decoder's;
   - ``template``: a decoder checkpoint trained with ``points: template`` on its fixed head-surface points (the
     paper's "FLAME position" baseline);
   - ``teacher``: the shard's teacher fit itself, rendered (the upper bound on these views);

2. animate it to the target frames' head parameters through the binding (:func:`avp.head.animate_gaussians`);
3. render the protocol's views at its resolution over its background (:func:`avp.render.render`);
4. score the renders (:mod:`avp.eval` metrics): PSNR/SSIM (masked and unmasked), LPIPS, FID, identity similarity
   with detection rate, AKD/APD, CLIP (self); identity/CLIP to the source portrait, AKD/APD to the driving frames,
   Cross-FID (cross). Metrics without their weights are reported unavailable.

The run folder holds ``run.json`` (protocol name, version, file hash and full content; checkpoints with SHA-256;
data root and manifest hash; the command's options; per-sample seeds; git SHA; environment; the ``avp eval`` command
that recomputes the run), ``protocol.yaml`` (the effective protocol, overrides applied), ``samples.jsonl``
(every method x sample), ``metrics.json``, ``metrics.csv``, ``table.md`` (paper layout: methods x metrics),
``examples.png`` (the first sample's first frame per method), per-method reports under ``methods/<key>/`` (readable by
:func:`avp.eval.report.read_metrics`) and TensorBoard event files under ``tensorboard/<key>/`` (``test/*`` scalars).

Checkpoints are read by :mod:`avp.checkpoints` into the pure :class:`~avp.models.avatar.AvatarModel` (the decoder
checkpoint holds its frozen generator); nothing here imports Lightning.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from avp.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from avp.checkpoints import check_same_generator, load_avatar_model
from avp.eval.protocol import EvalProtocol, ProtocolError
from avp.eval.report import (
    RunReport,
    flatten_metrics,
    markdown_table,
    scalars_for_logging,
    spec,
    to_json_value,
)
from avp.metrics.distribution import FID, CLIPSimilarity
from avp.metrics.face import IdentitySimilarity, KeypointPoseDistance
from avp.metrics.image import PSNR, SSIM
from avp.metrics.lpips import LPIPS
from avp.metrics.unavailable import MetricValue, Unavailable, as_metric_value
from avp.models.avatar import Avatar, AvatarModel
from avp.provenance import environment, git_sha
from avp.types import HEAD_PARAM_FIELDS, Cameras, GaussianCloud, HeadParams

RUN_SCHEMA = 1
METHOD_LABELS = {
    "generated": "AVP (generated points)",
    "teacher_points": "AVP (teacher points)",
    "resampled_teacher": "AVP (resampled teacher points)",
    "template": "Template points (FLAME position)",
    "teacher": "Teacher fit (upper bound)",
}
"""Table rows, in this order."""
CROSS_NAMES = {"identity_cosine": "cross_identity_cosine", "clip": "cross_clip", "fid": "cross_fid"}
"""Cross-reenactment reports these metrics under the paper's cross names."""


# ================================================================================================== clips and frames

@dataclass
class ClipEntry:
    """One clip of the evaluated split (from the listing pass)."""

    key: str
    subject: str
    sequence: str
    shard: str
    frames: int
    views: int


@dataclass
class SourceClip:
    """What avatarizing a clip's subject needs (no frames)."""

    key: str
    subject: str
    source: str
    """``meta["source"]``: ``synthetic`` or ``gaussian_avatars``."""
    head_model: str
    portrait: Tensor
    """``[3, Hp, Wp]`` in 0..1."""
    portrait_head: HeadParams
    """``[1]`` head parameters estimated for the portrait."""
    shape: Tensor
    """``[1, S]`` the clip's tracked identity."""
    teacher: GaussianCloud
    """``[1, N]`` the teacher fit in canonical space."""
    binding: Tensor
    """``[1, N]`` long faces of the teacher points."""
    portrait_camera: Cameras | None = None
    """The portrait's camera (``Ks [1, 1, 3, 3]``), for decoders that sample the portrait where points project."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The sample's ``meta.json`` (a synthetic subject's teacher can be resampled from it)."""

    def to(self, device: torch.device) -> SourceClip:
        return dataclasses.replace(self, portrait=self.portrait.to(device), portrait_head=self.portrait_head.to(device),
                                   shape=self.shape.to(device), teacher=self.teacher.to(device),
                                   binding=self.binding.to(device),
                                   portrait_camera=None if self.portrait_camera is None
                                   else self.portrait_camera.to(device))


@dataclass
class TargetClip:
    """The frames a clip contributes as targets (self) or driving frames (cross), at the protocol's resolution."""

    key: str
    subject: str
    frames: Tensor
    """``[T, V, 3, H, W]`` ground truth in 0..1 (re-composited over the protocol's background)."""
    masks: Tensor | None
    """``[T, V, 1, H, W]`` foreground masks in 0..1, when the shards have them."""
    head: HeadParams
    """``[T]`` head parameters of the frames (``shape``: the clip's identity)."""
    cameras: Cameras
    """``Ks [V, 3, 3]``, ``viewmats [V, 4, 4]`` at the protocol's resolution."""
    background: Tensor
    """``[3]`` what renders are composited over."""
    frame_index: list[int]
    view_index: list[int]


def _evenly(items: list[int], k: int | None) -> list[int]:
    if k is None or k >= len(items):
        return items
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in picks]


def portrait_frame(meta: dict[str, Any]) -> int | None:
    """The clip frame the portrait was cut from (converted data records it), or None (synthetic portraits are
    separate renders)."""
    extra = meta.get("extra") or {}
    portrait = extra.get("portrait")
    if not isinstance(portrait, dict) or "timestep" not in portrait:
        return None
    timesteps = extra.get("timesteps")
    t = portrait["timestep"]
    if isinstance(timesteps, list):
        return timesteps.index(t) if t in timesteps else None
    return int(t)


def select_frames(protocol: EvalProtocol, meta: dict[str, Any], key: str) -> list[int]:
    """The clip frame indices the protocol evaluates for a clip with ``meta``."""
    f = protocol.frames
    n = int(meta["frames"])
    if f.indices is not None:
        bad = [i for i in f.indices if i >= n]
        if bad:
            raise ProtocolError(f"frames.indices: clip {key!r} has {n} frames; indices {bad} do not exist")
        frames = list(f.indices)
    else:
        frames = list(range(n))
        skip = portrait_frame(meta) if (protocol.task == "self" and f.skip_portrait_frame) else None
        if skip is not None and skip in frames:
            frames.remove(skip)
        frames = _evenly(frames[:: f.stride], f.max_frames)
    if not frames:
        raise ProtocolError(f"frames: no frame of clip {key!r} ({n} frames) is left to evaluate")
    return frames


def select_views(protocol: EvalProtocol, meta: dict[str, Any], key: str) -> list[int]:
    """The clip camera indices the protocol evaluates."""
    v = protocol.views
    n = int(meta["views"])
    if v.indices is not None:
        bad = [i for i in v.indices if i >= n]
        if bad:
            raise ProtocolError(f"views.indices: clip {key!r} has {n} cameras; indices {bad} do not exist")
        views = list(v.indices)
    else:
        views = list(range(n))
    return _evenly(views, v.max_views)


def background_colour(protocol: EvalProtocol, meta: dict[str, Any]) -> Tensor:
    """``[3]`` the renders' background for a clip."""
    bg = protocol.render.background
    if bg == "clip":
        return torch.tensor(meta["background"], dtype=torch.float32)
    if bg == "white":
        return torch.ones(3)
    if bg == "black":
        return torch.zeros(3)
    return torch.tensor(bg, dtype=torch.float32)


def _uint8_to_float(images: np.ndarray) -> Tensor:
    """uint8 ``[..., H, W, C]`` -> float ``[..., C, H, W]`` in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 255.0


def _head_params(arrays: dict[str, np.ndarray], rows: list[int] | None) -> HeadParams:
    """Head parameters from npz arrays: ``rows`` of the per-frame fields (``shape`` expanded), or one set."""
    if rows is None:
        return HeadParams(**{k: torch.from_numpy(np.asarray(arrays[k]))[None].float() for k in HEAD_PARAM_FIELDS})
    fields = {k: torch.from_numpy(np.asarray(arrays[k])[rows]).float() for k in HEAD_PARAM_FIELDS if k != "shape"}
    fields["shape"] = torch.from_numpy(np.asarray(arrays["shape"])).float().expand(len(rows), -1)
    return HeadParams(**fields)


def source_from_sample(sample: Any) -> SourceClip:
    """A :class:`SourceClip` from a decoded :class:`avp.data.schema.ClipSample`."""
    from avp.data.schema import teacher_cloud

    meta = sample.meta
    return SourceClip(
        key=sample.key, subject=meta["subject"], source=meta["source"], head_model=meta["head_model"],
        portrait=_uint8_to_float(sample.portrait), portrait_head=_head_params(sample.portrait_head, None),
        shape=torch.from_numpy(np.asarray(sample.head["shape"])).float()[None],
        teacher=teacher_cloud(sample.gaussians),
        binding=torch.from_numpy(sample.gaussians.binding.astype(np.int64))[None],
        portrait_camera=Cameras(Ks=torch.from_numpy(sample.portrait_camera.Ks)[None],
                                viewmats=torch.from_numpy(sample.portrait_camera.viewmats)[None],
                                width=sample.portrait_camera.width, height=sample.portrait_camera.height),
        meta=meta,
    )


def target_from_sample(sample: Any, protocol: EvalProtocol) -> TargetClip:
    """A :class:`TargetClip` from a :class:`~avp.data.schema.ClipSample` decoded with the protocol's frames/views."""
    from avp.data.pipeline import fit_square, square_intrinsics

    meta = sample.meta
    fi, vi = [int(i) for i in sample.frame_index], [int(i) for i in sample.view_index]
    H, W = int(meta["height"]), int(meta["width"])
    clip_bg = torch.tensor(meta["background"], dtype=torch.float32)
    frames = _uint8_to_float(sample.frames)  # [T, V, 3, H, W]
    masks = _uint8_to_float(sample.masks[..., None]) if sample.masks is not None else None  # [T, V, 1, H, W]
    Ks = torch.from_numpy(sample.cameras.Ks[vi]).float()
    viewmats = torch.from_numpy(sample.cameras.viewmats[vi]).float()
    size = protocol.render.resolution
    if (H, W) != (size, size):
        Ks = square_intrinsics(Ks, H, W, size)
        frames = fit_square(frames, size, clip_bg)
        masks = fit_square(masks, size, torch.zeros(1)) if masks is not None else None
    background = background_colour(protocol, meta)
    if not torch.allclose(background, clip_bg, atol=1 / 255):
        if masks is None:
            raise ProtocolError(f"render.background: {protocol.render.background!r} differs from clip {sample.key!r}'s "
                                f"background {meta['background']} and the shards have no masks to re-composite the "
                                "ground truth; use background: clip")
        # frames = fg * m + clip_bg * (1 - m): swap the background under the mask
        frames = (frames + (background - clip_bg).view(3, 1, 1) * (1 - masks)).clamp(0, 1)
    return TargetClip(key=sample.key, subject=meta["subject"], frames=frames, masks=masks,
                      head=_head_params(sample.head, fi), cameras=Cameras(Ks=Ks, viewmats=viewmats, width=size,
                                                                          height=size),
                      background=background, frame_index=fi, view_index=vi)


# ========================================================================================================= methods

class Method:
    """A row of the table: turns a source clip into an :class:`Avatar`."""

    key: str
    label: str
    render_backend: str = "auto"

    def build(self, source: SourceClip, seed: int) -> Avatar:
        raise TypeError(f"{type(self).__name__} must implement build()")

    def describe(self) -> dict[str, Any]:
        return {"label": self.label}


class DecoderMethod(Method):
    """A trained stage-2 model (:class:`~avp.models.avatar.AvatarModel`, its checkpoint's ``hparams``) on
    ``generated``, ``teacher``, ``resampled`` or ``template`` points."""

    def __init__(self, key: str, model: AvatarModel, hparams: dict[str, Any], points: str, sampling: Any,
                 rig_identity: str, checkpoint: dict[str, Any]) -> None:
        self.key, self.label = key, METHOD_LABELS[key]
        self.model, self.hparams, self.points, self.sampling = model, hparams, points, sampling
        self.rig_identity = rig_identity
        self.render_backend = model.render_backend
        self.checkpoint = checkpoint

    def build(self, source: SourceClip, seed: int) -> Avatar:
        device = source.portrait.device
        generator = torch.Generator(device=device).manual_seed(seed) if self.points == "generated" else None
        shape = source.shape if self.rig_identity == "clip" else source.portrait_head.shape
        teacher, binding = source.teacher, source.binding
        if self.points == "resampled":
            from avp.data.schema import teacher_cloud
            from avp.data.synthetic.generate import resample_teacher

            resampled = resample_teacher(source.meta, self.model.head_model)
            teacher = teacher_cloud(resampled).to(device)
            binding = torch.from_numpy(resampled.binding.astype(np.int64))[None].to(device)
        with torch.no_grad():
            inputs = self.model.prepare(source.portrait[None], source.portrait_head,
                                         points="teacher" if self.points == "resampled" else self.points,
                                         teacher_means=teacher.means, teacher_binding=binding,
                                         teacher_mask=teacher.valid_mask(), shape=shape,
                                         sampling=self.sampling, generator=generator,
                                         portrait_camera=source.portrait_camera)
            return self.model.avatar(inputs, self.model.decode(inputs), portrait_head=source.portrait_head)

    def describe(self) -> dict[str, Any]:
        hp = self.hparams
        return {"label": self.label, "points": self.points, "animation": self.model.animation,
                "checkpoint": self.checkpoint, "trained_points": hp.get("points"),
                "decoder_inputs": (hp.get("decoder") or {}).get("inputs"),
                "sampling": dataclasses.asdict(self.sampling) if self.points == "generated" else None,
                "hparams": json.loads(json.dumps(hp, default=str))}


class TeacherMethod(Method):
    """The shard's teacher fit, bound to the clip's identity and animated like the data was rendered."""

    key = "teacher"
    label = METHOD_LABELS["teacher"]

    def __init__(self, head_model: Any, animation: str) -> None:
        self.head_model, self.animation = head_model, animation

    def build(self, source: SourceClip, seed: int) -> Avatar:
        mode = self.animation
        if mode == "auto":
            mode = "face_frame" if source.source == "gaussian_avatars" else "lbs"
        with torch.no_grad():
            rig = self.head_model.rig(source.binding, source.teacher.means, source.shape)
        return Avatar(cloud=source.teacher, binding=source.binding[0], points=source.teacher.means[0],
                      shape=source.shape[0], head_model=self.head_model, rig=rig, animation=mode,
                      portrait_head=source.portrait_head)

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "points": "teacher", "animation": self.animation,
                "head_model": self.head_model.name}


# ========================================================================================================= scoring

def _resize(images: Tensor, size: int) -> Tensor:
    """``[B, 3, H, W]`` -> ``[B, 3, size, size]`` (bicubic, antialiased when shrinking), clamped to 0..1."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=images.shape[-1] > size).clamp(0, 1)


def _compute(metric: Any) -> Any:
    """``metric.compute()`` without torchmetrics' warning for run-level metrics filled by ``merge_state`` only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        return metric.compute()


def _delta_mean(metric: Any, before: tuple[float, int]) -> MetricValue:
    """Mean over the images added since ``before`` (``total``/``count`` states of LPIPS and CLIP similarity)."""
    result = _compute(metric)
    if isinstance(result, Unavailable) and metric.reason is not None:
        return result
    count = int(metric.count) - before[1]
    if count == 0:
        return Unavailable("no images")
    return (float(metric.total) - before[0]) / count


class MethodScores:
    """Every metric of one method over the whole run, plus the current sample's values."""

    def __init__(self, protocol: EvalProtocol) -> None:
        self.protocol = protocol
        w = protocol.weights
        self.self_task = protocol.task == "self"
        self.psnr, self.ssim = PSNR(), SSIM()
        self.psnr_masked, self.ssim_masked = PSNR(masked=True), SSIM(masked=True)
        self.lpips = LPIPS(w.lpips_net, w.lpips_weights) if self.self_task else None
        self.fid = FID(w.fid_weights, w.fid_feature)
        self.clip = CLIPSimilarity(w.clip_model, w.clip_weights)
        face = protocol.face
        self.identity = IdentitySimilarity(upsample=face.identity_upsample) if face.enabled else None
        self.keypoints = KeypointPoseDistance(resolution=face.akd_resolution) if face.enabled else None
        self.samples_with_masks = 0
        self.points: list[int] = []
        self.finished: list[bool] = []

    def start_sample(self) -> None:
        self._psnr, self._ssim = PSNR(), SSIM()
        self._psnr_masked, self._ssim_masked = PSNR(masked=True), SSIM(masked=True)
        face = self.protocol.face
        self._identity = IdentitySimilarity(upsample=face.identity_upsample) if face.enabled else None
        self._keypoints = KeypointPoseDistance(resolution=face.akd_resolution) if face.enabled else None
        self._lpips_before = (float(self.lpips.total), int(self.lpips.count)) if self.lpips is not None else (0.0, 0)
        self._clip_before = (float(self.clip.total), int(self.clip.count))
        self._has_masks = True

    def update(self, renders: Tensor, targets: Tensor, masks: Tensor | None, portrait: Tensor,
               face_renders: Tensor | None, face_targets: Tensor | None, face_portrait: Tensor) -> None:
        """``renders``/``targets`` ``[B, 3, H, W]`` (targets: ground truth, or the driving frames in cross);
        ``masks`` ``[B, 1, H, W]``; ``portrait`` ``[3, Hp, Wp]``; ``face_*``: the same at the face resolution
        (renders/targets only of the face views; None when there are none)."""
        if self.self_task:
            for metric in (self._psnr, self._ssim):
                metric.update(renders, targets)
            if masks is None:
                self._has_masks = False
            elif self.protocol.masks.use:
                for metric in (self._psnr_masked, self._ssim_masked):
                    metric.update(renders, targets, masks)
            assert self.lpips is not None
            self.lpips.update(renders, targets)
        self.fid.update(targets, real=True)
        self.fid.update(renders, real=False)
        self.clip.update(renders, portrait)
        if face_renders is not None and face_targets is not None and self._identity is not None:
            assert self._keypoints is not None
            self._identity.update(face_renders, face_portrait)
            self._keypoints.update(face_renders, face_targets)

    def _values(self, psnr: PSNR, ssim: SSIM, psnr_m: PSNR, ssim_m: SSIM, identity: Any, keypoints: Any,
                lpips: MetricValue, clip: MetricValue, masks_missing: Unavailable | None) -> dict[str, MetricValue]:
        out: dict[str, Any] = {}
        if self.self_task:
            out["psnr"], out["ssim"] = _compute(psnr), _compute(ssim)
            off = Unavailable("masks.use is false in the protocol") if not self.protocol.masks.use else masks_missing
            out["psnr_masked"] = off if off is not None else _compute(psnr_m)
            out["ssim_masked"] = off if off is not None else _compute(ssim_m)
            out["lpips"] = lpips
        if identity is None:
            disabled = Unavailable("face metrics are disabled (face.enabled: false)")
            for k in ("identity_cosine", "identity_distance", "identity_same_rate", "face_detection_rate", "akd",
                      "apd", "apd_yaw", "apd_pitch", "apd_roll", "keypoint_pair_rate"):
                out[k] = disabled
        else:
            out.update(_compute(identity))
            out.update(_compute(keypoints))
        out["clip"] = clip
        return flatten_metrics(out)

    def finish_sample(self, n_points: int, finished: bool) -> dict[str, MetricValue]:
        """The sample's values; its states are merged into the run's."""
        lpips = _delta_mean(self.lpips, self._lpips_before) if self.lpips is not None else Unavailable("no ground "
                                                                                                        "truth")
        clip = _delta_mean(self.clip, self._clip_before)
        missing = None if self._has_masks else Unavailable("the shards have no foreground masks")
        values = self._values(self._psnr, self._ssim, self._psnr_masked, self._ssim_masked, self._identity,
                              self._keypoints, lpips, clip, missing)
        self.samples_with_masks += int(self._has_masks)
        pairs = [(self.psnr, self._psnr), (self.ssim, self._ssim), (self.psnr_masked, self._psnr_masked),
                 (self.ssim_masked, self._ssim_masked)]
        if self.identity is not None:
            pairs += [(self.identity, self._identity), (self.keypoints, self._keypoints)]
        for total, part in pairs:
            total.merge_state(part)
        self.points.append(n_points)
        self.finished.append(finished)
        values["points"] = float(n_points)
        return _rename(values, self.protocol.task)

    def compute(self) -> dict[str, MetricValue]:
        """The run's values for this method."""
        lpips = _compute(self.lpips) if self.lpips is not None else Unavailable("no ground truth")
        n, k = len(self.points), self.samples_with_masks
        missing = None if k == n else Unavailable("the shards have no foreground masks") if k == 0 else \
            Unavailable(f"only {k} of {n} samples have foreground masks")
        values = self._values(self.psnr, self.ssim, self.psnr_masked, self.ssim_masked, self.identity,
                              self.keypoints, as_metric_value(lpips), as_metric_value(_compute(self.clip)), missing)
        values["fid"] = as_metric_value(_compute(self.fid))
        values["points"] = float(np.mean(self.points)) if self.points else Unavailable("no samples")
        values["finished_rate"] = float(np.mean(self.finished)) if self.finished else Unavailable("no samples")
        return _rename(values, self.protocol.task)


def _rename(values: dict[str, MetricValue], task: str) -> dict[str, MetricValue]:
    if task != "cross":
        return values
    return {CROSS_NAMES.get(k, k): v for k, v in values.items()}


# ========================================================================================================= the run

@dataclass
class EvalSample:
    """One evaluated unit: a clip (self) or a (source, driver) pair (cross)."""

    id: str
    source: str
    """Source clip key (portrait, identity, teacher)."""
    target: str
    """Target clip key (ground truth, or the driving clip)."""
    seed: int
    """Seed of the generated-point sampling for this sample."""
    order: int


@dataclass
class EvalResult:
    """What a finished run wrote."""

    out_dir: Path
    metrics: dict[str, dict[str, MetricValue]]
    """method key -> metric -> value"""
    labels: dict[str, str]
    table: str
    files: dict[str, Path] = field(default_factory=dict)


def sample_seed(base: int, key: str) -> int:
    """Seed of a source clip's sampling: independent of which other clips are evaluated."""
    return zlib.crc32(f"{base}:{key}".encode()) & 0x7FFFFFFF


def file_record(path: str | Path) -> dict[str, Any]:
    """Path, size and SHA-256 of a file (what a run records about its checkpoints)."""
    from avp.data.reader import file_sha256

    p = Path(path).resolve()
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)}


def list_clips(root: str, split: str) -> tuple[list[ClipEntry], dict[str, Any]]:
    """Every clip of ``split`` (one streaming pass over its shards, checksums verified) and a data record."""
    from avp.data.reader import iter_raw_samples, resolve_shards
    from avp.data.schema import decode_meta

    refs, manifest = resolve_shards(root, split)
    if not refs:
        have = manifest.splits if manifest is not None else []
        raise ProtocolError(f"data.split: {root} has no shards of split {split!r} (it has {have})")
    clips = []
    for ref in refs:
        for raw in iter_raw_samples(ref):
            meta = decode_meta(raw, shard=ref.name)
            clips.append(ClipEntry(key=raw["__key__"].decode(), subject=meta["subject"], sequence=meta["sequence"],
                                   shard=ref.name, frames=int(meta["frames"]), views=int(meta["views"])))
    record: dict[str, Any] = {"root": str(root), "split": split, "shards": [r.name for r in refs],
                              "shard_sha256": {r.name: r.sha256 for r in refs}, "clips": len(clips)}
    if manifest is not None:
        record["manifest"] = file_record(Path(manifest.root) / "shards.json")
        record["head_model"] = manifest.head_model
    return clips, record


def plan_samples(protocol: EvalProtocol, clips: list[ClipEntry], limit: int | None = None) -> list[EvalSample]:
    """The protocol's samples over the split's clips, in protocol order (``limit``: only the first ones)."""
    by_subject: dict[str, list[ClipEntry]] = {}
    for c in sorted(clips, key=lambda c: (c.subject, c.key)):
        by_subject.setdefault(c.subject, []).append(c)
    if protocol.data.subjects is not None:
        missing = [s for s in protocol.data.subjects if s not in by_subject]
        if missing:
            raise ProtocolError(f"data.subjects: {missing} are not in split {protocol.data.split!r} (it has "
                                f"{sorted(by_subject)[:10]}{' …' if len(by_subject) > 10 else ''})")
        subjects = list(protocol.data.subjects)
    else:
        subjects = sorted(by_subject)
    if protocol.data.max_subjects is not None:
        subjects = subjects[: protocol.data.max_subjects]
    base = protocol.sampling.seed
    samples: list[EvalSample] = []
    if protocol.task == "self":
        for s in subjects:
            for c in by_subject[s]:
                samples.append(EvalSample(id=c.key, source=c.key, target=c.key, seed=sample_seed(base, c.key),
                                          order=len(samples)))
    else:
        assert protocol.pairs is not None
        if protocol.pairs.explicit is not None:
            pairs = [tuple(p) for p in protocol.pairs.explicit]
            unknown = sorted({s for p in pairs for s in p if s not in by_subject})
            if unknown:
                raise ProtocolError(f"pairs.explicit: subjects {unknown} are not in split {protocol.data.split!r}")
        else:
            n = len(subjects)
            if n < 2:
                raise ProtocolError(f"pairs.shift: cross-reenactment needs at least two subjects; the selection has "
                                    f"{n}")
            if protocol.pairs.shift % n == 0:
                raise ProtocolError(f"pairs.shift: a shift of {protocol.pairs.shift} over {n} subjects pairs every "
                                    "subject with itself")
            pairs = [(subjects[i], subjects[(i + protocol.pairs.shift) % n]) for i in range(n)]
        for a, b in pairs:
            src, drv = by_subject[a][0], by_subject[b][0]
            samples.append(EvalSample(id=f"{src.key}<-{drv.key}", source=src.key, target=drv.key,
                                      seed=sample_seed(base, src.key), order=len(samples)))
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise ProtocolError("data: the protocol selects no sample")
    return samples


def _stream(root: str, split: str, keys: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(shard name, raw sample)`` of the wanted keys, in shard order."""
    from avp.data.reader import iter_raw_samples, resolve_shards

    refs, _ = resolve_shards(root, split)
    for ref in refs:
        for raw in iter_raw_samples(ref):
            if raw["__key__"].decode() in keys:
                yield ref.name, raw


def sampling_config(decoder: AvatarModel, protocol: EvalProtocol) -> Any:
    """The decoder's sampling settings with the protocol's temperature, top-k, top-p and point limits."""
    s = protocol.sampling
    base = decoder.sampling
    cfg = dataclasses.replace(base, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                              max_points=s.max_points if s.max_points is not None else base.max_points,
                              min_points=s.min_points if s.min_points is not None else base.min_points)
    cfg.validate()
    return cfg


@dataclass
class EvalConfig:
    """An evaluation run (what ``avp eval`` parses)."""

    protocol: EvalProtocol
    decoder: str
    """DecoderModule checkpoint of the full model."""
    out_dir: str
    data_root: str | None = None
    """Dataset root; None: the protocol's ``data.root``."""
    generator: str | None = None
    """Generator checkpoint; checked to be the decoder's frozen generator and recorded."""
    template_decoder: str | None = None
    """DecoderModule checkpoint trained with ``points: template`` (the baseline row)."""
    points: tuple[str, ...] = ("generated",)
    """Rows of the full model: ``generated`` (the method), ``teacher`` (teacher points), ``resampled`` (a new
    sampling of a synthetic subject's teacher); empty: none (the decoder then only supplies the head model for the
    reference rows)."""
    limit: int | None = None
    """Only the first N samples of the protocol."""
    device: str = "auto"
    batch_frames: int = 4
    """Frames rendered per call (memory only; numbers do not depend on it)."""
    overwrite: bool = False
    progress: bool = True
    protocol_file: str | None = None
    overrides: tuple[str, ...] = ()
    command: list[str] | None = None


def _image_grid(columns: list[Tensor]) -> bytes:
    """PNG of image columns, each ``[V, 3, H, W]`` (rows = views)."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(col), dim=-2) for col in columns], dim=-1)  # [3, V H, C W]
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _csv(rows: dict[str, dict[str, MetricValue]], labels: dict[str, str], protocol: EvalProtocol, sha: str | None,
         n: int, checkpoints: dict[str, Any]) -> str:
    keys: list[str] = []
    for values in rows.values():
        keys += [k for k in values if k not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "label", "protocol", "protocol_version", "git_sha", "n_samples", *keys,
                     "checkpoint_sha256"])
    for method, values in rows.items():
        cells = []
        for k in keys:
            v = values.get(k, Unavailable("not measured for this method"))
            cells.append(str(v) if isinstance(v, Unavailable) else repr(float(v)))
        ckpt = checkpoints.get(method) or {}
        writer.writerow([method, labels[method], protocol.name, protocol.version, sha or "", n, *cells,
                         ckpt.get("sha256", "")])
    return buffer.getvalue()


def _slug(key: str) -> str:
    return key.replace("/", "_")


def build_methods(config: EvalConfig, device: torch.device) -> tuple[AvatarModel, list[Method], dict[str, Any]]:
    """Load the checkpoints (checked and hashed) and the table's rows: ``(decoder, methods, checkpoint records)``."""
    protocol = config.protocol
    checkpoints: dict[str, Any] = {"decoder": file_record(config.decoder)}
    decoder, hparams = load_avatar_model(config.decoder, device=device)
    if config.generator is not None:
        checkpoints["generator"] = file_record(config.generator)
        check_same_generator(decoder, config.generator)
    sampling = sampling_config(decoder, protocol)
    methods: list[Method] = []
    for points, key in (("generated", "generated"), ("teacher", "teacher_points"), ("resampled", "resampled_teacher")):
        if points in config.points:
            methods.append(DecoderMethod(key, decoder, hparams, points, sampling, protocol.render.rig_identity,
                                         checkpoints["decoder"]))
    if config.template_decoder is not None:
        checkpoints["template_decoder"] = file_record(config.template_decoder)
        template, template_hparams = load_avatar_model(config.template_decoder, device=device)
        if template_hparams.get("points") != "template":
            raise ValueError(f"--template-decoder {config.template_decoder} was trained with points: "
                             f"{template_hparams.get('points')!r}; the baseline row needs a decoder trained with "
                             "points: template")
        if template.head_model.name != decoder.head_model.name:
            raise ValueError(f"--template-decoder uses head model {template.head_model.name!r}, the decoder "
                             f"{decoder.head_model.name!r}")
        methods.append(DecoderMethod("template", template, template_hparams, "template", sampling,
                                     protocol.render.rig_identity, checkpoints["template_decoder"]))
    if protocol.reference.teacher:
        methods.append(TeacherMethod(decoder.head_model, protocol.reference.teacher_animation))
    return decoder, methods, checkpoints


def run_evaluation(config: EvalConfig) -> EvalResult:
    """Evaluate the model (and the reference rows) on the protocol; write the run folder; return its numbers."""
    from tqdm import tqdm

    from avp.data.schema import decode_meta, decode_sample
    from avp.device import select_device

    protocol = config.protocol
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    out = Path(config.out_dir)
    if (out / "metrics.json").exists() and not config.overwrite:
        raise FileExistsError(f"{out} already holds an evaluation (metrics.json); choose another --out or pass "
                              "--overwrite")
    root = config.data_root or protocol.data.root
    if root is None:
        raise ProtocolError("data.root: no dataset given; pass --data ROOT (a folder with shards.json)")
    unknown = [p for p in config.points if p not in ("generated", "teacher", "resampled")]
    if unknown:
        raise ValueError(f"points: expected generated, teacher and/or resampled, got {list(config.points)}")
    if not config.points and config.template_decoder is None and not protocol.reference.teacher:
        raise ValueError("nothing to evaluate: no points rows, no template decoder and reference.teacher is false")
    if config.batch_frames < 1:
        raise ValueError(f"batch_frames must be >= 1, got {config.batch_frames}")
    for name, path in (("LPIPS", protocol.weights.lpips_weights), ("FID", protocol.weights.fid_weights),
                       ("CLIP", protocol.weights.clip_weights)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"weights.{name.lower()}_weights: {name} weights {path} do not exist")
    device = select_device(config.device)

    decoder, methods, checkpoints = build_methods(config, device)
    labels = {m.key: m.label for m in methods}

    # ---- samples
    clips, data_record = list_clips(root, protocol.data.split)
    samples = plan_samples(protocol, clips, config.limit)
    head_name = data_record.get("head_model")
    if head_name is not None and head_name != decoder.head_model.name:
        raise ValueError(f"{root}: the shards were written for head model {head_name!r} but the decoder uses "
                         f"{decoder.head_model.name!r}")

    run_record: dict[str, Any] = {
        "schema": RUN_SCHEMA,
        "command": config.command,
        "protocol": protocol.record(config.protocol_file, config.overrides),
        "checkpoints": checkpoints,
        "methods": {m.key: m.describe() for m in methods},
        "data": data_record,
        "options": {"points": list(config.points), "limit": config.limit, "device": str(device),
                    "batch_frames": config.batch_frames},
        "seeds": {"sampling_base": protocol.sampling.seed,
                  "per_sample": {s.id: s.seed for s in samples}},
        "samples": [dataclasses.asdict(s) for s in samples],
        "git_sha": git_sha(),
        "environment": environment(),
        "started": started.isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "protocol.yaml", f"# effective protocol of this run ({protocol.name} v{protocol.version}"
                      f"{', overrides: ' + ' '.join(config.overrides) if config.overrides else ''})\n"
                      + yaml.safe_dump(protocol.to_dict(), sort_keys=False))
    run_record["regenerate"] = regenerate_command(config, out)
    atomic_write_json(out / "run.json", run_record)

    scores = {m.key: MethodScores(protocol) for m in methods}
    records: list[dict[str, Any]] = []
    example: list[Tensor] = []
    bar = tqdm(total=len(samples) * len(methods), desc=f"eval {protocol.name}", unit="avatar",
               disable=not config.progress)

    sources: dict[str, SourceClip] = {}
    if protocol.task == "cross":
        wanted = {s.source for s in samples}
        for shard, raw in _stream(root, protocol.data.split, wanted):
            sample = decode_sample(raw, shard=shard, decode_frames=False)
            sources[sample.key] = source_from_sample(sample).to(device)
    by_target: dict[str, list[EvalSample]] = {}
    for s in samples:
        by_target.setdefault(s.target, []).append(s)

    face = protocol.face
    for shard, raw in _stream(root, protocol.data.split, set(by_target)):
        meta = decode_meta(raw, shard=shard)
        key = raw["__key__"].decode()
        fi, vi = select_frames(protocol, meta, key), select_views(protocol, meta, key)
        clip = decode_sample(raw, shard=shard, frame_index=fi, view_index=vi)
        target = target_from_sample(clip, protocol)
        if protocol.task == "self":
            sources[key] = source_from_sample(clip).to(device)
        face_views = [j for j, v in enumerate(vi) if face.views is None or v in face.views]
        for sample in by_target[key]:
            source = sources[sample.source]
            if source.head_model != decoder.head_model.name:
                raise ValueError(f"clip {source.key!r} was written for head model {source.head_model!r} but the "
                                 f"decoder uses {decoder.head_model.name!r}")
            head = target.head.to(device)
            head.shape = source.shape.expand(head.shape.shape[0], -1)  # the source's identity, the target's motion
            face_portrait = _resize(source.portrait[None], face.resolution)[0]
            first = not example
            if first:
                example.append(_resize(source.portrait[None], protocol.render.resolution).expand(
                    len(vi), -1, -1, -1).cpu())
                example.append(target.frames[0].cpu())
            for method in methods:
                t0 = time.perf_counter()
                bar.set_postfix_str(f"{method.key} {sample.id}")
                avatar = method.build(source, sample.seed)
                sc = scores[method.key]
                sc.start_sample()
                for lo in range(0, len(fi), config.batch_frames):
                    hi = min(lo + config.batch_frames, len(fi))
                    rgb = avatar.render(target.cameras.to(device), head.map(lambda t, lo=lo, hi=hi: t[lo:hi]),
                                        background=target.background.to(device), backend=method.render_backend,
                                        chunk=hi - lo).rgb  # [t, V, 3, H, W]
                    rgb = rgb.float().clamp(0, 1)
                    gt = target.frames[lo:hi].to(device)
                    masks = target.masks[lo:hi].to(device) if target.masks is not None else None
                    face_r = face_t = None
                    if face.enabled and face_views:
                        face_r = _resize(rgb[:, face_views].flatten(0, 1), face.resolution)
                        face_t = _resize(gt[:, face_views].flatten(0, 1), face.resolution)
                    sc.update(rgb.flatten(0, 1), gt.flatten(0, 1),
                              masks.flatten(0, 1) if masks is not None else None, source.portrait, face_r, face_t,
                              face_portrait)
                    if first and lo == 0:
                        example.append(rgb[0].cpu())
                values = sc.finish_sample(avatar.n_points, avatar.finished)
                records.append({
                    "order": sample.order, "method": method.key, "sample": sample.id, "source": sample.source,
                    "target": sample.target, "subject": source.subject, "driver": target.subject
                    if protocol.task == "cross" else None, "frames": fi, "views": vi, "seed": sample.seed,
                    "n_points": avatar.n_points, "finished": avatar.finished,
                    "seconds": round(time.perf_counter() - t0, 3), "metrics": values,
                })
                bar.update(1)
        if protocol.task == "self":
            del sources[key]
    bar.close()
    done = {(r["sample"]) for r in records}
    lost = [s.id for s in samples if s.id not in done]
    if lost:
        raise RuntimeError(f"samples {lost[:5]} were planned but never read from {root} (shards changed?)")

    # ---- reports
    records.sort(key=lambda r: (r["order"], list(labels).index(r["method"])))
    metrics = {m.key: scores[m.key].compute() for m in methods}
    files = write_reports(out, protocol, run_record, methods, labels, metrics, records, example)
    run_record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_record["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "run.json", run_record)
    return EvalResult(out_dir=out, metrics=metrics, labels=labels, table=files["table"].read_text(), files=files)


def regenerate_command(config: EvalConfig, out: Path) -> list[str]:
    """The ``avp eval`` command that recomputes this run from its folder (its ``protocol.yaml``)."""
    root = str(config.data_root or config.protocol.data.root)
    if Path(root).exists():
        root = str(Path(root).resolve())
    cmd = ["avp", "eval", "--protocol", str(out.resolve() / "protocol.yaml"), "--decoder",
           str(Path(config.decoder).resolve()), "--data", root, "--points", *(config.points or ["none"]), "--out",
           str(out.resolve()) + "-again"]
    if config.generator is not None:
        cmd += ["--generator", str(Path(config.generator).resolve())]
    if config.template_decoder is not None:
        cmd += ["--template-decoder", str(Path(config.template_decoder).resolve())]
    if config.limit is not None:
        cmd += ["--limit", str(config.limit)]
    return cmd


def write_reports(out: Path, protocol: EvalProtocol, run_record: dict[str, Any], methods: Sequence[Method],
                  labels: dict[str, str], metrics: dict[str, dict[str, MetricValue]], records: list[dict[str, Any]],
                  example: list[Tensor]) -> dict[str, Path]:
    """Write every report file of a finished run; returns their paths."""
    from torch.utils.tensorboard import SummaryWriter

    sha = run_record["git_sha"]
    n_samples = len({r["sample"] for r in records})
    checkpoints = {m.key: getattr(m, "checkpoint", None) for m in methods}
    files: dict[str, Path] = {}

    samples_text = "".join(json.dumps({**r, "metrics": to_json_value(r["metrics"])}) + "\n" for r in records)
    files["samples"] = out / "samples.jsonl"
    atomic_write_text(files["samples"], samples_text)

    files["metrics_json"] = out / "metrics.json"
    atomic_write_json(files["metrics_json"], {
        "schema": RUN_SCHEMA, "protocol": run_record["protocol"], "n_samples": n_samples,
        "methods": {k: {"label": labels[k], "metrics": to_json_value(v)} for k, v in metrics.items()},
        "checkpoints": run_record["checkpoints"], "options": run_record["options"], "data": run_record["data"],
        "git_sha": sha, "environment": run_record["environment"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    files["metrics_csv"] = out / "metrics.csv"
    atomic_write_text(files["metrics_csv"], _csv(metrics, labels, protocol, sha, n_samples, checkpoints))

    rows = {labels[k]: v for k, v in metrics.items()}
    table = markdown_table(rows, protocol.columns())
    res = protocol.render.resolution
    overrides = run_record["protocol"]["overrides"]
    header = (f"# {protocol.name} v{protocol.version} ({protocol.task}-reenactment)\n\n"
              f"{n_samples} samples of split `{protocol.data.split}`, {res}x{res} renders, face metrics at "
              f"{protocol.face.resolution} px{'; overrides: `' + ' '.join(overrides) + '`' if overrides else ''}; "
              f"git `{sha}`.\n\n")
    notes = _direction_notes(protocol.columns())
    files["table"] = out / "table.md"
    atomic_write_text(files["table"], header + table + notes)

    if example:
        files["examples"] = out / "examples.png"
        atomic_write_bytes(files["examples"], _image_grid(example))

    protocol_record = {"name": protocol.name, "version": protocol.version, **run_record["protocol"]}
    for method in methods:
        key = method.key
        report = RunReport(out / "methods" / _slug(key), method=labels[key], protocol=protocol_record,
                           config={"method": key, **method.describe(), "options": run_record["options"]})
        for r in records:
            if r["method"] == key:
                report.add_sample(r["sample"], r["metrics"], subject=r["subject"], driver=r["driver"],
                                  frames=r["frames"], views=r["views"], seed=r["seed"], n_points=r["n_points"],
                                  finished=r["finished"])
        report.finish(metrics[key])
        writer = SummaryWriter(log_dir=str(out / "tensorboard" / _slug(key)))
        try:
            for tag, value in scalars_for_logging(metrics[key], "test").items():
                writer.add_scalar(tag, value, global_step=0)
            writer.add_text("test/protocol", f"{protocol.name} v{protocol.version}: {labels[key]}", global_step=0)
        finally:
            writer.close()
    files["tensorboard"] = out / "tensorboard"
    return files


def _direction_notes(columns: Sequence[str]) -> str:
    known = [c for c in columns if spec(c).higher_is_better is not None]
    if not known:
        return ""
    return "\n↑ higher is better, ↓ lower is better; the best available value of a column is bold.\n"

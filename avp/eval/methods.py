"""The rows of an evaluation table: each method turns a source clip into an :class:`~avp.models.avatar.Avatar` that
the runner animates and renders like any other.

- ``generated``: the full pipeline, points *sampled* by the generator from the portrait (seeded per clip);
- ``teacher_points``: the same decoder on the shard's teacher points (teacher-forced features), which separates the
  generator's error from the decoder's;
- ``resampled_teacher``: the decoder on a new surface sampling of a synthetic subject's teacher (what a perfect
  generator could give);
- ``template``: a decoder checkpoint trained with ``points: template`` on its fixed head-surface points (the paper's
  "FLAME position" baseline);
- ``teacher``: the shard's teacher fit itself, rendered (the upper bound on these views).

A clip's tracked ``static_offset`` (shards converted from VHAP/GaussianAvatars fits) belongs to its tracked identity:
the teacher row and the decoder rows bound to the clip's identity (``rig_identity: clip``) bind and pose on the offset
mesh; bound to the portrait's identity (``portrait``, as ``avp avatarize`` has no tracked offset) they do not.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from avp.eval.clips import SourceClip
from avp.eval.protocol import EvalProtocol
from avp.models.avatar import Avatar, AvatarModel
from avp.models.sampling import SamplingConfig

METHOD_LABELS = {
    "generated": "AVP (generated points)",
    "teacher_points": "AVP (teacher points)",
    "resampled_teacher": "AVP (resampled teacher points)",
    "template": "Template points (FLAME position)",
    "teacher": "Teacher fit (upper bound)",
}
"""Table rows, in this order."""


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

    def __init__(self, key: str, model: AvatarModel, hparams: dict[str, Any], points: str, sampling: SamplingConfig,
                 rig_identity: str, checkpoint: dict[str, Any]) -> None:
        self.key, self.label = key, METHOD_LABELS[key]
        self.model, self.hparams, self.points, self.sampling = model, hparams, points, sampling
        self.rig_identity = rig_identity
        self.render_backend = model.render_backend
        self.checkpoint = checkpoint

    def build(self, source: SourceClip, seed: int) -> Avatar:
        device = source.portrait.device
        generator = torch.Generator(device=device).manual_seed(seed) if self.points == "generated" else None
        clip = self.rig_identity == "clip"
        shape = source.shape if clip else source.portrait_head.shape
        offset = source.static_offset if clip else None
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
                                         portrait_camera=source.portrait_camera, static_offset=offset)
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

    def __init__(self, head_model: nn.Module, animation: str) -> None:
        self.head_model, self.animation = head_model, animation

    def build(self, source: SourceClip, seed: int) -> Avatar:
        mode = self.animation
        if mode == "auto":
            mode = "face_frame" if source.source == "gaussian_avatars" else "lbs"
        with torch.no_grad():
            rig = self.head_model.rig(source.binding, source.teacher.means, source.shape, source.static_offset)
        return Avatar(cloud=source.teacher, binding=source.binding[0], points=source.teacher.means[0],
                      shape=source.shape[0], head_model=self.head_model, rig=rig, animation=mode,
                      portrait_head=source.portrait_head)

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "points": "teacher", "animation": self.animation,
                "head_model": self.head_model.name}


def sampling_config(decoder: AvatarModel, protocol: EvalProtocol) -> SamplingConfig:
    """The decoder's sampling settings with the protocol's temperature, top-k, top-p, point limits and draws."""
    s = protocol.sampling
    base = decoder.sampling
    cfg = dataclasses.replace(base, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                              max_points=s.max_points if s.max_points is not None else base.max_points,
                              min_points=s.min_points if s.min_points is not None else base.min_points,
                              draws=s.draws if s.draws is not None else base.draws)
    cfg.validate()
    return cfg

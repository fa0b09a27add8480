"""Scoring one method over a run: every metric of the protocol accumulated over all samples (the run's values) and
per sample (the values in ``samples.jsonl``), from renders and their targets.

Per-sample values come from fresh metric states merged into the run's after each sample, so both agree with one
computation over the same images; LPIPS and CLIP similarity keep running totals, whose differences give a sample's mean.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from avp.eval.protocol import EvalProtocol
from avp.eval.report import flatten_metrics
from avp.metrics.distribution import FID, CLIPSimilarity
from avp.metrics.face import IdentitySimilarity, KeypointPoseDistance
from avp.metrics.image import PSNR, SSIM
from avp.metrics.lpips import LPIPS
from avp.metrics.unavailable import MetricValue, Unavailable, as_metric_value

CROSS_NAMES = {"identity_cosine": "cross_identity_cosine", "clip": "cross_clip", "fid": "cross_fid"}
"""Cross-reenactment reports these metrics under the paper's cross names."""


def resize_images(images: Tensor, size: int) -> Tensor:
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

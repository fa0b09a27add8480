"""Metrics, apart from evaluation: used by the LightningModules (``validation_step``/``test_step``) and by the
evaluation runner (:mod:`avp.eval`), never Lightning-aware.

- :mod:`avp.metrics.image`: PSNR, SSIM (masked and unmasked);
- :mod:`avp.metrics.lpips`: LPIPS with the pretrained backbone from a local file, ``load_lpips`` (also for losses);
- :mod:`avp.metrics.face`: identity similarity with detection rate, AKD and APD (``face`` extra);
- :mod:`avp.metrics.distribution`: FID and CLIP similarity from local weights files;
- :mod:`avp.metrics.point_cloud`: generated clouds against the teacher: Chamfer, F-score, exact chunked nearest
  neighbours, binding agreement;
- :mod:`avp.metrics.unavailable`: the value of a metric that could not be computed.

A metric that cannot be computed (missing weights, no face found) returns :class:`Unavailable` from ``compute``:
reports print ``unavailable (<reason>)``, never a number.
"""

from __future__ import annotations

from avp.metrics.distribution import FID, CLIPSimilarity, inception_cache_path, load_clip
from avp.metrics.face import (
    IdentityScores,
    IdentitySimilarity,
    KeypointPoseDistance,
    KeypointPoseScores,
    identity_scores,
    keypoint_pose_scores,
)
from avp.metrics.image import PSNR, SSIM, psnr, ssim
from avp.metrics.lpips import LPIPS, LpipsLoad, backbone_cache_path, load_lpips, lpips_per_image
from avp.metrics.point_cloud import (
    PointCloudMetrics,
    batch_point_cloud_metrics,
    binding_agreement,
    chamfer_distance,
    f_score,
    nearest_neighbors,
    point_cloud_metrics,
)
from avp.metrics.unavailable import MetricValue, Unavailable, as_metric_value, format_value

__all__ = [
    "FID",
    "LPIPS",
    "PSNR",
    "SSIM",
    "CLIPSimilarity",
    "IdentityScores",
    "IdentitySimilarity",
    "KeypointPoseDistance",
    "KeypointPoseScores",
    "LpipsLoad",
    "MetricValue",
    "PointCloudMetrics",
    "Unavailable",
    "as_metric_value",
    "backbone_cache_path",
    "batch_point_cloud_metrics",
    "binding_agreement",
    "chamfer_distance",
    "f_score",
    "format_value",
    "identity_scores",
    "inception_cache_path",
    "keypoint_pose_scores",
    "load_clip",
    "load_lpips",
    "lpips_per_image",
    "nearest_neighbors",
    "point_cloud_metrics",
    "psnr",
    "ssim",
]

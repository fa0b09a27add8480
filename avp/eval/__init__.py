"""Evaluation metrics (torchmetrics-style, usable in a LightningModule's ``validation_step`` and offline) and reports.

- :mod:`avp.eval.image_metrics`: PSNR, SSIM (masked and unmasked);
- :mod:`avp.eval.lpips`: LPIPS with the pretrained backbone from a local file, ``load_lpips`` (also for losses);
- :mod:`avp.eval.face_metrics`: identity similarity with detection rate, AKD and APD (``face`` extra);
- :mod:`avp.eval.distribution`: FID and CLIP similarity from local weights files;
- :mod:`avp.eval.report`: JSON lines, ``metrics.json``/CSV with provenance, paper-layout markdown tables.

A metric that cannot be computed (missing weights, no face found) returns :class:`Unavailable` from ``compute``:
reports print ``unavailable (<reason>)``, never a number.
"""

from __future__ import annotations

from avp.eval.distribution import FID, CLIPSimilarity, inception_cache_path, load_clip
from avp.eval.face_metrics import (
    IdentityScores,
    IdentitySimilarity,
    KeypointPoseDistance,
    KeypointPoseScores,
    identity_scores,
    keypoint_pose_scores,
)
from avp.eval.image_metrics import PSNR, SSIM, psnr, ssim
from avp.eval.lpips import LPIPS, LpipsLoad, backbone_cache_path, load_lpips, lpips_per_image
from avp.eval.report import (
    PAPER_COLUMNS,
    ReportFiles,
    RunMetrics,
    RunReport,
    flatten_metrics,
    markdown_table,
    read_metrics,
    scalars_for_logging,
    table_from_runs,
    write_markdown_table,
)
from avp.eval.unavailable import MetricValue, Unavailable, format_value

__all__ = [
    "FID",
    "LPIPS",
    "PAPER_COLUMNS",
    "PSNR",
    "SSIM",
    "CLIPSimilarity",
    "IdentityScores",
    "IdentitySimilarity",
    "KeypointPoseDistance",
    "KeypointPoseScores",
    "LpipsLoad",
    "MetricValue",
    "ReportFiles",
    "RunMetrics",
    "RunReport",
    "Unavailable",
    "backbone_cache_path",
    "flatten_metrics",
    "format_value",
    "identity_scores",
    "inception_cache_path",
    "keypoint_pose_scores",
    "load_clip",
    "load_lpips",
    "lpips_per_image",
    "markdown_table",
    "psnr",
    "read_metrics",
    "scalars_for_logging",
    "ssim",
    "table_from_runs",
    "write_markdown_table",
]

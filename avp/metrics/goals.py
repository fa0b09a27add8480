"""What "better" means for every metric avp logs, and what a value is comparable across.

One table, read by ``avp compare`` and by the evaluation reports (:mod:`avp.eval.report`) to rank runs and methods.
A logged tag ``stage/name`` is looked up by
its ``name``: exact names first, then glob patterns, in the order below. A name that matches nothing has no goal:
it is tabulated but never ranked or bolded, so a new metric cannot be silently ranked the wrong way.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Goal:
    """How to rank the values of one metric."""

    better: Literal["higher", "lower", "target"]
    """Larger values are better, smaller ones are, or the closest to ``target`` is."""
    target: float | None = None
    """The ideal value when ``better`` is "target" (a count ratio is best at 1)."""
    depends_on: tuple[str, ...] = ()
    """Config key prefixes (dotted, as in the resolved ``config.yaml``) whose values change the metric's scale: runs
    that differ there have incomparable values (cross-entropy over 64 vs 1,024 quantisation levels)."""

    @property
    def arrow(self) -> str:
        if self.better == "target":
            return f"→{self.target:g}"
        return "↑" if self.better == "higher" else "↓"

    def score(self, value: float) -> float:
        """Larger is better: the value, its negative, or minus its distance to the target."""
        if self.better == "higher":
            return value
        if self.better == "lower":
            return -value
        return -abs(value - float(self.target))

    def best(self, values: Sequence[float]) -> float:
        """The best of ``values`` (NaNs ignored; NaN when there is none)."""
        finite = [v for v in values if not math.isnan(v)]
        return max(finite, key=self.score) if finite else math.nan


HIGHER = Goal("higher")
LOWER = Goal("lower")
_GENERATOR_LOSS = ("model.init_args.tokenizer", "model.init_args.model.head")
_DECODER_LOSS = ("model.init_args.loss", "model.init_args.regularization", "data.init_args.image_size")

GOALS: dict[str, Goal] = {
    # generator: teacher-forced token metrics and sampled-cloud metrics (avp.lit.generator)
    "loss": Goal("lower", depends_on=_GENERATOR_LOSS + _DECODER_LOSS),
    "chamfer": LOWER,
    "fscore": HIGHER,
    "fscore_*": HIGHER,
    "count_ratio": Goal("target", target=1.0),
    "binding_agreement": HIGHER,
    "finished_fraction": HIGHER,
    "out_of_box_points": LOWER,
    "acc_*": HIGHER,
    # decoder and evaluation: images (avp.lit.decoder, avp.eval)
    "loss_*": Goal("lower", depends_on=_DECODER_LOSS),
    "psnr": HIGHER,
    "psnr_*": HIGHER,
    "ssim": HIGHER,
    "ssim_*": HIGHER,
    "lpips": LOWER,
    "lpips_*": LOWER,
    # the paper's face and distribution metrics (avp.eval)
    "identity_cosine": HIGHER,
    "identity_same_rate": HIGHER,
    "identity_distance": LOWER,
    "akd": LOWER,
    "apd": LOWER,
    "apd_*": LOWER,
    "keypoint_pair_rate": HIGHER,
    "fid": LOWER,
    "clip": HIGHER,
    "face_detection_rate": HIGHER,
    "finished_rate": HIGHER,
    # cross-reenactment (avp.eval): the same measures across identities
    "cross_fid": LOWER,
    "cross_clip": HIGHER,
    "cross_identity_cosine": HIGHER,
}


def goal_of(tag: str, higher: Sequence[str] = (), lower: Sequence[str] = ()) -> Goal | None:
    """The goal of a logged tag (``val/psnr``, ``test/fscore_1cm``, ``psnr``), or None when it has none.

    ``higher`` / ``lower``: globs over the whole tag that override the table (``avp compare --higher-is-better``).
    """
    if any(fnmatch.fnmatch(tag, p) for p in higher):
        return HIGHER
    if any(fnmatch.fnmatch(tag, p) for p in lower):
        return LOWER
    name = tag.rsplit("/", 1)[-1]
    if name in GOALS:
        return GOALS[name]
    return next((goal for pattern, goal in GOALS.items() if fnmatch.fnmatch(name, pattern)), None)

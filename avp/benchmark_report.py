"""``avp benchmark``'s reports: the markdown table (mean ± std over seeds) and the learning curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ROW_LABELS = {
    "full": "Full (AR points + AR features)",
    "ar_position_only": "AR position only",
    "ar_feature_only": "AR feature only",
    "template": "Template points (FLAME position)",
    "teacher_points": "Ceiling: teacher points",
    "resampled_teacher": "Ceiling: resampled teacher",
}
COLUMNS = (("psnr", "PSNR↑", 2), ("psnr_mask", "PSNR (mask)↑", 2), ("ssim", "SSIM↑", 3),
           ("ssim_mask", "SSIM (mask)↑", 3),
           ("chamfer", "Chamfer (cm)↓", 2), ("fscore_0.5cm", "F@0.5cm↑", 3), ("fscore_1cm", "F@1cm↑", 3),
           ("fscore_2cm", "F@2cm↑", 3), ("count_ratio", "count ratio (1 best)", 2),
           ("binding_agreement", "binding agr.↑", 3))


def _cell(metric: dict[str, Any] | None, digits: int, scale: float = 1.0) -> str:
    if not metric or metric.get("n", 0) == 0 or not math.isfinite(metric.get("mean", math.nan)):
        return "–"
    mean, std, n = metric["mean"] * scale, metric["std"] * scale, metric["n"]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The table of ``results.json``: one line per row, mean ± std over seeds (n in the header); with one seed
    (``avp demo``) the single values, and the header says there is no spread."""
    rows = results["rows"]
    seeds = results.get("seeds") or []
    present = [c for c in COLUMNS if any(c[0] in r for r in rows.values())]
    spread = ("Mean ± sample std over seeds." if len(seeds) > 1 else
              "One run per row, so no std: `avp benchmark` repeats each row over seeds.")
    lines = [f"Commit `{results.get('commit')}`; decoder seeds {seeds}; "
             f"{results.get('generator_seeds', 1)} generator seed(s). {spread}", "",
             "| Row | " + " | ".join(label for _, label, _ in present) + " |",
             "|---|" + "---|" * len(present)]
    for key, metrics in rows.items():
        cells = [_cell(metrics.get(name), digits, 100.0 if name == "chamfer" else 1.0) for name, _, digits in present]
        lines.append(f"| {ROW_LABELS.get(key, key)} | " + " | ".join(cells) + " |")
    gap = results.get("gap_closed") or {}
    if gap:
        parts = [f"{k}: {v * 100:.0f} %" for k, v in gap.items() if math.isfinite(v)]
        lines += ["", "Fraction of the Template → resampled-teacher gap that Full closes: " + ", ".join(parts) + "."]
    lines += ["", "Point metrics compare each row's held-out clouds with the teacher: generated rows share one "
              "generator, so their point metrics are equal; the resampled teacher's are the noise floor (what a "
              "perfect generator reaches); the teacher row's are exact by construction."]
    return "\n".join(lines) + "\n"


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.is_dir():
        return []
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def learning_curves(out: Path, rows: list[str], seeds: list[int], generator_seeds: list[int]) -> list[Path]:
    """``curves.png``: generator validation loss and F-score vs step; each decoder row's validation PSNR vs step
    (one line per seed). Returns the written files."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), dpi=90)
    ax_loss, ax_f, ax_psnr = fig.subplots(1, 3)
    for g in generator_seeds:
        log_dir = out / "runs" / "generator" / f"seed{g}" / "version_0"
        for ax, tag in ((ax_loss, "val/loss"), (ax_f, "val/fscore")):
            points = _scalars(log_dir, tag)
            if points:
                ax.plot(*zip(*points), marker="o", label=f"generator seed {g}")
    ax_loss.set_title("generator: validation loss (teacher-forced)")
    ax_f.set_title("generator: validation F-score of sampled clouds")
    for ax in (ax_loss, ax_f):
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    cmap = ["tab:red", "tab:orange", "tab:olive", "tab:blue", "tab:green", "tab:purple"]
    for i, row in enumerate(rows):
        for j, seed in enumerate(seeds):
            points = _scalars(out / "runs" / row / f"seed{seed}" / "version_0", "val/psnr")
            if points:
                ax_psnr.plot(*zip(*points), color=cmap[i % len(cmap)], alpha=0.8,
                             label=ROW_LABELS.get(row, row) if j == 0 else None)
    ax_psnr.set_title("decoders: validation PSNR (dB), one line per seed")
    ax_psnr.set_xlabel("step")
    if ax_psnr.lines:
        ax_psnr.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path)
    return [path]

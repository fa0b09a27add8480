"""Contact sheets of shard samples: per sample (one row) the portrait, the views of one timestep, a few timesteps
of one view, and the canonical teacher points seen from the front and the side (coloured by their DC colour)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avp.atomic import atomic_write_bytes
from avp.data.reader import ShardRef, iter_raw_samples, resolve_shards
from avp.data.schema import ClipSample, decode_sample

SH_C0 = 0.28209479177387814  # degree-0 SH basis constant


def iter_samples(source: str | os.PathLike, split: str | None = None) -> Iterator[tuple[str, ClipSample]]:
    """Decoded samples of a shard file, a dataset folder (manifest) or a pattern: ``(shard name, sample)``."""
    src = os.fspath(source)
    if src.endswith(".tar") and os.path.isfile(src):
        refs = [ShardRef(path=src, name=os.path.basename(src))]
    else:
        refs, _ = resolve_shards(src, split)
    for ref in refs:
        for raw in iter_raw_samples(ref):
            yield ref.name, decode_sample(raw, shard=ref.name)


def _points_image(sample: ClipSample, axis: str, size: int = 256) -> np.ndarray:
    """Orthographic splat-free view of the teacher centres: ``axis`` "front" (x, y) or "side" (z, y)."""
    g = sample.gaussians
    rgb = np.clip(0.5 + SH_C0 * g.sh[:, 0], 0, 1)
    opacity = 1 / (1 + np.exp(-g.opacity_logits))
    m = g.means
    u, depth = (m[:, 0], m[:, 2]) if axis == "front" else (-m[:, 2], m[:, 0])
    v = m[:, 1]
    lo = np.array([min(u.min(), -0.15), min(v.min(), -0.25)])
    hi = np.array([max(u.max(), 0.15), max(v.max(), 0.15)])
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2 * 1.05
    px = ((u - centre[0]) / half * 0.5 + 0.5) * (size - 1)
    py = (0.5 - (v - centre[1]) / half * 0.5) * (size - 1)
    img = np.ones((size, size, 3))
    radius = max(1, int(round(size / max(np.sqrt(len(m)), 1) / 6)))
    for i in np.argsort(depth):  # far to near
        if opacity[i] < 0.05:
            continue
        x, y = int(round(px[i])), int(round(py[i]))
        img[max(y - radius, 0):y + radius + 1, max(x - radius, 0):x + radius + 1] = rgb[i]
    return img


def contact_sheet(samples: list[tuple[str, ClipSample]], out: str | os.PathLike, *, max_views: int = 6,
                  max_frames: int = 4, dpi: int = 100) -> Path:
    """Draw the sheet with matplotlib (Agg) and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        raise ValueError("contact_sheet: no samples to draw")
    n_views = min(max_views, max(s.meta["views"] for _, s in samples))
    n_frames = min(max_frames, max(s.meta["frames"] for _, s in samples))
    cols = 1 + n_views + max(n_frames - 1, 0) + 2
    fig, axes = plt.subplots(len(samples), cols, figsize=(1.6 * cols, 1.75 * len(samples)), squeeze=False)
    for row, (_, s) in enumerate(samples):
        ax = axes[row]
        for a in ax:
            a.set_axis_off()
        ax[0].imshow(s.portrait)
        extra = s.meta.get("extra", {})
        label = ", ".join(str(extra[k]) for k in ("hair", "beard", "glasses") if extra.get(k) not in (None, False,
                                                                                                     "none"))
        ax[0].set_title(f"{s.meta['subject']} ({s.meta['split']})\n{label}" if label else
                        f"{s.meta['subject']} ({s.meta['split']})", fontsize=6)
        assert s.frames is not None
        views = np.linspace(0, s.meta["views"] - 1, min(n_views, s.meta["views"])).round().astype(int)
        for j, v in enumerate(views):
            ax[1 + j].imshow(s.frames[0, v])
            ax[1 + j].set_title(f"t0 view {v}", fontsize=6)
        times = np.linspace(0, s.meta["frames"] - 1, min(n_frames, s.meta["frames"])).round().astype(int)[1:]
        front = views[len(views) // 2]
        for j, t in enumerate(times):
            ax[1 + n_views + j].imshow(s.frames[t, front])
            ax[1 + n_views + j].set_title(f"t{t} view {front}", fontsize=6)
        ax[-2].imshow(_points_image(s, "front"))
        ax[-2].set_title(f"{s.meta['n_points']} points (front)", fontsize=6)
        ax[-1].imshow(_points_image(s, "side"))
        ax[-1].set_title("points (side)", fontsize=6)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)


def preview(source: str | os.PathLike, out: str | os.PathLike, *, samples: int = 4, split: str | None = None,
            max_views: int = 6, max_frames: int = 4) -> Path:
    """``avp data preview``: the first ``samples`` samples of ``source`` into one PNG."""
    chosen = []
    for item in iter_samples(source, split):
        chosen.append(item)
        if len(chosen) >= samples:
            break
    return contact_sheet(chosen, out, max_views=max_views, max_frames=max_frames)

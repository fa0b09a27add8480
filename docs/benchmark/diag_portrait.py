"""What do a dataset's portraits show? (EXPERIMENTS.md, exp12 and exp13)

Usage: python docs/benchmark/diag_portrait.py DATA_ROOT SPLIT
Prints one JSON line over the split's portraits: how many have foreground (a pixel further than 0.08 from the
median border colour in some channel) on the top row of their middle third, i.e. a head cut off by the frame or
blurred into it; the mean sharpness (mean absolute difference of horizontally adjacent pixels, 0..255 scale); and
the mean number of foreground rows above the teacher's highest point as projected into the portrait (blur and
margin: 0 for a sharp silhouette that ends where the points end).
"""

import json
import sys

import numpy as np

from avp.benchmark_points import held_out_subjects
from avp.data.schema import teacher_cloud


def main(root: str, split: str) -> None:
    samples = held_out_subjects(root, split)
    touching, sharpness, spill = 0, [], []
    for s in samples:
        img = s.portrait.astype(np.float32) / 255
        H, W = img.shape[:2]
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        fg = np.abs(img - np.median(border, 0)).max(-1) > 0.08
        touching += bool(fg[0, W // 3 : 2 * W // 3].any())
        sharpness.append(float(np.abs(np.diff(s.portrait.astype(np.float64), axis=1)).mean()))
        K, V = s.portrait_camera.Ks[0], s.portrait_camera.viewmats[0]
        cam = teacher_cloud(s.gaussians).means[0].numpy() @ V[:3, :3].T + V[:3, 3]
        v = cam[:, 1] / cam[:, 2] * K[1, 1] + K[1, 2]
        rows = np.flatnonzero(fg[:, W // 3 : 2 * W // 3].any(1))
        spill.append(float(max(0.0, v.min() - rows.min())) if len(rows) else 0.0)
    print(json.dumps({"portraits": len(samples), "top_border_touched": touching,
                      "sharpness": round(float(np.mean(sharpness)), 2),
                      "foreground_rows_above_teacher_top": round(float(np.mean(spill)), 1)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

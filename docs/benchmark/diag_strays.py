"""Per hair style: how far the generated clouds lie from each held-out subject's surface, merged draws vs one draw
(EXPERIMENTS.md, exp36).

Usage: python docs/benchmark/diag_strays.py DECODER_CKPT DATA_ROOT GENERATED_EVAL_DIR
GENERATED_EVAL_DIR is an `avp eval --points generated` run of DECODER_CKPT (its protocol gives the sampling settings,
`sampling.draws` included). Every held-out subject's cloud is sampled with those settings and with one draw (sampling
seed 0 for both) and compared with a 4,000-point sampling of the subject's teacher (its surface, hair included):
the share of points more than 1 and 2 cm from it, and the share of that surface within 1.5 cm of the cloud.
"""

import collections
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

import avp.data.synthetic.generate as synthetic
from avp.benchmark_points import held_out_subjects, portrait_inputs
from avp.checkpoints import load_avatar_model
from avp.data.synthetic.teacher import build_teacher
from avp.eval.methods import sampling_config
from avp.eval.protocol import protocol_from_dict


def main(ckpt: str, root: str, eval_dir: str) -> None:
    model, _ = load_avatar_model(ckpt)
    record = json.loads((Path(eval_dir) / "run.json").read_text())
    merged = dataclasses.replace(sampling_config(model, protocol_from_dict(record["protocol"]["content"])),
                                 window=model.feature_window)
    configs = (merged, dataclasses.replace(merged, draws=1))
    rows = collections.defaultdict(list)
    for sample in held_out_subjects(root, "test"):
        extra = sample.meta["extra"]
        _, app, mesh = synthetic._identity(np.random.default_rng([int(extra["seed"]), int(extra["index"])]),
                                           model.head_model, float(extra.get("hair_volume", 1.0)))
        surface = build_teacher(mesh, app, 4000, np.random.default_rng(123))[0].means
        tree = cKDTree(surface)
        portrait, head, shape, camera = portrait_inputs([sample])
        with torch.no_grad():
            condition = model.encode_condition(portrait, head, None, camera)
        values = []
        for cfg in configs:
            with torch.no_grad():
                out = model.generator.sample(condition, cfg, torch.Generator().manual_seed(0), shape=shape)
            points = out.points[0, :int(out.n_points[0])].numpy()
            far = tree.query(points)[0]
            values += [len(points), (far > 0.01).mean(), (far > 0.02).mean(),
                       (cKDTree(points).query(surface)[0] < 0.015).mean()]
        rows[extra["hair"]].append(values)
    print("style subjects | merged: points >1cm >2cm cover@1.5cm | one draw: points >1cm >2cm cover@1.5cm")
    for hair, values in sorted(rows.items()):
        print(hair, len(values), " ".join(f"{v:.3f}" for v in np.mean(values, 0)))


if __name__ == "__main__":
    main(*sys.argv[1:4])

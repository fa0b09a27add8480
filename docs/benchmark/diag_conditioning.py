"""Does a generator's cloud follow the portrait? (EXPERIMENTS.md, exp9 and exp10)

Usage: python docs/benchmark/diag_conditioning.py GENERATOR_CKPT DATA_ROOT SPLIT ['{SamplingConfig overrides}']
Samples one cloud per subject of SPLIT (the benchmark's sampling settings, with the overrides given, e.g.
'{"guidance": 2.0}'; seeded by the subject id, one batched call) and prints one JSON line: the Pearson correlation
over subjects between the top (largest y) of the generated cloud and of the teacher, both tops' spread, the recall at
2 cm of the teacher's points above y = 0.12 m (the hair above the built-in head's crown, for subjects that have
some), the recall at 2 cm of all teacher points and the mean F-score at 1 cm.
"""

import dataclasses
import json
import sys
import zlib

import numpy as np
import torch

from avp.benchmark_points import held_out_subjects, portrait_inputs
from avp.checkpoints import build_generator, load_generator_state, read_generator_checkpoint
from avp.data.schema import teacher_cloud
from avp.metrics.point_cloud import f_score, nearest_neighbors
from avp.models.sampling import SamplingConfig

CROWN = 0.12
SAMPLING = SamplingConfig(max_points=250, min_points=100, bind_nearest=16, window=832, temperature=0.8)


def main(ckpt: str, root: str, split: str, overrides: dict) -> None:
    hp, state = read_generator_checkpoint(ckpt)
    net = build_generator(hp, None, ckpt)
    load_generator_state(net, state, ckpt)
    net.eval()
    samples = held_out_subjects(root, split)
    portrait, head, shape, camera = portrait_inputs(samples)
    generators = [torch.Generator().manual_seed(zlib.crc32(s.meta["subject"].encode())) for s in samples]
    with torch.no_grad():
        condition = net.encode_condition(portrait, head, portrait_camera=camera)
        out = net.sample(condition, dataclasses.replace(SAMPLING, **overrides), generators, shape=shape)
    teacher_top, generated_top, hair_recall, fscore, recall = [], [], [], [], []
    for i, sample in enumerate(samples):
        target = teacher_cloud(sample.gaussians).means[0]
        points = out.points[i, : int(out.n_points[i])]
        teacher_top.append(float(target[:, 1].max()))
        generated_top.append(float(points[:, 1].max()))
        fscore.append(float(f_score(points, target, 0.01)))
        recall.append(float((nearest_neighbors(target, points)[0] <= 0.02).float().mean()))
        hair = target[target[:, 1] > CROWN]
        if len(hair):
            hair_recall.append(float((nearest_neighbors(hair, points)[0] <= 0.02).float().mean()))
    print(json.dumps({
        "r_top": round(float(np.corrcoef(teacher_top, generated_top)[0, 1]), 3),
        "teacher_top_std": round(float(np.std(teacher_top)), 4),
        "generated_top_std": round(float(np.std(generated_top)), 4),
        "hair_recall_2cm": round(float(np.mean(hair_recall)), 3), "subjects_with_hair": len(hair_recall),
        "recall_2cm": round(float(np.mean(recall)), 3),
        "fscore_1cm": round(float(np.mean(fscore)), 3), "points": round(float(out.n_points.float().mean()), 1)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})

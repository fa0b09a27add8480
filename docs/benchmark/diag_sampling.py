"""Sampled clouds of a generator checkpoint on held-out subjects under several sampling settings (EXPERIMENTS.md, exp7).

Usage: python docs/benchmark/diag_sampling.py GENERATOR_CKPT DATA_ROOT SPLIT '{"name": {SamplingConfig fields}}' [LIMIT]
Prints one JSON line per setting: point metrics against the teacher (mean over subjects), the y extent gaps, the
fraction of clouds with fewer than half the teacher's points and the smallest count ratio. Every subject's draw is
seeded by its id; all subjects are sampled in one batched call.
"""

import json
import sys
import zlib

import numpy as np
import torch

from avp.benchmark_points import cloud_metrics, held_out_subjects, portrait_inputs
from avp.checkpoints import build_generator, load_generator_state, read_generator_checkpoint
from avp.data.schema import teacher_cloud
from avp.models.sampling import SamplingConfig

BASE = {"max_points": 250, "bind_nearest": 16, "window": 832}


def main(ckpt: str, root: str, split: str, settings: dict, limit: int) -> None:
    hp, state = read_generator_checkpoint(ckpt)
    net = build_generator(hp, None, ckpt)
    load_generator_state(net, state, ckpt)
    net.eval()
    samples = held_out_subjects(root, split)[:limit]
    portrait, head, shape, camera = portrait_inputs(samples)
    for name, setting in settings.items():
        config = SamplingConfig(**{**BASE, **setting})
        generators = [torch.Generator().manual_seed(zlib.crc32(s.meta["subject"].encode())) for s in samples]
        with torch.no_grad():
            condition = net.encode_condition(portrait, head, portrait_camera=camera)
            out = net.sample(condition, config, generators, shape=shape)
        records = []
        for i, sample in enumerate(samples):
            target = teacher_cloud(sample.gaussians).means[0]
            binding = torch.from_numpy(sample.gaussians.binding.astype(np.int64))
            n = int(out.n_points[i])
            points = out.points[i, :n]
            m = cloud_metrics(points, out.binding[i, :n], target, binding, [0.005, 0.01, 0.02])
            m["ytop_gap"] = float(target[:, 1].max() - points[:, 1].max())
            m["ybot_gap"] = float(points[:, 1].min() - target[:, 1].min())
            m["finished"] = float(out.finished[i])
            records.append(m)
        summary = {k: round(float(np.mean([r[k] for r in records])), 4) for k in records[0]}
        ratios = np.array([r["count_ratio"] for r in records])
        summary["frac_count<0.5"] = float((ratios < 0.5).mean())
        summary["min_count_ratio"] = float(ratios.min())
        print(name, json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]),
         int(sys.argv[5]) if len(sys.argv) > 5 else 10**6)

"""Can the generator's tiny portrait encoder learn where a subject's points are, trained on that alone? (exp10)

Usage: python docs/benchmark/diag_probe_pretrain.py GENERATOR_DATA EVAL_DATA STEPS [TARGET [cnn | WIDTH DEPTH PATCH]]
Trains a fresh ``tiny`` image encoder (the benchmark generator's: 112 px, width 96, depth 2, 16 px patches, 128 out;
or WIDTH, DEPTH, PATCH with 4 heads; or ``cnn``: the ``cnn`` encoder with its default channels) and a geometry probe
(``density`` or ``occupancy``, 8^3 cells over the benchmark tokenizer's box) on the first 1,200 training portraits of
GENERATOR_DATA (batch 32, AdamW 1e-3, seed 0) and prints the probe's loss on EVAL_DATA's test subjects every 100 steps,
after the loss of the best constant prediction there (the training portraits' mean grid: what an encoder that reads
nothing from the portrait can reach).
"""

import sys

import numpy as np
import torch

from avp.benchmark_points import held_out_subjects
from avp.data.schema import teacher_cloud
from avp.models.encoders import ImageEncoder, ImageEncoderConfig
from avp.models.geometry_probe import GeometryProbe, GeometryProbeConfig, cell_counts

BOX = torch.tensor([[-0.1712, -0.2510, -0.2263], [0.1712, 0.2236, 0.1928]])  # the benchmark tokenizer's box


def load(root: str, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Portraits ``[S, 3, H, W]`` in 0..1 and padded teacher centres ``[S, N, 3]`` with their mask."""
    samples = held_out_subjects(root, split)[:limit]
    portraits = torch.stack([torch.from_numpy(np.ascontiguousarray(s.portrait)).permute(2, 0, 1) for s in samples])
    clouds = [teacher_cloud(s.gaussians).means[0] for s in samples]
    means = torch.zeros(len(clouds), max(len(c) for c in clouds), 3)
    mask = torch.zeros(means.shape[:2], dtype=torch.bool)
    for i, c in enumerate(clouds):
        means[i, : len(c)], mask[i, : len(c)] = c, True
    return portraits.float() / 255, means, mask


def mean_grid_loss(means: torch.Tensor, mask: torch.Tensor, val_means: torch.Tensor, val_mask: torch.Tensor,
                   target: str) -> float:
    """The probe's held-out loss when it predicts the training clouds' mean grid for every portrait."""
    counts, val_counts = cell_counts(means, mask, BOX, 8), cell_counts(val_means, val_mask, BOX, 8)
    if target == "occupancy":
        p = (counts > 0).float().mean(0).clamp(1e-6, 1 - 1e-6)
        y = (val_counts > 0).float()
        return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
    share = counts / counts.sum(-1, keepdim=True)
    val_share = val_counts / val_counts.sum(-1, keepdim=True)
    return float(-(val_share * share.mean(0).clamp(min=1e-6).log()).sum(-1).mean())


def main(train_root: str, eval_root: str, steps: int, target: str, encoder_args: dict) -> None:
    torch.manual_seed(0)
    portraits, means, mask = load(train_root, "train", 1200)
    val = load(eval_root, "test")
    encoder = ImageEncoder(ImageEncoderConfig(**{"arch": "tiny", "registers": False, "image_size": 112, "freeze": False,
                                                 **encoder_args}), 128)
    probe = GeometryProbe(128, GeometryProbeConfig(weight=1.0, target=target, cells=8))
    print(f"mean grid: held-out probe loss {mean_grid_loss(means, mask, val[1], val[2], target):.4f}", flush=True)
    opt = torch.optim.AdamW([*encoder.parameters(), *probe.parameters()], lr=1e-3, weight_decay=0.01)
    for step in range(steps + 1):
        if step % 100 == 0:
            encoder.eval()
            with torch.no_grad():
                loss = float(probe.loss(encoder(val[0]), val[1], val[2], BOX))
            encoder.train()
            print(f"step {step}: held-out probe loss {loss:.4f}", flush=True)
        i = torch.randint(0, len(portraits), (32,))
        loss = probe.loss(encoder(portraits[i]), means[i], mask[i], BOX)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    if sys.argv[5:] == ["cnn"]:
        encoder_args = {"arch": "cnn"}
    elif sys.argv[5:]:
        sizes = [int(v) for v in sys.argv[5:8]]
        encoder_args = dict(zip(("tiny_width", "tiny_depth", "tiny_patch"), sizes, strict=True)) | {"tiny_heads": 4}
    else:
        encoder_args = {}
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "density", encoder_args)

"""Can a criterion that sees only the portrait pick the better of several sampled clouds? (EXPERIMENTS.md, exp26)

Usage:
  python docs/benchmark/diag_selection.py points GENERATOR_CKPT DATA_ROOT K
      K clouds per held-out subject (the benchmark's sampling settings, seeded by the subject id); for each
      criterion, the mean F-score at 1 cm and hair recall at 2 cm of the cloud it picks: `silhouette` (IoU of the
      cloud's 2.5 cm discs, posed and projected as in the portrait, with the portrait's foreground, which differs
      from its plain background colour), `consensus` (mean F-score at 1 cm against the other draws: a
      minimum-Bayes-risk pick), `likelihood` (mean log-probability of its tokens under the generator); `first`
      is no selection, `oracle` picks by the F-score against the teacher itself.
  python docs/benchmark/diag_selection.py photo DECODER_CKPT DATA_ROOT EVAL_DIR [EVAL_DIR ...]
      EVAL_DIRs are `avp eval --points generated` runs of DECODER_CKPT with different `sampling.seed`s: each
      subject's clouds are sampled again with the seeds they record, decoded, and rendered in the portrait's own
      pose and camera; `photo` picks the draw whose render is nearest the portrait (PSNR), `photo_fg` the same inside
      the portrait's foreground. Prints the mean held-out PSNR of the picked draws, of each draw, and the oracle's.
"""

import json
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from avp.benchmark_points import held_out_subjects, portrait_inputs
from avp.checkpoints import build_generator, load_avatar_model, load_generator_state, read_generator_checkpoint
from avp.data.schema import teacher_cloud
from avp.eval.methods import sampling_config
from avp.eval.protocol import protocol_from_dict
from avp.metrics.point_cloud import f_score, nearest_neighbors
from avp.models.pixel_aligned import project_points
from avp.models.sampling import SamplingConfig
from avp.types import Cameras

SAMPLING = SamplingConfig(max_points=250, min_points=100, bind_nearest=16, window=832, temperature=0.8)
CROWN = 0.12
DISC = 0.025


def background(portrait: torch.Tensor) -> torch.Tensor:
    """``[3]``: the median colour of a ``[3, H, W]`` portrait's border (the synthetic portraits' plain background)."""
    return torch.cat([portrait[:, 0], portrait[:, -1], portrait[:, :, 0], portrait[:, :, -1]], -1).median(-1).values


def foreground(portrait: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` bool: pixels of a ``[3, H, W]`` portrait that differ from its background colour."""
    return (portrait - background(portrait)[:, None, None]).abs().amax(0) > 0.08


def silhouette(head_model, points, binding, shape, head, Ks, viewmats, height, width) -> torch.Tensor:
    """``[H, W]`` bool: discs of radius ``DISC`` around the cloud's points posed and projected as in the portrait."""
    rig = head_model.rig(binding[None], points[None], shape[None])
    posed = rig.deform(head.map(lambda t: t[:, None].to(points.dtype)), mode="lbs").means[:, 0]
    uv, depth = project_points(posed, Ks, viewmats)
    radius = DISC * Ks[0, 0, 0] / depth[0]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    inside = torch.cdist(torch.stack([xs, ys], -1).reshape(-1, 2), uv[0]) <= radius[None]
    return inside.any(-1).reshape(height, width)


@torch.no_grad()
def points_mode(ckpt: str, root: str, k: int) -> dict:
    hp, state = read_generator_checkpoint(ckpt)
    net = build_generator(hp, None, ckpt)
    load_generator_state(net, state, ckpt)
    net.eval()
    samples = held_out_subjects(root, "test")
    portrait, head, shape, camera = portrait_inputs(samples)
    generators = [torch.Generator().manual_seed(zlib.crc32(s.meta["subject"].encode())) for s in samples]
    condition = net.encode_condition(portrait, head, portrait_camera=camera)
    draws = [net.sample(condition, SAMPLING, generators, shape=shape) for _ in range(k)]
    height, width = portrait.shape[-2:]
    picks: dict[str, list[tuple[float, float]]] = {c: [] for c in
                                                   ("first", "silhouette", "consensus", "likelihood", "oracle")}
    for i, sample in enumerate(samples):
        target = teacher_cloud(sample.gaussians).means[0]
        hair = target[target[:, 1] > CROWN]
        mask = foreground(portrait[i])
        one = head.map(lambda t, i=i: t[i : i + 1])
        Ks, viewmats = camera.Ks[i].reshape(1, 3, 3), camera.viewmats[i].reshape(1, 4, 4)
        clouds = [(d.points[i, : int(d.n_points[i])].float(), d.binding[i, : int(d.n_points[i])]) for d in draws]
        score = {c: [] for c in picks}
        quality = []
        for j, (points, binding) in enumerate(clouds):
            drawn = silhouette(net.head_model, points, binding, shape[i], one, Ks, viewmats, height, width)
            score["silhouette"].append(float((drawn & mask).sum() / (drawn | mask).sum()))
            score["consensus"].append(float(np.mean([float(f_score(points, other, 0.01))
                                                     for m, (other, _) in enumerate(clouds) if m != j])))
            length = int(draws[j].lengths[i])
            tokens = draws[j].tokens[i : i + 1, :length]
            logp = net.teacher_forced(condition[i : i + 1], tokens, SAMPLING.window).logits[0, :-1].log_softmax(-1)
            score["likelihood"].append(float(logp.gather(-1, tokens[0, 1:, None]).mean()))
            fs = float(f_score(points, target, 0.01))
            score["oracle"].append(fs)
            score["first"].append(-j)
            recall = float((nearest_neighbors(hair, points)[0] <= 0.02).float().mean()) if len(hair) else np.nan
            quality.append((fs, recall))
        for c in picks:
            picks[c].append(quality[int(np.argmax(score[c]))])
    return {c: {"fscore_1cm": round(float(np.mean([q[0] for q in v])), 4),
                "hair_recall_2cm": round(float(np.nanmean([q[1] for q in v])), 4)} for c, v in picks.items()}


@torch.no_grad()
def photo_mode(ckpt: str, root: str, eval_dirs: list[str]) -> dict:
    model, _ = load_avatar_model(ckpt)
    runs, configs = [], []
    for folder in eval_dirs:
        record = json.loads((Path(folder) / "run.json").read_text())
        configs.append(sampling_config(model, protocol_from_dict(record["protocol"]["content"])))
        runs.append({json.loads(line)["subject"]: json.loads(line)
                     for line in (Path(folder) / "samples.jsonl").read_text().splitlines()})
    picked: dict[str, list[float]] = {"photo": [], "photo_fg": [], "oracle": []}
    per_draw: list[list[float]] = [[] for _ in eval_dirs]
    for sample in held_out_subjects(root, "test"):
        subject = sample.meta["subject"]
        portrait, head, shape, camera = portrait_inputs([sample])
        mask = foreground(portrait[0])[None].float()
        view = Cameras(Ks=camera.Ks.reshape(1, 3, 3), viewmats=camera.viewmats.reshape(1, 4, 4),
                       width=camera.width, height=camera.height)
        heldout, photo, photo_fg = [], [], []
        for j, (run, cfg) in enumerate(zip(runs, configs)):
            generator = torch.Generator().manual_seed(int(run[subject]["seed"]))
            inputs = model.prepare(portrait, head, points="generated", shape=shape, sampling=cfg,
                                   generator=generator, portrait_camera=camera)
            if int(inputs.n_points[0]) != int(run[subject]["n_points"]):
                raise SystemExit(f"diag_selection: {subject}: not the draw of {eval_dirs[j]}")
            avatar = model.avatar(inputs, model.decode(inputs), portrait_head=head)
            error = (avatar.render(view, head, background=background(portrait[0])).rgb[0, 0] - portrait[0]) ** 2
            photo.append(float(-10 * torch.log10(error.mean())))
            photo_fg.append(float(-10 * torch.log10((error * mask).sum() / (3 * mask.sum()))))
            heldout.append(float(run[subject]["metrics"]["psnr"]))
            per_draw[j].append(heldout[-1])
        picked["photo"].append(heldout[int(np.argmax(photo))])
        picked["photo_fg"].append(heldout[int(np.argmax(photo_fg))])
        picked["oracle"].append(max(heldout))
    return {"picked": {c: round(float(np.mean(v)), 3) for c, v in picked.items()},
            "draws": [round(float(np.mean(v)), 3) for v in per_draw]}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "points":
        print(json.dumps(points_mode(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    elif mode == "photo":
        print(json.dumps(photo_mode(sys.argv[2], sys.argv[3], sys.argv[4:])))
    else:
        raise SystemExit(f"diag_selection: mode must be points or photo, got {mode!r}")

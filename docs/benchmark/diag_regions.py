"""Where do generated clouds lose to a resampled teacher? Region by region (EXPERIMENTS.md, exp26).

Usage: python docs/benchmark/diag_regions.py DECODER_CKPT DATA_ROOT GENERATED_EVAL_DIR OUT REGION [OVERRIDE ...]

GENERATED_EVAL_DIR is an `avp eval --points generated` run of DECODER_CKPT on DATA_ROOT's test split: its
samples.jsonl gives every subject's sampling seed, so the clouds below are the ones that evaluation rendered (their
point counts are checked). Each held-out subject's cloud becomes the generated cloud with its points inside REGION
(canonical metres, y up, z forward) replaced by the points of an independent resampling of the subject's teacher inside
REGION; `avp eval --points resampled` then renders that cloud with DECODER_CKPT into OUT (protocol
configs/eval/self_reenactment.yaml with the OVERRIDEs, e.g. render.resolution=64 frames.max_frames=2). REGION `none`
evaluates the generated clouds through the same path, `all` the resampled teacher. Prints the PSNR and masked PSNR.
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

import avp.data.synthetic.generate as synthetic
from avp.benchmark_points import held_out_subjects, portrait_inputs
from avp.checkpoints import load_avatar_model
from avp.data.layout import TeacherGaussians
from avp.eval.methods import sampling_config
from avp.eval.protocol import protocol_from_dict

REGIONS = {
    "none": lambda p: np.zeros(len(p), bool),
    "all": lambda p: np.ones(len(p), bool),
    "top": lambda p: p[:, 1] >= 0.08,
    "neck": lambda p: p[:, 1] < -0.08,
    "face": lambda p: (p[:, 1] >= -0.08) & (p[:, 2] > 0.03),
    "back": lambda p: (p[:, 1] >= -0.08) & (p[:, 1] < 0.08) & (p[:, 2] < -0.03),
    "sides": lambda p: (p[:, 1] >= -0.08) & (p[:, 1] < 0.08) & (np.abs(p[:, 2]) <= 0.03),
}
"""Canonical regions of the built-in head: above 8 cm (top), below -8 cm (neck), in front of z = 3 cm above the neck
(face, overlapping the top's front), and the band between -8 and 8 cm behind z = -3 cm (back) or between (sides)."""


def generated_clouds(ckpt: str, root: str, eval_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per subject: the ``(points [N, 3], binding [N])`` the evaluation in ``eval_dir`` sampled."""
    model, _ = load_avatar_model(ckpt)
    record = json.loads((Path(eval_dir) / "run.json").read_text())
    runs = {json.loads(line)["subject"]: json.loads(line)
            for line in (Path(eval_dir) / "samples.jsonl").read_text().splitlines()}
    protocol = protocol_from_dict(record["protocol"]["content"])
    cfg = dataclasses.replace(sampling_config(model, protocol), window=model.feature_window)
    out = {}
    for sample in held_out_subjects(root, "test"):
        subject = sample.meta["subject"]
        portrait, head, shape, camera = portrait_inputs([sample])
        generator = torch.Generator().manual_seed(int(runs[subject]["seed"]))
        with torch.no_grad():
            condition = model.encode_condition(portrait, head, None, camera)
            s = model.generator.sample(condition, cfg, generator, shape=shape)
        n = int(s.n_points[0])
        if n != int(runs[subject]["n_points"]):
            raise SystemExit(f"diag_regions: {subject}: sampled {n} points, the evaluation had "
                             f"{runs[subject]['n_points']}: not the evaluation's sampling settings")
        out[subject] = (s.points[0, :n].numpy(), s.binding[0, :n].numpy())
    return out


def main(ckpt: str, root: str, eval_dir: str, out: str, region: str, overrides: list[str]) -> None:
    if region not in REGIONS:
        raise SystemExit(f"diag_regions: REGION must be one of {sorted(REGIONS)}, got {region!r}")
    clouds = generated_clouds(ckpt, root, eval_dir)
    inside = REGIONS[region]
    resample = synthetic.resample_teacher

    def mixed(meta: dict, head_model: torch.nn.Module, draw: int = 1) -> TeacherGaussians:
        teacher = resample(meta, head_model, draw)
        points, binding = clouds[meta["subject"]]
        keep, take = ~inside(points), inside(teacher.means)
        means = np.concatenate([points[keep], teacher.means[take]]).astype(np.float32)
        n = len(means)
        return TeacherGaussians(  # only the centres and faces are read (the decoder makes the splats)
            means=means, binding=np.concatenate([binding[keep], teacher.binding[take]]).astype(np.int32),
            log_scales=np.full((n, 3), -4.0, np.float32), opacity_logits=np.zeros(n, np.float32),
            quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)), sh=np.zeros((n, 1, 3), np.float32))

    synthetic.resample_teacher = mixed
    from avp.eval.cli import main as evaluate

    args = ["--protocol", "configs/eval/self_reenactment.yaml", "--decoder", ckpt, "--data", root, "--out", out,
            "--overwrite", "--no-teacher", "--no-progress", "--points", "resampled"]
    for item in overrides:
        args += ["--override", item]
    if evaluate(args) != 0:
        raise SystemExit("diag_regions: avp eval failed")
    [method] = json.loads((Path(out) / "metrics.json").read_text())["methods"].values()
    print(json.dumps({"region": region, "psnr": round(method["metrics"]["psnr"], 3),
                      "psnr_masked": round(method["metrics"]["psnr_masked"], 3)}))


if __name__ == "__main__":
    main(*sys.argv[1:6], sys.argv[6:])

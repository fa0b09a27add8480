"""Controls of EXPERIMENTS.md exp9: what in a point cloud costs PSNR? `avp eval` of a decoder on held-out subjects with
one property of the points changed.

Usage: python docs/benchmark/diag_controls.py DECODER_CKPT DATA_ROOT OUT CONTROL [VALUE]
CONTROL (the resampled teacher, a perfect generator's cloud, unless said otherwise):
  resampled         as is
  quantise LEVELS   snapped to the centres of a LEVELS-per-axis grid over the tokenizer's box
  jitter SIGMA      plus N(0, SIGMA^2) metres per axis (seeded by the subject)
  cut_top DY        without its points within DY metres of its top
  generated         the decoder's generated clouds (its sampling settings, temperature 0.8)
  bind_nearest1     the generated clouds with every face token restricted to the point's nearest face
  generated_by CKPT the clouds another generator (a GeneratorModule checkpoint) samples, decoded by this decoder: it
                    is swapped into a copy of the decoder checkpoint (OUT.ckpt; another architecture only for a
                    position-only decoder without cross-attention, which never reads it)
The protocol is the benchmark's (configs/eval/self_reenactment.yaml with its overrides); prints OUT/metrics.json's
path.
"""

import dataclasses
import sys
import zlib

import numpy as np

import avp.data.synthetic.generate as synthetic
import avp.models.sampling as sampling

OVERRIDES = ["render.resolution=64", "face.resolution=256", "face.akd_resolution=256", "frames.max_frames=2",
             "sampling.temperature=0.8"]


def _subset(t, keep):
    return dataclasses.replace(t, means=t.means[keep], binding=t.binding[keep], log_scales=t.log_scales[keep],
                               opacity_logits=t.opacity_logits[keep], quats=t.quats[keep], sh=t.sh[keep])


def patch(control: str, value: float, box: np.ndarray) -> str:
    """Patch the resampling (or the sampler) for ``control``; returns the point source to evaluate."""
    resample = synthetic.resample_teacher

    def changed(meta, head, draw=1):
        t = resample(meta, head, draw)
        if control == "quantise":
            step = (box[1] - box[0]) / value
            q = np.clip(np.floor((t.means - box[0]) / step), 0, value - 1)
            return dataclasses.replace(t, means=(box[0] + (q + 0.5) * step).astype(np.float32))
        if control == "jitter":
            rng = np.random.default_rng(zlib.crc32(meta["subject"].encode()))
            return dataclasses.replace(t, means=(t.means + rng.normal(0, value, t.means.shape)).astype(np.float32))
        if control == "cut_top":
            return _subset(t, t.means[:, 1] < t.means[:, 1].max() - value)
        return t

    if control in ("quantise", "jitter", "cut_top", "resampled"):
        synthetic.resample_teacher = changed
        return "resampled"
    if control == "bind_nearest1":
        nearest = sampling._restrict_to_nearest_faces

        def nearest_only(allowed, point, centers, k, offset):
            return nearest(allowed, point, centers, 1, offset)

        sampling._restrict_to_nearest_faces = nearest_only
        return "generated"
    if control == "generated":
        return "generated"
    raise SystemExit(f"diag_controls: unknown control {control!r}")


def swap_generator(ckpt: str, generator: str, out: str) -> str:
    """A copy of the decoder checkpoint ``ckpt`` at ``out`` whose frozen generator is ``generator`` (weights and
    hyper-parameters). A generator of another architecture is accepted only by a decoder that never reads it
    (``inputs: position``, no cross-attention): its own weights are then what they would be with that generator."""
    import torch

    decoder = torch.load(ckpt, map_location="cpu", weights_only=False)
    source = torch.load(generator, map_location="cpu", weights_only=False)
    weights = {k[len("net."):]: v for k, v in source["state_dict"].items() if k.startswith("net.")}
    prefix = "model.generator."
    state = decoder["state_dict"]
    if sorted(k[len(prefix):] for k in state if k.startswith(prefix)) != sorted(weights):
        settings = decoder["hyper_parameters"]["decoder"]
        if settings["inputs"] != "position" or settings["cross_attention"]:
            raise SystemExit(f"diag_controls: {generator} is not a generator of {ckpt}'s architecture, and that "
                             "decoder reads its generator's features or condition")
    decoder["state_dict"] = {k: v for k, v in state.items() if not k.startswith(prefix)} | {
        prefix + k: v for k, v in weights.items()}
    decoder["hyper_parameters"]["generator_hparams"] = dict(source["hyper_parameters"])
    torch.save(decoder, out)
    return out


def main(ckpt: str, root: str, out: str, control: str, value: str) -> int:
    import torch

    from avp.eval.cli import main as evaluate

    if control == "generated_by":
        ckpt, control, value = swap_generator(ckpt, value, out.rstrip("/") + ".ckpt"), "generated", ""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    box = next(v for k, v in state.items() if k.endswith("tokenizer.bounds")).numpy()
    points = patch(control, float(value or 0), box)
    args = ["--protocol", "configs/eval/self_reenactment.yaml", "--decoder", ckpt, "--data", root, "--out", out,
            "--overwrite", "--no-teacher", "--no-progress", "--points", points]
    for item in OVERRIDES:
        args += ["--override", item]
    return evaluate(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else ""))

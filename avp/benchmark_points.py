"""Point metrics of held-out clouds against their teachers, with their noise floor (``avp benchmark`` step 5).

For every held-out subject: clouds sampled from the portrait (one draw per seed, by the decoder checkpoint of that
seed, so the settings are the ones its evaluation used), the template points on the subject's neutral head, and an
independent resampling of the subject's teacher (:func:`avp.data.synthetic.generate.resample_teacher`): how far a
perfect generator's clouds are from the teacher, which no method can beat on these metrics.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avp.metrics.point_cloud import binding_agreement, chamfer_distance, f_score

SOURCES = ("generated", "template", "resampled", "teacher")
"""Named as :class:`avp.benchmark.BenchmarkRow`'s ``eval_points``."""


def tau_name(tau: float) -> str:
    """``0.01`` -> ``fscore_1cm``, ``0.005`` -> ``fscore_0.5cm``."""
    return f"fscore_{tau * 100:g}cm"


def cloud_metrics(pred: torch.Tensor, pred_binding: torch.Tensor, target: torch.Tensor,
                  target_binding: torch.Tensor, taus: Sequence[float]) -> dict[str, float]:
    """``chamfer``, ``fscore_<tau>cm`` for each tau, ``count_ratio`` and ``binding_agreement`` of ``pred [N, 3]``
    against ``target [M, 3]``."""
    out = {"chamfer": float(chamfer_distance(pred, target))}
    for tau in taus:
        out[tau_name(tau)] = float(f_score(pred, target, tau))
    out["count_ratio"] = pred.shape[0] / max(target.shape[0], 1)
    out["binding_agreement"] = float(binding_agreement(pred, pred_binding, target, target_binding))
    return out


def _mean(records: list[dict[str, float]]) -> dict[str, float]:
    keys = records[0].keys() if records else ()
    return {k: float(np.nanmean([r[k] for r in records])) if any(math.isfinite(r[k]) for r in records)
            else math.nan for k in keys}


def held_out_subjects(data_root: str | Path, split: str) -> list[Any]:
    """Every sample of ``split`` (decoded without frames), in shard order."""
    from avp.data.reader import iter_raw_samples, resolve_shards
    from avp.data.schema import decode_sample

    shards, _ = resolve_shards(data_root, split)
    return [decode_sample(raw, shard=ref.name, decode_frames=False) for ref in shards
            for raw in iter_raw_samples(ref)]


def portrait_inputs(samples: Sequence[Any]) -> tuple[torch.Tensor, Any, torch.Tensor, Any]:
    """Decoded shard samples -> what the generator's condition and sampling take, stacked: ``portrait [B, 3, H, W]``
    in 0..1, its head parameters ``[B]``, identities ``shape [B, S]`` and the portrait cameras (``Ks [B, 1, 3, 3]``)."""
    from avp.types import Cameras, HeadParams

    portrait = torch.stack([torch.from_numpy(np.ascontiguousarray(s.portrait)).permute(2, 0, 1) for s in samples])
    head = HeadParams.from_dict({k: np.stack([np.asarray(s.portrait_head[k]) for s in samples])
                                 for k in samples[0].portrait_head})
    shape = torch.stack([torch.from_numpy(np.asarray(s.head["shape"], dtype=np.float32)) for s in samples])
    cameras = [Cameras.from_arrays(s.portrait_camera, batched=True) for s in samples]
    camera = Cameras(Ks=torch.cat([c.Ks for c in cameras]), viewmats=torch.cat([c.viewmats for c in cameras]),
                     width=cameras[0].width, height=cameras[0].height)
    return portrait.float() / 255, head, shape, camera


@torch.no_grad()
def held_out_point_metrics(data_root: str | Path, split: str, decoder_ckpts: Sequence[str | Path],
                           seeds: Sequence[int], taus: Sequence[float],
                           temperature: float | None = None,
                           draws: int | None = None) -> list[dict[str, dict[str, float]]]:
    """Per seed: ``{source: {metric: mean over held-out subjects}}`` for ``SOURCES``.

    Args:
        data_root, split: the dataset and its held-out split.
        decoder_ckpts: one DecoderModule checkpoint per seed (its frozen generator samples the clouds, with its
            sampling settings; its template points are the template row's).
        seeds: sampling seeds, one draw per subject and seed.
        temperature: sampling temperature (None: the decoder's).
        draws: clouds merged per portrait (``SamplingConfig.draws``; None: the decoder's).
    """
    from avp.checkpoints import load_avatar_model
    from avp.data.schema import teacher_cloud
    from avp.data.synthetic.generate import resample_teacher
    from avp.types import Cameras, HeadParams

    samples = held_out_subjects(data_root, split)
    if not samples:
        raise ValueError(f"point metrics: split {split!r} of {data_root} has no samples")
    device = torch.device("cpu")
    results = []
    for i, seed in enumerate(seeds):
        model, _ = load_avatar_model(decoder_ckpts[i], device=device)
        sampling = model.sampling
        if temperature is not None:
            sampling = dataclasses.replace(sampling, temperature=temperature)
        if draws is not None:
            sampling = dataclasses.replace(sampling, draws=draws)
        per_source: dict[str, list[dict[str, float]]] = {s: [] for s in SOURCES}
        for sample in samples:
            teacher = teacher_cloud(sample.gaussians)
            target, target_binding = teacher.means[0], torch.from_numpy(sample.gaussians.binding.astype(np.int64))
            portrait = torch.from_numpy(np.ascontiguousarray(sample.portrait)).permute(2, 0, 1)[None].float() / 255
            head = HeadParams.from_dict({k: np.asarray(v)[None] for k, v in sample.portrait_head.items()})
            shape = torch.from_numpy(np.asarray(sample.head["shape"], dtype=np.float32))[None]
            subject_seed = seed * 1_000_003 + zlib.crc32(sample.meta["subject"].encode())
            gen = torch.Generator(device=device).manual_seed(subject_seed)
            camera = Cameras.from_arrays(sample.portrait_camera, batched=True)
            condition = model.encode_condition(portrait, head, portrait_camera=camera)
            out = model.generator.sample(condition, sampling, gen, shape=shape)
            n = int(out.n_points[0])
            per_source["generated"].append(cloud_metrics(out.points[0, :n], out.binding[0, :n], target,
                                                         target_binding, taus))
            means, binding = model.template_cloud(shape)
            per_source["template"].append(cloud_metrics(means[0], binding[0], target, target_binding, taus))
            resampled = resample_teacher(sample.meta, model.head_model)
            per_source["resampled"].append(cloud_metrics(
                torch.from_numpy(resampled.means), torch.from_numpy(resampled.binding.astype(np.int64)), target,
                target_binding, taus))
            per_source["teacher"].append(cloud_metrics(target, target_binding, target, target_binding, taus))
        results.append({source: _mean(records) for source, records in per_source.items()})
    return results

"""``avp bench data``: synthetic subjects per minute, and AvatarDataModule samples per second with 0, 1 and 2 workers
at demo settings, next to a decoder-like training step (render forward + backward) on the same batch."""

from __future__ import annotations

import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

DESCRIPTION = "synthetic subjects/min and DataModule samples/s (0/1/2 workers) vs a render training step"


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--subjects", type=int, default=8, help="subjects to synthesise (default 8)")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--points", type=int, nargs=2, default=[300, 600], metavar=("MIN", "MAX"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per loader configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--synth-workers", type=int, default=0, help="processes for the all-core synth (0: all)")


def _loader_rate(root: str, workers: int, args: Namespace, epochs: int = 3) -> dict[str, float]:
    """Steady-state samples/s (best of ``epochs``; the first batch of each epoch, which includes worker start-up,
    is timed separately)."""
    from avp.lit.data import AvatarDataModule

    n = args.batches * args.batch_size
    dm = AvatarDataModule(root, batch_size=args.batch_size, num_workers=workers, frames_per_sample=1,
                          views_per_sample=args.views, samples_per_epoch=n + args.batch_size * max(workers, 1),
                          shuffle_buffer=8, persistent_workers=False)
    loader = dm.train_dataloader()
    rates, firsts = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)
        firsts.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        count = sum(batch.batch_size for batch in it)
        rates.append(count / (time.perf_counter() - t1))
    return {"samples_per_s": round(max(rates), 2), "samples_per_s_median": round(sorted(rates)[len(rates) // 2], 2),
            "first_batch_s": round(min(firsts), 3), "samples_per_epoch": count + args.batch_size}


def _render_step(root: str, args: Namespace) -> float:
    """Seconds of a decoder-like step on a real batch: render teacher x views, L1 to the targets, backward."""

    from avp.bench._timing import measure
    from avp.lit.data import AvatarDataModule
    from avp.render import render
    from avp.types import GaussianCloud

    dm = AvatarDataModule(root, batch_size=args.batch_size, num_workers=0, frames_per_sample=1,
                          views_per_sample=args.views)
    batch = next(iter(dm.train_dataloader()))
    t = batch.teacher
    means = t.means.clone().requires_grad_(True)
    sh = t.sh.clone().requires_grad_(True)

    def step() -> None:
        cloud = GaussianCloud(means=means, quats=t.quats, scales=t.scales, opacities=t.opacities, sh=sh, mask=t.mask)
        out = render(cloud, batch.cameras, background=1.0)
        loss = (out.rgb - batch.images[:, 0]).abs().mean()
        loss.backward()

    return measure(step, warmup=1, repeat=3)["median_s"]


def run(args: Namespace) -> dict[str, Any]:
    import torch

    from avp.data.synthetic import SynthConfig, synthesize

    threads = torch.get_num_threads()
    result: dict[str, Any] = {"settings": {"views": args.views, "frames": args.frames, "size": args.size,
                                           "points": list(args.points), "batch_size": args.batch_size}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(subjects=args.subjects, views=args.views, frames=args.frames, size=args.size,
                          portrait_size=args.size, points=(args.points[0], args.points[1]), seed=0,
                          val_fraction=0.0, test_fraction=0.0, shard_samples=2)
        one = os.path.join(tmp, "one")
        t0 = time.perf_counter()
        synthesize(cfg, one, workers=1, progress=False)
        t_one = time.perf_counter() - t0
        cores = args.synth_workers or os.cpu_count() or 1
        t0 = time.perf_counter()
        synthesize(cfg, os.path.join(tmp, "all"), workers=cores, progress=False)
        t_all = time.perf_counter() - t0
        torch.set_num_threads(threads)
        result["synth"] = {
            "subjects": args.subjects,
            "subjects_per_min_1_process": round(args.subjects / t_one * 60, 2),
            "subjects_per_min_all_cores": round(args.subjects / t_all * 60, 2),
            "processes": cores,
            "speedup_all_cores": round(t_one / t_all, 2),
        }
        loaders = {f"workers_{w}": _loader_rate(one, w, args) for w in args.workers}
        result["datamodule"] = loaders
        step_s = _render_step(one, args)
        batch_s = args.batch_size / loaders[f"workers_{args.workers[0]}"]["samples_per_s"]
        result["render_step"] = {
            "seconds": round(step_s, 4),
            "loader_batch_s_workers_0": round(args.batch_size / loaders["workers_0"]["samples_per_s"], 4)
            if "workers_0" in loaders else None,
            "loader_share_of_step_in_process": round(batch_s / (batch_s + step_s), 3),
        }
    return result

"""Synthetic subjects end to end: sample a subject, build its teacher, animate and render its clip, write shards.

A subject's frames are renders of its own teacher Gaussians, animated by ``avp.head.animate_gaussians`` (LBS mode,
the paper's animation) and rendered by ``avp.render.render``: the teacher is an exact fit of its frames by
construction, so a model that reproduces the teacher reproduces the images.

Determinism: subject ``i`` of seed ``s`` draws everything from ``numpy.random.default_rng([s, i])`` and renders
with one torch thread, so a dataset is byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avp.atomic import atomic_write_json
from avp.data.manifest import (
    MANIFEST_NAME,
    SYNTH_PROGRESS,
    Manifest,
    ShardInfo,
    assign_splits,
    read_manifest,
    write_manifest,
)
from avp.data.schema import ClipSample, encode_sample, make_meta, sample_key, teacher_cloud
from avp.data.synthetic import motion
from avp.data.synthetic.appearance import sample_appearance
from avp.data.synthetic.cameras import clip_cameras, portrait_camera
from avp.data.synthetic.geometry import CanonicalMesh
from avp.data.synthetic.teacher import build_teacher
from avp.data.writer import remove_stale_temporaries, write_shards
from avp.types import Cameras, HeadParams


@dataclass
class SynthConfig:
    """A synthetic dataset (recorded in ``shards.json``)."""

    subjects: int = 16
    views: int = 8
    """Cameras per clip."""
    frames: int = 4
    """Timesteps per clip."""
    size: int = 128
    """Frame size (square, pixels)."""
    portrait_size: int = 128
    seed: int = 0
    points: tuple[int, int] = (2000, 20000)
    """Teacher point count range; each subject draws a target log-uniformly, then density varies by region."""
    sh_degree: int = 0
    cameras: str = "arc"
    """``arc`` (NeRSemble-like frontal arc) or ``sphere``."""
    hair_volume: float = 1.0
    """Hair depth off the scalp relative to the default look (capped at 5 cm; see ``sample_appearance``)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    portrait_background: str = "random"
    """``random`` (a plain colour per subject), ``same`` (as the frames), ``white`` or ``black``."""
    portrait_points: int = 0
    """0: the portrait is a render of the subject's teacher Gaussians (the points the clips are rendered from). N > 0:
    a render of an independent sampling of the same subject with N points, like a photo: as sharp as N allows (a
    100-200 point teacher renders a blurred portrait), and showing nothing of where the teacher's points are."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    shard_samples: int = 32
    """Samples per shard."""

    def __post_init__(self) -> None:
        if self.subjects < 1 or self.views < 1 or self.frames < 1 or self.size < 8 or self.portrait_size < 8:
            raise ValueError("subjects, views and frames must be >= 1 and sizes >= 8")
        if not 1 <= self.points[0] <= self.points[1]:
            raise ValueError(f"points must be a range 1 <= MIN <= MAX, got {self.points}")
        if not self.hair_volume > 0:
            raise ValueError(f"hair_volume must be > 0, got {self.hair_volume}")
        if self.portrait_points < 0:
            raise ValueError(f"portrait_points must be >= 0, got {self.portrait_points}")
        if self.portrait_background not in ("random", "same", "white", "black"):
            raise ValueError(f"unknown portrait_background {self.portrait_background!r}")


def subject_id(index: int) -> str:
    return f"synth-{index:06d}"


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[..., C, H, W]`` float 0..1 -> ``[..., H, W, C]`` uint8."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).movedim(-3, -1).numpy()


def _portrait_background(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    if cfg.portrait_background == "random":
        base = rng.uniform(0.25, 0.95, 3)
        return base * 0.6 + base.mean() * 0.4
    return {"same": np.array(cfg.background), "white": np.ones(3), "black": np.zeros(3)}[cfg.portrait_background]


def _identity(rng: np.random.Generator, head: Any,
              hair_volume: float = 1.0) -> tuple[np.ndarray, Any, CanonicalMesh]:
    """The first draws of a subject: shape coefficients ``[S]``, appearance and its canonical mesh."""
    shape = np.clip(rng.normal(0, 1, head.n_shape), -2.5, 2.5)
    app = sample_appearance(rng, hair_volume)
    with torch.no_grad():
        verts = head.canonical(torch.as_tensor(shape, dtype=torch.float32)[None])[0].double().numpy()
    regions = {k: v.cpu().numpy() for k, v in head.face_regions.items()}
    return shape, app, CanonicalMesh.build(verts, head.faces.cpu().numpy(), regions)


def resample_teacher(meta: dict[str, Any], head: Any, draw: int = 1) -> Any:
    """An independent surface sampling of a synthetic subject's teacher: the same identity, appearance, hair, beard
    and point budget as the shard's teacher (``meta`` of a sample written by ``avp data synth``), new random points.

    What a perfect generator could produce for the subject; its distance to the shard's teacher is the point
    metrics' noise floor. ``draw`` selects one of many resamplings (``>= 1``; the sampling of a ``portrait_points``
    portrait uses the stream of draw 0).
    Returns a :class:`~avp.data.schema.TeacherGaussians`.
    """
    extra = meta.get("extra", {})
    missing = [k for k in ("seed", "index", "n_target") if k not in extra]
    if meta.get("source") != "synthetic" or missing:
        raise ValueError(f"resample_teacher: sample {meta.get('subject')!r} is not a synthetic subject written by "
                         f"avp data synth (source {meta.get('source')!r}, meta.extra lacks {missing})")
    if draw < 1:
        raise ValueError(f"resample_teacher: draw must be >= 1, got {draw}")
    if meta.get("head_model") != head.name:
        raise ValueError(f"resample_teacher: subject {meta.get('subject')!r} was made with head model "
                         f"{meta.get('head_model')!r}, not {head.name!r}")
    _, app, mesh = _identity(np.random.default_rng([int(extra["seed"]), int(extra["index"])]), head,
                             float(extra.get("hair_volume", 1.0)))
    teacher, _ = build_teacher(mesh, app, int(extra["n_target"]),
                               np.random.default_rng([int(extra["seed"]), int(extra["index"]), int(draw)]),
                               sh_degree=int(meta.get("sh_degree", 0)))
    return teacher


def make_subject(cfg: SynthConfig, index: int, split: str, head: Any) -> ClipSample:
    """Subject ``index`` of the dataset (deterministic)."""
    from avp.head import animate_gaussians
    from avp.render import render

    rng = np.random.default_rng([cfg.seed, index])
    shape, app, mesh = _identity(rng, head, cfg.hair_volume)
    lo, hi = cfg.points
    n_target = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    teacher, part_counts = build_teacher(mesh, app, n_target, rng, sh_degree=cfg.sh_degree)

    names = _expression_names(head)
    perf = motion.sample_performance(rng)
    head_seq = motion.sequence(perf, shape, cfg.frames, head.n_expr, rng, names)
    portrait_true = motion.portrait_params(head_seq, rng)
    portrait_est = motion.estimation_noise(portrait_true, rng)
    cams = clip_cameras(cfg.views, cfg.size, rng, cfg.cameras)
    pcam = portrait_camera(cfg.portrait_size, rng)
    pbg = _portrait_background(cfg, rng)

    cloud = teacher_cloud(teacher)  # [1, N]
    with torch.no_grad():
        rig = head.rig(torch.from_numpy(teacher.binding.astype(np.int64))[None], cloud.means,
                       torch.as_tensor(shape, dtype=torch.float32)[None])
        seq = HeadParams(**{k: torch.from_numpy(v)[None] for k, v in head_seq.items() if k != "shape"},
                         shape=torch.from_numpy(head_seq["shape"]).expand(1, cfg.frames, -1))  # [1, T]
        posed = animate_gaussians(rig, cloud, seq, mode="lbs")  # [T, N]
        out = render(posed, Cameras(Ks=torch.from_numpy(cams.Ks), viewmats=torch.from_numpy(cams.viewmats),
                                    width=cfg.size, height=cfg.size),
                     background=torch.tensor(cfg.background, dtype=torch.float32))
        pparams = HeadParams(**{k: torch.from_numpy(v)[None, None] for k, v in portrait_true.items()})
        prig, psource = rig, cloud
        if cfg.portrait_points > 0:  # its own random stream: the subject's other draws do not depend on it
            photo, _ = build_teacher(mesh, app, cfg.portrait_points, np.random.default_rng([cfg.seed, index, 0]),
                                     sh_degree=cfg.sh_degree)
            psource = teacher_cloud(photo)
            prig = head.rig(torch.from_numpy(photo.binding.astype(np.int64))[None], psource.means,
                            torch.as_tensor(shape, dtype=torch.float32)[None])
        pcloud = animate_gaussians(prig, psource, pparams, mode="lbs")
        pout = render(pcloud, Cameras(Ks=torch.from_numpy(pcam.Ks), viewmats=torch.from_numpy(pcam.viewmats),
                                      width=cfg.portrait_size, height=cfg.portrait_size),
                      background=torch.from_numpy(pbg).float())
    frames = _to_uint8(out.rgb)  # [T, V, H, W, 3]
    masks = _to_uint8(out.alpha)[..., 0]  # [T, V, H, W]
    portrait = _to_uint8(pout.rgb[0, 0])

    subject = subject_id(index)
    meta = make_meta(
        subject=subject, sequence="clip0", split=split, source="synthetic", head_model=head.name,
        n_faces=head.n_faces, n_shape=head.n_shape, n_expr=head.n_expr, width=cfg.size, height=cfg.size,
        views=cfg.views, frames=cfg.frames, frame_format="png", masks=True, portrait_format="png",
        portrait_width=cfg.portrait_size, portrait_height=cfg.portrait_size, n_points=teacher.n_points,
        sh_degree=cfg.sh_degree, background=cfg.background,
        extra={**app.summary(), "performance": perf.summary(), "parts": part_counts, "n_target": n_target,
               "camera_layout": cfg.cameras, "hair_volume": cfg.hair_volume, "portrait_points": cfg.portrait_points,
               "portrait_background": [round(float(c), 4) for c in pbg],
               "portrait_head_true": {k: v.tolist() for k, v in portrait_true.items()}, "seed": cfg.seed,
               "index": index})
    return ClipSample(key=sample_key(subject, "clip0"), meta=meta, portrait=portrait, portrait_head=portrait_est,
                      portrait_camera=pcam, cameras=cams, head=head_seq, gaussians=teacher, frames=frames,
                      masks=masks)


def _expression_names(head: Any) -> list[str] | None:
    from avp.head.builtin import BUILTIN_NAME, EXPRESSION_COMPONENTS

    if head.name == BUILTIN_NAME:
        return [name for name, _ in EXPRESSION_COMPONENTS][: head.n_expr]
    return None


# ------------------------------------------------------------------------------------------ multiprocessing

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: SynthConfig) -> None:
    from avp.head import HeadConfig, load_head_model

    torch.set_num_threads(1)
    _WORKER["cfg"] = cfg
    _WORKER["head"] = load_head_model(HeadConfig())


def _work(job: tuple[int, str]) -> dict[str, bytes]:
    index, split = job
    return encode_sample(make_subject(_WORKER["cfg"], index, split, _WORKER["head"]))


SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{6})\.tar$")


def _finished_shards(out: Path, cfg: SynthConfig, jobs: list[tuple[int, str]]) -> dict[str, list[ShardInfo]]:
    """The shards an interrupted synthesis of ``cfg`` into ``out`` finished, per split, checked against what an
    uninterrupted run writes there (shard ``k`` of a split holds that split's subjects ``k*S .. (k+1)*S-1``, in job
    order); raises when the folder holds anything else."""
    from avp.data.reader import ShardRef, file_sha256, iter_raw_samples
    from avp.data.schema import decode_meta

    recorded = json.loads((out / SYNTH_PROGRESS).read_text())
    wanted = json.loads(json.dumps(asdict(cfg)))  # as recorded (tuples become lists)
    if recorded.get("config") != wanted:
        differing = sorted(k for k in wanted if recorded.get("config", {}).get(k) != wanted[k])
        raise FileExistsError(f"{out}: holds an interrupted synthesis with another config (differs in "
                              f"{', '.join(differing)}); rerun it with the same options or pass overwrite=True "
                              "(--overwrite) to start over")
    subjects_of = {s: [subject_id(i) for i, split in jobs if split == s] for s in dict.fromkeys(s for _, s in jobs)}
    finished: dict[str, list[ShardInfo]] = {s: [] for s in subjects_of}
    for path in sorted(p for p in out.glob("*.tar")):
        match = SHARD_NAME.match(path.name)
        split = match["split"] if match else None
        if split not in finished or int(match["index"]) != len(finished[split]):
            raise FileExistsError(f"{out}: {path.name} is not a shard this synthesis writes next; pass overwrite=True "
                                  "(--overwrite) to start over")
        ref = ShardRef(path=str(path), name=path.name)
        subjects = [decode_meta(raw, shard=path.name)["subject"] for raw in iter_raw_samples(ref, verify=False)]
        k, size = len(finished[split]), cfg.shard_samples
        if subjects != subjects_of[split][k * size:(k + 1) * size]:
            raise FileExistsError(f"{out}: {path.name} holds {subjects}, not what this synthesis puts there; pass "
                                  "overwrite=True (--overwrite) to start over")
        finished[split].append(ShardInfo(path=path.name, split=split, samples=len(subjects), sha256=file_sha256(path),
                                         bytes=path.stat().st_size, subjects=subjects))
    return finished


def synthesize(cfg: SynthConfig, out: str | os.PathLike, *, workers: int | None = None, overwrite: bool = False,
               progress: bool = True) -> Manifest:
    """Render ``cfg.subjects`` subjects into shards under ``out`` and write ``shards.json`` last.

    ``workers``: processes (default: all cores). A crash leaves no shard under its final name and no manifest, and
    a rerun with the same config finishes it: the finished shards are kept (checked), only the missing subjects are
    rendered, and the dataset is the one an uninterrupted run writes (:data:`~avp.data.manifest.SYNTH_PROGRESS`
    holds the config meanwhile).
    """
    from tqdm import tqdm

    from avp.head import HeadConfig, load_head_model
    from avp.provenance import git_sha

    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        if not overwrite:
            raise FileExistsError(f"{out}: already holds a dataset ({MANIFEST_NAME}); pass overwrite=True "
                                  "(--overwrite) to replace it")
        old = read_manifest(out)
        (out / MANIFEST_NAME).unlink()
        for s in old.shards:
            (out / s.path).unlink(missing_ok=True)
    if overwrite and (out / SYNTH_PROGRESS).exists():
        for path in out.glob("*.tar"):
            path.unlink()
        (out / SYNTH_PROGRESS).unlink()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    head = load_head_model(HeadConfig())
    splits = assign_splits(cfg.subjects, {"train": 1 - cfg.val_fraction - cfg.test_fraction,
                                          "val": cfg.val_fraction, "test": cfg.test_fraction}, cfg.seed)
    jobs = list(enumerate(splits))
    if (out / SYNTH_PROGRESS).exists():
        finished = _finished_shards(out, cfg, jobs)
    elif any(out.glob("*.tar")):
        raise FileExistsError(f"{out}: holds shards but no {MANIFEST_NAME} and no record of an interrupted synthesis; "
                              "pass overwrite=True (--overwrite) or choose an empty folder")
    else:
        finished = {}
        atomic_write_json(out / SYNTH_PROGRESS, {"config": asdict(cfg)})
    done = {subject for infos in finished.values() for info in infos for subject in info.subjects}
    split_order = list(dict.fromkeys(s for _, s in jobs))
    jobs = [(i, s) for i, s in jobs if subject_id(i) not in done]
    split_of = {sample_key(subject_id(i), "clip0"): s for i, s in jobs}
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="synth", unit="subject", disable=not progress)

    def produced():
        if workers <= 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for i, s in jobs:
                    yield encode_sample(make_subject(cfg, i, s, head))
                    bar.update()
            finally:
                torch.set_num_threads(threads)
            return
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(cfg,)) as pool:
            for members in pool.imap(_work, jobs, chunksize=1):
                yield members
                bar.update()

    try:
        written = write_shards(produced(), out, split_of=split_of, max_samples=cfg.shard_samples,
                               start_index={s: len(infos) for s, infos in finished.items()})
    finally:
        bar.close()
    # the order an uninterrupted run lists them in: splits as they first appear, then shard index
    infos = sorted([*(i for infos in finished.values() for i in infos), *written],
                   key=lambda info: (split_order.index(info.split), info.path))
    manifest = Manifest(root=out, head_model=head.name, n_faces=head.n_faces, shards=infos,
                        created_by={"generator": "avp.data.synthetic", "config": asdict(cfg), "git": git_sha()})
    write_manifest(out, manifest)
    (out / SYNTH_PROGRESS).unlink()
    return manifest


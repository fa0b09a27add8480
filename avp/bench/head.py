"""``avp bench head``: cost of animating bound Gaussians, against naive per-point animation measured in the same run.

For each N, N points are bound to random triangles of the built-in head (near the surface, as a teacher cloud is)
and animated over a T-frame random sequence with :meth:`avp.head.PointRig.deform` in both modes, frames batched
(in chunks that keep one call's working set bounded). Baselines on a subset, extrapolated linearly to N points x T
frames: (1) a per-point Python loop doing the same maths one point at a time (interpolated weights and blendshapes,
blended joint transform, polar rotation), (2) recomputing the full mesh for every point (one head-model forward per
point and frame, then the point's triangle). Figures: milliseconds per frame, nanoseconds per point and frame, the
speed-up over each baseline, and the log-log slope of time against N (1 = linear). Times are the best of
``--repeat`` runs (and of two baseline runs), the honest figure on a shared machine.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from avp.bench._timing import measure

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

DESCRIPTION = "animate N bound Gaussians over a T-frame sequence (LBS / face frames) vs naive per-point animation"


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--n-points", type=str, default="10000,50000,200000", help="comma-separated point counts")
    parser.add_argument("--frames", type=int, default=100, help="sequence length T")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs per configuration after one warm-up; the best is reported")
    parser.add_argument("--chunk", type=int, default=2_000_000,
                        help="at most this many point-frames per deform call (frames are chunked to fit)")
    parser.add_argument("--baseline-points", type=int, default=64, help="points in the per-point baselines' subset")
    parser.add_argument("--seed", type=int, default=0)


def _bound_points(model: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    face = torch.randint(0, model.n_faces, (1, n), generator=g)
    shape = torch.randn(1, model.n_shape, generator=g)
    tri = model.canonical(shape)[0, model.faces[face[0]]]  # [n, 3, 3]
    w = torch.rand(n, 3, generator=g)
    points = ((w / w.sum(-1, keepdim=True))[..., None] * tri).sum(1) + 0.003 * torch.randn(n, 3, generator=g)
    return face, points[None], shape


def _sequence(model: Any, frames: int, shape: torch.Tensor, seed: int) -> Any:
    from avp.types import HeadParams

    g = torch.Generator().manual_seed(seed + 1)
    r = lambda k, s: torch.randn(1, frames, k, generator=g) * s
    jaw = r(3, 0.1)
    jaw[..., 0] = jaw[..., 0].abs()
    return HeadParams(shape[:, None].expand(1, frames, model.n_shape), r(model.n_expr, 1.0), r(3, 0.3), r(3, 0.2),
                      jaw, r(6, 0.2), r(3, 0.05))


def _chunked(rig: Any, params: Any, mode: str, chunk: int) -> None:
    T = params.global_rot.shape[1]
    step = max(1, chunk // rig.n_points)
    for t0 in range(0, T, step):
        rig.deform(params.map(lambda x, t0=t0: x[:, t0:t0 + step]), mode=mode)


def _loop_baseline(model: Any, rig: Any, params: Any, n_points: int, n_frames: int) -> float:
    """Seconds per point and frame for the same LBS maths done one point at a time in Python."""
    from avp.head.lbs import forward_kinematics
    from avp.rotations import orthonormalize

    W, E = model.lbs_weights, model.exprdirs
    faces = model.faces[rig.face_idx[0, :n_points]]
    bary = rig.bary[0, :n_points]
    points = rig.points[0, :n_points]
    start = time.perf_counter()
    for t in range(n_frames):
        p = params.map(lambda x, t=t: x[0, t])
        rot = model.pose_matrices(p)
        joints = rig.joints[0] + (p.expr @ rig.joint_exprdirs).view(-1, 3)
        _, T = forward_kinematics(rot, joints, model.parents)
        for n in range(n_points):
            f, b = faces[n], bary[n]
            w = b[0] * W[f[0]] + b[1] * W[f[1]] + b[2] * W[f[2]]
            offset = b[0] * (E[f[0]] @ p.expr) + b[1] * (E[f[1]] @ p.expr) + b[2] * (E[f[2]] @ p.expr)
            A = (w[:, None, None] * T).sum(0)
            _ = A[:3, :3] @ (points[n] + offset) + A[:3, 3] + p.translation
            _ = orthonormalize(A[:3, :3])
    return (time.perf_counter() - start) / (n_points * n_frames)


def _mesh_per_point_baseline(model: Any, rig: Any, params: Any, n_points: int) -> float:
    """Seconds per point and frame when every point recomputes the whole posed mesh to read its triangle."""
    p = params.map(lambda x: x[:, :1])
    faces = model.faces[rig.face_idx[0, :n_points]]
    start = time.perf_counter()
    for n in range(n_points):
        verts = model(p).vertices[0, 0]
        _ = (rig.bary[0, n, :, None] * verts[faces[n]]).sum(0)
    return (time.perf_counter() - start) / n_points


def run(args: Namespace) -> dict[str, Any]:
    from avp.head import load_head_model

    start = time.perf_counter()
    model = load_head_model()
    load_s = time.perf_counter() - start
    sizes = [int(s) for s in str(args.n_points).split(",") if s.strip()]
    T = args.frames
    results = []
    loop_s = mesh_s = None
    for n in sizes:
        face, points, shape = _bound_points(model, n, args.seed)
        params = _sequence(model, T, shape, args.seed)
        t0 = time.perf_counter()
        rig = model.rig(face, points, shape)
        rig_s = time.perf_counter() - t0
        if loop_s is None:  # baselines once, on the smallest cloud (cost per point does not depend on N)
            loop_s = min(_loop_baseline(model, rig, params, min(args.baseline_points, n), 2) for _ in range(2))
            mesh_s = min(_mesh_per_point_baseline(model, rig, params, min(args.baseline_points // 4 or 1, n))
                         for _ in range(2))
        row: dict[str, Any] = {"n_points": n, "rig_build_s": round(rig_s, 4), "blended_fraction":
                               round(rig.blended.numel() / n, 3)}
        for mode in ("lbs", "face_frame"):
            timing = measure(lambda mode=mode, rig=rig, params=params: _chunked(rig, params, mode, args.chunk),
                             warmup=1, repeat=args.repeat)
            per_frame = timing["min_s"] / T  # best of the repeats: the machine may be shared
            row[f"{mode}_ms_per_frame"] = round(per_frame * 1e3, 3)
            row[f"{mode}_ns_per_point_frame"] = round(per_frame / n * 1e9, 2)
            row[f"{mode}_speedup_vs_python_loop"] = round(loop_s * n / per_frame, 1)
            row[f"{mode}_speedup_vs_mesh_per_point"] = round(mesh_s * n / per_frame, 1)
        results.append(row)
        del rig
    slope = {}
    if len(results) > 1:
        a, b = results[0], results[-1]
        for mode in ("lbs", "face_frame"):
            slope[mode] = round(math.log(b[f"{mode}_ms_per_frame"] / a[f"{mode}_ms_per_frame"])
                                / math.log(b["n_points"] / a["n_points"]), 3)
    return {
        "model": model.name,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "frames": T,
        "model_load_s": round(load_s, 3),
        "results": results,
        "time_vs_n_loglog_slope": slope,
        "baselines": {
            "python_loop_us_per_point_frame": round(loop_s * 1e6, 2),
            "mesh_per_point_us_per_point_frame": round(mesh_s * 1e6, 2),
            "note": "measured on a subset in this run, extrapolated linearly to N points x T frames",
        },
    }

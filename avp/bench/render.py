"""``avp bench render``: the torch tile rasteriser against the dense reference on the CPU; gsplat FPS on a GPU.

CPU: forward and forward+backward times of the torch backend for each splat count and resolution, with the speedup
over the dense reference measured in the same run. The dense reference is timed on the sizes given by
``--dense-fwd`` / ``--dense-fb`` (by default the 10k-splat 256^2 target case for forward+backward and 2k splats at
256^2 for the forward); for the other sizes its time is extrapolated from the largest measured case in proportion to
pixels x visible splats (its cost model: every splat at every pixel), and the entry says so.

GPU (``--device`` resolving to CUDA): animate + render frames per second with gsplat for 20k splats at 512^2, per
frame (batch of one) and batched; the animation is ``avp.head.animate_gaussians`` on the built-in head when
``avp.head`` imports, else a rigid motion (reported as such).
"""

from __future__ import annotations

import math
import resource
import sys
from typing import TYPE_CHECKING, Any

import torch

from avp.bench._timing import measure
from avp.device import select_device

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

DESCRIPTION = "renderer speed: torch tiles vs dense reference (CPU fwd, fwd+bwd); gsplat animate+render FPS (GPU)"


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--device", type=str, default="auto",
                        help="auto (CUDA when present, else CPU), cpu, or a torch device")
    parser.add_argument("--sizes", type=str, default="2000,10000,50000", help="splat counts (comma separated)")
    parser.add_argument("--resolutions", type=str, default="256,512", help="square image sizes in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per torch-backend measurement")
    parser.add_argument("--dense-fb", type=str, default="10000x256",
                        help="NxRES cases where the dense reference's forward+backward is timed ('' for none)")
    parser.add_argument("--dense-fwd", type=str, default="2000x256", help="NxRES cases where its forward is timed")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU section (GPU runs)")
    parser.add_argument("--gpu-splats", type=int, default=20000)
    parser.add_argument("--gpu-resolution", type=int, default=512)
    parser.add_argument("--gpu-frames", type=int, default=200, help="frames timed per GPU measurement")
    parser.add_argument("--seed", type=int, default=0)


def head_like_cloud(n: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, device: Any = "cpu"):
    """``n`` splats on a head-sized ellipsoid shell (semi-axes 8 x 11 x 9.5 cm), sizes tied to the spacing.

    Splat standard deviations are ~0.7x the mean spacing, so the covered area and overdraw stay similar across
    counts, as in fitted avatars. Colours are degree-0 SH; opacities mostly high.
    """
    from avp.render import rgb_to_sh0
    from avp.types import GaussianCloud

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(1, n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    means = d * torch.tensor([0.08, 0.11, 0.095]) * (1 + 0.05 * torch.randn(1, n, 1, generator=g))
    spacing = math.sqrt(4 * math.pi * 0.1**2 / n)
    scales = 0.7 * spacing * torch.exp(0.5 * torch.randn(1, n, 3, generator=g))
    cloud = GaussianCloud(
        means=means,
        quats=torch.randn(1, n, 4, generator=g),
        scales=scales,
        opacities=torch.sigmoid(torch.randn(1, n, generator=g) + 1.0),
        sh=rgb_to_sh0(torch.rand(1, n, 1, 3, generator=g)),
    )
    return cloud.to(device=device, dtype=dtype)


def _cases(text: str) -> set[tuple[int, int]]:
    out = set()
    for item in filter(None, (s.strip() for s in text.split(","))):
        n, res = item.lower().split("x")
        out.add((int(n), int(res)))
    return out


def _leaves(cloud):
    for name in ("means", "quats", "scales", "opacities", "sh"):
        setattr(cloud, name, getattr(cloud, name).detach().requires_grad_(True))
    return cloud


def _cpu_section(args: Namespace) -> dict[str, Any]:
    from avp.render import orbit_cameras, render
    from avp.render.projection import covariance_3d, project_gaussians

    sizes = [int(s) for s in args.sizes.split(",")]
    resolutions = [int(r) for r in args.resolutions.split(",")]
    dense_fb, dense_fwd = _cases(args.dense_fb), _cases(args.dense_fwd)
    scenes = {}
    for res in resolutions:
        cams = orbit_cameras(1, radius=0.6, fov_y_deg=25.0, width=res, height=res)
        for n in sizes:
            scenes[n, res] = (_leaves(head_like_cloud(n, seed=args.seed)), cams)

    def forward(key: tuple[int, int], backend: str) -> None:
        cloud, cams = scenes[key]
        with torch.no_grad():
            render(cloud, cams, backend=backend)

    def forward_backward(key: tuple[int, int], backend: str) -> None:
        cloud, cams = scenes[key]
        out = render(cloud, cams, backend=backend)
        (out.rgb.sum() + out.alpha.sum()).backward()

    runs: dict[tuple[int, int], dict[str, Any]] = {}
    for (n, res), (cloud, cams) in scenes.items():
        print(f"[bench render] N={n} {res}x{res}: torch backend", file=sys.stderr, flush=True)
        with torch.no_grad():
            p = project_gaussians(cloud.means, covariance_3d(cloud.quats, cloud.scales), cloud.opacities,
                                  cams.viewmats[None], cams.Ks[None], res, res)
            coverage = float(render(cloud, cams).alpha.mean())
        fwd = measure(lambda key=(n, res): forward(key, "torch"), repeat=args.repeat)
        fb = measure(lambda key=(n, res): forward_backward(key, "torch"), repeat=args.repeat)
        runs[n, res] = {
            "n": n,
            "resolution": res,
            "visible_splats": int(p.visible.sum()),
            "coverage": round(coverage, 3),
            "forward_s": fwd["median_s"],
            "forward_min_s": fwd["min_s"],
            "forward_backward_s": fb["median_s"],
            "forward_backward_min_s": fb["min_s"],
        }
    # ru_maxrss is a high-water mark: read it before the dense reference (which needs far more) runs
    rss_torch = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for key in sorted(dense_fwd & set(scenes)):
        print(f"[bench render] N={key[0]} {key[1]}x{key[1]}: dense forward", file=sys.stderr, flush=True)
        runs[key]["dense_forward_s"] = measure(lambda key=key: forward(key, "reference"), warmup=0,
                                               repeat=1)["median_s"]
    for key in sorted(dense_fb & set(scenes)):
        print(f"[bench render] N={key[0]} {key[1]}x{key[1]}: dense forward+backward", file=sys.stderr, flush=True)
        runs[key]["dense_forward_backward_s"] = measure(lambda key=key: forward_backward(key, "reference"),
                                                        warmup=0, repeat=1)["median_s"]

    rows = list(runs.values())
    for kind in ("forward", "forward_backward"):
        measured = [r for r in rows if f"dense_{kind}_s" in r]
        for r in rows:
            if f"dense_{kind}_s" in r:
                dense, how = r[f"dense_{kind}_s"], "measured"
            elif measured:
                base = max(measured, key=lambda m: m["visible_splats"] * m["resolution"] ** 2)
                work = r["visible_splats"] * r["resolution"] ** 2
                dense = base[f"dense_{kind}_s"] * work / (base["visible_splats"] * base["resolution"] ** 2)
                how = f"extrapolated from N={base['n']} at {base['resolution']}^2 by pixels x visible splats"
                r[f"dense_{kind}_s_estimate"] = round(dense, 2)
            else:
                continue
            r[f"speedup_{kind}"] = round(dense / r[f"{kind}_s"], 1)  # against the median: the conservative ratio
            r[f"dense_{kind}"] = how
    for r in rows:
        for k, v in list(r.items()):
            if isinstance(v, float) and k.endswith("_s"):
                r[k] = round(v, 4)
    section: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "scene": "head-like ellipsoid shell, 1 view from 0.6 m, fov 25 deg, SH degree 0; loss = sum(rgb) + sum(alpha)",
        "timing": f"median (and min) of {args.repeat} calls after a warm-up; dense reference: one call",
        "runs": rows,
        "max_rss_mb_torch_backend": round(rss_torch, 1),
    }
    target = runs.get((10000, 256))
    if target is not None and "speedup_forward_backward" in target:
        section["target_10k_256"] = {
            "forward_backward_s": target["forward_backward_s"],
            "speedup_vs_dense": target["speedup_forward_backward"],
            "dense": target["dense_forward_backward"],
            "meets_time_1_5s": target["forward_backward_s"] <= 1.5,
            "meets_speedup_30x": target["speedup_forward_backward"] >= 30,
        }
    return section


def _animation(n: int, frames: int, device: torch.device, seed: int):
    """A callable ``frame(t) -> GaussianCloud [1, N]`` (and a batched ``all() -> [frames, N]``) plus its description."""
    cloud = head_like_cloud(n, seed=seed, device=device)
    try:
        from avp.head import animate_gaussians, load_head_model
    except ImportError as e:
        reason = f"rigid motion (avp.head unavailable: {e})"
        angles = torch.linspace(-0.5, 0.5, frames, device=device)

        def rigid(idx: torch.Tensor):
            from avp.rotations import quaternion_multiply, quaternion_to_matrix

            half = angles[idx] / 2
            q = torch.stack([half.cos(), torch.zeros_like(half), half.sin(), torch.zeros_like(half)], -1)  # about y
            R = quaternion_to_matrix(q)  # [T, 3, 3]
            means = torch.einsum("tij,nj->tni", R, cloud.means[0])
            quats = quaternion_multiply(q[:, None], cloud.quats)  # [T, N, 4]: the frame's rotation after each splat's
            t = idx.numel()
            return type(cloud)(means, quats, cloud.scales.expand(t, -1, -1), cloud.opacities.expand(t, -1),
                               cloud.sh.expand(t, -1, -1, -1))

        return rigid, reason

    from avp.types import HeadParams as Params

    model = load_head_model().to(device)
    g = torch.Generator().manual_seed(seed)
    face_idx = torch.randint(0, model.n_faces, (1, n), generator=g).to(device)
    bary = torch.distributions.Dirichlet(torch.ones(3)).sample((1, n)).to(device)
    shape = torch.zeros(1, model.n_shape, device=device)
    verts = model.canonical(shape)[0]  # [V, 3]
    points = (verts[model.faces[face_idx[0]]] * bary[0, :, :, None]).sum(-2)[None]  # [1, N, 3]
    cloud.means = points
    rig = model.rig(face_idx, points, shape)
    params = Params.zeros(1, frames, n_shape=model.n_shape, n_expr=model.n_expr, device=device)
    params.expr = 0.5 * torch.randn(1, frames, model.n_expr, generator=g).to(device)
    params.jaw_pose[..., 0] = torch.linspace(0.0, 0.3, frames, device=device)
    params.global_rot[..., 1] = torch.linspace(-0.4, 0.4, frames, device=device)

    def animate(idx: torch.Tensor):
        sub = params.map(lambda t: t[:, idx])
        return animate_gaussians(rig, cloud, sub)

    return animate, f"avp.head.animate_gaussians on {model.name} (lbs)"


def _gpu_section(args: Namespace, device: torch.device) -> dict[str, Any]:
    from avp.render import orbit_cameras, render

    res, n, frames = args.gpu_resolution, args.gpu_splats, args.gpu_frames
    cams = orbit_cameras(1, radius=0.6, fov_y_deg=25.0, width=res, height=res, device=device)
    animate, how = _animation(n, frames, device, args.seed)
    render(animate(torch.arange(1, device=device)), cams, backend="gsplat")  # JIT-compiles gsplat on first use
    indices = [torch.tensor([t], device=device) for t in range(frames)]

    @torch.no_grad()
    def per_frame() -> None:
        for idx in indices:
            render(animate(idx), cams, backend="gsplat", background=1.0)

    batch = min(frames, 32)
    chunks = list(torch.arange(frames, device=device).split(batch))

    @torch.no_grad()
    def batched() -> None:
        for idx in chunks:
            render(animate(idx), cams, backend="gsplat", background=1.0)

    t_single = measure(per_frame, repeat=3, device=device)["median_s"]
    t_batched = measure(batched, repeat=3, device=device)["median_s"]
    with torch.no_grad():
        still = animate(indices[0])
    render_only = measure(lambda: render(still, cams, backend="gsplat"), repeat=50, device=device)["median_s"]
    return {
        "device": torch.cuda.get_device_name(device) if device.type != "cpu" else "cpu",
        "splats": n,
        "resolution": res,
        "animation": how,
        "fps_animate_render_per_frame": round(frames / t_single, 1),
        "fps_animate_render_batched": round(frames / t_batched, 1),
        "batch": batch,
        "fps_render_only_per_frame": round(1.0 / render_only, 1),
        "target_fps": 600,
    }


def run(args: Namespace) -> dict[str, Any]:
    device = select_device(args.device)
    result: dict[str, Any] = {"device": str(device)}
    if not args.no_cpu:
        result["cpu"] = _cpu_section(args)
    if device.type != "cpu":
        result["gpu"] = _gpu_section(args, device)
    return result

"""``render()``: one entry point for every backend; the backend is chosen here and nowhere else."""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Literal

import torch
from torch import Tensor

from avp.render import gsplat_backend
from avp.render.projection import camera_centers, covariance_3d, project_gaussians
from avp.render.reference import composite_dense
from avp.render.sh import eval_sh, sh_degree_from_coeffs
from avp.render.torch_backend import composite_tiles
from avp.types import Cameras, GaussianCloud, RenderOutput

Backend = Literal["auto", "torch", "gsplat", "reference"]
BACKENDS = ("auto", "torch", "gsplat", "reference")
CHECKS_ENV = "AVP_RENDER_CHECKS"
"""Set to ``1`` to check values on accelerators too (one device-to-host sync per :func:`render` call; debugging)."""


def wants_value_checks(check_values: bool | None, device: torch.device) -> bool:
    """Whether :func:`render` checks the values of its inputs: as ``check_values`` says when given; by default on the
    CPU (free: no device to wait for) and not on accelerators (the check reads a flag tensor back to the host, a sync
    that stalls the pipeline every call) unless ``AVP_RENDER_CHECKS=1``."""
    if check_values is not None:
        return bool(check_values)
    return device.type == "cpu" or os.environ.get(CHECKS_ENV, "") == "1"


@functools.cache
def _warn_fallback(reason: str) -> None:
    """Once per process and reason: CUDA renders fall back to the torch rasteriser (correct, slower)."""
    warnings.warn(f"render: backend='auto' uses the torch rasteriser on CUDA because {reason}", stacklevel=3)


def choose_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve ``auto``: gsplat for float32 CUDA tensors when gsplat and its CUDA extension load, the torch tile
    rasteriser otherwise (with one warning when CUDA tensors fall back)."""
    if backend not in BACKENDS:
        raise ValueError(f"render: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if gsplat_backend.usable(device, dtype):
            return "gsplat"
        if device.type == gsplat_backend.CUDA and dtype == torch.float32:
            _warn_fallback(gsplat_backend.why_unusable(device, dtype))
        return "torch"
    if backend == "gsplat" and not gsplat_backend.usable(device, dtype):
        raise ValueError(f"render: backend='gsplat' is unavailable: {gsplat_backend.why_unusable(device, dtype)}")
    return backend


def _shape_error(name: str, t: Tensor, expected: str) -> ValueError:
    return ValueError(f"render: {name} has shape {tuple(t.shape)}, expected {expected}")


def _check_cloud(cloud: GaussianCloud) -> None:
    means = cloud.means
    if means.dim() != 3 or means.shape[-1] != 3:
        raise _shape_error("cloud.means", means, "[B, N, 3]")
    if not means.is_floating_point():
        raise ValueError(f"render: cloud.means must be floating point, got {means.dtype}")
    B, N = means.shape[:2]
    expected = {
        "quats": (cloud.quats, (B, N, 4), "[B, N, 4]"),
        "scales": (cloud.scales, (B, N, 3), "[B, N, 3]"),
        "opacities": (cloud.opacities, (B, N), "[B, N]"),
    }
    for name, (t, shape, text) in expected.items():
        if tuple(t.shape) != shape:
            raise _shape_error(f"cloud.{name}", t, f"{text} = {list(shape)} (from cloud.means)")
    sh = cloud.sh
    if sh.dim() != 4 or tuple(sh.shape[:2]) != (B, N) or sh.shape[-1] != 3:
        raise _shape_error("cloud.sh", sh, f"[B, N, K, 3] with B, N = {B}, {N}")
    try:
        sh_degree_from_coeffs(sh.shape[2])
    except ValueError as e:
        raise ValueError(f"render: cloud.sh: {e}") from None
    if cloud.mask is not None:
        if tuple(cloud.mask.shape) != (B, N):
            raise _shape_error("cloud.mask", cloud.mask, f"[B, N] = {[B, N]}")
        if cloud.mask.dtype != torch.bool:
            raise ValueError(f"render: cloud.mask must be bool, got {cloud.mask.dtype}")
    for name in ("quats", "scales", "opacities", "sh"):
        t = getattr(cloud, name)
        if t.device != means.device:
            raise ValueError(f"render: cloud.{name} is on {t.device} but cloud.means is on {means.device}")


def _check_values(cloud: GaussianCloud, Ks: Tensor, viewmats: Tensor) -> None:
    """Finite values, non-zero quaternions, non-negative scales, opacities in [0, 1] (real splats only). One sync
    (free on the CPU), so only where :func:`wants_value_checks` says."""
    valid = cloud.valid_mask()

    def bad(t: Tensor) -> Tensor:
        v = valid.reshape(*valid.shape, *([1] * (t.dim() - 2)))
        return (~torch.isfinite(t) & v).any()

    checks = {
        "cloud.means is not finite (NaN or inf) for some real splats": bad(cloud.means),
        "cloud.quats is not finite (NaN or inf) for some real splats": bad(cloud.quats),
        "cloud.scales is not finite (NaN or inf) for some real splats": bad(cloud.scales),
        "cloud.opacities is not finite (NaN or inf) for some real splats": bad(cloud.opacities),
        "cloud.sh is not finite (NaN or inf) for some real splats": bad(cloud.sh),
        "cloud.quats has zero-norm quaternions (no rotation is defined) for some real splats": (
            (cloud.quats.detach().abs().sum(-1) == 0) & valid
        ).any(),
        "cloud.scales has negative standard deviations for some real splats": (
            (cloud.scales < 0).any(-1) & valid
        ).any(),
        "cloud.opacities must lie in [0, 1] (activated) for real splats": (
            ((cloud.opacities < 0) | (cloud.opacities > 1)) & valid
        ).any(),
        "cameras.Ks is not finite": ~torch.isfinite(Ks).all(),
        "cameras.viewmats is not finite": ~torch.isfinite(viewmats).all(),
        "cameras.Ks has a non-positive focal length": ((Ks[..., 0, 0] <= 0) | (Ks[..., 1, 1] <= 0)).any(),
    }
    flags = torch.stack(list(checks.values())).tolist()
    for message, flag in zip(checks, flags):
        if flag:
            raise ValueError(f"render: {message}")


def _expand_cameras(cameras: Cameras, B: int) -> tuple[Tensor, Tensor]:
    """``Ks [B, V, 3, 3]``, ``viewmats [B, V, 4, 4]``, one set per avatar: ``[V, ...]`` cameras are shared by all
    avatars, ``[*L, V, ...]`` cameras with ``prod(L) == B`` are flattened row-major over ``L``."""
    Ks, viewmats = cameras.Ks, cameras.viewmats
    if Ks.dim() < 3:
        raise _shape_error("cameras.Ks", Ks, "[V, 3, 3], [B, V, 3, 3] or [*L, V, 3, 3] with prod(L) = B")
    if Ks.dim() == 3:
        return Ks.unsqueeze(0).expand(B, -1, -1, -1), viewmats.unsqueeze(0).expand(B, -1, -1, -1)
    lead = tuple(Ks.shape[:-3])
    if math.prod(lead) != B:
        size = f"batch size {lead[0]}" if len(lead) == 1 else f"leading dims {lead} (= {math.prod(lead)} avatars)"
        raise ValueError(
            f"render: cameras.Ks has {size} ({tuple(Ks.shape)}) but the cloud has {B} avatars; give [V, 3, 3] "
            "cameras to share them, [B, V, 3, 3] per avatar or [*L, V, 3, 3] with prod(L) = B (e.g. [B', T, V, 3, 3] "
            "for the B' * T frames of animate_gaussians)"
        )
    return Ks.reshape(B, *Ks.shape[-3:]), viewmats.reshape(B, *viewmats.shape[-3:])


def _background(background: Tensor | float | None, B: int, V: int, lead: tuple[int, ...], like: Tensor) -> Tensor:
    """``[B, V, 3]`` background colours (``lead``: the cameras' leading dims, whose shape a per-image background may
    take instead of ``B``)."""
    if background is None:
        return torch.zeros(B, V, 3, dtype=like.dtype, device=like.device)
    if isinstance(background, (int, float)):
        return torch.full((B, V, 3), float(background), dtype=like.dtype, device=like.device)
    bg = torch.as_tensor(background).to(dtype=like.dtype, device=like.device)
    if tuple(bg.shape) == (3,):
        return bg.expand(B, V, 3)
    if tuple(bg.shape) == (B, V, 3) or (len(lead) > 1 and tuple(bg.shape) == (*lead, V, 3)):
        return bg.reshape(B, V, 3)
    shapes = f"[3] or [B, V, 3] = {[B, V, 3]}" + (f" or {[*lead, V, 3]}" if len(lead) > 1 else "")
    raise _shape_error("background", bg, f"{shapes} (or a float, or None for black)")


def _sanitise(cloud: GaussianCloud) -> GaussianCloud:
    """Padding gets harmless values (identity rotation, zero opacity) so garbage there never reaches the maths."""
    if cloud.mask is None:
        return cloud
    m = cloud.mask
    identity = torch.zeros_like(cloud.quats)
    identity[..., 0] = 1.0
    return GaussianCloud(
        means=torch.where(m[..., None], cloud.means, torch.zeros_like(cloud.means)),
        quats=torch.where(m[..., None], cloud.quats, identity),
        scales=torch.where(m[..., None], cloud.scales, torch.full_like(cloud.scales, 1e-3)),
        opacities=torch.where(m, cloud.opacities, torch.zeros_like(cloud.opacities)),
        sh=torch.where(m[..., None, None], cloud.sh, torch.zeros_like(cloud.sh)),
        mask=m,
    )


def splat_colors(cloud: GaussianCloud, viewmats: Tensor) -> Tensor:
    """``[B, V, N, 3]`` colour of every splat seen from every view (SH evaluated towards the splat)."""
    B, N = cloud.means.shape[:2]
    V = viewmats.shape[1]
    if cloud.sh.shape[2] == 1:
        return eval_sh(cloud.sh).unsqueeze(1).expand(B, V, N, 3)
    dirs = cloud.means.unsqueeze(1) - camera_centers(viewmats).unsqueeze(2)  # [B, V, N, 3]
    return eval_sh(cloud.sh.unsqueeze(1).expand(B, V, *cloud.sh.shape[1:]), dirs)


def render(
    cloud: GaussianCloud,
    cameras: Cameras,
    *,
    background: Tensor | float | None = None,
    backend: Backend = "auto",
    near: float = 0.01,
    far: float = 1e3,
    return_depth: bool = False,
    check_values: bool | None = None,
) -> RenderOutput:
    """Render ``B`` avatars from ``V`` views; differentiable in every cloud field (and the background).

    Args:
        cloud: ``[B, N]`` activated Gaussians (``mask`` False entries render as nothing).
        cameras: ``Ks [V, 3, 3]`` / ``viewmats [V, 4, 4]`` shared by all avatars, ``[B, V, ...]`` per avatar, or
            ``[*L, V, ...]`` with leading dims whose product is ``B``, flattened row-major: ``[B', T, V, ...]`` gives
            avatar ``b * T + t`` the views ``[b, t]``, the order of :func:`avp.head.animate_gaussians`'s ``B' * T``
            frames, so per-subject cameras reach every frame with one ``expand`` (no copy by the caller). The
            result is the same as rendering with the cameras reshaped to ``[B, V, ...]``.
        background: None (black), a float grey, ``[3]``, ``[B, V, 3]`` or ``[*L, V, 3]`` (the cameras' leading
            dims); composited as ``T * bg``.
        backend: ``auto`` (gsplat for float32 CUDA tensors when its CUDA extension loads, else ``torch``),
            ``torch`` (tiled CPU/GPU rasteriser), ``gsplat`` or ``reference`` (slow dense oracle).
        near, far: camera-depth range of splat centres that are drawn (``near <= z <= far``).
        return_depth: also render the alpha-normalised expected camera depth.
        check_values: check the values (finite, unit-able quaternions, scales, opacities, focal lengths) and raise
            the errors below; None (default) checks CPU inputs and skips the check on accelerators, where it would
            sync the host on every call (set ``AVP_RENDER_CHECKS=1`` to check there too). Shapes, dtypes and devices
            are always checked (no sync).

    Returns:
        ``RenderOutput`` with the cloud's batch (whatever the cameras' leading dims): rgb ``[B, V, 3, H, W]``, alpha
        ``[B, V, 1, H, W]``, depth ``[B, V, 1, H, W]`` or None, in
        the dtype of ``cloud.means`` (float16/bfloat16 clouds are rendered, and returned, in float32).

    Raises:
        ValueError: naming the field, for mismatched shapes or batch sizes, a bad background, ``near``/``far`` or
            backend, and (where values are checked) non-finite values, zero quaternions, negative scales, opacities
            outside [0, 1], non-positive focal lengths.

    Autocast does not reach inside: an enclosing ``torch.autocast`` would run the projection and compositing matmuls
    in bf16/fp16 (colour errors up to ~0.3), so the float32 contract is kept by disabling it here.
    """
    with torch.autocast(cloud.means.device.type, enabled=False):
        return _render(cloud, cameras, background=background, backend=backend, near=near, far=far,
                       return_depth=return_depth, check_values=check_values)


def _render(cloud: GaussianCloud, cameras: Cameras, *, background: Tensor | float | None, backend: Backend,
            near: float, far: float, return_depth: bool, check_values: bool | None = None) -> RenderOutput:
    _check_cloud(cloud)
    # One compute dtype: the means' (half precision is raised to float32: thresholds like T <= 1e-4 need it).
    dtype = cloud.means.dtype if cloud.means.dtype in (torch.float32, torch.float64) else torch.float32
    cloud = cloud.map(lambda t: t.to(dtype) if t.is_floating_point() else t)
    if not 0.0 < near < far:
        raise ValueError(f"render: need 0 < near < far, got near={near}, far={far}")
    B, N = cloud.means.shape[:2]
    Ks, viewmats = _expand_cameras(cameras, B)
    Ks = Ks.to(cloud.means)
    viewmats = viewmats.to(cloud.means)
    V, W, H = Ks.shape[1], int(cameras.width), int(cameras.height)
    bg = _background(background, B, V, tuple(cameras.Ks.shape[:-3]), cloud.means)
    which = choose_backend(backend, cloud.means.device, cloud.means.dtype)
    if B == 0 or V == 0 or N == 0:
        rgb = bg[..., None, None].expand(B, V, 3, H, W).clone()
        alpha = cloud.means.new_zeros(B, V, 1, H, W)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=alpha.clone() if return_depth else None)
    if wants_value_checks(check_values, cloud.means.device):
        _check_values(cloud, Ks, viewmats)
    cloud = _sanitise(cloud)
    colors = splat_colors(cloud, viewmats)  # [B, V, N, 3]

    if which == "gsplat":
        rgb, alpha, depth = gsplat_backend.render_gsplat(
            cloud.means, cloud.quats, cloud.scales, cloud.opacities, colors, viewmats, Ks, W, H, bg,
            near=near, far=far, return_depth=return_depth,
        )  # fmt: skip
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)

    covars = covariance_3d(cloud.quats, cloud.scales)  # [B, N, 3, 3]
    proj = project_gaussians(
        cloud.means, covars, cloud.opacities, viewmats, Ks, W, H, near=near, far=far, valid=cloud.mask
    )
    if return_depth:
        colors = torch.cat([colors, proj.depths.unsqueeze(-1)], -1)  # depth composited as a fourth channel
    n_img = B * V
    composite = composite_tiles if which == "torch" else composite_dense
    acc, T = composite(
        proj.means2d.reshape(n_img, N, 2),
        proj.conics.reshape(n_img, N, 3),
        cloud.opacities.unsqueeze(1).expand(B, V, N).reshape(n_img, N),
        colors.reshape(n_img, N, colors.shape[-1]),
        proj.radii.reshape(n_img, N, 2),
        proj.depths.reshape(n_img, N),
        W,
        H,
    )  # acc [B*V, C, H, W], T [B*V, 1, H, W]
    rgb = acc[:, :3] + T * bg.reshape(n_img, 3, 1, 1)
    alpha = 1.0 - T
    depth = None
    if return_depth:
        depth = (acc[:, 3:4] / alpha.clamp_min(1e-10)).reshape(B, V, 1, H, W)
    return RenderOutput(rgb=rgb.reshape(B, V, 3, H, W), alpha=alpha.reshape(B, V, 1, H, W), depth=depth)

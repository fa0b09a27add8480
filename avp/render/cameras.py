"""Pinhole camera construction in the OpenCV convention (x right, y down, z forward; world-to-camera view matrices).

The head looks along +z (FLAME's canonical space, y up), so a frontal camera sits at +z looking towards -z.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from avp.types import Cameras


def _as_tensor(x: Tensor | Sequence[float], like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def look_at(eye: Tensor, target: Tensor | Sequence[float], up: Tensor | Sequence[float] = (0.0, 1.0, 0.0)) -> Tensor:
    """World-to-camera matrices of cameras at ``eye`` looking at ``target`` with ``up`` pointing up in the image.

    Args:
        eye: ``[..., 3]`` camera centres.
        target: ``[..., 3]`` (or broadcastable) points each camera looks at.
        up: ``[..., 3]`` (or broadcastable) world direction that appears upwards (image -y).

    Returns:
        ``[..., 4, 4]`` view matrices: ``x_cam = R @ x_world + t``.

    When the viewing direction is parallel to ``up`` the image roll is undefined; the world x axis (or z when that is
    parallel too) then stands in for ``up`` so the result is still a rotation.
    """
    eye = _as_tensor(eye)
    target = _as_tensor(target, eye)
    up = _as_tensor(up, eye)
    forward = target - eye
    norm = torch.linalg.vector_norm(forward, dim=-1, keepdim=True)
    if bool((norm <= 0).any()):
        raise ValueError("look_at: eye and target coincide for some cameras; the viewing direction is undefined")
    z = forward / norm
    eye = torch.broadcast_to(eye, z.shape)
    down = torch.broadcast_to(-up, z.shape)
    x = torch.linalg.cross(down, z, dim=-1)
    degenerate = torch.linalg.vector_norm(x, dim=-1, keepdim=True) < 1e-6 * torch.linalg.vector_norm(
        down, dim=-1, keepdim=True
    )
    if bool(degenerate.any()):
        e_x = torch.tensor([1.0, 0.0, 0.0], dtype=z.dtype, device=z.device)
        e_z = torch.tensor([0.0, 0.0, 1.0], dtype=z.dtype, device=z.device)
        fallback = torch.where(z[..., :1].abs() < 0.9, e_x, e_z)
        x = torch.where(degenerate, torch.linalg.cross(fallback, z, dim=-1), x)
    x_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    x = x / x_norm
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows are the camera axes in world coordinates: [..., 3, 3]
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)  # [..., 3]
    view = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    view[..., :3, :3] = R
    view[..., :3, 3] = t
    view[..., 3, 3] = 1.0
    return view


def focal_from_fov(fov_y_deg: float, height: int) -> float:
    """Focal length in pixels for a vertical field of view of ``fov_y_deg`` degrees over ``height`` pixels."""
    if not 0.0 < fov_y_deg < 180.0:
        raise ValueError(f"intrinsics: fov_y_deg must be in (0, 180), got {fov_y_deg}")
    return 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)


def intrinsics(
    fov_y_deg: float | None = None,
    width: int = 512,
    height: int = 512,
    *,
    focal: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[3, 3]`` pinhole intrinsics with square pixels and the principal point at the image centre.

    Give exactly one of ``fov_y_deg`` (vertical field of view, degrees) or ``focal`` (pixels). Pixel centres are at
    +0.5, so the principal point of a ``W x H`` image is ``(W / 2, H / 2)``.
    """
    if (fov_y_deg is None) == (focal is None):
        raise ValueError("intrinsics: give exactly one of fov_y_deg or focal")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"intrinsics: width and height must be positive, got {width}x{height}")
    f = focal_from_fov(fov_y_deg, height) if focal is None else float(focal)
    if f <= 0:
        raise ValueError(f"intrinsics: focal must be positive, got {f}")
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.to(device) if device is not None else K


def orbit_cameras(
    n: int,
    radius: float = 0.6,
    yaw_range_deg: tuple[float, float] = (-60.0, 60.0),
    pitch_range_deg: tuple[float, float] = (0.0, 0.0),
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    fov_y_deg: float = 20.0,
    width: int = 512,
    height: int = 512,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """``n`` cameras on a sphere of ``radius`` around ``target``, all looking at it, y up.

    Yaw rotates about +y (0 = frontal, on the +z side; positive yaw moves the camera towards +x), pitch raises the
    camera (positive = above, looking down). Without ``generator`` the yaws and pitches are evenly spaced over their
    ranges, endpoints included (one camera sits at the middle of each range); with it they are drawn uniformly.

    Returns:
        ``Cameras`` with ``Ks [n, 3, 3]`` and ``viewmats [n, 4, 4]``.
    """
    if n <= 0:
        raise ValueError(f"orbit_cameras: n must be positive, got {n}")
    if radius <= 0:
        raise ValueError(f"orbit_cameras: radius must be positive, got {radius}")

    def angles(lo: float, hi: float) -> Tensor:
        if generator is not None:
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            return lo + (hi - lo) * u
        if n == 1:
            return torch.tensor([(lo + hi) / 2.0], dtype=torch.float64)
        return torch.linspace(lo, hi, n, dtype=torch.float64)

    yaw = torch.deg2rad(angles(*yaw_range_deg))
    pitch = torch.deg2rad(angles(*pitch_range_deg))
    tgt = _as_tensor(target).to(torch.float64).cpu()
    offset = torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch), torch.cos(yaw) * torch.cos(pitch)], -1)
    eye = tgt + radius * offset  # [n, 3]
    viewmats = look_at(eye, tgt.expand_as(eye), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    K = intrinsics(fov_y_deg, width, height, dtype=torch.float64).expand(n, 3, 3)
    return Cameras(Ks=K.to(device=device, dtype=dtype).contiguous(), viewmats=viewmats.to(device=device, dtype=dtype),
                   width=int(width), height=int(height))

"""Calibrated cameras for synthetic clips: a NeRSemble-like frontal arc (default) or a sphere, and the portrait's
near-frontal camera. OpenCV world-to-camera, looking at the head (FLAME space: the face looks along +z)."""

from __future__ import annotations

import numpy as np
import torch

from avp.data.schema import CameraArrays
from avp.head.framing import FRAME_HEIGHT_M, PORTRAIT_HEIGHT_M, TARGET
from avp.render.cameras import intrinsics, look_at


def _cameras(yaw_deg: np.ndarray, pitch_deg: np.ndarray, radius: np.ndarray, target: np.ndarray, size: int,
             frame_height: float) -> CameraArrays:
    yaw, pitch = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    offset = np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], -1)
    eye = target + radius[:, None] * offset
    viewmats = look_at(torch.from_numpy(eye), torch.from_numpy(np.broadcast_to(target, eye.shape).copy()),
                       torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    fov = np.rad2deg(2 * np.arctan(frame_height / 2 / radius))
    Ks = torch.stack([intrinsics(float(f), size, size, dtype=torch.float64) for f in fov])
    return CameraArrays(Ks=Ks.numpy().astype(np.float32), viewmats=viewmats.numpy().astype(np.float32), width=size,
                        height=size)


def clip_cameras(n: int, size: int, rng: np.random.Generator, layout: str = "arc") -> CameraArrays:
    """``n`` cameras around the head.

    ``arc``: like NeRSemble's rig, a frontal arc from -60 to +60 degrees yaw in two rows (pitch about +12 and -4
    degrees, alternating), about 1 m away. ``sphere``: a Fibonacci sphere cap from 25 degrees below the horizon to
    55 above, all around. Each clip's rig is jittered slightly (a real rig is recalibrated per capture).
    """
    if n < 1:
        raise ValueError(f"need at least one camera, got {n}")
    if layout == "arc":
        yaw = np.linspace(-60, 60, n) if n > 1 else np.zeros(1)
        pitch = np.where(np.arange(n) % 2 == 0, 12.0, -4.0) if n > 2 else np.full(n, 5.0)
    elif layout == "sphere":
        i = np.arange(n) + 0.5
        yaw = np.rad2deg(np.pi * (1 + 5**0.5) * i) % 360 - 180
        lo, hi = np.sin(np.deg2rad(-25)), np.sin(np.deg2rad(55))
        pitch = np.rad2deg(np.arcsin(lo + (hi - lo) * i / n))
    else:
        raise ValueError(f"unknown camera layout {layout!r}; expected 'arc' or 'sphere'")
    yaw = yaw + rng.normal(0, 1.5, n)
    pitch = pitch + rng.normal(0, 1.0, n)
    radius = rng.uniform(0.95, 1.05) * (1 + rng.normal(0, 0.01, n))
    target = TARGET + rng.normal(0, 0.004, 3)
    return _cameras(yaw, pitch, radius, target, size, FRAME_HEIGHT_M)


def portrait_camera(size: int, rng: np.random.Generator) -> CameraArrays:
    """A near-frontal camera (yaw within +-10, pitch within +-5 degrees) framing the head a little tighter."""
    target = TARGET + np.array([0.0, 0.015, 0.0]) + rng.normal(0, 0.004, 3)
    return _cameras(rng.uniform(-10, 10, 1), rng.uniform(-5, 5, 1), np.array([rng.uniform(0.9, 1.1)]), target, size,
                    PORTRAIT_HEIGHT_M)

"""Where cameras look at a head and how much of it they frame: the one framing shared by the synthetic data's camera
rig (:mod:`avp.data.synthetic.cameras`), the portrait crop and the views an avatar is shown from
(:func:`view_cameras`). Head canonical space (FLAME's: y up, the face looks along +z), OpenCV cameras."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from avp.render.cameras import intrinsics, look_at
from avp.types import Cameras

TARGET = np.array([0.0, -0.02, 0.01])
"""Where the cameras look: the middle of a head from the neck base to the top of its hair."""
FRAME_HEIGHT_M = 0.42
"""Vertical extent framed at the target's distance (neck to hair top, with a margin)."""
PORTRAIT_HEIGHT_M = 0.34
"""Vertical extent of the portrait's (tighter) framing at the target's distance."""


@dataclass
class ViewFraming:
    """Cameras for looking at an avatar: the synthetic clips' rig (about 1 m away, framing neck to hair top)."""

    distance: float = 1.0
    target: tuple[float, float, float] = (float(TARGET[0]), float(TARGET[1]), float(TARGET[2]))
    frame_height: float = FRAME_HEIGHT_M
    """Metres covered vertically at ``distance``."""


def view_cameras(yaw_deg: Sequence[float] | Tensor, *, size: int = 512, pitch_deg: float | Sequence[float] = 0.0,
                 framing: ViewFraming | None = None, device: torch.device | str | None = None) -> Cameras:
    """``V`` cameras around the head (yaw 0 = frontal, positive towards the subject's left, +x): ``Ks [V, 3, 3]``,
    ``viewmats [V, 4, 4]``, square ``size``."""
    framing = framing or ViewFraming()
    yaw = torch.deg2rad(torch.as_tensor(yaw_deg, dtype=torch.float64).reshape(-1))
    pitch = torch.deg2rad(torch.as_tensor(pitch_deg, dtype=torch.float64).reshape(-1)).expand_as(yaw)
    target = torch.tensor(framing.target, dtype=torch.float64)
    offset = torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch), torch.cos(yaw) * torch.cos(pitch)], -1)
    eye = target + framing.distance * offset
    viewmats = look_at(eye, target.expand_as(eye), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    fov = math.degrees(2 * math.atan(framing.frame_height / 2 / framing.distance))
    K = intrinsics(fov, size, size, dtype=torch.float64).expand(len(yaw), 3, 3)
    return Cameras(Ks=K.float().to(device).contiguous(), viewmats=viewmats.float().to(device), width=size,
                   height=size)

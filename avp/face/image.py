"""Conversion of package images (float ``[3, H, W]`` in 0..1) into the uint8 RGB arrays the face tools read."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ImageLike = Tensor | np.ndarray


def to_uint8_rgb(image: ImageLike) -> np.ndarray:
    """One image as a C-contiguous ``uint8`` array ``[H, W, 3]`` (RGB).

    Accepts a float tensor ``[3, H, W]`` or ``[1, 3, H, W]`` in 0..1 (the package convention; values are clamped
    and rounded), a ``uint8`` array ``[H, W, 3]``, or a float array ``[H, W, 3]`` in 0..1. The result is always a
    fresh contiguous array: dlib and mediapipe silently find no face in a negative-stride view (a flipped image).
    """
    if isinstance(image, Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3, H, W] (or [1, 3, H, W]); got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        elif image.dtype != torch.uint8:
            raise ValueError(f"expected a float (0..1) or uint8 image tensor; got dtype {image.dtype}")
        return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())  # [3, H, W] -> [H, W, 3]
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB array [H, W, 3]; got shape {image.shape}")
        if image.dtype == np.uint8:
            return np.ascontiguousarray(image)
        if np.issubdtype(image.dtype, np.floating):
            return np.ascontiguousarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
        raise ValueError(f"expected a uint8 or float (0..1) RGB array; got dtype {image.dtype}")
    raise TypeError(f"expected a torch.Tensor [3, H, W] or a numpy array [H, W, 3]; got {type(image).__name__}")


def to_uint8_rgb_batch(images: Tensor) -> list[np.ndarray]:
    """A batch ``[B, 3, H, W]`` (float 0..1) as ``B`` contiguous ``uint8`` arrays ``[H, W, 3]``; one device copy."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W]; got shape {tuple(images.shape)}")
    if images.is_floating_point():
        images = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()  # [B, 3, H, W] -> [B, H, W, 3]
    return [np.ascontiguousarray(a) for a in arrays]

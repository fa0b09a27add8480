"""gsplat 1.5.3 rasterisation on CUDA (the only render module that names CUDA).

gsplat is imported lazily: importing avp never compiles or loads its CUDA extension. gsplat 1.5.3 loads the extension
when ``gsplat.cuda._backend`` is first imported: a prebuilt ``gsplat.csrc``, else a JIT build (minutes, needs
``nvcc``; it first deletes its build folder, so concurrent first builds in DDP ranks destroy each other), else it
prints a notice and leaves ``_C = None``, and the first rasterisation fails with ``AttributeError`` on None (and the
next process tries the build again). :func:`extension_status` makes that import once per process, on demand, and
says why the extension is missing; :func:`usable` counts a missing extension as unusable, so ``backend="auto"``
falls back to the torch rasteriser (one warning) and ``backend="gsplat"`` fails with the reason and the fix. Lightning
code builds it on one rank first (``avp.lit``), before the others import it. Batching notes for 1.5.3:

- ``packed=False``: packed mode asserts when backgrounds are given (gsplat #764) and its backward could mix
  gradients across batch items before gsplat PR #1059;
- colours are passed post-activation ``[B, V, N, 3]`` (evaluated by ``avp.render.sh``), never SH with
  ``sh_degree`` (per-instance SH in batched mode is unsupported, gsplat #1052), so both backends share one SH code;
- padding splats arrive with zero opacity, which gsplat's projection culls (``opacity < 1/255``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

CUDA = "cuda"


@functools.cache
def _gsplat() -> Any:
    """The gsplat module, or None when it does not import."""
    try:
        import gsplat
    except ImportError:
        return None
    return gsplat


EXTENSION_FIX = ("install a gsplat wheel with prebuilt CUDA kernels (https://docs.gsplat.studio/whl) or a CUDA toolkit "
                 "with nvcc matching torch's CUDA, then run once: python -c 'import gsplat.cuda._backend'")


@functools.cache
def extension_status() -> str:
    """Empty when gsplat's CUDA extension is loaded (importing it builds it when needed, once per process), else why
    it is not."""
    gsplat = _gsplat()
    if gsplat is None:
        return "gsplat does not import (pip install gsplat==1.5.3)"
    try:
        from gsplat.cuda import _backend
    except Exception as e:  # a failed JIT build raises whatever the compiler or the linker raised
        return f"gsplat's CUDA extension failed to build or load ({type(e).__name__}: {e}); {EXTENSION_FIX}"
    if getattr(_backend, "_C", None) is None:
        return f"gsplat's CUDA extension is not built and no CUDA toolkit (nvcc) was found to build it; {EXTENSION_FIX}"
    return ""


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """True when gsplat can rasterise tensors of this device and dtype (CUDA, float32, gsplat and its CUDA extension
    loaded). Probes the extension only for CUDA float32 tensors: CPU work never imports gsplat's backend."""
    return not why_unusable(device, dtype)


def why_unusable(device: torch.device, dtype: torch.dtype) -> str:
    """A sentence saying why ``usable`` is False (empty when it is True)."""
    if device.type != CUDA:
        return f"gsplat rasterises CUDA tensors only; these are on {device}"
    if dtype != torch.float32:
        return f"gsplat rasterises float32 only; these are {dtype}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return extension_status()


def render_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor,
    *,
    near: float,
    far: float,
    return_depth: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Rasterise ``B`` clouds into their ``V`` views with ``gsplat.rasterization``.

    Args:
        means ``[B, N, 3]``, quats ``[B, N, 4]``, scales ``[B, N, 3]``, opacities ``[B, N]`` (0 on padding),
        colors ``[B, V, N, 3]`` post-activation, viewmats ``[B, V, 4, 4]``, Ks ``[B, V, 3, 3]``, background
        ``[B, V, 3]``.

    Returns:
        rgb ``[B, V, 3, H, W]``, alpha ``[B, V, 1, H, W]``, depth ``[B, V, 1, H, W]`` (expected camera z) or None.
    """
    gsplat = _gsplat()
    if gsplat is None:
        raise RuntimeError(why_unusable(means.device, means.dtype))
    out, alpha, _ = gsplat.rasterization(
        means.contiguous(),
        quats.contiguous(),
        scales.contiguous(),
        opacities.contiguous(),
        colors.contiguous(),
        viewmats.contiguous(),
        Ks.contiguous(),
        width,
        height,
        near_plane=near,
        far_plane=far,
        eps2d=0.3,
        sh_degree=None,
        packed=False,
        backgrounds=background.contiguous(),
        render_mode="RGB+ED" if return_depth else "RGB",
        rasterize_mode="classic",
    )  # out [B, V, H, W, 3 (+1)], alpha [B, V, H, W, 1]
    out = out.permute(0, 1, 4, 2, 3)  # [B, V, C, H, W]
    depth = out[:, :, 3:4] if return_depth else None
    return out[:, :, :3], alpha.permute(0, 1, 4, 2, 3), depth

"""LPIPS with its real pretrained backbone, or an honest "unavailable".

The ``lpips`` package ships the learned linear heads (``lpips/weights/v0.1/<net>.pth``) but not the ImageNet
backbone (torchvision's AlexNet/VGG16/SqueezeNet1.1), which torchvision downloads into the torch hub cache. Here
the backbone is read only from a local file, so nothing is ever downloaded and a missing file never turns into a
random backbone: :func:`load_lpips` looks in ``weights_path`` when given, else in
``$TORCH_HOME/hub/checkpoints/<torchvision file>`` (``torch.hub.get_dir()``; e.g. ``alexnet-owt-7be5be79.pth``),
and returns ``(None, reason)`` when there is no file. The decoder's loss uses the same loader.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from avp.metrics.unavailable import MetricValue, Unavailable

BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
"""torchvision's ImageNet weights for each LPIPS backbone, as the torch hub cache names them"""


class LpipsLoad(NamedTuple):
    """What :func:`load_lpips` found: a model, or None and the reason."""

    model: nn.Module | None
    """``lpips.LPIPS`` in eval mode with frozen weights; call it on images in -1..1"""
    reason: str | None
    """why ``model`` is None (None when loaded)"""


def backbone_cache_path(net: str = "alex") -> Path:
    """Where torchvision's hub cache keeps the backbone weights for ``net`` (honours ``TORCH_HOME``)."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS backbone {net!r}; expected one of {sorted(BACKBONE_FILES)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def _backbone_state(model: nn.Module, file: Path) -> dict[str, Tensor]:
    """The backbone part of ``model``'s state dict, filled from torchvision's ``features.<i>.*`` keys in ``file``."""
    try:
        source = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read LPIPS backbone weights from {file}: {e}") from e
    if not isinstance(source, dict):
        raise ValueError(f"{file} does not hold a state dict (found {type(source).__name__})")
    state, missing = {}, []
    # lpips splits torchvision's `features` Sequential into slices that keep the layer indices: slice2.3.weight is
    # features.3.weight
    for key in model.net.state_dict():
        found = re.fullmatch(r"slice\d+\.(\d+)\.(.+)", key)
        src = f"features.{found.group(1)}.{found.group(2)}" if found else key
        if src in source:
            state[key] = source[src]
        else:
            missing.append(src)
    if missing:
        raise ValueError(f"{file} is not a torchvision backbone for this LPIPS net: missing {missing[:4]}"
                         f"{' …' if len(missing) > 4 else ''}")
    return state


def load_lpips(net: str = "alex", weights_path: str | Path | None = None) -> LpipsLoad:
    """LPIPS (v0.1 linear heads from the lpips package) with the pretrained ``net`` backbone from a local file.

    ``weights_path``: torchvision's state dict for the backbone (as downloaded by torchvision, e.g.
    ``alexnet-owt-7be5be79.pth``); a given path that does not exist raises ``FileNotFoundError``. Without it the torch
    hub cache is used (:func:`backbone_cache_path`); if the file is not there the result is ``(None, reason)``.
    A file that is not a matching backbone raises ``ValueError`` naming it.
    """
    if net not in BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS backbone {net!r}; expected one of {sorted(BACKBONE_FILES)}")
    if weights_path is not None:
        file = Path(weights_path)
        if not file.is_file():
            raise FileNotFoundError(f"LPIPS backbone weights {file} do not exist")
    else:
        file = backbone_cache_path(net)
        if not file.is_file():
            return LpipsLoad(None, f"no pretrained {net} backbone: {file} does not exist (copy torchvision's "
                                   f"{BACKBONE_FILES[net]} there, set TORCH_HOME, or pass weights_path)")
    try:
        import lpips
    except ImportError as e:
        return LpipsLoad(None, f"the lpips package is not installed ({e})")
    with warnings.catch_warnings():
        # lpips builds the backbone with torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand only skips torchvision's download: the backbone is overwritten from `file` just below
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    try:
        model.net.load_state_dict(_backbone_state(model, file))
    except RuntimeError as e:  # shape mismatch: a backbone of another architecture
        raise ValueError(f"{file} is not a torchvision {net} backbone: {e}") from e
    model.eval().requires_grad_(False)
    return LpipsLoad(model, None)


def lpips_per_image(model: nn.Module, preds: Tensor, target: Tensor) -> Tensor:
    """LPIPS of ``preds`` against ``target`` ``[B, 3, H, W]`` in 0..1 -> ``[B]`` (differentiable in the images)."""
    if preds.ndim != 4 or preds.shape != target.shape or preds.shape[1] != 3:
        raise ValueError(f"expected preds and target [B, 3, H, W] of one shape; got {tuple(preds.shape)} and "
                         f"{tuple(target.shape)}")
    return model(preds * 2 - 1, target * 2 - 1).flatten()  # [B, 1, 1, 1] -> [B]


class LPIPS(Metric):
    """Mean per-image LPIPS (lower is better) with the pretrained backbone, or ``Unavailable`` from ``compute``.

    The network is held outside the module tree (it follows the inputs' device on ``update``) so that it is neither
    saved in checkpoints of a LightningModule that owns this metric nor required when loading one.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    total: Tensor
    count: Tensor

    def __init__(self, net: str = "alex", weights_path: str | Path | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        model, self.reason = load_lpips(net, weights_path)
        self._model = [model] if model is not None else []
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    @property
    def available(self) -> bool:
        return bool(self._model)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``, ``target`` ``[B, 3, H, W]`` in 0..1; a no-op when unavailable."""
        if not self._model:
            return
        model = self._model[0]
        if next(model.parameters()).device != preds.device:
            self._model[0] = model = model.to(preds.device)
        with torch.no_grad():
            values = lpips_per_image(model, preds.float(), target.float())
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> MetricValue | Tensor:
        if self.reason is not None:
            return Unavailable(self.reason)
        if self.count == 0:
            return Unavailable("no images")
        return (self.total / self.count).float()

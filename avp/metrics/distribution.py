"""FID and CLIP image similarity, computed only with weights from local files (nothing is downloaded).

- FID: torchmetrics' ``FrechetInceptionDistance`` with torch-fidelity's Inception (``inception-v3-compat``, the
  network of the original TF FID), built from ``weights_path`` or from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``, where torch-fidelity keeps it).
- CLIP similarity: cosine between open_clip image embeddings of a source image and a render (the identity
  similarity AvatarArtist calls CLIP score), from a local checkpoint ``weights_path`` of ``model_name`` (a file
  open_clip can load, e.g. OpenAI's ``ViT-B-32.pt``, or a ``local-dir`` folder with ``open_clip_config.json``).

Without their files both report :class:`~avp.metrics.unavailable.Unavailable` from ``compute``; a configured path that
does not exist raises ``FileNotFoundError``. Networks are held outside the module tree (so they are not saved in
checkpoints of a module that owns the metric) and follow the inputs' device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from avp.metrics.unavailable import MetricValue, Unavailable

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_cache_path() -> Path:
    """Where torch-fidelity's hub cache keeps the FID Inception weights (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _module_device(module: torch.nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


class FID(Metric):
    """Fréchet Inception Distance between real and generated images (lower is better).

    ``update(images [B, 3, H, W] in 0..1, real: bool)``; ``compute()`` -> scalar tensor or ``Unavailable``.
    ``feature``: Inception feature size (2048 is the standard FID; 64/192/768 are the smaller taps).

    Distributed: whether there are enough images is decided on the image counts summed over all processes (this
    metric's own states, synced before :meth:`compute` runs), never on one process's, so every process calls the
    inner FID's ``compute`` (a collective) or none does, also one that saw no image.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    real_count: Tensor
    fake_count: Tensor

    def __init__(self, weights_path: str | Path | None = None, feature: int = 2048, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason: str | None = None
        self._fid: list[Metric] = []
        self.add_state("real_count", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("fake_count", default=torch.tensor(0), dist_reduce_fx="sum")
        # the inner FID syncs over the same processes as this metric
        self._sync_kwargs = {k: v for k, v in kwargs.items()
                             if k in ("process_group", "dist_sync_fn", "distributed_available_fn", "sync_on_compute")}
        if weights_path is not None:
            file = Path(weights_path)
            if not file.is_file():
                raise FileNotFoundError(f"FID Inception weights {file} do not exist")
        else:
            file = inception_cache_path()
            if not file.is_file():
                self.reason = (f"no FID Inception weights: {file} does not exist (copy torch-fidelity's "
                               f"{INCEPTION_FILE} there, set TORCH_HOME, or pass weights_path)")
                return
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as e:
            self.reason = f"torchmetrics' FID cannot be imported ({e})"
            return
        if not _TORCH_FIDELITY_AVAILABLE:
            self.reason = "torch-fidelity is not installed (pip install torch-fidelity)"
            return
        try:
            fid = FrechetInceptionDistance(feature=feature, normalize=True, feature_extractor_weights_path=str(file),
                                           **self._sync_kwargs)
        except Exception as e:
            raise ValueError(f"cannot load FID Inception weights from {file}: {e}") from e
        self._fid.append(fid)

    @property
    def available(self) -> bool:
        return bool(self._fid)

    def update(self, images: Tensor, real: bool) -> None:
        """Add ``images [B, 3, H, W]`` in 0..1 to the real or the generated set; a no-op when unavailable."""
        if not self._fid:
            return
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W]; got {tuple(images.shape)}")
        fid = self._fid[0]
        if _module_device(fid) != images.device:
            self._fid[0] = fid = fid.to(images.device)
        fid.update(images.float().clamp(0, 1), real=real)
        if real:
            self.real_count += images.shape[0]
        else:
            self.fake_count += images.shape[0]

    def compute(self) -> MetricValue | Tensor:
        if not self._fid:
            return Unavailable(self.reason or "FID is unavailable")
        # the counts are this metric's synced states: the same on every process
        if int(self.real_count) < 2 or int(self.fake_count) < 2:
            return Unavailable("FID needs at least two real and two generated images")
        return self._fid[0].compute()

    def reset(self) -> None:
        super().reset()
        for fid in self._fid:
            fid.reset()


def load_clip(model_name: str = "ViT-B-32", weights_path: str | Path | None = None) -> tuple[Any, str | None]:
    """An open_clip model with weights from a local file or ``local-dir`` folder, or ``(None, reason)``."""
    if weights_path is None:
        return None, (f"no CLIP weights: no package ships them; pass weights_path (a local open_clip/OpenAI "
                      f"checkpoint of {model_name})")
    path = Path(weights_path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP weights {path} do not exist")
    try:
        import open_clip
    except ImportError as e:
        return None, f"open_clip is not installed (pip install open_clip_torch): {e}"
    try:
        if path.is_dir():
            model = open_clip.create_model(f"local-dir:{path}")
        else:
            model = open_clip.create_model(model_name, pretrained=str(path))
    except Exception as e:
        raise ValueError(f"cannot load CLIP {model_name} from {path}: {e}") from e
    return model.eval().requires_grad_(False), None


def _clip_preprocess(images: Tensor, cfg: dict[str, Any]) -> Tensor:
    """open_clip's eval transform on tensors ``[B, 3, H, W]`` in 0..1: resize (bicubic, antialiased) the shorter side
    to the model's size and centre-crop (``resize_mode`` "shortest", the default) or resize to it ("squash"), then
    normalise with the model's mean and std."""
    size = cfg["size"]
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    mode = cfg.get("resize_mode", "shortest")
    _, _, h, w = images.shape
    if mode == "squash":
        resized = (out_h, out_w)
    elif mode == "shortest":
        scale = max(out_h / h, out_w / w)
        resized = (max(out_h, round(h * scale)), max(out_w, round(w * scale)))
    else:
        raise ValueError(f"CLIP preprocessing resize_mode {mode!r} is not supported (shortest, squash)")
    x = F.interpolate(images.float(), size=resized, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (resized[0] - out_h) // 2, (resized[1] - out_w) // 2
    x = x[:, :, top:top + out_h, left:left + out_w]
    mean = torch.tensor(cfg["mean"], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=images.device).view(1, 3, 1, 1)
    return (x - mean) / std


class CLIPSimilarity(Metric):
    """Mean cosine similarity between CLIP image embeddings of renders and their source images (higher is better).

    ``update(renders [B, 3, H, W], source [B, 3, H, W] or [3, H, W])`` with images in 0..1.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    total: Tensor
    count: Tensor

    def __init__(self, model_name: str = "ViT-B-32", weights_path: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model, self.reason = load_clip(model_name, weights_path)
        self._model = [model] if model is not None else []
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    @property
    def available(self) -> bool:
        return bool(self._model)

    def embed(self, images: Tensor) -> Tensor:
        """Unit CLIP image embeddings of ``images [B, 3, H, W]`` in 0..1 -> ``[B, D]``."""
        model = self._model[0]
        if _module_device(model) != images.device:
            self._model[0] = model = model.to(images.device)
        with torch.no_grad():
            features = model.encode_image(_clip_preprocess(images, model.visual.preprocess_cfg))
        return F.normalize(features.float(), dim=-1)

    def update(self, renders: Tensor, source: Tensor) -> None:
        if not self._model:
            return
        if source.ndim == 3:
            source = source[None]
        if renders.ndim != 4 or source.ndim != 4 or source.shape[0] not in (1, renders.shape[0]):
            raise ValueError(f"expected renders [B, 3, H, W] and source [B or 1, 3, H, W]; got "
                             f"{tuple(renders.shape)} and {tuple(source.shape)}")
        similarity = (self.embed(renders) * self.embed(source)).sum(-1)  # [B]
        self.total += similarity.double().sum()
        self.count += similarity.numel()

    def compute(self) -> MetricValue | Tensor:
        if self.reason is not None:
            return Unavailable(self.reason)
        if self.count == 0:
            return Unavailable("no images")
        return (self.total / self.count).float()

"""Metrics on accelerator tensors give the CPU values (a LightningModule moves its metrics to its device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avp.metrics import LPIPS, PSNR, SSIM, IdentitySimilarity
from tests.face.photos import as_tensor, astronaut
from tests.metrics.test_lpips import _write_alexnet_features


@pytest.mark.gpu
def test_metrics_on_the_gpu_match_the_cpu(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    device = torch.device("cuda")
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    weights = tmp_path / "alexnet.pth"
    _write_alexnet_features(weights)
    for make in (PSNR, SSIM, lambda: LPIPS(weights_path=weights)):
        cpu, gpu = make(), make().to(device)
        cpu.update(x, y)
        gpu.update(x.to(device), y.to(device))
        value = gpu.compute()
        assert value.device.type == "cuda"
        assert value.item() == pytest.approx(cpu.compute().item(), abs=1e-4)
    identity = IdentitySimilarity().to(device)
    image = as_tensor(astronaut()).to(device)
    identity.update(torch.stack([image, image.flip(-1)]), image)
    out = identity.compute()
    assert out["face_detection_rate"].item() == 1.0 and out["identity_cosine"].item() > 0.97

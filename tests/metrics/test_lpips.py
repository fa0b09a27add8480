"""LPIPS loading: never a random backbone outside these tests.

The backbone files written here hold randomly initialised torchvision weights: they check where the loader looks
and that it copies every backbone weight; their LPIPS values are only compared with each other, never reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from avp.metrics import LPIPS, Unavailable, backbone_cache_path, format_value, load_lpips, lpips_per_image


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (whatever the machine's own cache holds)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _write_alexnet_features(path: Path) -> dict[str, torch.Tensor]:
    """torchvision AlexNet weights (random init) as torchvision names them; only ``features`` (the part LPIPS uses,
    10 MB instead of 233 MB)."""
    state = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_without_weights_lpips_is_unavailable_and_never_a_number(torch_home: Path) -> None:
    g = torch.Generator().manual_seed(0)
    model, reason = load_lpips("alex")
    assert model is None
    assert str(torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in reason
    metric = LPIPS()
    assert not metric.available
    metric.update(torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g))
    value = metric.compute()
    assert isinstance(value, Unavailable) and value.reason == reason
    assert format_value(value).startswith("unavailable (no pretrained alex backbone")


def test_the_hub_cache_file_is_found_and_every_backbone_weight_loaded(torch_home: Path) -> None:
    g = torch.Generator().manual_seed(0)
    path = backbone_cache_path("alex")
    assert path == torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    state = _write_alexnet_features(path)
    model, reason = load_lpips("alex")
    assert reason is None and model is not None
    loaded = model.net.state_dict()
    for key, value in loaded.items():  # slice<k>.<i>.weight holds torchvision's features.<i>.weight
        index, name = key.split(".", 1)[1].split(".", 1)
        assert torch.equal(value, state[f"features.{index}.{name}"])
    assert len(loaded) == len(state)
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 64, 64, generator=g)
    same = lpips_per_image(model, x, x)
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    assert (lpips_per_image(model, x, torch.rand(2, 3, 64, 64, generator=g)) > 0).all()


def test_an_explicit_weights_path_and_the_metric(torch_home: Path, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "elsewhere" / "my_alexnet.pth"
    _write_alexnet_features(path)
    metric = LPIPS(weights_path=path)
    assert metric.available
    x, y = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    metric.update(x, y)
    metric.update(x, x)
    expected = torch.cat([lpips_per_image(metric._model[0], x, y), torch.zeros(3)]).mean()
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)
    # the network is not part of the metric's (and so a LightningModule's) state dict
    assert set(metric.state_dict()) <= {"total", "count"}


def test_bad_weight_files_are_named(torch_home: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_lpips("alex", tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_lpips("alex", garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pth is not a torchvision backbone"):
        load_lpips("alex", wrong)
    reshaped = tmp_path / "reshaped.pth"
    features = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v[..., :1] for k, v in features.items()}, reshaped)  # right names, wrong shapes
    with pytest.raises(ValueError, match="reshaped.pth is not a torchvision alex backbone"):
        load_lpips("alex", reshaped)
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        load_lpips("resnet")

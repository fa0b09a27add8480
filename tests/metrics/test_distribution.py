"""FID and CLIP similarity: unavailable without local weights; with weights files written here (randomly
initialised networks of the real architectures) the loading and metric plumbing is checked, and the values are only
compared with each other (identical sets, identical images), never reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avp.metrics import FID, CLIPSimilarity, Unavailable, inception_cache_path, load_clip

# both are in the `eval` extra, which `make install` / `make test` install: these skips only fire in a bare venv
NO_TORCH_FIDELITY = "FID's Inception network needs torch-fidelity (pip install -e '.[eval]')"
NO_OPEN_CLIP = "CLIP similarity needs open_clip_torch (pip install -e '.[eval]')"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_fid_without_weights_is_unavailable(torch_home: Path) -> None:
    g = torch.Generator().manual_seed(0)
    metric = FID()
    assert not metric.available
    metric.update(torch.rand(2, 3, 32, 32, generator=g), real=True)
    value = metric.compute()
    assert isinstance(value, Unavailable)
    assert str(torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in value.reason


def test_fid_looks_in_the_hub_cache_and_names_bad_files(torch_home: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch_fidelity", reason=NO_TORCH_FIDELITY)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        FID(weights_path=tmp_path / "nowhere.pth")
    cached = inception_cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights-inception-2015-12-05-6726825d.pth"):
        FID()


def test_fid_plumbing_with_a_local_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason=NO_TORCH_FIDELITY)

    with monkeypatch.context() as m:  # build the architecture with random weights, without any download
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        network = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    path = tmp_path / "inception.pth"
    torch.save(network.state_dict(), path)
    metric = FID(weights_path=path, feature=64)
    assert metric.available
    loaded = metric._fid[0].inception.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in network.state_dict().items())
    real, other = torch.rand(6, 3, 48, 48, generator=g), torch.rand(6, 3, 48, 48, generator=g) * 0.5
    metric.update(real, real=True)
    metric.update(real, real=False)
    assert abs(metric.compute().item()) < 1e-3  # the same set
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert isinstance(metric.compute(), Unavailable)  # "needs at least two real and two generated images"
    metric.update(real, real=True)
    metric.update(other, real=False)
    assert metric.compute().item() > 1e-3
    assert set(metric.state_dict()) == set()  # the Inception network is not saved with a module owning the metric


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_clip_without_weights_is_unavailable(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    metric = CLIPSimilarity()
    assert not metric.available
    metric.update(torch.rand(2, 3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g))
    value = metric.compute()
    assert isinstance(value, Unavailable) and "no CLIP weights" in value.reason
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_clip("ViT-B-32", tmp_path / "nowhere.pt")
    pytest.importorskip("open_clip", reason=NO_OPEN_CLIP)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_clip("ViT-B-32", garbage)


def test_clip_plumbing_with_a_local_weights_file(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    open_clip = pytest.importorskip("open_clip", reason=NO_OPEN_CLIP)
    config = tmp_path / "avp-test-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    network = open_clip.create_model("avp-test-tiny-clip")
    path = tmp_path / "tiny_clip.pt"
    torch.save(network.state_dict(), path)
    metric = CLIPSimilarity("avp-test-tiny-clip", weights_path=path)
    assert metric.available
    loaded = metric._model[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in network.state_dict().items())
    x = torch.rand(2, 3, 64, 48, generator=g)
    assert metric.embed(x).norm(dim=-1).allclose(torch.ones(2))
    metric.update(x, x)
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-5)
    metric.reset()
    metric.update(x, torch.rand(3, 64, 48, generator=g))  # one shared source image
    assert metric.compute().item() < 1 - 1e-4
    assert set(metric.state_dict()) <= {"total", "count"}

"""The GPU path fails early and clearly or falls back: gsplat's CUDA extension probed once, render() immune to
autocast. CPU analogues of what a CUDA machine meets (issue #22, items 5 and 7)."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

from avp.render import api, gsplat_backend, render
from tests.render.scenes import cameras, random_cloud

CUDA = torch.device("cuda")


@pytest.fixture
def unbuilt_gsplat(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A machine with CUDA where gsplat imports but its extension was never built (no nvcc): gsplat 1.5.3 then leaves
    ``gsplat.cuda._backend._C = None``. Returns the log of backend imports."""
    imports: list[str] = []

    def backend_module(name: str) -> types.ModuleType:
        imports.append(name)
        module = types.ModuleType(name)
        module._C = None
        return module

    package, cuda = types.ModuleType("gsplat"), types.ModuleType("gsplat.cuda")
    package.cuda = cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gsplat_backend, "_gsplat", lambda: package)
    monkeypatch.setitem(sys.modules, "gsplat", package)
    monkeypatch.setitem(sys.modules, "gsplat.cuda", cuda)
    monkeypatch.setattr(cuda, "_backend", backend_module("gsplat.cuda._backend"), raising=False)
    gsplat_backend.extension_status.cache_clear()
    api._warn_fallback.cache_clear()
    yield imports
    gsplat_backend.extension_status.cache_clear()
    api._warn_fallback.cache_clear()


def test_auto_falls_back_to_torch_once_with_the_reason_when_the_extension_is_missing(unbuilt_gsplat) -> None:
    with pytest.warns(UserWarning, match="torch rasteriser on CUDA because gsplat's CUDA extension is not built"):
        assert api.choose_backend("auto", CUDA, torch.float32) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second render says nothing
        assert api.choose_backend("auto", CUDA, torch.float32) == "torch"
        assert api.choose_backend("auto", torch.device("cpu"), torch.float32) == "torch"


def test_asking_for_gsplat_without_its_extension_names_the_fix(unbuilt_gsplat) -> None:
    with pytest.raises(ValueError, match=r"backend='gsplat' is unavailable: .*not built.*nvcc.*docs.gsplat.studio"):
        api.choose_backend("gsplat", CUDA, torch.float32)
    assert not gsplat_backend.usable(CUDA, torch.float32)


def test_the_extension_is_probed_once_per_process_and_never_for_cpu_work(unbuilt_gsplat, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(gsplat_backend, "_gsplat", lambda: calls.append(1) or sys.modules["gsplat"])
    gsplat_backend.extension_status.cache_clear()
    assert gsplat_backend.why_unusable(torch.device("cpu"), torch.float32).startswith("gsplat rasterises CUDA")
    assert calls == []
    for _ in range(3):
        gsplat_backend.why_unusable(CUDA, torch.float32)
    assert calls == [1]


def test_a_built_extension_is_used(unbuilt_gsplat) -> None:
    sys.modules["gsplat.cuda"]._backend._C = object()
    assert api.choose_backend("auto", CUDA, torch.float32) == "gsplat"


def test_render_ignores_an_enclosing_autocast() -> None:
    # float32, as training renders (float64 is outside autocast's reach anyway)
    cloud, cams = random_cloud(40, batch=2, seed=3, dtype=torch.float32), cameras(3, 24, 24, dtype=torch.float32)
    reference = render(cloud, cams, background=0.5, backend="torch", return_depth=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = render(cloud, cams, background=0.5, backend="torch", return_depth=True)
    for name in ("rgb", "alpha", "depth"):
        got, want = getattr(mixed, name), getattr(reference, name)
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA does")
def test_the_gpu_suite_fails_without_cuda_instead_of_passing_empty(tmp_path) -> None:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "AVP_REQUIRE_GPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
                           "-m", "gpu", "--basetemp", str(tmp_path), "tests/render/test_gsplat_parity.py"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "AVP_REQUIRE_GPU is set but torch sees no CUDA device" in proc.stdout + proc.stderr
    lines = (root / "Makefile").read_text().splitlines()
    recipe = lines[next(i for i, line in enumerate(lines) if line.startswith("test-gpu:")) + 1]
    assert recipe.lstrip().startswith("AVP_REQUIRE_GPU=1 ") and "-m gpu" in recipe  # what `make test-gpu` runs

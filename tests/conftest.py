"""Shared fixtures: deterministic seeds for every test, GPU tests skipped without CUDA (``make test-gpu`` sets
``AVP_REQUIRE_GPU=1``: then no CUDA is an error, never a run that passes with every test skipped)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

REQUIRE_GPU = "AVP_REQUIRE_GPU"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_GPU, "") not in ("", "0"):
        pytest.exit(f"{REQUIRE_GPU} is set but torch sees no CUDA device (torch {torch.__version__}, built for CUDA "
                    f"{torch.version.cuda}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): the "
                    "GPU tests cannot run here", returncode=3)
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (legacy global state is what unseeded library code reads)
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """Tests of small tensors run on one thread (``pytestmark = pytest.mark.usefixtures("one_thread")``): a second
    thread only adds hand-offs, which a busy machine makes slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

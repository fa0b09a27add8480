"""Shared fixtures of the portrait tests: the built-in head, its landmark embedding, a FLAME-format model."""

from __future__ import annotations

from pathlib import Path

import pytest

from avp.head import HeadConfig, load_head_model
from avp.portrait.landmarks_embedding import builtin_landmark_embedding


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every portrait test runs on one thread (the shared ``one_thread`` fixture)."""


@pytest.fixture(scope="session")
def builtin_head():
    return load_head_model()


@pytest.fixture(scope="session")
def builtin_embedding(builtin_head):
    return builtin_landmark_embedding(builtin_head)


@pytest.fixture(scope="session")
def flame_head(tmp_path_factory: pytest.TempPathFactory):
    from tests.fixtures.flame import write_flame_pickle

    path = write_flame_pickle(Path(tmp_path_factory.mktemp("flame")) / "flame2023.pkl", version="2023",
                              chumpy=False)
    return load_head_model(HeadConfig(flame_path=str(path), n_shape=20, n_expr=10))

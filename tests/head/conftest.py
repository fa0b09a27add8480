"""Shared fixtures of the head-model tests: the built-in model and FLAME-format pickles written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from avp.head import HeadConfig, HeadModel, load_head_model
from tests.fixtures.flame import write_flame_masks_pickle, write_flame_pickle


@pytest.fixture(scope="session")
def builtin_model() -> HeadModel:
    return load_head_model()


@pytest.fixture(scope="session")
def flame_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flame")


@pytest.fixture(scope="session")
def flame2020_path(flame_dir: Path) -> Path:
    return write_flame_pickle(flame_dir / "generic_model.pkl", version="2020", chumpy=True, seed=0)


@pytest.fixture(scope="session")
def flame2023_path(flame_dir: Path) -> Path:
    return write_flame_pickle(flame_dir / "flame2023.pkl", version="2023", chumpy=False, seed=1)


@pytest.fixture(scope="session")
def flame_masks_path(flame_dir: Path) -> Path:
    return write_flame_masks_pickle(flame_dir / "FLAME_masks.pkl")


@pytest.fixture(scope="session")
def flame_model(flame2020_path: Path, flame_masks_path: Path) -> HeadModel:
    """FLAME 2020 with GaussianAvatars' teeth and FLAME's vertex masks, 20 shape and 10 expression components."""
    return load_head_model(HeadConfig(flame_path=str(flame2020_path), n_shape=20, n_expr=10,
                                      flame_masks_path=str(flame_masks_path)))

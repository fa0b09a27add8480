"""The prediction writer and its files, without training anything (the verbs run end to end in test_verbs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from avp.lit.callbacks import local_log_dir
from avp.lit.image_logging import DecoderImageLogger
from avp.lit.predict import GeneratedCloud, PredictionWriter, read_point_ply, subject_dirname, write_point_ply


def _trainer(tmp_path: Path, **kw) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=str(tmp_path), **kw)


def test_point_ply_round_trip_and_atomic_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    points, binding = rng.normal(size=(7, 3)).astype(np.float32), rng.integers(0, 10000, size=7)
    path = write_point_ply(tmp_path / "a" / "points.ply", points, binding)
    got_points, got_binding = read_point_ply(path)
    np.testing.assert_array_equal(got_points, points)
    np.testing.assert_array_equal(got_binding, binding)
    assert [p.name for p in path.parent.iterdir()] == ["points.ply"]  # no temporary file left
    with pytest.raises(ValueError, match="7 points but 6 bindings"):
        write_point_ply(tmp_path / "b.ply", points, binding[:6])


def test_subject_ids_become_safe_folder_names() -> None:
    assert subject_dirname("synth-000001") == "synth-000001"
    assert subject_dirname("../etc/passwd") == "_etc_passwd"
    assert subject_dirname("a b/c") == "a_b_c" and subject_dirname("..") == "subject"


def test_generated_cloud_files(tmp_path: Path) -> None:
    cloud = GeneratedCloud(subject="s", tokens=np.arange(10), points=np.zeros((2, 3), np.float32),
                           binding=np.array([3, 4]), finished=True, seed=5)
    written = cloud.write(tmp_path)
    assert sorted(p.name for p in written) == ["cloud.npz", "points.ply"]
    with np.load(tmp_path / "cloud.npz") as z:
        assert int(z["n_points"]) == 2 and bool(z["finished"]) and int(z["seed"]) == 5
        assert z["tokens"].dtype == np.int64 and z["binding"].tolist() == [3, 4]


def test_writer_folder_is_the_run_folder_or_the_given_one(tmp_path: Path) -> None:
    writer = PredictionWriter()
    writer.setup(_trainer(tmp_path, logger=False), None, "predict")
    assert writer.directory == tmp_path / "predictions"

    logger = TensorBoardLogger(save_dir=str(tmp_path / "runs"), name="gen")
    trainer = _trainer(tmp_path, logger=logger)
    writer = PredictionWriter()
    writer.setup(trainer, None, "fit")
    assert writer.directory is None  # only the predict stage sets it up
    writer.setup(trainer, None, "predict")
    assert writer.directory == Path(logger.log_dir) / "predictions" == tmp_path / "runs/gen/version_0/predictions"
    assert local_log_dir(trainer) == Path(logger.log_dir)

    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    writer.setup(trainer, None, "predict")
    assert writer.directory == tmp_path / "out"


def test_writer_refuses_outputs_it_cannot_write(tmp_path: Path) -> None:
    writer = PredictionWriter(output_dir=str(tmp_path))
    with pytest.raises(TypeError, match="predict_step must return"):
        writer.write_on_batch_end(_trainer(tmp_path, logger=False), None, [{"subject": "x"}], None, None, 0, 0)


def test_image_logger_agrees_on_its_folder_in_setup(tmp_path: Path) -> None:
    logger = TensorBoardLogger(save_dir=str(tmp_path / "runs"), name="dec")
    trainer = _trainer(tmp_path, logger=logger)
    images = DecoderImageLogger(every_n_steps=1)
    assert images.log_dir(trainer) == Path(logger.log_dir)  # before setup: the logger's folder, no collective
    images.setup(trainer, None, "fit")
    assert images.log_dir(trainer) == Path(trainer.log_dir)
    assert local_log_dir(_trainer(tmp_path, logger=False)) == tmp_path

"""The prediction writer and its files, without training anything (the verbs run end to end in test_verbs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from avp.head import load_head_model
from avp.lit.callbacks import local_log_dir
from avp.lit.image_logging import DecoderImageLogger
from avp.lit.predict import (
    GeneratedCloud,
    PredictedAvatar,
    PredictionWriter,
    read_point_ply,
    subject_dirname,
    write_point_ply,
)


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


# --------------------------------------------------------------------------------------- decoder predictions
def _avatar(static_offset: torch.Tensor | None, n: int = 30, seed: int = 0):
    """A small avatar on the built-in head (random splats on its neutral mesh, plus ``static_offset [V, 3]``)."""
    from avp.head import HeadConfig, load_head_model
    from avp.models.avatar import Avatar
    from avp.types import GaussianCloud, HeadParams

    head = load_head_model()
    g = torch.Generator().manual_seed(seed)
    shape = 0.5 * torch.randn(head.n_shape, generator=g)
    offset = None if static_offset is None else static_offset[None]
    verts = head.canonical(shape[None], offset)[0]
    faces = torch.randint(0, head.n_faces, (n,), generator=g)
    bary = torch.rand(n, 3, generator=g) + 0.1
    points = ((bary / bary.sum(-1, keepdim=True))[..., None] * verts[head.faces[faces]]).sum(-2)
    cloud = GaussianCloud(means=points + 0.001 * torch.randn(n, 3, generator=g),
                          quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                          scales=torch.full((n, 3), 0.004), opacities=torch.full((n,), 0.9),
                          sh=0.3 * torch.randn(n, 4, 3, generator=g)).map(lambda t: t[None])
    portrait_head = HeadParams.zeros(1, n_shape=head.n_shape, n_expr=head.n_expr)
    portrait_head.shape = shape[None].clone()
    rig = head.rig(faces[None], points[None], shape[None], offset)
    return Avatar(cloud=cloud, binding=faces, points=points, shape=shape, head_model=head, rig=rig,
                  portrait_head=portrait_head, head_config=HeadConfig(), meta={"seed": 0})


class _AvatarPredictor(LightningModule):
    """Stands in for ``DecoderModule.predict_step``: one :class:`PredictedAvatar` per subject of a batch."""

    def __init__(self, avatars: dict) -> None:
        super().__init__()
        self.avatars = avatars

    def predict_step(self, batch, batch_idx: int):
        from avp.types import HeadParams

        out = []
        for subject in batch[0].tolist():
            avatar = self.avatars[f"s{subject}"]
            motion = HeadParams.zeros(2, n_shape=avatar.head_model.n_shape, n_expr=avatar.head_model.n_expr)
            motion.shape[:] = avatar.shape
            out.append(PredictedAvatar(subject=f"s{subject}", avatar=avatar, motion=motion))
        return out


def test_a_predict_run_writes_the_sibr_model_folder_and_the_subjects_static_offset(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from avp.export.avatar import load_avatar
    from avp.export.inria import INRIA_ITERATION, read_cfg_args, read_inria_cameras
    from avp.export.ply import read_flame_param_npz, read_splat_ply
    from avp.lit.predict import SIBR_VIEW_SIZE

    offset = 0.01 + 0.002 * torch.randn(load_head_model().n_vertices, 3, generator=torch.Generator().manual_seed(1))
    avatars = {"s0": _avatar(None), "s1": _avatar(offset, seed=1)}
    loader = DataLoader(TensorDataset(torch.arange(2)), batch_size=2)
    for sibr in (False, True):
        out = tmp_path / f"sibr_{sibr}"
        writer = PredictionWriter(output_dir=str(out), sibr=sibr)
        _trainer(tmp_path, logger=False, callbacks=[writer]).predict(_AvatarPredictor(avatars), loader)
        assert sorted(writer.subjects) == ["s0", "s1"]
        for subject in ("s0", "s1"):
            assert (out / subject / "sibr").is_dir() == sibr
    run = tmp_path / "sibr_True" / "s1"
    ns = read_cfg_args(run / "sibr" / "cfg_args")
    assert ns.sh_degree == 3 and ns.white_background is True and ns.model_path == str((run / "sibr").resolve())
    cams = read_inria_cameras(run / "sibr" / "cameras.json")
    assert cams.n_views == 9 and (cams.width, cams.height) == (SIBR_VIEW_SIZE, SIBR_VIEW_SIZE)
    world = read_splat_ply(run / "avatar_world.ply")  # the avatar at rest in world space, as avp avatarize --sibr
    sibr = read_splat_ply(run / "sibr" / "point_cloud" / f"iteration_{INRIA_ITERATION}" / "point_cloud.ply")
    for name in ("xyz", "f_dc", "f_rest", "opacity", "scale", "rot"):
        np.testing.assert_array_equal(getattr(sibr, name), getattr(world, name))
    assert sibr.n_points == load_avatar(run / "avatar").n_points == 30
    # GaussianAvatars' npz carries the tracked subject's offset (the ply is face-local on that mesh), zeros else
    np.testing.assert_array_equal(read_flame_param_npz(run / "gaussian_avatars" / "flame_param.npz")
                                  ["static_offset"][0], offset.numpy())
    assert not read_flame_param_npz(tmp_path / "sibr_True" / "s0" / "gaussian_avatars" / "flame_param.npz")[
        "static_offset"].any()


def test_generator_predictions_sample_the_batch_in_one_call_each_cloud_as_if_alone() -> None:
    """``avp predict`` of the generator samples a whole batch in one call; every subject's cloud is the one its
    seeded sample alone gives (per-subject generators)."""
    from types import SimpleNamespace

    from avp.lit.predict import generator_predictions
    from avp.models.conditional import ConditionalPointGenerator
    from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig
    from avp.models.generator import GeneratorConfig
    from avp.models.sampling import SamplingConfig
    from avp.models.tokenizer import TokenizerConfig
    from avp.types import HeadParams

    torch.manual_seed(0)
    head = load_head_model()
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=32, freeze=False),
                                mesh=MeshEncoderConfig(n_points=32, n_layers=1, n_heads=4))
    # 16 levels: an untrained model stops after a few dozen points, not after thousands
    net = ConditionalPointGenerator(head, tokenizer=TokenizerConfig(levels=16), condition=condition,
                                    model=GeneratorConfig(n_layers=1, width=32, n_heads=4)).eval()
    g = torch.Generator().manual_seed(1)
    B = 3
    params = HeadParams.zeros(B, n_shape=head.n_shape, n_expr=head.n_expr)
    params.shape = 0.5 * torch.randn(B, head.n_shape, generator=g)
    batch = SimpleNamespace(portrait=torch.rand(B, 3, 32, 32, generator=g), portrait_head=params,
                            static_offset=None, portrait_camera=None, subject=["a", "b", "c"])
    sampling = SamplingConfig(max_points=40, min_points=1, bind_nearest=4, enforce_order=False)
    module = SimpleNamespace(net=net, val_sampling=sampling, hparams=SimpleNamespace(seed=7))
    clouds = generator_predictions(module, batch)
    cond = net.encode_condition(batch.portrait, params)
    for b, cloud in enumerate(clouds):
        alone = net.sample(cond[b : b + 1], sampling, torch.Generator().manual_seed(7), shape=params.shape[b : b + 1])
        n = int(alone.lengths[0])
        assert cloud.subject == batch.subject[b] and cloud.seed == 7
        np.testing.assert_array_equal(cloud.tokens, alone.tokens[0, :n].numpy())
        np.testing.assert_allclose(cloud.points, alone.points[0, : int(alone.n_points[0])].numpy())
    assert all(c.finished for c in clouds)  # each ended with EOS (clouds ending at different steps in one batch:
    # tests/test_sampling.py, test_per_row_generators_make_each_cloud_independent_of_its_batch)

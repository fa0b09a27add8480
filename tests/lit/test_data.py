"""AvatarDataModule: exact round trip into AvatarBatch, DDP/worker splits with equal batch counts, options."""

from __future__ import annotations

import pytest
import torch

from avp.data.item import fit_square, square_intrinsics
from avp.lit.data import AvatarDataModule
from avp.types import HEAD_PARAM_FIELDS, AvatarBatch
from tests.data.samples import HEAD_MODEL, write_dataset


def test_batches_reproduce_the_stored_arrays_exactly(tmp_path) -> None:
    _, samples = write_dataset(tmp_path, {"train": 3}, frames=3, views=4, size=12)
    dm = AvatarDataModule(str(tmp_path), batch_size=3, num_workers=0, frames_per_sample=2, views_per_sample=3)
    (batch,) = list(dm.train_dataloader())
    assert isinstance(batch, AvatarBatch) and dm.head_model_name == HEAD_MODEL
    B, N = 3, max(s.gaussians.n_points for s in samples.values())
    assert batch.images.shape == (B, 2, 3, 3, 12, 12) and batch.masks.shape == (B, 2, 3, 1, 12, 12)
    assert batch.teacher.means.shape == (B, N, 3) and batch.binding.dtype == torch.long
    for i, key in enumerate(batch.keys):
        s = samples[key]
        n, g = s.gaussians.n_points, s.gaussians
        fi, vi = batch.frame_index[i].numpy(), batch.view_index[i].numpy()
        assert len(set(vi.tolist())) == 3 and len(set(fi.tolist())) == 2
        assert batch.subject[i] == s.meta["subject"]
        assert torch.equal(batch.teacher.mask[i], torch.arange(N) < n)
        assert torch.equal(batch.teacher.means[i, :n], torch.from_numpy(g.means))
        assert torch.equal(batch.binding[i, :n], torch.from_numpy(g.binding).long())
        assert torch.equal(batch.binding[i, n:], torch.zeros(N - n, dtype=torch.long))
        assert torch.equal(batch.teacher.sh[i, :n], torch.from_numpy(g.sh))
        assert torch.equal(batch.teacher.scales[i, :n], torch.exp(torch.from_numpy(g.log_scales)))
        assert (batch.teacher.opacities[i, n:] < 1e-8).all()
        to_u8 = lambda x: (x * 255).round().to(torch.uint8)
        assert torch.equal(to_u8(batch.images[i]).permute(0, 1, 3, 4, 2), torch.from_numpy(s.frames[fi][:, vi]))
        assert torch.equal(to_u8(batch.masks[i, :, :, 0]), torch.from_numpy(s.masks[fi][:, vi]))
        assert torch.equal(to_u8(batch.portrait[i]).permute(1, 2, 0), torch.from_numpy(s.portrait))
        assert torch.equal(batch.cameras.Ks[i], torch.from_numpy(s.cameras.Ks[vi]))
        assert torch.equal(batch.cameras.viewmats[i], torch.from_numpy(s.cameras.viewmats[vi]))
        for name in HEAD_PARAM_FIELDS:
            want = s.head[name] if name == "shape" else s.head[name][fi]
            got = batch.head.as_dict()[name][i]
            assert torch.equal(got, torch.from_numpy(want).expand_as(got))
            assert torch.equal(batch.portrait_head.as_dict()[name][i], torch.from_numpy(s.portrait_head[name]))


def _subjects_per_rank(root, monkeypatch, split: str, **kwargs) -> tuple[list[list[str]], list[int], list[int]]:
    subjects, counts, lengths = [], [], []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = AvatarDataModule(str(root), num_workers=2, frames_per_sample=1, views_per_sample=1, **kwargs)
        loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
        batches = list(loader)
        subjects.append([s for b in batches for s in b.subject])
        counts.append(len(batches))
        lengths.append(len(loader))
    return subjects, counts, lengths


def test_ddp_ranks_and_workers_see_disjoint_subjects_and_equal_batch_counts(tmp_path, monkeypatch) -> None:
    write_dataset(tmp_path, {"train": 9, "val": 5}, frames=1, views=1, size=8)
    subjects, counts, lengths = _subjects_per_rank(tmp_path, monkeypatch, "train", batch_size=2)
    # 9 samples over 2 ranks x 2 workers x batch 2: one full batch per worker, two per rank
    assert counts == lengths == [2, 2]
    assert not set(subjects[0]) & set(subjects[1])
    assert all(len(s) == len(set(s)) == 4 for s in subjects)  # the two workers of a rank are disjoint too
    # validation: every sample once, padded by wrapping so both ranks run the same number of batches
    subjects, counts, lengths = _subjects_per_rank(tmp_path, monkeypatch, "val", batch_size=1)
    assert counts == lengths == [4, 4]
    assert set(subjects[0]) | set(subjects[1]) == {f"subj{i:03d}" for i in range(9, 14)}


def test_train_epochs_are_sized_and_reshuffled(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 4}, frames=1, views=1, size=8)
    dm = AvatarDataModule(str(tmp_path), batch_size=2, num_workers=0, samples_per_epoch=6, shuffle_buffer=4)
    loader = dm.train_dataloader()
    epochs = [[s for b in loader for s in b.subject] for _ in range(3)]
    assert len(loader) == 3 and all(len(e) == 6 for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    again = AvatarDataModule(str(tmp_path), batch_size=2, num_workers=0, samples_per_epoch=6, shuffle_buffer=4)
    assert [s for b in again.train_dataloader() for s in b.subject] == epochs[0]  # deterministic per seed


def test_no_frames_mode_and_image_size(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 2}, frames=2, views=2, size=16)
    dm = AvatarDataModule(str(tmp_path), batch_size=2, num_workers=0, frames_per_sample=0, views_per_sample=0)
    (batch,) = list(dm.train_dataloader())
    assert batch.images.shape[:3] == (2, 0, 0) and batch.teacher.means.shape[0] == 2
    assert batch.portrait.shape == (2, 3, 20, 20)
    dm = AvatarDataModule(str(tmp_path), batch_size=2, num_workers=0, views_per_sample=2, image_size=8,
                          frames_per_sample=1)
    (batch,) = list(dm.train_dataloader())
    assert batch.images.shape == (2, 1, 2, 3, 8, 8) and batch.cameras.width == 8
    assert torch.allclose(batch.cameras.Ks[..., 0, 0], torch.full((2, 2), 8.0))  # f = 16 px at 16 -> 8 px at 8


def test_fit_square_pads_with_the_background_and_moves_the_principal_point() -> None:
    img = torch.zeros(3, 4, 8)  # [C, H=4, W=8]
    img[:, 1, 5] = 1.0
    out = fit_square(img, 8, torch.tensor([0.2, 0.2, 0.2]))
    assert out.shape == (3, 8, 8)
    assert torch.allclose(out[:, 0], torch.full((3, 8), 0.2)) and out[0, 1 + 2, 5] == 1.0
    K = torch.tensor([[4.0, 0, 5.5], [0, 4.0, 1.5], [0, 0, 1]])  # projects onto the bright pixel's centre
    K2 = square_intrinsics(K, 4, 8, 16)
    assert torch.allclose(K2[:2, 2], torch.tensor([5.5, 3.5]) * 2) and K2[0, 0] == 8.0
    big = fit_square(img, 16, torch.zeros(3))
    assert big[0, int(K2[1, 2]), int(K2[0, 2])] > 0.2  # the bright pixel is where the new camera projects


@pytest.mark.parametrize("which", ["val", "test"])
def test_evaluation_streams_are_deterministic(tmp_path, which) -> None:
    write_dataset(tmp_path, {"train": 1, which: 3}, frames=4, views=4, size=8)
    runs = []
    for _ in range(2):
        dm = AvatarDataModule(str(tmp_path), batch_size=2, num_workers=0, frames_per_sample=2, views_per_sample=2)
        loader = dm.val_dataloader() if which == "val" else dm.test_dataloader()
        runs.append([(b.subject, b.frame_index.tolist(), b.view_index.tolist()) for b in loader])
    assert runs[0] == runs[1] and [s for b in runs[0] for s in b[0]] == ["subj001", "subj002", "subj003"]


def test_missing_split_is_reported(tmp_path) -> None:
    write_dataset(tmp_path, {"train": 1}, size=8)
    dm = AvatarDataModule(str(tmp_path), num_workers=0)
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match="no shards of split 'test'"):
        dm.test_dataloader()


class _TeacherMean(__import__("lightning").pytorch.LightningModule):
    """Fits one scalar to the teacher means: enough to run Lightning's loops over AvatarBatch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[str] = []

    def training_step(self, batch: AvatarBatch, batch_idx: int) -> torch.Tensor:
        assert isinstance(batch, AvatarBatch) and batch.teacher.means.device == self.w.device
        self.seen += batch.subject
        m = batch.teacher.means[batch.teacher.mask]
        return (m.mean() - self.w) ** 2

    def validation_step(self, batch: AvatarBatch, batch_idx: int) -> None:
        self.log("val/x", batch.images.mean(), batch_size=batch.batch_size)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_runs_on_the_datamodule(tmp_path) -> None:
    from lightning.pytorch import Trainer

    from avp.lit.data import CorruptSamplesLogger

    write_dataset(tmp_path / "d", {"train": 4, "val": 1}, frames=1, views=2, size=8)
    dm = AvatarDataModule(str(tmp_path / "d"), batch_size=2, num_workers=0, views_per_sample=2, skip_corrupt=True)
    model = _TeacherMean()
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[CorruptSamplesLogger()],
                      default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4 and len(model.seen) == 8 and len(set(model.seen)) == 4
    assert trainer.callback_metrics["train/data_corrupt_skipped"] == 0


def test_batch_metadata_is_typed_and_moves_with_the_batch(tmp_path) -> None:
    _, samples = write_dataset(tmp_path, {"train": 2}, frames=3, views=2, size=8)
    dm = AvatarDataModule(str(tmp_path), batch_size=2, num_workers=0, frames_per_sample=2, views_per_sample=2,
                          shuffle_buffer=0)
    (batch,) = list(dm.train_dataloader())
    assert sorted(batch.keys) == sorted(samples) and batch.head_model == HEAD_MODEL
    S = batch.portrait_head.shape.shape[-1]
    assert batch.head.shape.shape == (2, S) and batch.head.expr.shape[:2] == (2, 2)  # the identity is per subject
    assert torch.equal(batch.n_points, batch.teacher.mask.sum(1))
    assert batch.background.shape == (2, 3)
    assert batch.portrait_camera.Ks.shape == (2, 1, 3, 3) and batch.portrait_camera.viewmats.shape == (2, 1, 4, 4)
    for i, key in enumerate(batch.keys):
        s = samples[key]
        assert torch.equal(batch.background[i], torch.tensor(s.meta["background"], dtype=torch.float32))
        assert torch.equal(batch.portrait_camera.Ks[i], torch.from_numpy(s.portrait_camera.Ks))
    assert (batch.corrupt.skipped, batch.corrupt.errors) == (0, [])
    assert (batch.corrupt.total, batch.corrupt.samples_total) == (0, 2)
    moved = batch.to("meta")
    for t in (moved.background, moved.n_points, moved.portrait_camera.Ks, moved.head.shape):
        assert t.device.type == "meta"
    assert moved.n_points.dtype == torch.long and moved.keys == batch.keys and moved.corrupt == batch.corrupt

"""Synthetic subjects: deterministic and worker-count independent, teachers that cover the head with
identity-specific geometry bound to the right faces, frames and masks consistent with the stored teacher and cameras
(background pixels, projected centres inside the mask, re-rendering), atomic writing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avp.data import cli
from avp.data.manifest import SYNTH_PROGRESS, read_manifest
from avp.data.preview import iter_samples
from avp.data.schema import GAUSSIAN_FIELDS, teacher_cloud
from avp.data.synthetic import SynthConfig, make_subject, synthesize
from avp.data.synthetic import generate as generate_module
from avp.data.synthetic.appearance import sample_appearance
from avp.data.synthetic.geometry import CanonicalMesh, closest_on_triangles
from avp.data.synthetic.teacher import build_teacher
from avp.head import HeadConfig, animate_gaussians, load_head_model
from avp.render import render
from avp.types import Cameras, HeadParams

TINY = dict(views=2, frames=2, size=32, portrait_size=32, points=(150, 400), shard_samples=2)


@pytest.fixture(scope="module")
def head():
    return load_head_model(HeadConfig())


@pytest.fixture(scope="module")
def mesh(head):
    shape = np.random.default_rng(3).normal(0, 1, head.n_shape)
    verts = head.canonical(torch.as_tensor(shape, dtype=torch.float32)[None])[0].double().numpy()
    return CanonicalMesh.build(verts, head.faces.numpy(), {k: v.numpy() for k, v in head.face_regions.items()})


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path) -> None:
    cfg = SynthConfig(subjects=3, seed=7, **TINY)
    one = synthesize(cfg, tmp_path / "one", workers=1, progress=False)
    two = synthesize(cfg, tmp_path / "two", workers=2, progress=False)
    assert [(s.path, s.sha256) for s in one.shards] == [(s.path, s.sha256) for s in two.shards]
    other = synthesize(dataclasses.replace(cfg, seed=8), tmp_path / "other", workers=1, progress=False)
    assert {s.sha256 for s in other.shards}.isdisjoint({s.sha256 for s in one.shards})
    # subject-level splits decided at write time and recorded
    m = read_manifest(tmp_path / "one")
    assert sorted(m.splits) == ["test", "train", "val"] and m.samples() == 3
    assert len({s for split in m.splits for s in m.subjects(split)}) == 3


def test_teacher_covers_the_head_with_identity_geometry_bound_to_the_right_faces(mesh) -> None:
    rng = np.random.default_rng(0)
    app = dataclasses.replace(sample_appearance(rng), hair_style="long", beard="full", glasses=True,
                              thick_brows=True, hair_thickness=0.015)
    g, parts = build_teacher(mesh, app, 4000, rng)
    assert 3000 < g.n_points < 5500 and g.binding.min() >= 0 and g.binding.max() < len(mesh.faces)
    for region in ("skin:cheeks", "skin:forehead", "skin:scalp", "skin:neck", "skin:ears", "skin:lips", "skin:nose",
                   "skin:eyeballs", "hair:long", "hair:long_curtain", "beard:full", "brows:thick", "glasses:rims",
                   "glasses:arms"):
        assert parts.get(region, 0) > 0, region
    start = {}
    offset = 0
    for name, n in parts.items():
        start[name] = (offset, offset + n)
        offset += n
    tri = mesh.vertices[mesh.faces]
    dist = np.linalg.norm(closest_on_triangles(g.means.astype(np.float64), tri[g.binding]) - g.means, axis=-1)
    lo, hi = start["skin:cheeks"]
    assert dist[lo:hi].max() < 1e-6  # skin points lie on the face they are bound to
    labels = mesh.labels[g.binding]
    for name in ("hair:long", "hair:long_curtain"):
        lo, hi = start[name]
        assert set(labels[lo:hi]) <= {"scalp", "forehead", "other"}  # hair binds to the scalp under it
    lo, hi = start["hair:long_curtain"]
    assert np.percentile(dist[lo:hi], 50) > 0.01  # volume well off the surface: no template vertex is there
    lo, hi = start["glasses:rims"]
    assert (labels[lo:hi] == "nose").all()  # rims and bridge rest on the nose
    assert g.means[lo:hi, 2].min() > mesh.vertices[mesh.faces[mesh.faces_of("eyeballs")]][..., 2].max()
    lo, hi = start["glasses:arms"]
    assert set(labels[lo:hi]) <= {"forehead", "ears", "scalp", "cheeks", "face", "other"}  # arms: the temples
    # density differs by region: the lips are sampled more densely per area than the neck
    density = {r: parts[f"skin:{r}"] / mesh.area_of(mesh.faces_of(r)) for r in ("lips", "neck")}
    assert density["lips"] > 2 * density["neck"]


def test_point_counts_scale_with_the_configured_range(mesh) -> None:
    counts = []
    for seed, target in ((1, 300), (2, 300), (3, 20000)):
        rng = np.random.default_rng(seed)
        g, _ = build_teacher(mesh, sample_appearance(rng), target, rng)
        counts.append(g.n_points)
        # splats adapt to the density: sparse teachers get large splats
        counts.append(float(np.exp(g.log_scales).max(1).mean()))
    assert 200 < counts[0] < 500 and 15000 < counts[4] < 26000
    assert counts[1] > 3 * counts[5]


@pytest.fixture(scope="module")
def subject(head):
    return make_subject(SynthConfig(subjects=2, seed=3, **TINY), 0, "train", head)


def _posed(head, s):
    """The stored teacher posed (LBS) with the stored head parameters of every timestep: ``[T, N]`` Gaussians."""
    g = s.gaussians
    cloud = teacher_cloud(g)
    rig = head.rig(torch.from_numpy(g.binding.astype(np.int64))[None], cloud.means,
                   torch.from_numpy(s.head["shape"])[None])
    T = s.frames.shape[0]
    params = HeadParams(**{k: torch.from_numpy(s.head[k]).expand(T, -1)[None] if k == "shape"
                           else torch.from_numpy(s.head[k])[None] for k in s.head})  # [1, T]
    with torch.no_grad():
        return animate_gaussians(rig, cloud, params, mode="lbs")


def test_background_pixels_show_the_recorded_background(subject) -> None:
    s = subject
    assert s.frames.shape == (2, 2, 32, 32, 3) and s.masks.shape == (2, 2, 32, 32)
    bg = np.round(np.asarray(s.meta["background"]) * 255)
    empty = s.masks == 0
    assert 0.1 < empty.mean() < 0.9  # both the head and the background are in view
    assert (s.frames[empty] == bg).all()
    full = s.masks == 255
    assert full.any() and (s.frames[full] != bg).any(axis=-1).mean() > 0.5  # the opaque head is not background
    assert (s.masks[:, :, 0, 0] == 0).all()  # corners are background in every view


def test_projected_teacher_centres_land_in_the_foreground_mask(head, subject) -> None:
    """A pinhole projection done here (numpy, OpenCV convention, pixel centres at +0.5) of every opaque teacher
    centre falls on a pixel the stored mask marks as foreground: cameras, posing and masks agree."""
    s = subject
    posed = _posed(head, s).means.double().numpy()  # [T, N, 3]
    opaque = 1 / (1 + np.exp(-s.gaussians.opacity_logits)) > 0.5
    assert opaque.mean() > 0.5
    hits = 0
    for t in range(s.frames.shape[0]):
        for v in range(s.frames.shape[1]):
            R, trans = s.cameras.viewmats[v, :3, :3], s.cameras.viewmats[v, :3, 3]
            cam = posed[t, opaque] @ R.T + trans
            assert (cam[:, 2] > 0.1).all()  # in front of the camera
            uv = cam @ s.cameras.Ks[v].T
            px = np.floor(uv[:, :2] / uv[:, 2:3]).astype(int)
            inside = ((px >= 0) & (px < 32)).all(1)
            assert inside.mean() > 0.9  # the head is framed
            x, y = px[inside].T
            assert (s.masks[t, v][y, x] > 0).all(), (t, v)
            hits += inside.sum()
    assert hits > 0
    # and a camera moved aside would put them on the background: the check can fail
    shifted = posed[0, opaque] @ s.cameras.viewmats[0, :3, :3].T + s.cameras.viewmats[0, :3, 3] + [0.15, 0, 0]
    uv = shifted @ s.cameras.Ks[0].T
    px = np.floor(uv[:, :2] / uv[:, 2:3]).astype(int)
    inside = ((px >= 0) & (px < 32)).all(1)
    assert (s.masks[0, 0][px[inside, 1], px[inside, 0]] == 0).any()


def test_rendering_the_stored_teacher_reproduces_every_stored_frame(head, subject) -> None:
    s = subject
    cams = Cameras(Ks=torch.from_numpy(s.cameras.Ks), viewmats=torch.from_numpy(s.cameras.viewmats), width=32,
                   height=32)
    with torch.no_grad():
        out = render(_posed(head, s), cams, background=torch.tensor(s.meta["background"]))
    ours = torch.from_numpy(s.frames).permute(0, 1, 4, 2, 3).float() / 255  # [T, V, 3, H, W]
    assert (out.rgb - ours).abs().max() <= 0.5 / 255 + 1e-4  # stored = rendered, rounded to 8 bits
    mask = torch.from_numpy(s.masks).float() / 255
    assert (out.alpha[:, :, 0] - mask).abs().max() <= 0.5 / 255 + 1e-4
    # the two frames differ (the head moves), so matching each one is not matching a still image
    assert (s.frames[0] != s.frames[1]).any()


def test_subjects_are_deterministic_per_seed_and_differ_per_subject(head, subject) -> None:
    cfg = SynthConfig(subjects=2, seed=3, **TINY)
    again = make_subject(cfg, 0, "train", head)
    for field in ("frames", "masks", "portrait"):
        assert np.array_equal(getattr(again, field), getattr(subject, field)), field
    for field in GAUSSIAN_FIELDS:
        assert np.array_equal(getattr(again.gaussians, field), getattr(subject.gaussians, field)), field
    assert again.meta == subject.meta
    other = make_subject(cfg, 1, "train", head)
    assert not np.array_equal(other.head["shape"], subject.head["shape"])
    assert other.gaussians.n_points != subject.gaussians.n_points or not np.array_equal(
        other.gaussians.means, subject.gaussians.means)
    assert not np.array_equal(other.frames, subject.frames)
    reseeded = make_subject(dataclasses.replace(cfg, seed=4), 0, "train", head)
    assert not np.array_equal(reseeded.head["shape"], subject.head["shape"])


def test_portrait_head_parameters_are_the_true_ones_plus_a_small_error(subject) -> None:
    true = subject.meta["extra"]["portrait_head_true"]
    err = np.abs(subject.portrait_head["global_rot"] - np.array(true["global_rot"]))
    assert 0 < err.max() < 0.1


def test_a_crash_leaves_no_complete_looking_dataset(tmp_path, monkeypatch) -> None:
    real = generate_module.make_subject

    def flaky(cfg, index, split, head):
        if index == 2:
            raise RuntimeError("worker died")
        return real(cfg, index, split, head)

    monkeypatch.setattr(generate_module, "make_subject", flaky)
    cfg = SynthConfig(subjects=4, seed=1, val_fraction=0, test_fraction=0, **{**TINY, "shard_samples": 1})
    with pytest.raises(RuntimeError, match="worker died"):
        synthesize(cfg, tmp_path, workers=1, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "shards.json" not in names and not any(n.endswith(".tmp") for n in names)
    # complete shards only (renamed when finished), and the record that lets a rerun finish the job
    assert names == [SYNTH_PROGRESS, "train-000000.tar", "train-000001.tar"]
    assert [s.key for _, s in iter_samples(tmp_path / "train-000001.tar")] == ["synth-000001__clip0"]


def test_a_rerun_finishes_an_interrupted_synthesis_as_if_it_never_stopped(tmp_path, monkeypatch, capsys) -> None:
    cfg = SynthConfig(subjects=6, seed=2, val_fraction=0.2, test_fraction=0.2, **{**TINY, "shard_samples": 1})
    reference = synthesize(cfg, tmp_path / "whole", workers=1, progress=False)
    real = generate_module.make_subject
    rendered: list[int] = []

    def dies_at_four(cfg, index, split, head):
        if index == 4:
            raise RuntimeError("killed")
        rendered.append(index)
        return real(cfg, index, split, head)

    monkeypatch.setattr(generate_module, "make_subject", dies_at_four)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed"):
        synthesize(cfg, out, workers=1, progress=False)
    assert rendered == [0, 1, 2, 3]
    assert cli.main(["index", str(out)]) == 2
    assert "interrupted `avp data synth` has not finished" in capsys.readouterr().err
    assert cli.main(["index", str(out), "--partial"]) == 0  # what is there, when asked for
    assert read_manifest(out).samples("train") + read_manifest(out).samples("val") == 3
    (out / "shards.json").unlink()
    with pytest.raises(FileExistsError, match=r"another config \(differs in seed\)"):
        synthesize(dataclasses.replace(cfg, seed=3), out, workers=1, progress=False)

    monkeypatch.setattr(generate_module, "make_subject", lambda *a: rendered.append(a[1]) or real(*a))
    rendered.clear()
    resumed = synthesize(cfg, out, workers=1, progress=False)
    assert rendered == [4, 5]  # only what was missing
    assert not (out / SYNTH_PROGRESS).exists()
    strip = [(s.path, s.split, s.samples, s.sha256, s.subjects) for s in reference.shards]
    assert [(s.path, s.split, s.samples, s.sha256, s.subjects) for s in resumed.shards] == strip


def test_an_unknown_shard_in_the_folder_is_never_taken_for_progress(tmp_path) -> None:
    cfg = SynthConfig(subjects=2, seed=1, val_fraction=0, test_fraction=0, **TINY)
    (tmp_path / "train-000003.tar").write_bytes(b"")
    with pytest.raises(FileExistsError, match="holds shards but no shards.json"):
        synthesize(cfg, tmp_path, workers=1, progress=False)


def test_cli_synth_validate_preview(tmp_path, capsys) -> None:
    out = tmp_path / "ds"
    argv = ["synth", "--out", str(out), "--subjects", "2", "--views", "2", "--frames", "1", "--size", "32",
            "--points", "100", "200", "--workers", "1", "--seed", "5"]
    assert cli.main(argv) == 0
    assert cli.main(["validate", str(out)]) == 0
    assert '"samples": 2' in capsys.readouterr().out
    assert cli.main(["preview", str(out), "--out", str(tmp_path / "sheet.png"), "--samples", "2"]) == 0
    assert (tmp_path / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        cli.main(argv)

"""AvatarPipeline and Avatar with tiny checkpoints trained inside the test session: the astronaut becomes an avatar
that animates with the rig built once, renders, saves and loads, and exports consistently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from skimage import data

from avp.driving import builtin_motion
from avp.export.avatar import load_avatar, save_avatar
from avp.export.ply import (
    from_gaussian_avatars,
    read_gaussian_avatars_ply,
    read_splat_ply,
    to_gaussian_avatars,
    write_gaussian_avatars_ply,
    write_splat_ply,
)
from avp.head.rig import closest_point_on_triangle
from avp.pipeline import AvatarPipeline
from avp.portrait.fit import FitConfig
from tests.portrait.tiny_models import MAX_POINTS, build_tiny_checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "tiny_avp_checkpoints"
    root.mkdir(exist_ok=True)
    return build_tiny_checkpoints(root)


@pytest.fixture(scope="module")
def pipe(checkpoints):
    return AvatarPipeline.from_checkpoints(checkpoints.generator, checkpoints.decoder, device="cpu")


@pytest.fixture(scope="module")
def portrait(pipe):
    return pipe.preprocess(data.astronaut(), what="astronaut", fit_config=FitConfig(steps=120), progress=False)


@pytest.fixture(scope="module")
def avatar(pipe, portrait):
    return pipe.reconstruct(portrait, seed=0, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_reconstruct_the_astronaut(pipe, portrait, avatar):
    assert len(portrait.analysis.boxes) == 1 and portrait.fit.report()["rms_px"] < 15.0
    n = avatar.n_points
    assert 1 <= n <= MAX_POINTS
    assert avatar.cloud.means.shape == (1, n, 3) and avatar.binding.shape == (n,) and avatar.points.shape == (n, 3)
    assert int(avatar.binding.max()) < pipe.head_model.n_faces
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.isfinite(getattr(avatar.cloud, name)).all()
    lo, hi = pipe.model.tokenizer.bounds  # generated points lie in the tokenizer's box
    assert ((avatar.points >= lo - 1e-6) & (avatar.points <= hi + 1e-6)).all()
    assert avatar.meta["seed"] == 0 and avatar.meta["n_points"] == n and avatar.meta["fit"]["rms_px"] < 15.0
    assert avatar.portrait is not None and avatar.head_model.name == "builtin-v1"
    again = pipe.reconstruct(portrait, seed=0, progress=False)  # same seed, same avatar
    assert torch.equal(again.points, avatar.points) and torch.equal(again.cloud.means, avatar.cloud.means)


def test_template_points_lie_on_the_subjects_neutral_head(pipe, portrait):
    """The baseline's points are on the surface of the subject's own neutral head (on the triangle each is bound
    to) up to the tokenizer's quantisation (the generator reads them as tokens: bin centres), and re-posing their rig
    with the neutral parameters gives them back."""
    base = pipe.reconstruct(portrait, points="template", progress=False)
    head = base.head_model
    assert base.n_points == pipe.hparams["template_points"]
    half_bin = float(pipe.model.tokenizer.bin_size.double().norm()) / 2  # farthest a point moves into its bin
    verts = head.canonical(base.shape.double()[None])[0]  # [V, 3] this identity's neutral head
    tri = verts[head.faces[base.binding]]  # [N, 3, 3] each point's bound triangle
    bary = closest_point_on_triangle(base.points.double(), tri)
    off_surface = ((bary[..., None] * tri).sum(-2) - base.points.double()).norm(dim=-1)
    assert float(off_surface.max()) <= half_bin + 1e-6
    # ...and not merely near some head: on the mean head (shape 0) the same faces are well beyond a bin away
    mean_tri = head.canonical(torch.zeros_like(base.shape.double())[None])[0][head.faces[base.binding]]
    mean_bary = closest_point_on_triangle(base.points.double(), mean_tri)
    off_mean = ((mean_bary[..., None] * mean_tri).sum(-2) - base.points.double()).norm(dim=-1)
    assert float(off_mean.max()) > 4 * half_bin
    assert torch.equal(base.rig.face_idx[0], base.binding)
    torch.testing.assert_close(base.rig.offsets[0].norm(dim=-1).double(), off_surface, atol=1e-6, rtol=0)
    rest = base.rig.deform(base.neutral(1).map(lambda t: t[None])).means[0, 0]  # [N, 3]
    torch.testing.assert_close(rest, base.points, atol=1e-5, rtol=0)
    # the template does not depend on the sampling seed, and the faces it uses spread over the head
    again = pipe.reconstruct(portrait, points="template", seed=7, progress=False)
    assert torch.equal(again.points, base.points) and torch.equal(again.binding, base.binding)
    assert base.binding.unique().numel() > base.n_points // 2


def test_animate_reuses_the_rig(avatar, monkeypatch):
    seq = builtin_motion("talk", avatar.head_model, frames=6)
    first = avatar.animate(seq.head)

    def no_rebinding(*args, **kwargs):
        raise AssertionError("animate/render must reuse the rig built in reconstruct")

    monkeypatch.setattr(avatar.head_model, "rig", no_rebinding)
    monkeypatch.setattr(type(avatar.head_model), "rig", no_rebinding)
    posed = avatar.animate(seq.head)
    assert posed.means.shape == (6, avatar.n_points, 3)
    assert torch.equal(posed.means, first.means)
    out = avatar.render(avatar.view_cameras([0.0, 30.0], size=48), seq.head)
    assert out.rgb.shape == (6, 2, 3, 48, 48) and out.alpha.shape == (6, 2, 1, 48, 48)
    assert 0 <= float(out.rgb.min()) and float(out.rgb.max()) <= 1 and float(out.alpha.max()) > 0
    # the rest pose is the canonical cloud itself (LBS with identity transforms)
    rest = avatar.animate(avatar.neutral(1))
    torch.testing.assert_close(rest.means, avatar.cloud.means, atol=1e-6, rtol=0)
    # the jaw moves the avatar: some splats move, and only by plausible amounts
    moved = (posed.means - rest.means).norm(dim=-1)
    assert float(moved.max()) < 0.1


def test_render_takes_one_camera_set_per_frame(avatar):
    """``Ks [T, V, 3, 3]`` cameras give frame ``t`` its own views: the frame rendered alone with them (up to the
    skinning's rounding, which depends on how many frames are posed together)."""
    seq = builtin_motion("talk", avatar.head_model, frames=3)
    per_frame = avatar.view_cameras([-20.0, 0.0, 20.0, 40.0, 10.0, -10.0], size=24)
    per_frame = per_frame.map(lambda t: t.unflatten(0, (3, 2)))  # [T=3, V=2]
    out = avatar.render(per_frame, seq.head, chunk=2)
    assert out.rgb.shape == (3, 2, 3, 24, 24)
    for t in range(3):
        alone = avatar.render(per_frame.map(lambda x, t=t: x[t]), seq.head.map(lambda x, t=t: x[t : t + 1]))
        torch.testing.assert_close(out.rgb[t], alone.rgb[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"Ks \[V, 3, 3\] or \[T=3, V, 3, 3\]"):
        avatar.render(per_frame.map(lambda x: x[:2]), seq.head)


def test_save_load_round_trip(tmp_path, avatar):
    save_avatar(avatar, tmp_path / "avatar")
    back = load_avatar(tmp_path / "avatar")
    seq = builtin_motion("nod", avatar.head_model, frames=4)
    torch.testing.assert_close(back.animate(seq.head).means, avatar.animate(seq.head).means, atol=0, rtol=0)
    assert torch.equal(back.binding, avatar.binding) and back.animation == avatar.animation
    torch.testing.assert_close(back.portrait, avatar.portrait, atol=1 / 255, rtol=0)
    assert back.meta["seed"] == 0
    moved = back.to("cpu")
    torch.testing.assert_close(moved.animate(seq.head).means, back.animate(seq.head).means, atol=0, rtol=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="avatar.json is missing"):
        load_avatar(tmp_path / "empty")


def test_world_ply_means_equal_the_neutral_pose(tmp_path, avatar):
    rest = avatar.animate(avatar.neutral(1))
    path = write_splat_ply(tmp_path / "avatar_world.ply", rest)
    splats = read_splat_ply(path)
    torch.testing.assert_close(torch.from_numpy(splats.xyz), rest.means[0], atol=0, rtol=0)


def test_gaussian_avatars_export_of_the_avatar(tmp_path, avatar):
    head = avatar.head_model
    splats = to_gaussian_avatars(avatar.cloud, avatar.binding, head, avatar.shape)
    path = write_gaussian_avatars_ply(tmp_path / "point_cloud.ply", splats)
    back, binding = from_gaussian_avatars(read_gaussian_avatars_ply(path), head, avatar.shape)
    assert torch.equal(binding[0], avatar.binding)
    torch.testing.assert_close(back.means, avatar.cloud.means, atol=2e-6, rtol=0)


def test_checkpoint_checks(tmp_path, checkpoints):
    ckpt = torch.load(checkpoints.generator, map_location="cpu", weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("net.") and ckpt["state_dict"][k].is_floating_point())
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1.0
    other = tmp_path / "other_generator.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match="is not the generator the decoder was trained on"):
        AvatarPipeline.from_checkpoints(other, checkpoints.decoder, device="cpu")
    with pytest.raises(FileNotFoundError, match="no such decoder checkpoint"):
        AvatarPipeline.from_checkpoints(None, tmp_path / "missing.ckpt", device="cpu")
    with pytest.raises(ValueError):
        AvatarPipeline.from_checkpoints(None, checkpoints.generator, device="cpu")
    # moving the FLAME/head file keeps the trained head config otherwise (here: the built-in head, no file)
    from avp.checkpoints import trained_head_config

    cfg = trained_head_config(checkpoints.decoder, "/elsewhere/flame2023.pkl")
    assert cfg.flame_path == "/elsewhere/flame2023.pkl" and cfg.n_shape is None
    assert Path(checkpoints.decoder).is_file()


def test_a_decoder_checkpoint_of_the_earlier_layout_still_loads(tmp_path, checkpoints):
    from avp.checkpoints import load_avatar_model
    from avp.lit.decoder import DecoderModule

    ckpt = torch.load(checkpoints.decoder, map_location="cpu", weights_only=False)
    # before the stage-2 model existed, its networks sat at the module's top level: generator.*, decoder.*
    ckpt["state_dict"] = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert any(k.startswith("generator.") for k in ckpt["state_dict"])
    old = tmp_path / "old_layout.ckpt"
    torch.save(ckpt, old)
    current, _ = load_avatar_model(checkpoints.decoder)
    upgraded, _ = load_avatar_model(old)
    for (name, a), (_, b) in zip(current.state_dict().items(), upgraded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    module = DecoderModule.load_from_checkpoint(str(old), map_location="cpu")
    assert all(torch.equal(v, current.state_dict()[k]) for k, v in module.model.state_dict().items())

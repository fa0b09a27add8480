"""``avp avatarize`` end to end on the astronaut with tiny checkpoints trained in the session: what every written file
holds (the report lists exactly the files written, the crop is the avatar's portrait, the driving npz is the motion
on the avatar's identity, the videos are its renders, the plys and GaussianAvatars npz read back as the avatar),
and non-faces are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData
from skimage import data

from avp.cli import TOOLS
from avp.cli import main as avp_main
from avp.driving import load_driving_npz
from avp.export.avatar import load_avatar
from avp.export.ply import (
    from_gaussian_avatars,
    gaussian_avatars_fields,
    read_flame_param_npz,
    read_gaussian_avatars_ply,
    read_splat_ply,
    splat_fields,
)
from avp.export.video import read_video
from tests.portrait.tiny_models import build_tiny_checkpoints

FRAMES, ORBIT, SIZE = 7, 5, 48


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "tiny_avp_checkpoints"
    root.mkdir(exist_ok=True)
    return build_tiny_checkpoints(root)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(data.coffee()).save(root / "coffee.jpg")
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def avatarize(checkpoints, image, out, *extra: str) -> int:
    return avp_main(["avatarize", "--image", str(image), "--out", str(out), "--generator", str(checkpoints.generator),
                     "--decoder", str(checkpoints.decoder), "--frames", str(FRAMES), "--orbit-frames", str(ORBIT),
                     "--size", str(SIZE), "--fit-steps", "100", "--device", "cpu", "--no-progress", *extra])


@pytest.fixture(scope="module")
def outputs(checkpoints, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("avatarize")
    assert avatarize(checkpoints, photos / "astronaut.png", out, "--drive", "talk", "--seed", "3",
                     "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95") == 0
    return out


def test_registered_as_a_tool():
    assert TOOLS["avatarize"][0] == "avp.avatarize"


def test_the_report_describes_what_was_written(outputs):
    report = json.loads((outputs / "fit_report.json").read_text())
    written = {Path(p).relative_to(outputs).as_posix() for p in report["outputs"].values()}
    on_disk = {p.relative_to(outputs).as_posix() for p in outputs.iterdir()} | {
        p.relative_to(outputs).as_posix() for p in (outputs / "gaussian_avatars").iterdir()}
    assert written == on_disk - {"gaussian_avatars"}  # every output reported, nothing reported that is not there
    avatar = load_avatar(outputs / "avatar")
    assert report["avatar"]["n_points"] == avatar.n_points and report["avatar"]["seed"] == avatar.meta["seed"] == 3
    sampling = report["avatar"]["sampling"]
    assert (sampling["temperature"], sampling["top_k"], sampling["top_p"]) == (0.9, 50, 0.95)
    assert avatar.meta["sampling"] == sampling
    assert report["portrait"]["faces_found"] == 1
    assert report["portrait"]["fit_original_px"]["rms_px"] < 5.0  # the astronaut's residual, photo pixels
    assert report["driving"]["frames"] == FRAMES and report["head_model"] == avatar.head_model.name


def test_the_portrait_crop_is_the_avatars_portrait(outputs):
    avatar = load_avatar(outputs / "avatar")
    crop = np.asarray(Image.open(outputs / "portrait.png"))
    assert crop.dtype == np.uint8 and crop.shape == (*avatar.portrait.shape[1:], 3)
    assert np.abs(crop / 255.0 - avatar.portrait.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    assert crop.std() > 20  # a photo, not a blank image


def test_the_driving_parameters_are_the_requested_motion_on_the_avatars_identity(outputs):
    avatar = load_avatar(outputs / "avatar")
    drive = np.load(outputs / "driving.npz")
    n_expr = avatar.head_model.n_expr
    widths = {"expr": n_expr, "global_rot": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
    assert set(drive.files) == {"shape", *widths, "fps", "head_model"}
    for key, width in widths.items():
        assert drive[key].shape == (FRAMES, width) and drive[key].dtype == np.float32, key
    np.testing.assert_array_equal(drive["shape"], avatar.shape.numpy())
    assert str(drive["head_model"]) == avatar.head_model.name and float(drive["fps"]) == 25.0
    assert np.ptp(drive["jaw_pose"][:, 0]) > 0.01  # "talk" opens and closes the jaw


def test_videos_have_the_expected_frames_and_show_the_avatar(outputs):
    avatar = load_avatar(outputs / "avatar")
    driven = np.stack(list(read_video(outputs / "driven.mp4"))).astype(np.float64)
    orbit = np.stack(list(read_video(outputs / "orbit.mp4"))).astype(np.float64)
    assert driven.shape == (FRAMES, SIZE, SIZE, 3)
    assert orbit.shape == (ORBIT, SIZE, SIZE, 3)
    # the frames are the avatar's renders (driven: the saved parameters, frontal; orbit: rest pose, +-60 degrees),
    # up to H.264 loss
    head = load_driving_npz(outputs / "driving.npz", avatar.head_model).head
    yaw = 60.0 * torch.sin(torch.linspace(0, 2 * torch.pi, ORBIT + 1)[:-1])
    expected = {"driven": avatar.render(avatar.view_cameras([0.0], size=SIZE), head).rgb[:, 0],
                "orbit": avatar.render(avatar.view_cameras(yaw, size=SIZE), avatar.neutral(1)).rgb[0]}
    for name, video in (("driven", driven), ("orbit", orbit)):
        ref = (expected[name].clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
        assert np.abs(video - ref).mean() < 1.0 and np.abs(video - ref).max() <= 16, name


def test_exports_agree_with_the_avatar(outputs):
    avatar = load_avatar(outputs / "avatar")
    head = avatar.head_model
    ga_path = outputs / "gaussian_avatars" / "point_cloud.ply"
    names = [p.name for p in PlyData.read(str(ga_path))["vertex"].properties]
    assert names == gaussian_avatars_fields(3)  # padded to the degree GaussianAvatars' loader asserts
    # the GaussianAvatars ply read back is the avatar: same splats, bound to the same faces
    back, binding = from_gaussian_avatars(read_gaussian_avatars_ply(ga_path), head, avatar.shape)
    assert torch.equal(binding[0], avatar.binding)
    torch.testing.assert_close(back.means, avatar.cloud.means, atol=2e-6, rtol=0)
    for name in ("scales", "opacities"):
        torch.testing.assert_close(getattr(back, name), getattr(avatar.cloud, name), atol=1e-5, rtol=1e-4)
    k = avatar.cloud.sh.shape[-2]
    torch.testing.assert_close(back.sh[..., :k, :], avatar.cloud.sh, atol=1e-5, rtol=0)
    assert torch.all(back.sh[..., k:, :] == 0)
    # the world-space ply is the avatar at rest
    world = read_splat_ply(outputs / "avatar_world.ply")
    assert [p.name for p in PlyData.read(str(outputs / "avatar_world.ply"))["vertex"].properties] == splat_fields(3)
    rest = avatar.animate(avatar.neutral(1))
    torch.testing.assert_close(torch.from_numpy(world.xyz), rest.means[0], atol=0, rtol=0)
    # flame_param.npz: the driving sequence under GaussianAvatars' names, no offsets
    flame = read_flame_param_npz(outputs / "gaussian_avatars" / "flame_param.npz")
    drive = np.load(outputs / "driving.npz")
    assert flame["expr"].shape == (FRAMES, head.n_expr)
    for ours, theirs in (("global_rot", "rotation"), ("jaw_pose", "jaw_pose"), ("expr", "expr"),
                         ("neck_pose", "neck_pose"), ("eyes_pose", "eyes_pose"), ("translation", "translation")):
        np.testing.assert_array_equal(drive[ours], flame[theirs])
    np.testing.assert_array_equal(flame["shape"], drive["shape"])
    assert flame["static_offset"].shape == (1, head.n_vertices, 3) and not flame["static_offset"].any()
    assert flame["dynamic_offset"].shape == (FRAMES, head.n_vertices, 3) and not flame["dynamic_offset"].any()


def test_drive_from_a_parameter_file(checkpoints, photos, outputs, tmp_path, capsys):
    assert avatarize(checkpoints, photos / "astronaut.png", tmp_path, "--drive", str(outputs / "driving.npz")) == 0
    assert len(list(read_video(tmp_path / "driven.mp4"))) == FRAMES
    printed = capsys.readouterr().out
    for rel in ("driven.mp4", "orbit.mp4", "point_cloud.ply", "flame_param.npz", "avatar_world.ply",
                "fit_report.json"):
        assert str(tmp_path) in printed and rel in printed  # says where each output went


def test_non_face_is_refused(checkpoints, photos, tmp_path, capsys):
    assert avatarize(checkpoints, photos / "coffee.jpg", tmp_path) == 2
    err = capsys.readouterr().err
    assert "no face found in" in err and "coffee.jpg" in err
    assert not (tmp_path / "driven.mp4").exists()


def test_a_truncated_decoder_checkpoint_is_named(checkpoints, photos, tmp_path, capsys):
    truncated = tmp_path / "decoder.ckpt"
    truncated.write_bytes(Path(checkpoints.decoder).read_bytes()[:4096])  # a copy cut short
    code = avp_main(["avatarize", "--image", str(photos / "astronaut.png"), "--out", str(tmp_path / "out"),
                     "--decoder", str(truncated), "--device", "cpu", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot read decoder checkpoint {truncated}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

"""``avp avatarize`` end to end on the astronaut with tiny checkpoints trained in the session: every output exists,
the videos have the expected frame counts (read back), the exports agree with the avatar, non-faces are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData
from skimage import data

from avp.cli import TOOLS
from avp.cli import main as avp_main
from avp.export.ply import gaussian_avatars_fields, read_flame_param_npz, read_splat_ply, splat_fields
from avp.export.video import read_video
from avp.pipeline import Avatar
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


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_outputs_exist_and_are_reported(outputs):
    report = json.loads((outputs / "fit_report.json").read_text())
    expected = {"portrait crop": "portrait.png", "avatar": "avatar", "driving parameters": "driving.npz",
                "driven video": "driven.mp4", "orbit video": "orbit.mp4",
                "GaussianAvatars ply": "gaussian_avatars/point_cloud.ply",
                "GaussianAvatars npz": "gaussian_avatars/flame_param.npz", "world-space ply": "avatar_world.ply",
                "fit report": "fit_report.json"}
    for name, rel in expected.items():
        assert (outputs / rel).exists(), name
        assert report["outputs"][name] == str(outputs / rel)
    assert report["portrait"]["faces_found"] == 1
    assert report["portrait"]["fit_original_px"]["rms_px"] < 5.0  # the astronaut's residual, photo pixels
    sampling = report["avatar"]["sampling"]
    assert (sampling["temperature"], sampling["top_k"], sampling["top_p"]) == (0.9, 50, 0.95)
    assert report["avatar"]["seed"] == 3 and report["driving"]["frames"] == FRAMES


def test_videos_have_the_expected_frame_counts(outputs):
    driven = np.stack(list(read_video(outputs / "driven.mp4")))
    orbit = np.stack(list(read_video(outputs / "orbit.mp4")))
    assert driven.shape == (FRAMES, SIZE, SIZE, 3)
    assert orbit.shape == (ORBIT, SIZE, SIZE, 3)


def test_exports_agree_with_the_avatar(outputs):
    avatar = Avatar.load(outputs / "avatar")
    names = [p.name for p in PlyData.read(str(outputs / "gaussian_avatars" / "point_cloud.ply"))["vertex"].properties]
    assert names == gaussian_avatars_fields(avatar.cloud.sh_degree)
    world = read_splat_ply(outputs / "avatar_world.ply")
    assert [p.name for p in PlyData.read(str(outputs / "avatar_world.ply"))["vertex"].properties] == splat_fields(3)
    rest = avatar.animate(avatar.neutral(1))
    torch.testing.assert_close(torch.from_numpy(world.xyz), rest.means[0], atol=0, rtol=0)
    flame = read_flame_param_npz(outputs / "gaussian_avatars" / "flame_param.npz")
    assert flame["expr"].shape == (FRAMES, avatar.head_model.n_expr)
    drive = np.load(outputs / "driving.npz")
    np.testing.assert_array_equal(drive["jaw_pose"], flame["jaw_pose"])


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

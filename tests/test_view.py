"""``avp view``: the viewer in-process on a free port, driven through its controls as the GUI callbacks are; the splats
it sends are ``Avatar.animate``'s, the toggle switches the animation, the PNG is ``Avatar.render``'s; the three kinds of
input load (and bad ones are refused by name); one end-to-end look through headless Chromium when one is installed."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from avp.cli import TOOLS
from avp.cli import main as avp_main
from avp.driving import builtin_motion, save_driving_npz
from avp.export.avatar import save_avatar
from avp.export.ply import to_gaussian_avatars, write_flame_param_npz, write_gaussian_avatars_ply
from avp.view import ViewError
from avp.view.bench import measure_updates, synthetic_avatar
from avp.view.splats import region_colours, splat_covariances

viser = pytest.importorskip("viser", reason="avp view needs the view extra (viser)")

from avp.view.app import NO_MOTION, AvatarViewer, check_port, viser_camera  # noqa: E402
from avp.view.source import ViewSource, load_source  # noqa: E402

N_POINTS = 600
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def avatar():
    return synthetic_avatar(N_POINTS, seed=3)


@pytest.fixture(scope="module")
def avatar_dir(avatar, tmp_path_factory):
    """An ``avp avatarize``-shaped folder: ``avatar/`` and ``driving.npz``."""
    root = tmp_path_factory.mktemp("avatarized")
    save_avatar(avatar, root / "avatar")
    save_driving_npz(root / "driving.npz", builtin_motion("nod", avatar.head_model, frames=9))
    return root


@pytest.fixture
def viewer(avatar, tmp_path):
    with AvatarViewer(ViewSource(avatar=avatar, label="test"), port=0, out_dir=tmp_path / "renders") as v:
        yield v


def sent_centres(viewer: AvatarViewer) -> np.ndarray:
    """What the viewer last sent to the browsers: the splat handle's buffer, read back."""
    return np.array(viewer.splats.centers)


def test_registered_as_a_tool():
    assert TOOLS["view"][0] == "avp.view.cli"


def test_sliders_send_the_animated_splats(viewer, avatar):
    c = viewer.controls
    c["jaw_open"].value = 12.0
    c["global_yaw"].value = -20.0
    c["gaze_yaw"].value = 10.0
    c["expr_0"].value = 1.5
    head = avatar.neutral(1)
    head.jaw_pose[0, 0] = math.radians(12.0)
    head.global_rot[0, 1] = math.radians(-20.0)
    head.eyes_pose[0, [1, 4]] = math.radians(10.0)
    head.expr[0, 0] = 1.5
    posed = avatar.animate(head)
    np.testing.assert_array_equal(sent_centres(viewer), posed.means[0].numpy())
    expected = splat_covariances(posed.quats[0], posed.scales[0]).numpy()
    np.testing.assert_allclose(viewer.splats.covariances, expected, rtol=2e-3, atol=1e-7)  # float16 on the wire
    rest = avatar.animate(avatar.neutral(1)).means[0].numpy()
    assert np.abs(sent_centres(viewer) - rest).max() > 1e-3  # the sliders did move it


def test_a_motion_frame_is_sent(viewer, avatar):
    c = viewer.controls
    c["motion"].value = "talk"
    assert c["frame"].max == 74 and not c["frame"].disabled
    c["frame"].value = 20
    talk = builtin_motion("talk", avatar.head_model, frames=75, shape=avatar.shape)
    frame = talk.head.map(lambda t: t[20:21])
    np.testing.assert_array_equal(sent_centres(viewer), avatar.animate(frame).means[0].numpy())
    c["motion"].value = NO_MOTION
    np.testing.assert_array_equal(sent_centres(viewer), avatar.animate(avatar.neutral(1)).means[0].numpy())


def test_the_toggle_switches_lbs_and_face_frames(viewer, avatar):
    c = viewer.controls
    c["jaw_open"].value = 20.0
    c["neck_pitch"].value = 15.0
    head = viewer.head_params()
    assert viewer.avatar.animation == "lbs"
    lbs = sent_centres(viewer)
    c["animation"].value = "face_frame"
    face = sent_centres(viewer)
    for mode, sent in (("lbs", lbs), ("face_frame", face)):
        avatar.animation = mode
        try:
            np.testing.assert_array_equal(sent, avatar.animate(head).means[0].numpy())
        finally:
            avatar.animation = "lbs"
    assert np.abs(lbs - face).max() > 1e-5


def test_the_png_button_writes_avatar_render(viewer, avatar):
    c = viewer.controls
    c["jaw_open"].value = 10.0
    c["camera"].value = "frontal"
    c["png_size"].value = 48
    c["render_png"].value = True  # the click
    assert len(viewer.renders) == 1
    path = viewer.renders[0]
    assert path.is_file() and str(path.resolve()) in viewer.status.content
    head = avatar.neutral(1)
    head.jaw_pose[0, 0] = math.radians(10.0)
    rgb = avatar.render(avatar.view_cameras([0.0], size=48), head).rgb[0, 0]
    expected = (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    written = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(written, expected)
    assert (written < 250).any()  # the head, not only the white background


def test_overlay_shows_points_coloured_by_region(viewer, avatar):
    viewer.controls["overlay"].value = True
    assert viewer.points.visible
    np.testing.assert_allclose(np.asarray(viewer.points.points, np.float32), sent_centres(viewer))
    colours, counts = region_colours(avatar.head_model, avatar.binding)
    np.testing.assert_array_equal(np.asarray(viewer.points.colors), colours)
    assert sum(counts.values()) == avatar.n_points and len(counts) > 3


def test_a_driving_npz_loads_into_the_motion_list(viewer, avatar, tmp_path):
    seq = builtin_motion("turn", avatar.head_model, frames=11)
    save_driving_npz(tmp_path / "mine.npz", seq)
    viewer.controls["drive_path"].value = str(tmp_path / "mine.npz")
    viewer.controls["load_drive"].value = True
    assert viewer.controls["motion"].value == "mine.npz" and viewer.controls["frame"].max == 10
    viewer.controls["frame"].value = 5
    np.testing.assert_array_equal(sent_centres(viewer), avatar.animate(seq.head.map(lambda t: t[5:6])).means[0])
    viewer.controls["drive_path"].value = str(tmp_path / "missing.npz")
    viewer.controls["load_drive"].value = True
    assert "missing.npz" in viewer.status.content


def test_without_viser_the_error_names_the_extra():
    code = ("import sys; sys.modules['viser'] = None; import avp, avp.view.cli, avp.bench.view; "
            "sys.exit(avp.view.cli.main(['somewhere']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "view]" in run.stderr, run.stderr


def test_viser_camera_is_the_opencv_camera():
    yaw = math.radians(30)
    wxyz = np.array([math.cos(yaw / 2), 0.0, math.sin(yaw / 2), 0.0])  # camera-to-world: a turn about y
    cam = viser_camera(wxyz, np.array([0.1, 0.0, -0.5]), fov=math.radians(40), aspect=1.5, height=100)
    assert (cam.width, cam.height) == (150, 100)
    centre = torch.linalg.inv(cam.viewmats[0])[:3, 3]
    torch.testing.assert_close(centre, torch.tensor([0.1, 0.0, -0.5]))
    f = 50 / math.tan(math.radians(20))
    torch.testing.assert_close(cam.Ks[0, 0, 0], torch.tensor(f))


# ------------------------------------------------------------------------------------------------ inputs

def test_avatarize_folder_loads_with_its_driving_sequence(avatar_dir, avatar):
    source = load_source(avatar_dir)
    assert source.avatar.n_points == avatar.n_points and list(source.motions) == ["driving.npz"]
    assert source.motions["driving.npz"].n_frames == 9
    np.testing.assert_allclose(source.avatar.animate(avatar.neutral(1)).means.numpy(),
                               avatar.animate(avatar.neutral(1)).means.numpy(), atol=1e-6)
    assert load_source(avatar_dir / "avatar").avatar.n_points == avatar.n_points


def test_gaussian_avatars_folder_loads_animated_by_face_frames(tmp_path, avatar):
    folder = tmp_path / "ga"
    splats = to_gaussian_avatars(avatar.cloud, avatar.binding, avatar.head_model, avatar.shape)
    write_gaussian_avatars_ply(folder / "point_cloud.ply", splats)
    motion = builtin_motion("talk", avatar.head_model, frames=5, shape=avatar.shape)
    write_flame_param_npz(folder / "flame_param.npz", motion.head, avatar.head_model.n_vertices)
    source = load_source(folder)
    assert source.avatar.animation == "face_frame" and source.motions["flame_param.npz"].n_frames == 5
    np.testing.assert_allclose(source.avatar.cloud.means.numpy(), avatar.cloud.means.numpy(), atol=1e-5)
    assert load_source(folder / "point_cloud.ply").avatar.n_points == avatar.n_points


def test_bad_inputs_are_refused_by_name(tmp_path, avatar):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ViewError, match="not an avatar folder"):
        load_source(tmp_path)
    with pytest.raises(ViewError, match="no such"):
        load_source(tmp_path / "nowhere")
    folder = tmp_path / "inria"
    splats = to_gaussian_avatars(avatar.cloud, avatar.binding, avatar.head_model, avatar.shape)
    splats.binding = None
    from avp.export.ply import write_splat_ply

    write_splat_ply(folder / "point_cloud.ply", splats, sh_degree=None)
    write_flame_param_npz(folder / "flame_param.npz", avatar.neutral(1), avatar.head_model.n_vertices)
    with pytest.raises(ViewError, match=r"point_cloud\.ply.*binding_0"):
        load_source(folder)
    assert avp_main(["view", str(tmp_path), "--port", "0"]) == 2


def test_a_port_in_use_is_refused_by_number(avatar):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ViewError, match=f"port {port}"):
            check_port("127.0.0.1", port)
        with pytest.raises(ViewError, match=f"port {port}"):
            AvatarViewer(ViewSource(avatar=avatar, label="x"), port=port)


def test_cli_serves_an_avatarize_folder(avatar_dir, tmp_path, capsys):
    assert avp_main(["view", str(avatar_dir), "--port", "0", "--device", "cpu", "--out", str(tmp_path),
                     "--stop-after", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:" in out and "ssh -L" in out and "splats on builtin" in out


def test_cli_warns_when_not_on_loopback(avatar_dir, tmp_path, capsys):
    assert avp_main(["view", str(avatar_dir), "--host", "0.0.0.0", "--port", "0", "--device", "cpu",
                     "--stop-after", "0.2"]) == 0
    assert "not loopback" in capsys.readouterr().err


def test_the_update_path_measures(avatar):
    result = measure_updates(avatar, frames=3, warmup=1, send=True)
    assert result["n_splats"] == avatar.n_points and result["animate_convert_updates_per_s"] > 0
    assert result["updates_per_s"] > 0 and result["bytes_per_update"] == 32 * avatar.n_points


# ------------------------------------------------------------------------------------------------ browser

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def test_headless_chromium_shows_the_avatar(avatar, tmp_path):
    browser = next((b for b in CHROMIUMS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless Chromium/Chrome on PATH (looked for {', '.join(CHROMIUMS)}; .ci/chromium-up.sh "
                    "installs one)")
    shot = tmp_path / "view.png"
    with AvatarViewer(ViewSource(avatar=avatar, label="browser test"), port=0, out_dir=tmp_path) as v:
        # swiftshader: WebGL in software, no GPU or display needed; virtual time lets the page load and draw
        cmd = [browser, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
               "--hide-scrollbars", "--window-size=900,600", "--virtual-time-budget=8000", f"--screenshot={shot}",
               v.url]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"{browser} wrote no screenshot (rc {run.returncode}): {run.stderr[-2000:]}"
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    h, w = image.shape[:2]
    middle = image[h // 3 : 2 * h // 3, w // 3 : w // 2]  # the head sits left of the GUI panel, mid-height
    background = image[h - 5, w // 2]
    differs = np.abs(middle - background).sum(-1) > 40
    assert differs.mean() > 0.02, f"the middle of {shot} is background ({differs.mean():.3%} of pixels differ)"

"""Driving sequences: built-in motions, our npz, GaussianAvatars/VHAP flame_param files and folders, face videos."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data

from avp.driving import (
    MOTIONS,
    builtin_motion,
    from_video,
    load_driving,
    load_driving_npz,
    save_driving_npz,
)
from avp.head import load_head_model
from avp.head.builtin import EXPRESSION_COMPONENTS
from avp.types import HEAD_PARAM_FIELDS
from tests.fixtures.gaussian_avatars import FlameSequence, write_flame_param_npz

NAMES = [n for n, _ in EXPRESSION_COMPONENTS]


@pytest.fixture(scope="module")
def head():
    return load_head_model()


pytestmark = pytest.mark.usefixtures("one_thread")


def flame_like(n_expr: int = 10, n_shape: int = 20) -> SimpleNamespace:
    """What the driving code reads of a FLAME head model (its name and sizes)."""
    return SimpleNamespace(name="flame2023+teeth", n_expr=n_expr, n_shape=n_shape)


@pytest.mark.parametrize("name", MOTIONS)
def test_motions_are_smooth_and_start_and_end_at_rest(head, name):
    seq = builtin_motion(name, head, frames=60, fps=25)
    assert seq.n_frames == 60 and seq.fps == 25 and seq.head.expr.shape == (60, head.n_expr)
    again = builtin_motion(name, head, frames=60, fps=25)
    for k in HEAD_PARAM_FIELDS:
        assert torch.equal(getattr(seq.head, k), getattr(again.head, k))  # deterministic
    motion = torch.cat([seq.head.expr, seq.head.global_rot, seq.head.neck_pose, seq.head.jaw_pose,
                        seq.head.eyes_pose], -1)
    assert motion.abs().max() > 0.1  # it moves
    assert motion[0].abs().max() < 0.02 and motion[-1].abs().max() < 0.1  # from rest, back towards rest
    step = (motion[1:] - motion[:-1]).abs().max(0).values
    E = head.n_expr
    assert step[E:].max() < 0.1  # poses: no jumps between frames at 25 fps (radians)
    assert step[:E].max() < 0.9  # expressions: a blink closes the eye (coefficient 2) over a few frames


def test_motions_use_the_expression_semantics(head):
    smile = builtin_motion("smile", head, frames=50)
    assert smile.head.expr[:, NAMES.index("smile")].max() > 1.5
    assert smile.head.expr[:, NAMES.index("brow_frown")].abs().max() == 0
    talk = builtin_motion("talk", head, frames=50)
    assert talk.head.jaw_pose[:, 0].max() > 0.1 and talk.head.jaw_pose[:, 0].min() >= 0  # jaws open, never over-close
    assert talk.head.expr[:, NAMES.index("blink_left")].max() > 1.5  # one blink
    turn = builtin_motion("turn", head, frames=50)
    yaw = turn.head.global_rot[:, 1] + turn.head.neck_pose[:, 1]
    assert yaw.max() > 0.4 and yaw.min() < -0.4 and yaw.abs().max() < 0.6  # +-30 degrees
    nod = builtin_motion("nod", head, frames=50)
    assert (nod.head.neck_pose[:, 0] + nod.head.global_rot[:, 0]).abs().max() > 0.15
    # FLAME has no named expressions: jaw-driven talk works, smile is refused
    assert builtin_motion("talk", flame_like(), frames=20).head.expr.abs().max() == 0
    with pytest.raises(ValueError, match="needs a named 'smile'"):
        builtin_motion("smile", flame_like())


def test_our_npz_round_trip(tmp_path, head):
    g = torch.Generator().manual_seed(0)
    seq = builtin_motion("talk", head, frames=12, fps=30, shape=torch.randn(head.n_shape, generator=g))
    path = save_driving_npz(tmp_path / "drive.npz", seq, head_model_name=head.name)
    back = load_driving_npz(path, head)
    assert back.fps == 30 and back.meta["format"] == "avp"
    for k in HEAD_PARAM_FIELDS:
        assert torch.equal(getattr(back.head, k), getattr(seq.head, k))
    assert load_driving(str(path), head).n_frames == 12


def flame_sequence(T: int, E: int = 100, S: int = 300, seed: int = 0) -> FlameSequence:
    g = np.random.default_rng(seed)
    f = lambda *s: g.normal(0, 0.1, s).astype(np.float32)
    return FlameSequence(shape=f(S), expr=f(T, E), rotation=f(T, 3), neck_pose=f(T, 3), jaw_pose=f(T, 3),
                         eyes_pose=f(T, 6), translation=f(T, 3), static_offset=np.zeros((1, 5143, 3), np.float32))


def test_gaussian_avatars_flame_param(tmp_path, head):
    seq = flame_sequence(7)
    path = write_flame_param_npz(tmp_path / "flame_param.npz", seq)
    # FLAME parameters driving a FLAME model with fewer components: the leading (PCA-ordered) ones are kept
    flame = load_driving_npz(path, flame_like())
    assert flame.meta["format"] == "flame_param" and flame.n_frames == 7
    np.testing.assert_array_equal(flame.head.expr.numpy(), seq.expr[:, :10])
    np.testing.assert_array_equal(flame.head.global_rot.numpy(), seq.rotation)
    np.testing.assert_array_equal(flame.head.shape[0].numpy(), seq.shape[:20])
    # ...but their expressions mean nothing to the built-in head: refused, unless only the poses are taken
    with pytest.raises(ValueError, match=r"expr has 100 components but head model 'builtin-v1' has 16.*drop"):
        load_driving_npz(path, head)
    poses = load_driving_npz(path, head, expression="drop")
    assert poses.head.expr.abs().max() == 0
    np.testing.assert_array_equal(poses.head.jaw_pose.numpy(), seq.jaw_pose)
    np.testing.assert_array_equal(poses.head.eyes_pose.numpy(), seq.eyes_pose)


def test_vhap_per_timestep_folder(tmp_path):
    seq = flame_sequence(4, E=10)
    folder = tmp_path / "flame_param"
    folder.mkdir()
    for t in range(4):  # VHAP's export: one file per timestep, fields [1, C]
        np.savez(folder / f"{t:05d}.npz", translation=seq.translation[[t]], rotation=seq.rotation[[t]],
                 neck_pose=seq.neck_pose[[t]], jaw_pose=seq.jaw_pose[[t]], eyes_pose=seq.eyes_pose[[t]],
                 shape=seq.shape, expr=seq.expr[[t]], static_offset=seq.static_offset)
    back = load_driving(folder, flame_like())
    assert back.n_frames == 4
    np.testing.assert_array_equal(back.head.neck_pose.numpy(), seq.neck_pose)
    np.testing.assert_array_equal(back.head.expr.numpy(), seq.expr)


def test_bad_driving_sources(tmp_path, head):
    with pytest.raises(ValueError, match="neither a built-in motion.*talk"):
        load_driving("dance", head)
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match=r"x\.npz: not a head-parameter npz"):
        load_driving(tmp_path / "x.npz", head)
    np.savez(tmp_path / "y.npz", rotation=np.zeros((3, 3)), expr=np.zeros((3, 16)), jaw_pose=np.zeros((3, 3)),
             neck_pose=np.zeros((3, 3)), eyes_pose=np.zeros((3, 6)), translation=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"y\.npz: 'translation' has 2 frames"):
        load_driving(tmp_path / "y.npz", head)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_driving(tmp_path / "missing.mp4", head)


def test_video_driving_follows_the_face(tmp_path, head):
    """A clip of the astronaut tilting her head in the image plane: the fit's roll follows the tilt."""
    import cv2

    from avp.export.video import write_video

    img = data.astronaut()
    angles = [0.0, 6.0, 12.0, 18.0, 12.0, 6.0]
    frames = np.stack([cv2.warpAffine(img, cv2.getRotationMatrix2D((225, 130), a, 1.0), (512, 512),
                                      borderMode=cv2.BORDER_REPLICATE) for a in angles])
    frames[-1] = 90  # a frame without a face: filled in from its neighbours
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    avatar_identity = torch.full((head.n_shape,), 0.5)
    seq = load_driving(str(path), head, progress=False, smooth_sigma=0.0, shape=avatar_identity)
    assert seq.n_frames == 6 and seq.fps == pytest.approx(10)
    assert torch.equal(seq.head.shape, avatar_identity.expand(6, -1))  # carries the avatar's identity...
    assert len(seq.meta["actor_shape"]) == head.n_shape  # ...while the actor's was fitted
    assert seq.meta["frames_without_face"] == 1 and seq.meta["fit"]["frames_with_landmarks"] == 5
    assert seq.meta["fit"]["rms_px"] < 6.0  # in the video's pixels
    roll = torch.rad2deg(seq.head.global_rot[:, 2] + seq.head.neck_pose[:, 2])
    tilt = roll - roll[0]
    # counter-clockwise in the image = the head turning about +z (towards the camera) by the same angle
    np.testing.assert_allclose(tilt[:5].numpy(), angles[:5], atol=4.0)
    assert torch.isfinite(seq.head.expr).all()
    # the same clip through from_video directly, with a fixed identity: the fit honours it
    fixed = from_video(path, head, progress=False, shape=avatar_identity, max_frames=3)
    assert fixed.n_frames == 3 and torch.allclose(fixed.head.shape, avatar_identity.expand(3, -1))

"""mp4 writing and reading (PyAV and imageio-ffmpeg): frame counts, sizes, colours, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from avp.export.video import VideoWriter, read_video, video_info, write_video


@pytest.mark.parametrize("backend", ["pyav", "imageio"])
def test_frame_count_size_and_colour(tmp_path, backend):
    T = 9
    colours = torch.linspace(0.1, 0.9, T)
    frames = colours[:, None, None, None].expand(T, 3, 30, 41).clone()  # odd width: padded to even
    frames[:, 0] = 0.2
    path = write_video(tmp_path / "v.mp4", frames, fps=12, backend=backend)
    info = video_info(path, backend="pyav")
    assert (info.n_frames, info.height, info.width) == (T, 30, 42)
    assert info.fps == pytest.approx(12)
    decoded = np.stack(list(read_video(path, backend=backend)))
    assert decoded.shape == (T, 30, 42, 3)
    np.testing.assert_allclose(decoded[:, 8:22, 8:32, 1].mean((1, 2)) / 255, colours.numpy(), atol=0.02)
    np.testing.assert_allclose(decoded[:, 8:22, 8:32, 0].mean() / 255, 0.2, atol=0.02)
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # shareable, not mkstemp's private mode
    assert top_level_boxes(path).index(b"moov") < top_level_boxes(path).index(b"mdat")  # faststart: plays while loading


def top_level_boxes(path) -> list[bytes]:
    """The mp4's top-level box types in file order (ISO BMFF: 32-bit size, 4-byte type; size 1 = 64-bit size)."""
    data, boxes, at = open(path, "rb").read(), [], 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if size == 1:
            size = int.from_bytes(data[at + 8:at + 16], "big")
        boxes.append(kind)
        at += size if size > 0 else len(data)
    return boxes


def test_streaming_writer_and_atomicity(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "out" / "stream.mp4"
    with VideoWriter(path, 25) as w:
        for _ in range(3):
            w.write(np.zeros((4, 16, 16, 3), np.uint8))
    assert sum(1 for _ in read_video(path)) == 12
    broken = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(broken, 25) as w:
        w.write(torch.rand(2, 3, 16, 16, generator=g))
        raise RuntimeError("boom")
    assert not broken.exists() and not list(tmp_path.glob(".broken*"))
    with pytest.raises(ValueError, match="differs"), VideoWriter(tmp_path / "x.mp4") as w:
        w.write(torch.rand(1, 3, 16, 16, generator=g))
        w.write(torch.rand(1, 3, 8, 8, generator=g))


def test_bad_inputs(tmp_path):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        write_video(tmp_path / "a.mp4", torch.rand(2, 4, 8, 8, generator=g))
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.mp4"):
        video_info(tmp_path / "junk.mp4")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        list(read_video(tmp_path / "nope.mp4"))

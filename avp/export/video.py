"""mp4 writing and reading with PyAV (libx264, the ``video`` extra) or, without it, imageio-ffmpeg's bundled ffmpeg.

Frames are the package's float ``[T, 3, H, W]`` in 0..1 or uint8 ``[T, H, W, 3]`` arrays. H.264 in yuv420p needs
even sizes, so odd widths/heights are padded by one pixel (edge colour) and the written size is reported. A video is
written to a temporary file beside the target and renamed over it when complete: a crash leaves no half-written mp4
under the final name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["VideoInfo", "VideoWriter", "read_video", "video_info", "write_video"]


def _backend(name: str) -> str:
    if name == "auto":
        return "pyav" if importlib.util.find_spec("av") is not None else "imageio"
    if name not in ("pyav", "imageio"):
        raise ValueError(f"video: backend must be 'auto', 'pyav' or 'imageio', got {name!r}")
    return name


def to_uint8_frames(frames: Tensor | np.ndarray) -> np.ndarray:
    """``[T, 3, H, W]`` float 0..1 (tensor) or ``[T, H, W, 3]`` uint8 (array) -> contiguous uint8 ``[T, H, W, 3]``."""
    if isinstance(frames, Tensor):
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"video: expected frames [T, 3, H, W], got {tuple(frames.shape)}")
        frames = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"video: expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoWriter:
    """Streaming mp4 writer: ``with VideoWriter(path, fps) as w: w.write(frames)`` (any number of calls).

    Args:
        path: the mp4 to write (its folder is created).
        fps: frames per second.
        crf: x264 quality (0 lossless, 18 visually lossless, 23 default).
        backend: ``auto`` (PyAV when installed, else imageio-ffmpeg), ``pyav`` or ``imageio``.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0, *, crf: int = 18, backend: str = "auto") -> None:
        if fps <= 0:
            raise ValueError(f"video: fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = int(crf)
        self.backend = _backend(backend)
        self.n_frames = 0
        self.size: tuple[int, int] | None = None
        """(H, W) as written (even)."""
        self._tmp: Path | None = None
        self._impl: Any = None
        self._stream: Any = None

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".tmp.mp4", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        return self

    def _open(self, height: int, width: int) -> None:
        self.size = (height, width)
        if self.backend == "pyav":
            import av

            # faststart: the index (moov) before the frames, so browsers play the file before it has downloaded
            self._impl = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
            rate = round(self.fps) if abs(self.fps - round(self.fps)) < 1e-9 else self.fps
            from fractions import Fraction

            stream = self._impl.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(self.crf)}
            self._stream = stream
        else:
            import imageio.v2 as imageio

            self._impl = imageio.get_writer(str(self._tmp), format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                                            pixelformat="yuv420p", macro_block_size=1,
                                            output_params=["-crf", str(self.crf), "-movflags", "+faststart"])

    def write(self, frames: Tensor | np.ndarray) -> None:
        """Append frames (``[T, 3, H, W]`` float 0..1 or ``[T, H, W, 3]`` uint8); all frames share one size."""
        if self._tmp is None:
            raise RuntimeError("video: use VideoWriter as a context manager (with VideoWriter(...) as w)")
        array = _pad_even(to_uint8_frames(frames))
        if self._impl is None:
            self._open(*array.shape[1:3])
        elif array.shape[1:3] != self.size:
            raise ValueError(f"video: frame size {array.shape[1:3]} differs from the first frames' {self.size}")
        for frame in array:
            if self.backend == "pyav":
                import av

                for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    self._impl.mux(packet)
            else:
                self._impl.append_data(frame)
        self.n_frames += len(array)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self._impl is not None:
                if self.backend == "pyav":
                    if exc_type is None:
                        for packet in self._stream.encode(None):
                            self._impl.mux(packet)
                self._impl.close()
            if exc_type is None:
                if self.n_frames == 0:
                    raise ValueError(f"video: no frames were written to {self.path}")
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; a video is for sharing
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp is not None and self._tmp.exists():
                with contextlib.suppress(FileNotFoundError):
                    self._tmp.unlink()


def write_video(path: str | os.PathLike, frames: Tensor | np.ndarray, fps: float = 25.0, *, crf: int = 18,
                backend: str = "auto") -> Path:
    """Write ``frames`` (``[T, 3, H, W]`` float 0..1 or ``[T, H, W, 3]`` uint8) as an H.264 mp4, atomically."""
    with VideoWriter(path, fps, crf=crf, backend=backend) as w:
        w.write(frames)
    return Path(path)


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself."""

    n_frames: int | None
    """frame count from the container (None when it does not say)"""
    fps: float
    height: int
    width: int


def video_info(path: str | os.PathLike, *, backend: str = "auto") -> VideoInfo:
    """Frame count, rate and size of a video file (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    if _backend(backend) == "pyav":
        import av

        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"{path}: has no video stream")
                s = container.streams.video[0]
                rate = float(s.average_rate or s.guessed_rate or 0) or 25.0
                return VideoInfo(n_frames=int(s.frames) or None, fps=rate, height=s.height, width=s.width)
        except av.error.FFmpegError as e:
            raise ValueError(f"{path}: cannot open as a video ({e})") from e
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(str(path), format="FFMPEG")
    except Exception as e:
        raise ValueError(f"{path}: cannot open as a video ({e})") from e
    with contextlib.closing(reader):
        meta = reader.get_meta_data()
        w, h = meta["size"]
        n = meta.get("nframes")
        return VideoInfo(n_frames=int(n) if n and np.isfinite(n) else None, fps=float(meta.get("fps", 25.0)),
                         height=int(h), width=int(w))


def read_video(path: str | os.PathLike, *, backend: str = "auto") -> Iterator[np.ndarray]:
    """Decode every frame of a video as uint8 ``[H, W, 3]`` RGB, in order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    if _backend(backend) == "pyav":
        import av

        try:
            container = av.open(str(path))
        except av.error.FFmpegError as e:
            raise ValueError(f"{path}: cannot open as a video ({e})") from e
        with container:
            if not container.streams.video:
                raise ValueError(f"{path}: has no video stream")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        return
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(str(path), format="FFMPEG")
    except Exception as e:
        raise ValueError(f"{path}: cannot open as a video ({e})") from e
    with contextlib.closing(reader):
        for frame in reader:
            yield np.asarray(frame)[..., :3]

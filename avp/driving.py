"""Head-parameter sequences that drive an avatar: from files, built-in motions, or a video of a face.

Sources (:func:`load_driving` picks one from a string):

- **our npz** (what :func:`save_driving_npz` and the shards' ``head.npz`` hold): ``shape [S]`` and ``expr [T, E]``,
  ``global_rot``, ``neck_pose``, ``jaw_pose``, ``translation [T, 3]``, ``eyes_pose [T, 6]``; optional ``fps``;
- **GaussianAvatars / VHAP flame_param npz**: GaussianAvatars' ``flame_param.npz`` and VHAP's
  ``tracked_flame_params*.npz`` (``rotation``, ``neck_pose``, ``jaw_pose``, ``translation [T, 3]``,
  ``eyes_pose [T, 6]``, ``expr [T, E]``, ``shape [S]``, plus offsets, ``timestep_id``, … which are ignored), or a
  folder of VHAP's per-timestep ``flame_param/<t>.npz`` files (the same keys as ``[1, C]``), read in name order;
- **built-in motions** ``talk``, ``smile``, ``nod``, ``turn``: deterministic, smooth, starting and ending at rest;
  expressions use the head model's named expression components (the built-in head's ``smile``, ``lips_part``,
  ``blink_left`` …); jaw and head motion need no names, so ``talk`` (jaw only), ``nod`` and ``turn`` also work for
  FLAME while ``smile`` needs named components;
- **a video file**: mediapipe landmarks per frame, landmark tracks smoothed over time, then one batched head-model
  fit with a shared identity and a temporal smoothness term (:mod:`avp.portrait.fit`).

Expression coefficients only mean something for the basis they were fitted with. A FLAME file driving a FLAME
model with fewer (more) components is truncated (zero-padded): FLAME's expression PCA is ordered. Any other size
mismatch (e.g. FLAME parameters driving the built-in head) is an error unless ``expression="drop"``, which keeps the
poses (head, neck, jaw, eyes) and sets expressions to zero.

The avatar keeps its own identity: a sequence's ``shape`` is carried along for export but ignored by animation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from avp.atomic import atomic_open
from avp.types import HEAD_PARAM_FIELDS, HeadParams

__all__ = [
    "MOTIONS",
    "VIDEO_SUFFIXES",
    "DrivingSequence",
    "builtin_motion",
    "from_video",
    "load_driving",
    "load_driving_npz",
    "save_driving_npz",
]

MOTIONS = ("talk", "smile", "nod", "turn")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif")
WIDTHS = {"global_rot": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
FLAME_KEYS = {"rotation": "global_rot", "neck_pose": "neck_pose", "jaw_pose": "jaw_pose", "eyes_pose": "eyes_pose",
              "translation": "translation", "expr": "expr"}

Expression = Literal["auto", "drop"]


@dataclass
class DrivingSequence:
    """``T`` frames of head parameters for one head model."""

    head: HeadParams
    """``[T]`` parameters (``shape`` repeated per frame)."""
    fps: float
    source: str
    """Where it came from (motion name or file)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source-specific details (video: fit report, frames without a face; files: format, expression handling)."""

    @property
    def n_frames(self) -> int:
        return int(self.head.global_rot.shape[0])


# ------------------------------------------------------------------------------------------------ files

def _is_flame_model(head_model: torch.nn.Module) -> bool:
    return head_model.name.startswith("flame")


def _fit_expression(expr: np.ndarray, head_model: torch.nn.Module, expression: Expression, where: str) -> np.ndarray:
    T, E_file = expr.shape
    E = head_model.n_expr
    if expression == "drop":
        return np.zeros((T, E), np.float32)
    if expression != "auto":
        raise ValueError(f"driving: expression must be 'auto' or 'drop', got {expression!r}")
    if E_file == E:
        return expr
    if _is_flame_model(head_model):
        out = np.zeros((T, E), np.float32)
        out[:, : min(E, E_file)] = expr[:, : min(E, E_file)]
        return out
    raise ValueError(f"{where}: expr has {E_file} components but head model {head_model.name!r} has {E}; "
                     "expression coefficients of another basis mean nothing here. Drive with poses only "
                     "(expression='drop', --drive-expression drop) or use parameters fitted with this head model")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(str(path), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: cannot read as npz ({type(e).__name__}: {e})") from e


def _params_from_arrays(arrays: dict[str, np.ndarray], head_model: torch.nn.Module, where: str,
                        expression: Expression, shape: Tensor | None) -> tuple[HeadParams, str]:
    """``(params [T], format)`` from our or GaussianAvatars/VHAP key names."""
    if "global_rot" in arrays:
        fmt, names = "avp", {k: k for k in (*WIDTHS, "expr")}
    elif "rotation" in arrays:
        fmt, names = "flame_param", {v: k for k, v in FLAME_KEYS.items()}
    else:
        raise ValueError(f"{where}: not a head-parameter npz: it has neither 'global_rot' (avp) nor 'rotation' "
                         f"(GaussianAvatars/VHAP flame_param); keys: {sorted(arrays)}")
    missing = [names[k] for k in (*WIDTHS, "expr") if names[k] not in arrays]
    if missing:
        raise ValueError(f"{where}: missing keys {missing} for the {fmt} layout (found {sorted(arrays)})")
    fields: dict[str, np.ndarray] = {}
    for ours, width in WIDTHS.items():
        a = np.asarray(arrays[names[ours]], np.float32)
        a = a.reshape(-1, a.shape[-1]) if a.ndim >= 1 else a
        if a.ndim != 2 or a.shape[-1] != width:
            got = list(np.shape(arrays[names[ours]]))
            raise ValueError(f"{where}: '{names[ours]}' must be [T, {width}], got {got}")
        fields[ours] = a
    expr = np.asarray(arrays[names["expr"]], np.float32)
    expr = expr.reshape(-1, expr.shape[-1])
    T = fields["global_rot"].shape[0]
    for key, a in [*fields.items(), ("expr", expr)]:
        if a.shape[0] != T:
            raise ValueError(f"{where}: '{names[key]}' has {a.shape[0]} frames, '{names['global_rot']}' has {T}")
    if T == 0:
        raise ValueError(f"{where}: the sequence has no frames")
    fields["expr"] = _fit_expression(expr, head_model, expression, where)
    S = head_model.n_shape
    if shape is not None:
        s = shape.detach().float().cpu().reshape(S).numpy()
    elif "shape" in arrays:
        raw = np.asarray(arrays["shape"], np.float32).reshape(-1, np.shape(arrays["shape"])[-1])[0]
        s = np.zeros(S, np.float32)
        if raw.shape[0] == S or _is_flame_model(head_model):
            s[: min(S, raw.shape[0])] = raw[: min(S, raw.shape[0])]
    else:
        s = np.zeros(S, np.float32)
    fields["shape"] = np.broadcast_to(s, (T, S)).copy()
    return HeadParams(**{k: torch.from_numpy(np.ascontiguousarray(fields[k])) for k in HEAD_PARAM_FIELDS}), fmt


def load_driving_npz(path: str | Path, head_model: torch.nn.Module, *, expression: Expression = "auto",
                     shape: Tensor | None = None, fps: float | None = None) -> DrivingSequence:
    """A sequence from our npz, a GaussianAvatars/VHAP flame_param npz, or a folder of VHAP per-timestep npz files.

    ``shape``: the identity to carry (default: the file's, when it fits the head model). ``fps``: overrides the
    file's (default 25 when the file has none).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise FileNotFoundError(f"{path}: a folder without .npz files (expected VHAP's flame_param/<t>.npz)")
        per_file = [_read_npz(f) for f in files]
        keys = set.intersection(*(set(a) for a in per_file))
        arrays = {}
        for k in keys:
            if k in ("shape", "static_offset"):
                arrays[k] = per_file[0][k]
            elif all(np.ndim(a[k]) >= 1 for a in per_file):
                try:
                    arrays[k] = np.concatenate([np.asarray(a[k]).reshape(-1, np.shape(a[k])[-1]) for a in per_file])
                except ValueError as e:
                    raise ValueError(f"{path}: the per-timestep files disagree on '{k}' ({e})") from e
        source_fps = None
    elif path.is_file():
        arrays = _read_npz(path)
        source_fps = float(arrays["fps"]) if "fps" in arrays and np.size(arrays["fps"]) == 1 else None
    else:
        raise FileNotFoundError(f"{path}: no such driving file or folder")
    params, fmt = _params_from_arrays(arrays, head_model, str(path), expression, shape)
    return DrivingSequence(head=params, fps=float(fps or source_fps or 25.0), source=str(path),
                           meta={"format": fmt, "expression": expression})


def save_driving_npz(path: str | Path, sequence: DrivingSequence | HeadParams, *, fps: float | None = None,
                     head_model_name: str | None = None) -> Path:
    """Write a sequence in our npz layout (``shape [S]``, the other fields ``[T, C]``, ``fps``), atomically."""
    params = sequence.head if isinstance(sequence, DrivingSequence) else sequence
    rate = fps if fps is not None else (sequence.fps if isinstance(sequence, DrivingSequence) else 25.0)
    p = params.map(lambda t: t.detach().float().cpu().reshape(-1, t.shape[-1]))
    arrays = {k: getattr(p, k).numpy() for k in HEAD_PARAM_FIELDS}
    arrays["shape"] = arrays["shape"][0]
    arrays["fps"] = np.float32(rate)
    if head_model_name is not None:
        arrays["head_model"] = np.array(head_model_name)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------------ motions

def _expression_names(head_model: torch.nn.Module) -> list[str]:
    from avp.head.builtin import BUILTIN_NAME, EXPRESSION_COMPONENTS

    if head_model.name == BUILTIN_NAME:
        return [name for name, _ in EXPRESSION_COMPONENTS][: head_model.n_expr]
    return []


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def builtin_motion(name: str, head_model: torch.nn.Module, *, frames: int = 75, fps: float = 25.0,
                   shape: Tensor | None = None) -> DrivingSequence:
    """One of :data:`MOTIONS` over ``frames`` frames at ``fps`` (deterministic; starts and ends at rest).

    - ``talk``: the jaw opens and closes at ~3 syllables per second with varying depth, lips part and purse, one
      blink;
    - ``smile``: a smile (with squint and parted lips) eases in, holds and eases out;
    - ``nod``: two nods of about 11 degrees, shared by neck and head;
    - ``turn``: the head turns left then right by up to 30 degrees (inside the training cameras' +-60 arc).
    """
    if name not in MOTIONS:
        raise ValueError(f"unknown motion {name!r}; built-in motions are {list(MOTIONS)}")
    if frames < 1 or fps <= 0:
        raise ValueError(f"motion: need frames >= 1 and fps > 0, got {frames} and {fps}")
    T, E = frames, head_model.n_expr
    t = np.arange(T) / fps
    duration = max(T / fps, 1e-6)
    u = t / duration  # 0 .. <1
    envelope = np.sin(np.pi * np.clip(u, 0, 1)) ** 2  # 0 at both ends
    names = {n: i for i, n in enumerate(_expression_names(head_model))}
    expr = np.zeros((T, E))
    jaw, neck, root, eyes = np.zeros((T, 3)), np.zeros((T, 3)), np.zeros((T, 3)), np.zeros((T, 6))

    def drive(component: str, values: np.ndarray) -> None:
        if component in names:
            expr[:, names[component]] += values

    if name == "talk":
        syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 3.2 * t)
        depth = 0.65 + 0.35 * np.sin(2 * np.pi * 0.7 * t + 0.4)
        jaw[:, 0] = 0.2 * syllables * depth * np.minimum(1.0, 4 * envelope)
        drive("lips_part", 0.7 * syllables * np.minimum(1.0, 4 * envelope))
        drive("pucker", 0.6 * np.sin(2 * np.pi * 1.1 * t) * envelope)
        drive("mouth_stretch", 0.4 * np.sin(2 * np.pi * 0.6 * t + 1.0) * envelope)
        blink = 2.0 * np.exp(-(((u - 0.55) * duration / 0.08) ** 2))
        drive("blink_left", blink)
        drive("blink_right", blink)
        neck[:, 0] = 0.03 * np.sin(2 * np.pi * 0.5 * t) * envelope
    elif name == "smile":
        if not {"smile"} <= names.keys():
            raise ValueError(f"motion 'smile' needs a named 'smile' expression component; head model "
                             f"{head_model.name!r} has none (use talk, nod, turn or a parameter file)")
        level = _smoothstep(u / 0.3) * _smoothstep((1 - u) / 0.3)
        drive("smile", 1.8 * level)
        drive("squint", 0.5 * level)
        drive("lips_part", 0.4 * level)
        jaw[:, 0] = 0.03 * level
    elif name == "nod":
        pitch = 0.2 * np.sin(2 * np.pi * 2 * u) * envelope
        neck[:, 0], root[:, 0] = 0.6 * pitch, 0.4 * pitch
    else:  # turn
        yaw = 0.52 * np.sin(2 * np.pi * u)
        neck[:, 1], root[:, 1] = 0.4 * yaw, 0.6 * yaw
        eyes[:, [1, 4]] = -0.15 * yaw[:, None]  # the eyes lag the head a little
    S = head_model.n_shape
    s = torch.zeros(S) if shape is None else shape.detach().float().cpu().reshape(S)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)
    head = HeadParams(shape=s.expand(T, S).clone(), expr=f(expr), global_rot=f(root), neck_pose=f(neck),
                      jaw_pose=f(jaw), eyes_pose=f(eyes), translation=torch.zeros(T, 3))
    return DrivingSequence(head=head, fps=float(fps), source=name, meta={"motion": name})


# ------------------------------------------------------------------------------------------------ video

def from_video(path: str | Path, head_model: torch.nn.Module, *, embedding: Any = None,
               embedding_path: str | Path | None = None, framing: Any = None, fit_config: Any = None,
               max_frames: int | None = None, smooth_sigma: float = 1.0, shape: Tensor | None = None,
               progress: bool = True, on_fit_step: Callable[[int, int, float], None] | None = None) -> DrivingSequence:
    """Track a face video: landmarks per frame, tracks smoothed, one batched head-model fit over all frames.

    Args:
        path: a video file readable by PyAV / imageio-ffmpeg.
        head_model: the avatar's head model.
        embedding / embedding_path: landmark embedding (default: the built-in head's).
        framing: :class:`avp.portrait.preprocess.PortraitFraming` (the camera the poses are expressed for).
        fit_config: :class:`avp.portrait.fit.FitConfig` (default: 300 steps, temporal smoothness 0.01).
        max_frames: read at most this many frames.
        smooth_sigma: Gaussian smoothing of the landmark tracks over time, in frames (0: none).
        shape: a known identity to keep fixed during the fit.
        progress: show tqdm bars (reading frames, fitting).
    """
    from scipy.ndimage import gaussian_filter1d
    from tqdm import tqdm

    from avp.export.video import read_video, video_info
    from avp.face import detect_landmarks
    from avp.portrait.fit import FitConfig, fit_landmarks, project
    from avp.portrait.landmarks_embedding import landmark_embedding
    from avp.portrait.preprocess import PortraitFraming, align_transform
    from avp.signals import ignore_profiling_signal

    path = Path(path)
    ignore_profiling_signal()
    info = video_info(path)
    framing = framing or PortraitFraming()
    emb = embedding or landmark_embedding(head_model, embedding_path)
    total = info.n_frames if max_frames is None else min(info.n_frames or max_frames, max_frames)
    tracks, found = [], []
    bar = tqdm(total=total, desc="video landmarks", unit="frame", disable=not progress)
    try:
        for i, frame in enumerate(read_video(path)):
            if max_frames is not None and i >= max_frames:
                break
            faces = detect_landmarks(np.ascontiguousarray(frame), max_faces=1)
            if faces:
                tracks.append(faces[0].points[:, :2])
                found.append(True)
            else:
                tracks.append(np.full((478, 2), np.nan))
                found.append(False)
            bar.update()
    finally:
        bar.close()
    if not tracks:
        raise ValueError(f"{path}: the video has no frames")
    valid = np.asarray(found)
    if not valid.any():
        raise ValueError(f"{path}: no face found in any of its {len(tracks)} frames")
    xy = np.stack(tracks)  # [T, 478, 2]
    idx = np.arange(len(xy))
    for k in range(478):  # frames without a face: linear interpolation of each track (they get no weight)
        for c in range(2):
            xy[~valid, k, c] = np.interp(idx[~valid], idx[valid], xy[valid, k, c])
    if smooth_sigma > 0 and len(xy) > 1:
        xy = gaussian_filter1d(xy, sigma=smooth_sigma, axis=0, mode="nearest")

    camera = framing.camera()
    with torch.no_grad():
        rest = head_model(HeadParams.zeros(1, n_shape=head_model.n_shape, n_expr=head_model.n_expr)).vertices
        template, _ = project(emb.points(rest, head_model.faces), camera.Ks, camera.viewmats)
    weights = emb.weights.numpy() * np.array([0.0 if g == "jaw" else 1.0 for g in emb.groups]
                                             if emb.groups else np.ones(emb.n_landmarks))
    selected = emb.select(torch.as_tensor(xy)).numpy()  # [T, L, 2]
    # one similarity for the whole clip (the median frame's), so head motion stays in the poses
    per_frame = np.stack([align_transform(selected[t], template[0].numpy(), weights) for t in np.flatnonzero(valid)])
    transform = np.median(per_frame, axis=0)
    aligned = xy @ transform[:, :2].T + transform[:, 2]

    cfg = fit_config or FitConfig()
    bar = tqdm(total=cfg.steps, desc="video head fit", unit="step", disable=not progress)

    def step(i: int, n: int, loss: float) -> None:
        bar.update()
        if on_fit_step is not None:
            on_fit_step(i, n, loss)

    try:
        fit = fit_landmarks(head_model, emb, torch.as_tensor(aligned, dtype=torch.float32), camera, config=cfg,
                            valid=torch.as_tensor(valid), shape=shape, progress=step)
    finally:
        bar.close()
    meta = {"frames": len(xy), "frames_without_face": int((~valid).sum()), "smooth_sigma": smooth_sigma,
            "fit": fit.report(pixel_scale=1.0 / math.sqrt(abs(np.linalg.det(transform[:, :2]))))}
    return DrivingSequence(head=fit.head, fps=info.fps, source=str(path), meta=meta)


# ------------------------------------------------------------------------------------------------ dispatch

def load_driving(spec: str | Path, head_model: torch.nn.Module, *, frames: int = 75, fps: float = 25.0,
                 expression: Expression = "auto", shape: Tensor | None = None, progress: bool = True,
                 **video_kwargs: Any) -> DrivingSequence:
    """A motion name (:data:`MOTIONS`), an npz file or VHAP ``flame_param`` folder, or a video file.

    ``frames`` and ``fps`` size built-in motions; for a video ``frames`` caps the frames read (0: all) and
    ``video_kwargs`` go to :func:`from_video` (``embedding_path``, ``framing``, ``fit_config``, ``smooth_sigma``).
    ``shape`` is the identity the sequence carries (the actor's own is fitted for a video, kept in ``meta``).
    """
    text = str(spec)
    if text in MOTIONS:
        return builtin_motion(text, head_model, frames=frames, fps=fps, shape=shape)
    path = Path(text)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such video file")
        seq = from_video(path, head_model, max_frames=frames or None, progress=progress, **video_kwargs)
        if shape is not None:  # the actor's identity was fitted freely (better expressions); carry the avatar's
            seq.meta["actor_shape"] = seq.head.shape[0].tolist()
            seq.head.shape = shape.detach().float().cpu().reshape(1, -1).expand(seq.n_frames, -1).clone()
        return seq
    if path.is_dir() or path.suffix.lower() == ".npz":
        return load_driving_npz(path, head_model, expression=expression, shape=shape)
    if not path.exists():
        raise ValueError(f"driving source {text!r} is neither a built-in motion ({', '.join(MOTIONS)}), nor an "
                         "existing .npz file, VHAP flame_param folder or video file")
    raise ValueError(f"{path}: cannot tell what this driving file is (expected .npz or a video: "
                     f"{', '.join(VIDEO_SUFFIXES)})")

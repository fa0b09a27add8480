"""Expression and pose sequences (talking, smiling, blinking, head turns) and the portrait's head parameters.

Clips are a few seconds long; the ``T`` frames are sampled evenly over the clip, so even short clips show varied
expressions and poses. Named expression components of the built-in head (``smile``, ``blink_left``, ...) are
driven directly; a head model without names (FLAME) gets smooth random coefficients of the same magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avp.types import HEAD_PARAM_FIELDS


@dataclass
class Performance:
    """What a clip shows (recorded in the shard's meta)."""

    talking: bool
    smiling: bool
    blinking: bool
    head_turns: bool
    duration_s: float

    def summary(self) -> dict:
        return {"talking": self.talking, "smiling": self.smiling, "blinking": self.blinking,
                "head_turns": self.head_turns, "duration_s": round(self.duration_s, 3)}


def _components(expression_names: list[str] | None) -> dict[str, int]:
    return {name: i for i, name in enumerate(expression_names or [])}


def sample_performance(rng: np.random.Generator) -> Performance:
    flags = [rng.random() < p for p in (0.6, 0.5, 0.8, 0.7)]
    if not any(flags):
        flags[int(rng.integers(4))] = True
    return Performance(*flags, duration_s=float(rng.uniform(1.5, 4.0)))


def sequence(perf: Performance, shape: np.ndarray, n_frames: int, n_expr: int, rng: np.random.Generator,
             expression_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Head parameters of ``n_frames`` timesteps: ``shape [S]`` and ``[T, C]`` for the other FLAME fields."""
    T = n_frames
    t = np.linspace(0.0, perf.duration_s, T) if T > 1 else np.array([rng.uniform(0, perf.duration_s)])
    names = _components(expression_names)
    expr = np.zeros((T, n_expr))
    jaw = np.zeros((T, 3))
    global_rot = np.zeros((T, 3))
    neck = np.zeros((T, 3))
    eyes = np.zeros((T, 6))

    def drive(name: str, values: np.ndarray) -> None:
        if name in names and names[name] < n_expr:
            expr[:, names[name]] += values

    if perf.talking:
        f, phase = rng.uniform(2.5, 5.0), rng.uniform(0, 2 * np.pi)
        opening = np.maximum(0.0, np.sin(2 * np.pi * f * t + phase)) * rng.uniform(0.08, 0.3)
        jaw[:, 0] += opening
        drive("lips_part", 0.8 * np.abs(np.sin(2 * np.pi * f * 0.5 * t + phase)))
        drive("pucker", 0.7 * np.sin(2 * np.pi * f * 0.37 * t + rng.uniform(0, 6)))
        drive("mouth_stretch", 0.5 * np.sin(2 * np.pi * f * 0.23 * t + rng.uniform(0, 6)))
    if perf.smiling:
        onset = rng.uniform(0, perf.duration_s * 0.6)
        level = rng.uniform(0.8, 2.2)
        ramp = level / (1 + np.exp(-(t - onset) / 0.15))
        drive("smile", ramp)
        drive("squint", 0.3 * ramp)
        if rng.random() < 0.3:
            drive("smile_left" if rng.random() < 0.5 else "smile_right", 0.4 * ramp)
    if perf.blinking:
        for event in rng.uniform(0, perf.duration_s, int(rng.integers(1, 4))):
            closure = 2.0 * np.exp(-(((t - event) / 0.07) ** 2))
            drive("blink_left", closure)
            drive("blink_right", closure)
    if perf.head_turns:
        yaw_a, f_y = rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.45)
        pitch_a, f_p = rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.6)
        yaw = yaw_a * np.sin(2 * np.pi * f_y * t + rng.uniform(0, 2 * np.pi))
        pitch = pitch_a * np.sin(2 * np.pi * f_p * t + rng.uniform(0, 2 * np.pi))
        split = rng.uniform(0.3, 0.7)  # part of the turn done by the neck joint
        global_rot[:, 1] += yaw * (1 - split)
        global_rot[:, 0] += pitch * (1 - split)
        neck[:, 1] += yaw * split
        neck[:, 0] += pitch * split
        global_rot[:, 2] += rng.normal(0, 0.03) * np.sin(2 * np.pi * f_y * t)
    # brows and gaze move a little in every clip
    drive("brow_raise", rng.uniform(-0.5, 1.2) * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6)))
    gaze = np.stack([rng.uniform(-0.15, 0.15) * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6)),
                     rng.uniform(-0.25, 0.25) * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))], -1)
    eyes[:, 0:2] = gaze
    eyes[:, 3:5] = gaze
    if not names:  # a head model without named components: smooth random expressions
        basis = rng.normal(0, 0.6, (3, n_expr))
        phases = rng.uniform(0, 2 * np.pi, 3)
        waves = np.sin(2 * np.pi * np.array([0.3, 0.7, 1.3])[None] * t[:, None] + phases)
        expr += waves @ basis
    translation = rng.normal(0, 0.002, (1, 3)) + 0.002 * np.sin(2 * np.pi * 0.5 * t)[:, None] * rng.normal(0, 1, 3)
    return {"shape": shape.astype(np.float32), "expr": expr.astype(np.float32),
            "global_rot": global_rot.astype(np.float32), "neck_pose": neck.astype(np.float32),
            "jaw_pose": jaw.astype(np.float32), "eyes_pose": eyes.astype(np.float32),
            "translation": translation.astype(np.float32)}


def portrait_params(head: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A portrait moment: a mild version of one clip frame, facing the camera (fields without the time axis)."""
    i = int(rng.integers(head["expr"].shape[0]))
    out = {k: (head[k] if k == "shape" else head[k][i] * (0.5 if k in ("expr", "jaw_pose") else 0.3))
           for k in HEAD_PARAM_FIELDS}
    out["global_rot"] = out["global_rot"] + np.array([rng.uniform(-0.08, 0.08), rng.uniform(-0.15, 0.15), 0.0])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def estimation_noise(params: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What a single-image tracker would report: the true parameters plus small errors (shape and expression in
    coefficient units, rotations in radians, translation in metres)."""
    sigma = {"shape": 0.15, "expr": 0.1, "global_rot": 0.02, "neck_pose": 0.01, "jaw_pose": 0.01,
             "eyes_pose": 0.03, "translation": 0.002}
    return {k: (v + rng.normal(0, sigma[k], v.shape)).astype(np.float32) for k, v in params.items()}

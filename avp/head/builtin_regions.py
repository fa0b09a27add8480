"""The built-in head's semantic face regions (ears, lips, nose, eyelids, …, eyeballs, teeth): triangle indices."""

from __future__ import annotations

import numpy as np

from avp.head import _sdf as S
from avp.head.builtin_geometry import _Geometry
from avp.head.builtin_skin import EYE_CENTER, LID_RADIUS, _angles, _skin_sdf

Array = np.ndarray

SKIN_REGIONS = ("ears", "lips", "nose", "eyelids", "brows", "neck", "chin", "jaw", "cheeks", "forehead", "scalp")
"""Skin partition, in the priority order used to classify a triangle (first match wins)."""


def _regions(g: _Geometry) -> dict[str, Array]:
    V, F, fp = g.vertices, g.faces, g.face_parts
    c = V[F].mean(1)
    x, y, z = c[:, 0], c[:, 1], c[:, 2]
    ax = np.abs(x)
    cm = S.mirror_x(c)
    theta, phi = _angles(c)
    aphi = np.degrees(np.abs(phi))
    skin = fp == "skin"
    sdf = _skin_sdf()
    near = lambda i: np.abs(sdf.features[i].fn(cm if sdf.features[i].mirrored else c))
    eye_dist = np.linalg.norm(cm - EYE_CENTER, axis=1)
    neck_line = np.interp(z, [-0.06, -0.035, 0.02, 0.05], [-0.048, -0.06, -0.1, -0.104])
    rules = {
        "ears": (ax > 0.064) & ((((y - 0.009) / 0.041) ** 2 + ((z + 0.015) / 0.027) ** 2) < 1.0),
        "lips": (near(7) < 0.0022) & (ax < 0.028) & (y < -0.039) & (y > -0.073) & (z > 0.075),
        "nose": (near(9) < 0.0025) & (ax < 0.024) & (y > -0.034) & (y < 0.036),
        "eyelids": (eye_dist < LID_RADIUS + 0.0065) & (z > EYE_CENTER[2] - 0.002),
        "brows": (np.abs(y - (0.047 - 12.0 * (ax - 0.028) ** 2)) < 0.0075) & (ax > 0.004) & (ax < 0.054)
        & (z > 0.06),
        "neck": y < neck_line,
        "chin": (ax < 0.024) & (y < -0.071) & (z > 0.06),
        "jaw": (y < -0.038) & (aphi < 88) & (z > -0.03),
        "cheeks": (y < 0.026) & (aphi < 76) & (z > -0.005),
        "forehead": (aphi < 58) & (y < 0.096) & (z > 0.03),
    }
    label = np.full(len(F), "", dtype=object)
    for name in SKIN_REGIONS[:-1]:
        free = skin & (label == "") & rules[name]
        label[free] = name
    label[skin & (label == "")] = "scalp"
    regions = {name: np.flatnonzero(label == name) for name in SKIN_REGIONS}
    regions["skin"] = np.flatnonzero(skin)
    regions["eyeballs"] = np.flatnonzero(np.isin(fp, ["eyeball_l", "eyeball_r"]))
    regions["left_eyeball"] = np.flatnonzero(fp == "eyeball_l")
    regions["right_eyeball"] = np.flatnonzero(fp == "eyeball_r")
    gaze = np.where(fp == "eyeball_l", 1.0, -1.0)
    on_ball = np.isin(fp, ["eyeball_l", "eyeball_r"])
    rel = c - EYE_CENTER * np.stack([gaze, np.ones_like(gaze), np.ones_like(gaze)], -1)
    cos_front = rel[:, 2] / np.maximum(np.linalg.norm(rel, axis=1), 1e-12)
    regions["iris"] = np.flatnonzero(on_ball & (cos_front > np.cos(np.deg2rad(31.0))))  # two rings: ~12 mm across
    regions["pupils"] = np.flatnonzero(on_ball & (cos_front > np.cos(np.deg2rad(16.0))))  # the front fan
    regions["eye_sockets"] = np.flatnonzero(np.isin(fp, ["socket_l", "socket_r"]))
    regions["eyes"] = np.concatenate([regions["eyeballs"], regions["eyelids"], regions["eye_sockets"]])
    regions["upper_teeth"] = np.flatnonzero(fp == "upper_teeth")
    regions["lower_teeth"] = np.flatnonzero(fp == "lower_teeth")
    regions["teeth"] = np.concatenate([regions["upper_teeth"], regions["lower_teeth"]])
    regions["tongue"] = np.flatnonzero(fp == "tongue")
    regions["mouth_cavity"] = np.concatenate([np.flatnonzero(fp == "mouth_bag"), regions["tongue"]])
    regions["face"] = np.concatenate([regions[k] for k in ("forehead", "brows", "eyelids", "nose", "cheeks", "lips",
                                                           "chin", "jaw")])
    return {k: np.sort(v) for k, v in regions.items()}

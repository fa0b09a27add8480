"""The built-in head's shape and expression bases: smooth displacement fields of the template, one per component
(:data:`SHAPE_COMPONENTS`, :data:`EXPRESSION_COMPONENTS`)."""

from __future__ import annotations

import numpy as np

from avp.head import _sdf as S
from avp.head.builtin_geometry import _Geometry
from avp.head.builtin_skin import EYE_CENTER, MOUTH_CORNER, MOUTH_Y, _bent

Array = np.ndarray


def _smooth(t: Array) -> Array:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(p: Array, c: tuple[float, float, float] | Array, s: tuple[float, float, float]) -> Array:
    return np.exp(-0.5 * (((p - np.asarray(c)) / np.asarray(s)) ** 2).sum(-1))


def _bump(p: Array, c: tuple[float, float, float] | Array, s: tuple[float, float, float]) -> Array:
    """Gaussian-like bump of widths ``s`` that is exactly zero beyond three widths (local expression masks)."""
    r2 = (((p - np.asarray(c)) / np.asarray(s)) ** 2).sum(-1) / 9.0
    return np.maximum(1.0 - r2, 0.0) ** 3


def _vertex_normals(V: Array, F: Array) -> Array:
    fn = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    n = np.zeros_like(V)
    for k in range(3):
        np.add.at(n, F[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _rotate_about_x(p: Array, center: Array, angle: Array) -> Array:
    """Displacement of points rotated by ``angle`` (radians, per point) about the x axis through ``center``."""
    q = p - center
    c, s = np.cos(angle), np.sin(angle)
    rotated = np.stack([q[:, 0], c * q[:, 1] - s * q[:, 2], s * q[:, 1] + c * q[:, 2]], -1)
    return rotated - q


SHAPE_COMPONENTS = (
    ("head_width", "everything 4.5% wider (about 4 mm at each side)"),
    ("head_depth", "back of the skull 4.5 mm further back"),
    ("head_height", "crown ~4.5 mm higher"),
    ("face_length", "lower face 5 mm longer"),
    ("jaw_width", "jaw angles 4 mm wider each"),
    ("chin_length", "chin 3 mm lower"),
    ("chin_projection", "chin 3 mm forward"),
    ("chin_width", "chin 12% wider"),
    ("nose_projection", "nose tip 3 mm forward"),
    ("nose_width", "nostrils 15% wider"),
    ("nose_bridge", "bridge 2 mm higher"),
    ("nose_tip_tilt", "nose tip 2.5 mm up"),
    ("cheekbones", "cheekbones 2 mm more prominent"),
    ("cheek_fullness", "lower cheeks 3 mm fuller"),
    ("brow_ridge", "brow ridge 1.8 mm more prominent"),
    ("forehead_slope", "upper forehead 5 mm further back"),
    ("eye_spacing", "eyes 2.2 mm further apart each"),
    ("eye_height", "eyes 2 mm higher"),
    ("mouth_width", "mouth 10% wider"),
    ("lip_fullness", "lips 1.5 mm fuller"),
    ("ear_size", "ears 12% larger"),
    ("ear_protrusion", "ears 4 mm further out at the back"),
    ("neck_thickness", "neck 8% thicker"),
    ("overall_size", "everything 3.5% larger"),
    ("midface_projection", "midface 3 mm forward"),
    ("mouth_height", "mouth 2 mm higher"),
)
"""Built-in shape components in order: name and the displacement of a +1 coefficient (about one s.d.)."""

EXPRESSION_COMPONENTS = (
    ("smile", "mouth corners 4.5 mm up, 4 mm out, 3 mm back; cheeks raised 2 mm"),
    ("mouth_stretch", "mouth corners 4.5 mm outwards"),
    ("pucker", "lips 4.5 mm forward and narrower"),
    ("brow_raise", "brows and lower forehead 3.5 mm up"),
    ("brow_frown", "inner brows 2.5 mm down and together"),
    ("blink_left", "left upper lid half-way closed (2 closes it, -1 opens wide)"),
    ("blink_right", "right upper lid half-way closed"),
    ("cheek_puff", "lower cheeks 4 mm out"),
    ("lips_part", "lips 5 mm apart without moving the jaw"),
    ("frown", "mouth corners 3 mm down"),
    ("smile_left", "left mouth corner up and out"),
    ("smile_right", "right mouth corner up and out"),
    ("sneer", "nose wings and upper lip 2 mm up"),
    ("squint", "lower lids up a third of the opening, cheeks raised"),
    ("mouth_left", "mouth 4 mm towards the subject's left"),
    ("lips_press", "lips 2.5 mm pressed inwards"),
)
"""Built-in expression components in order: name and the motion of a +1 coefficient (moderate)."""


def _shape_basis(g: _Geometry) -> Array:
    V, parts = g.vertices, g.parts
    anchor = V.copy()  # eyeballs move rigidly with their centre
    for part, side in (("eyeball_l", 1.0), ("eyeball_r", -1.0)):
        anchor[parts == part] = EYE_CENTER * np.array([side, 1, 1])
    p = anchor
    pm = S.mirror_x(p)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    sx = np.sign(x)
    skin = (parts == "skin").astype(float)
    nrm = _vertex_normals(V, g.faces) * skin[:, None]
    zero = np.zeros_like(x)
    vec = lambda dx=zero, dy=zero, dz=zero: np.stack([dx + zero, dy + zero, dz + zero], -1)
    chin = _gauss(p, (0.0, -0.094, 0.085), (0.022, 0.016, 0.02))
    tip = _gauss(p, (0.0, -0.012, 0.12), (0.014, 0.016, 0.014)) * _smooth((z - 0.092) / 0.012)
    eye = _gauss(pm, EYE_CENTER, (0.02, 0.016, 0.025))
    mouth = _gauss(p, (0.0, -0.056, 0.09), (0.03, 0.014, 0.03))
    lips = _gauss(_bent(p, 24.0), (0.0, -0.055, 0.1), (0.024, 0.012, 0.012)) * skin
    ear_mask = _gauss(pm, (0.08, 0.01, -0.015), (0.014, 0.036, 0.024)) * _smooth((np.abs(x) - 0.064) / 0.008)
    ear_root = np.stack([sx * 0.072, np.full_like(x, 0.01), np.full_like(x, -0.014)], -1)
    lower_face = _smooth((0.02 - y) / 0.08) * _smooth(z / 0.04) * (1 - _smooth((-0.105 - y) / 0.05))
    fields = {
        "head_width": vec(dx=0.045 * x),
        "head_depth": vec(dz=0.045 * (z - 0.03) * _smooth((0.03 - z) / 0.05)),
        "head_height": vec(dy=0.05 * (y - 0.02) * _smooth((y - 0.02) / 0.05)),
        "face_length": vec(dy=-0.005 * lower_face),
        "jaw_width": vec(dx=0.004 * sx * _gauss(p, (0.0, -0.065, 0.005), (1.0, 0.022, 0.04))
                         * _smooth((np.abs(x) - 0.01) / 0.03)),
        "chin_length": vec(dy=-0.003 * chin),
        "chin_projection": vec(dz=0.003 * chin),
        "chin_width": vec(dx=0.12 * x * chin),
        "nose_projection": vec(dz=0.003 * tip),
        "nose_width": vec(dx=0.15 * x * _gauss(p, (0.0, -0.022, 0.105), (0.02, 0.012, 0.02))),
        "nose_bridge": vec(dz=0.002 * _gauss(p, (0.0, 0.018, 0.104), (0.008, 0.018, 0.015))
                           * _smooth((z - 0.088) / 0.01)),
        "nose_tip_tilt": vec(dy=0.0025 * tip),
        "cheekbones": 0.002 * nrm * _gauss(pm, (0.05, 0.006, 0.062), (0.015, 0.013, 0.018))[:, None],
        "cheek_fullness": 0.003 * nrm * _gauss(pm, (0.038, -0.035, 0.06), (0.018, 0.02, 0.02))[:, None],
        "brow_ridge": 0.0018 * nrm * _gauss(pm, (0.03, 0.05, 0.09), (0.022, 0.008, 0.012))[:, None],
        "forehead_slope": vec(dz=-0.005 * _smooth((y - 0.05) / 0.05) * _smooth((z - 0.03) / 0.04)),
        "eye_spacing": vec(dx=0.0022 * sx * eye),
        "eye_height": vec(dy=0.002 * eye),
        "mouth_width": vec(dx=0.1 * x * mouth),
        "lip_fullness": 0.0015 * nrm * lips[:, None],
        "ear_size": 0.12 * (p - ear_root) * ear_mask[:, None],
        "ear_protrusion": vec(dx=0.004 * sx * ear_mask * _smooth((-0.005 - z) / 0.02)),
        "neck_thickness": np.stack([0.08 * x, zero, 0.08 * (z + 0.014)], -1) * _smooth((-0.1 - y) / 0.04)[:, None],
        "overall_size": 0.035 * p,
        "midface_projection": vec(dz=0.003 * _gauss(p, (0.0, -0.02, 0.09), (0.04, 0.03, 0.04))),
        "mouth_height": vec(dy=0.002 * _gauss(p, (0.0, -0.058, 0.08), (0.03, 0.018, 0.04))),
    }
    return np.stack([fields[name] for name, _ in SHAPE_COMPONENTS], axis=-1)


def _expression_basis(g: _Geometry) -> Array:
    V, parts = g.vertices, g.parts
    p = V
    pm = S.mirror_x(p)
    x = p[:, 0]
    sx = np.sign(x)
    soft = np.isin(parts, ["skin", "mouth_bag", "socket_l", "socket_r"]).astype(float)  # teeth, eyes stay
    skin = (parts == "skin").astype(float)
    nrm = _vertex_normals(V, g.faces) * skin[:, None]
    zero = np.zeros_like(x)
    vec = lambda dx=zero, dy=zero, dz=zero: np.stack([dx + zero, dy + zero, dz + zero], -1) * soft[:, None]
    corner = {s: _bump(p, (s * MOUTH_CORNER[0], MOUTH_CORNER[1], MOUTH_CORNER[2]), (0.011, 0.011, 0.012))
              for s in (1.0, -1.0)}
    cheek = {s: _bump(p, (s * 0.035, -0.02, 0.07), (0.016, 0.016, 0.016)) for s in (1.0, -1.0)}
    lower_lid = (g.eye_side < 0) * g.rim_weight
    span = np.clip(1 - (x / 0.026) ** 2, 0, 1)  # zero at the mouth corners: both lips meet there
    lips = _bump(_bent(p, 24.0), (0.0, -0.055, 0.1), (0.022, 0.014, 0.014))

    def smile_side(s: float) -> Array:
        return (vec(dx=s * 0.0042 * corner[s], dy=0.0045 * corner[s], dz=-0.003 * corner[s])
                + vec(dy=0.0022 * cheek[s], dz=0.0014 * cheek[s]) + vec(dy=0.0006 * lower_lid * (sx == s)))

    def lid(eye: str, side: float, fraction: float) -> Array:
        """Rotate one eyelid about its eye's horizontal axis by ``fraction`` of its opening."""
        slit = g.slits[eye]
        center = EYE_CENTER * np.array([1.0 if eye == "eye_l" else -1.0, 1, 1])
        beta = lambda v: np.arctan2(V[v, 1] - center[1], V[v, 2] - center[2])
        opening = {j: beta(g.grid_id(slit.row, j)) - beta(slit.lower_ids[j]) for j in slit.interior()}
        sel = (g.eye_side == side) & (np.sign(x) == np.sign(center[0])) & (g.rim_weight > 0)
        out = np.zeros_like(V)
        idx = np.flatnonzero(sel)
        # each vertex turns with its column (pocket vertices with the edge vertex they hang from)
        col = np.array([_column_of(g, v) for v in idx])
        amount = np.array([opening.get(int(c), 0.0) for c in col]) * g.rim_weight[idx]
        out[idx] = _rotate_about_x(V[idx], center, side * fraction * amount)
        return out

    fields = {
        "smile": smile_side(1.0) + smile_side(-1.0),
        "mouth_stretch": sum(vec(dx=s * 0.0045 * corner[s], dy=-0.0008 * corner[s], dz=-0.001 * corner[s])
                             for s in (1.0, -1.0)),
        "pucker": vec(dx=-0.25 * x * lips, dz=0.0045 * lips),
        "brow_raise": vec(dy=0.0035 * _bump(pm, (0.03, 0.05, 0.088), (0.03, 0.016, 0.03))
                          + 0.0008 * (g.eye_side > 0) * g.rim_weight),
        "brow_frown": vec(dx=-0.0022 * sx * _bump(pm, (0.015, 0.047, 0.094), (0.013, 0.01, 0.02)),
                          dy=-0.0025 * _bump(pm, (0.015, 0.047, 0.094), (0.013, 0.01, 0.02))),
        "blink_left": lid("eye_l", 1.0, 0.46) + lid("eye_l", -1.0, 0.04),
        "blink_right": lid("eye_r", 1.0, 0.46) + lid("eye_r", -1.0, 0.04),
        "cheek_puff": 0.004 * nrm * _bump(pm, (0.04, -0.045, 0.065), (0.016, 0.018, 0.016))[:, None],
        "lips_part": vec(dy=span * g.rim_weight * np.where(g.mouth_side > 0, 0.0022, np.where(g.mouth_side < 0,
                                                                                             -0.0030, 0.0))),
        "frown": sum(vec(dx=s * 0.001 * corner[s], dy=-0.003 * corner[s], dz=-0.0005 * corner[s])
                     for s in (1.0, -1.0)),
        "smile_left": smile_side(1.0),
        "smile_right": smile_side(-1.0),
        "sneer": vec(dy=0.002 * _bump(pm, (0.012, -0.015, 0.1), (0.008, 0.012, 0.012))
                     + 0.0012 * span * (g.mouth_side > 0) * g.rim_weight),
        "squint": lid("eye_l", -1.0, 0.33) + lid("eye_r", -1.0, 0.33)
        + vec(dy=0.0012 * (cheek[1.0] + cheek[-1.0])),
        "mouth_left": vec(dx=0.004 * _bump(p, (0.0, MOUTH_Y, 0.088), (0.03, 0.014, 0.025))),
        "lips_press": vec(dz=-0.0025 * lips),
    }
    return np.stack([fields[name] for name, _ in EXPRESSION_COMPONENTS], axis=-1)


def _column_of(g: _Geometry, v: int) -> int:
    """Grid column of a skin vertex or of the slit-edge vertex a pocket vertex hangs from (-1 if none)."""
    if g.anchors[v] >= 0:
        v = int(g.anchors[v])
    R, C = g.grid_shape
    if 1 <= v < 1 + R * C:
        return (v - 1) % C
    for slit in g.slits.values():
        for j, lid_v in slit.lower_ids.items():
            if lid_v == v:
                return j
    return -1

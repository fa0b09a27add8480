"""The built-in procedural head (``builtin-v1``): a FLAME-like head model generated in code, no asset files.

Geometry. The skin is a closed surface sculpted as a smooth signed-distance field (skull, face, jaw, chin, neck,
nose, lips, brow ridge, cheekbones, orbits, eyelids, ears; :func:`_skin_sdf`) and meshed by casting rays from a
point inside the head along a latitude-longitude grid (denser over the face and ears), so the skin is one grid,
closed by a fan at the crown and a flat disc under the neck. Three slits cut the grid along a row: the mouth and the
two eye openings. A slit duplicates its row between its two corner vertices, so the upper and lower edges (lips,
eyelid margins) are distinct vertices and jaw opening or blinking really opens them. Each slit's edge loop is
closed by a pocket: the mouth cavity (a bag reaching back towards the throat) and two eye sockets hugging the
eyeballs. Separate closed meshes: two eyeballs (front pole on the gaze axis), upper and lower teeth, a tongue.

Rig. FLAME's joints and tree (root -> neck -> jaw, left eye, right eye), joints regressed from vertices (averages of
skin vertices around each joint, exact eyeball centres). Skinning weights are harmonic (Laplace-smooth over the
mesh, respecting the slits) between constraint regions: the lower lip and chin follow the jaw, the upper lip and
everything above the cheekbones the neck (the head), the lower neck the root; eyeballs are rigid to their eye joints,
upper teeth to the neck and lower teeth and tongue to the jaw (GaussianAvatars' convention). No pose correctives.

Bases. Shape and expression blendshapes are smooth displacement fields of the template (masks around anatomical
landmarks); the slits' sides are known, so lip and eyelid fields move each side separately. Units: every shape
component is scaled so that a coefficient of 1 is about one standard deviation of adult variation (a few mm;
see ``SHAPE_COMPONENTS``), so coefficients drawn from N(0, I) give plausible heads and +-3 stays human. An expression
coefficient of 1 is a moderate expression, 2 a strong one (blink 2 closes the eye, smile 2 is a broad smile);
beyond +-3 meshes self-intersect. Eyeballs only translate under the shape fields (they stay spheres).

Everything is deterministic (fixed formulas, no random numbers) and cached per process; building takes a few tenths
of a second.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from avp.head import _sdf as S
from avp.head.model import FLAME_PARENTS, JOINT_NAMES, HeadAssets

__all__ = ["BUILTIN_NAME", "EXPRESSION_COMPONENTS", "SHAPE_COMPONENTS", "builtin_assets"]

BUILTIN_NAME = "builtin-v1"
Array = np.ndarray

# ----------------------------------------------------------------------------------------------------------------
# design constants (metres; FLAME's frame: x to the subject's left, y up, z out of the face)

RAY_ORIGIN = np.array([0.0, 0.012, 0.005])
RAY_REACH = 0.34
NECK_ORIGIN = np.array([0.0, -0.175, -0.014])
NECK_RAYS = (np.deg2rad(132.0), np.deg2rad(170.0), np.deg2rad(115.0))
"""Below the chin (row angles 132..170 deg) rays start lower and lower on the neck's axis and turn towards the
horizontal (down to 115 deg), so the neck gets rows along its whole length (seen from the head's centre it hides
behind the chin); the last rows (170..180) fan from the neck's axis over the cut under the neck."""
EYE_CENTER = np.array([0.0315, 0.028, 0.071])  # left eye (+x); the right one is mirrored
EYE_RADIUS = 0.0122
RIM_RADIUS = EYE_RADIUS + 0.0006  # eyelid margins and sockets sit just outside the eyeball
LID_RADIUS = EYE_RADIUS + 0.0022
MOUTH_Y = -0.0548
MOUTH_CORNER = np.array([0.0245, -0.0552, 0.0905])
NECK_BOTTOM = -0.20
N_COLUMNS = 92  # even: columns at 0 (front) and pi (back), the rest in mirrored pairs
# row spacing: (end angle in degrees, rows up to and including it), from the crown (0) to under the neck (180)
ROW_SEGMENTS = ((48.0, 3), (66.0, 4), ("eye", 6), (96.0, 5), ("mouth", 12), (146.0, 8), (170.0, 10), (180.0, 2))


def _direction(theta: Array, phi: Array) -> Array:
    """Unit vector at polar angle ``theta`` from +y and azimuth ``phi`` from +z towards +x."""
    st = np.sin(theta)
    return np.stack([st * np.sin(phi), np.cos(theta), st * np.cos(phi)], axis=-1)


def _rays(theta: Array, phi: Array) -> tuple[Array, Array]:
    """Origin and direction of the ray of grid angles ``(theta, phi)`` (see ``NECK_RAYS``)."""
    theta = np.asarray(theta, float)
    start, end, flat = NECK_RAYS
    u = np.clip((theta - start) / (end - start), 0.0, 1.0)
    cap = np.clip((theta - end) / (np.pi - end), 0.0, 1.0)
    polar = np.where(theta <= start, theta, np.where(theta <= end, start + (flat - start) * u,
                                                      flat + (np.pi - flat) * cap))
    origin = RAY_ORIGIN + u[..., None] * (NECK_ORIGIN - RAY_ORIGIN)
    return origin, _direction(polar, phi)


def _angles(p: Array) -> tuple[Array, Array]:
    """Inverse of :func:`_direction` for points seen from the ray origin."""
    d = p - RAY_ORIGIN
    theta = np.arccos(np.clip(d[..., 1] / np.linalg.norm(d, axis=-1), -1, 1))
    return theta, np.arctan2(d[..., 0], d[..., 2])


# ----------------------------------------------------------------------------------------------------------------
# the skin as a signed-distance field

def _bent(p: Array, curvature: float) -> Array:
    """Straighten the dental arch: ``z += curvature * x^2`` (lips are modelled straight in bent space)."""
    q = p.copy()
    q[..., 2] = p[..., 2] + curvature * p[..., 0] ** 2
    return q


def _ear(p: Array) -> Array:
    """Left ear in head coordinates (mirrored by the caller): shell, rim, concha hollow, lobe."""
    e = p - np.array([0.0745, 0.010, -0.014])
    a = np.deg2rad(-20.0)  # the ear plane turns to face forward-outward
    ex = e[..., 0] * np.cos(a) - e[..., 2] * np.sin(a)
    ez = e[..., 0] * np.sin(a) + e[..., 2] * np.cos(a)
    local = np.stack([ex, e[..., 1], ez], axis=-1)
    shell = S.ellipsoid(local, (0.006, 0.003, -0.002), (0.0085, 0.031, 0.0185))
    rim = S.ellipsoid(local, (0.0105, 0.005, -0.004), (0.0048, 0.0285, 0.0165))
    ear = S.smin(shell, rim, 0.004)
    ear = S.smax(ear, -S.ellipsoid(local, (0.0155, 0.0, 0.002), (0.0062, 0.012, 0.0085)), 0.003)
    lobe = S.ellipsoid(local, (0.007, -0.0245, -0.001), (0.0052, 0.0092, 0.0082))
    return S.smin(ear, lobe, 0.004)


def _skin_base(p: Array) -> Array:
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    pm = S.mirror_x(p)
    d = S.ellipsoid(p, (0.0, 0.032, -0.006), (0.0775, 0.092, 0.099))  # cranium
    d = S.smin(d, S.ellipsoid(p, (0.0, -0.004, 0.028), (0.058, 0.062, 0.066)), 0.03)  # midface
    d = S.smin(d, S.ellipsoid(p, (0.0, -0.057, 0.048), (0.038, 0.038, 0.05)), 0.022)  # lower face
    jaw = S.smin(S.capsule(pm, (0.05, -0.06, -0.004), (0.016, -0.095, 0.073), 0.008),
                 S.capsule(pm, (0.05, -0.06, -0.004), (0.056, -0.004, -0.004), 0.0105), 0.01)
    d = S.smin(d, jaw, 0.018)
    neck = (np.sqrt((x / 0.054) ** 2 + ((z + 0.014) / 0.050) ** 2) - 1.0) * 0.050
    d = S.smin(d, np.maximum(neck, y), 0.035)
    return np.maximum(d, NECK_BOTTOM - y)


def _skin_sdf() -> S.Sculpt:
    F = S.Feature
    bent_lip = lambda c, r: (lambda q: S.ellipsoid(_bent(q, 24.0), c, r))
    features = [
        F(lambda q: S.ellipsoid(q, (0.0, -0.09, 0.083), (0.019, 0.0135, 0.0145)), (0.0, -0.09, 0.083), 0.03, 0.014),
        F(lambda q: S.ellipsoid(q, (0.051, 0.006, 0.062), (0.018, 0.012, 0.02)), (0.051, 0.006, 0.062), 0.024, 0.016,
          mirrored=True),
        F(lambda q: S.ellipsoid(q, (0.036, -0.012, 0.07), (0.018, 0.018, 0.017)), (0.036, -0.012, 0.07), 0.024,
          0.016, mirrored=True),
        F(lambda q: S.smin(S.capsule(q, (0.006, 0.046, 0.094), (0.03, 0.049, 0.091), 0.006),
                           S.capsule(q, (0.03, 0.049, 0.091), (0.05, 0.045, 0.076), 0.0052), 0.01),
          (0.028, 0.047, 0.088), 0.034, 0.012, mirrored=True),
        F(lambda q: S.ellipsoid(q, (0.032, 0.029, 0.092), (0.02, 0.015, 0.016)), (0.032, 0.029, 0.092), 0.024, 0.01,
          subtract=True, mirrored=True),
        F(lambda q: S.sphere(q, EYE_CENTER, LID_RADIUS), tuple(EYE_CENTER), LID_RADIUS + 0.001, 0.005, mirrored=True),
        F(lambda q: S.ellipsoid(q, (0.0, -0.047, 0.08), (0.034, 0.029, 0.02)), (0.0, -0.047, 0.08), 0.04, 0.012),
        F(lambda q: S.smin(bent_lip((0.0, -0.0478, 0.1003), (0.0255, 0.0068, 0.0096))(q),
                           bent_lip((0.0, -0.0620, 0.0978), (0.0232, 0.0078, 0.0096))(q), 0.0015),
          (0.0, -0.055, 0.09), 0.04, 0.004),
        F(lambda q: S.ellipsoid(q, (0.0, -0.0775, 0.104), (0.018, 0.0045, 0.008)), (0.0, -0.0775, 0.104), 0.02, 0.006,
          subtract=True),
        F(lambda q: S.smin(
            S.smin(S.round_cone(q, (0.0, 0.035, 0.095), (0.0, -0.008, 0.1165), 0.0064, 0.0084),
                   S.ellipsoid(q, (0.0, -0.0135, 0.1155), (0.0112, 0.0098, 0.0098)), 0.006),
            S.smin(S.ellipsoid(S.mirror_x(q), (0.0128, -0.0225, 0.1025), (0.0080, 0.0076, 0.0088)),
                   S.ellipsoid(q, (0.0, -0.0245, 0.110), (0.007, 0.005, 0.010)), 0.004), 0.005),
          (0.0, 0.005, 0.108), 0.045, 0.006),
        F(lambda q: S.ellipsoid(q, (0.0068, -0.0277, 0.1095), (0.0034, 0.0022, 0.0055)), (0.0068, -0.0277, 0.1095),
          0.007, 0.002, subtract=True, mirrored=True),
        F(_ear, (0.08, 0.008, -0.014), 0.042, 0.004, mirrored=True),
    ]
    return S.Sculpt(_skin_base, features)


# ----------------------------------------------------------------------------------------------------------------
# the latitude-longitude grid

def _rows() -> tuple[Array, int, int]:
    """Row polar angles (poles excluded) and the indices of the eye and mouth slit rows."""
    theta_eye = _angles(np.array([EYE_CENTER[0], EYE_CENTER[1] - 0.0018, EYE_CENTER[2] + RIM_RADIUS]))[0]
    theta_mouth = _angles(np.array([0.0, MOUTH_Y, 0.1075]))[0]
    ends = {"eye": float(theta_eye), "mouth": float(theta_mouth)}
    rows: list[float] = []
    start = 0.0
    marks: dict[str, int] = {}
    for end, count in ROW_SEGMENTS:
        stop = ends[end] if isinstance(end, str) else np.deg2rad(end)
        rows += list(np.linspace(start, stop, count + 1)[1:])
        if isinstance(end, str):
            marks[end] = len(rows) - 1
        start = stop
    rows = rows[:-1]  # the last one is the bottom pole
    return np.asarray(rows), marks["eye"], marks["mouth"]


def _columns(n: int = N_COLUMNS) -> Array:
    """Azimuths in increasing order over (-pi, pi], mirror-symmetric, denser over the face and the ears."""
    grid = np.linspace(0.0, np.pi, 2001)
    deg = np.rad2deg(grid)
    step = lambda t, e0, e1: np.clip((t - e0) / (e1 - e0), 0, 1) ** 2 * (3 - 2 * np.clip((t - e0) / (e1 - e0), 0, 1))
    density = (1.0 + 2.0 * (1 - step(deg, 42.0, 58.0)) + 1.6 * (1 - step(deg, 18.0, 30.0))
               + 1.2 * step(deg, 66.0, 78.0) * (1 - step(deg, 108.0, 122.0)))
    cum = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    half = np.interp(np.linspace(0, cum[-1], n // 2 + 1), cum, grid)  # 0 .. pi
    return np.concatenate([-half[1:-1][::-1], half[:-1], [np.pi]])


@dataclass
class _Slit:
    """A cut along grid row ``row`` between corner columns ``j0 < j1`` (the corners stay shared)."""

    name: str
    row: int
    j0: int
    j1: int
    lower_ids: dict[int, int] = field(default_factory=dict)
    """Column -> vertex id of the lower-edge copy (the grid vertex itself is the upper edge)."""

    def interior(self) -> range:
        return range(self.j0 + 1, self.j1)

    def loop(self, grid_id) -> list[int]:
        """Vertex ids around the opening: upper edge left to right, then lower edge right to left."""
        upper = [grid_id(self.row, j) for j in range(self.j0, self.j1 + 1)]
        lower = [self.lower_ids[j] for j in range(self.j1 - 1, self.j0, -1)]
        return upper + lower


def _theta_at_height(sdf: S.Sculpt, phi: Array, y_target: Array, theta0: float, iterations: int = 6) -> Array:
    """Polar angle at which each column's ray meets the skin at height ``y_target`` (secant iterations)."""
    height = lambda t: (RAY_ORIGIN[1] + _direction(t, phi)[:, 1]
                        * S.raycast(sdf, np.broadcast_to(RAY_ORIGIN, (len(phi), 3)), _direction(t, phi), RAY_REACH))
    t0, t1 = np.full(len(phi), theta0), np.full(len(phi), theta0 + 0.01)
    y0, y1 = height(t0) - y_target, height(t1) - y_target
    for _ in range(iterations):
        dt = t1 - t0
        ok = (np.abs(y1 - y0) > 1e-12) & (np.abs(dt) > 1e-12)
        slope = np.where(ok, (y1 - y0) / np.where(ok, dt, 1.0), -0.1)
        t0, y0 = t1, y1
        t1 = t1 - y1 / slope
        y1 = height(t1) - y_target
    return t1


def _nearest(values: Array, target: float) -> int:
    return int(np.argmin(np.abs(values - target)))


class _Mesh:
    """Vertex and face accumulator with per-vertex part labels."""

    def __init__(self) -> None:
        self.vertices: list[Array] = []
        self.parts: list[Array] = []
        self.faces: list[Array] = []
        self.face_parts: list[Array] = []
        self.anchors: list[Array] = []
        self.rings: list[Array] = []
        self.count = 0

    def add_vertices(self, positions: Array, part: str, anchors: Array | list[int] | None = None,
                     ring: int = -1) -> Array:
        """Append vertices; pocket vertices record the slit-edge vertex they descend from and their ring."""
        ids = np.arange(self.count, self.count + len(positions))
        self.vertices.append(np.asarray(positions, float))
        self.parts.append(np.full(len(positions), part, dtype=object))
        self.anchors.append(np.full(len(positions), -1) if anchors is None else np.asarray(anchors))
        self.rings.append(np.full(len(positions), ring))
        self.count += len(positions)
        return ids

    def add_faces(self, faces: Array, part: str) -> None:
        faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        self.faces.append(faces)
        self.face_parts.append(np.full(len(faces), part, dtype=object))

    def arrays(self) -> tuple[Array, Array, Array, Array, Array, Array]:
        return (np.concatenate(self.vertices), np.concatenate(self.faces), np.concatenate(self.parts),
                np.concatenate(self.face_parts), np.concatenate(self.anchors), np.concatenate(self.rings))


def _band(ring_a: list[int] | Array, ring_b: list[int] | Array, closed: bool = True) -> Array:
    """Quads between two parallel vertex rings, as triangles (``a`` then ``b`` winding as in the grid)."""
    a, b = np.asarray(ring_a), np.asarray(ring_b)
    n = len(a)
    idx = np.arange(n if closed else n - 1)
    nxt = (idx + 1) % n
    return np.concatenate([np.stack([a[idx], b[idx], a[nxt]], -1), np.stack([a[nxt], b[idx], b[nxt]], -1)])


def _fan(ring: list[int] | Array, center: int, closed: bool = True) -> Array:
    r = np.asarray(ring)
    idx = np.arange(len(r) if closed else len(r) - 1)
    return np.stack([r[idx], np.full(len(idx), center), r[(idx + 1) % len(r)]], -1)


# ----------------------------------------------------------------------------------------------------------------
# building the geometry

@dataclass
class _Geometry:
    vertices: Array
    faces: Array
    parts: Array
    """``[V]`` part of every vertex: skin, mouth_bag, socket_l/r, eyeball_l/r, upper_teeth, lower_teeth, tongue."""
    face_parts: Array
    mouth_side: Array
    """``[V]`` +1 above the mouth slit (upper lip side), -1 below, 0 at the corners and away from the mouth."""
    eye_side: Array
    """``[V]`` +1 upper eyelid side / -1 lower of the nearest eye slit, 0 elsewhere."""
    rim_weight: Array
    """``[V]`` 1 on slit edges decaying to 0 two rows away (lid and lip fields)."""
    grid_shape: tuple[int, int]
    slits: dict[str, _Slit]
    anchors: Array
    """``[V]`` pocket vertices: the slit-edge vertex they descend from (-1 elsewhere)."""
    rings: Array
    """``[V]`` pocket vertices: ring index from the slit edge inwards (-1 elsewhere)."""
    grid_id: object
    """``(row, column) -> vertex id`` of the skin grid."""
    phi: Array
    theta: Array


def _build_geometry() -> _Geometry:
    sdf = _skin_sdf()
    theta_rows, r_eye, r_mouth = _rows()
    phi = _columns()
    R, C = len(theta_rows), len(phi)
    j_front = int(np.flatnonzero(phi == 0.0)[0])
    mirror_col = lambda j: 2 * j_front - j

    corner_phi = _angles(MOUTH_CORNER)[1]
    mouth = _Slit("mouth", r_mouth, _nearest(phi, -corner_phi), _nearest(phi, corner_phi))
    medial = _angles(np.array([EYE_CENTER[0] - 0.0142, EYE_CENTER[1] - 0.0008, EYE_CENTER[2] + 0.0075]))[1]
    lateral = _angles(np.array([EYE_CENTER[0] + 0.0135, EYE_CENTER[1] + 0.0012, EYE_CENTER[2] + 0.002]))[1]
    jl0, jl1 = _nearest(phi, medial), _nearest(phi, lateral)
    eye_l = _Slit("eye_l", r_eye, jl0, jl1)
    eye_r = _Slit("eye_r", r_eye, mirror_col(jl1), mirror_col(jl0))

    # --- parameter-space warp: per (row, column) offsets of the polar angle
    rows_t = np.broadcast_to(theta_rows[:, None], (R, C)).copy()
    upper_t = {}  # slit row, upper copies: theta
    lower_t = {}  # slit row, lower copies

    # mouth: put the slit row on the line where the lips meet (nearly level), both edges on it (closed at rest)
    js = np.arange(mouth.j0, mouth.j1 + 1)
    target_y = MOUTH_Y - 0.0004 * (np.sin(phi[js]) / np.sin(phi[mouth.j1])) ** 2
    lip_line = _theta_at_height(sdf, phi[js], target_y, theta_rows[r_mouth]) - theta_rows[r_mouth]
    lip_line = (lip_line + lip_line[::-1]) / 2  # exact mirror symmetry
    shift = np.zeros(C)
    shift[js] = lip_line
    for k in range(1, 4):  # taper beyond the corners
        shift[mouth.j0 - k] = shift[mouth.j1 + k] = lip_line[0] * (1 - k / 4)
    fall = lambda u: np.clip(1 - np.abs(u), 0, 1) ** 2
    L_mouth = np.deg2rad(9.0)
    rows_t += shift[None, :] * fall((theta_rows[:, None] - theta_rows[r_mouth]) / L_mouth)
    for j in mouth.interior():
        upper_t[("mouth", j)] = lower_t[("mouth", j)] = rows_t[r_mouth, j]

    # eyes: open an almond around the slit row (upper lid higher and peaking medially, lower lid peaking laterally)
    L_eye = np.deg2rad(10.0)
    for slit, sign in ((eye_l, 1), (eye_r, -1)):
        cols = np.arange(slit.j0, slit.j1 + 1)
        u = (np.abs(phi[cols]) - np.abs(phi[cols[0] if sign > 0 else cols[-1]]))
        u = u / (np.abs(phi[cols[-1] if sign > 0 else cols[0]]) - np.abs(phi[cols[0] if sign > 0 else cols[-1]]))
        tilt = np.deg2rad(-1.1) * u  # the lateral corner sits higher
        h_up = np.deg2rad(4.6) * np.sin(np.pi * u ** 0.85) ** 0.75
        h_lo = np.deg2rad(2.9) * np.sin(np.pi * u ** 1.15) ** 0.85
        for i, j in enumerate(cols):
            dt = theta_rows[:, None] - theta_rows[r_eye]
            rows_t[:, j] += tilt[i] * fall(dt[:, 0] / L_eye)
            above = dt[:, 0] < 0
            rows_t[above, j] -= h_up[i] * fall(dt[above, 0] / L_eye)
            below = dt[:, 0] > 0
            rows_t[below, j] += h_lo[i] * fall(dt[below, 0] / L_eye)
            if slit.j0 < j < slit.j1:
                upper_t[(slit.name, j)] = theta_rows[r_eye] + tilt[i] - h_up[i]
                lower_t[(slit.name, j)] = theta_rows[r_eye] + tilt[i] + h_lo[i]
                rows_t[r_eye, j] = upper_t[(slit.name, j)]
    rows_t = (rows_t + rows_t[:, [mirror_col(j) for j in range(C)]]) / 2  # keep the warp exactly symmetric
    for key in list(upper_t):
        name, j = key
        m = (name if name == "mouth" else ("eye_r" if name == "eye_l" else "eye_l"), mirror_col(j))
        upper_t[key] = upper_t[m] = 0.5 * (upper_t[key] + upper_t[m])
        lower_t[key] = lower_t[m] = 0.5 * (lower_t[key] + lower_t[m])

    mesh = _Mesh()
    # --- skin vertices: crown pole, the grid, lower-edge copies, bottom pole
    slits = {s.name: s for s in (mouth, eye_l, eye_r)}
    copies = [(s, j) for s in slits.values() for j in s.interior()]
    theta_all = np.concatenate([[0.0], rows_t.ravel(), [lower_t[(s.name, j)] for s, j in copies], [np.pi]])
    phi_all = np.concatenate([[0.0], np.broadcast_to(phi[None, :], (R, C)).ravel(), [phi[j] for _, j in copies],
                              [0.0]])
    origins, dirs_all = _rays(theta_all, phi_all)
    reach = S.raycast(sdf, origins, dirs_all, RAY_REACH)
    pos = origins + dirs_all * reach[:, None]
    # eyelid margins: where the ray meets the eyeball's outer sphere, on the margin rather than the lid shell
    n_grid = 1 + R * C
    grid_id = lambda r, j: 1 + r * C + j
    for slit in (eye_l, eye_r):
        center = EYE_CENTER * np.array([1.0 if slit is eye_l else -1.0, 1, 1])
        for j in slit.interior():
            for vid, d in ((grid_id(slit.row, j), dirs_all[grid_id(slit.row, j)]),
                           (n_grid + copies.index((slit, j)), dirs_all[n_grid + copies.index((slit, j))])):
                hit = _ray_sphere_far(RAY_ORIGIN, d, center, RIM_RADIUS)
                if hit is not None:
                    pos[vid] = hit
    skin_ids = mesh.add_vertices(pos, "skin")
    top, bottom = int(skin_ids[0]), int(skin_ids[-1])
    for k, (slit, j) in enumerate(copies):
        slit.lower_ids[j] = n_grid + k

    # --- skin faces: quads between rows (a slit row's lower copies serve the quads below it), pole fans
    faces = [_fan([grid_id(0, j) for j in range(C)], top)[:, ::-1]]
    for r in range(R - 1):
        upper = np.array([grid_id(r, j) for j in range(C)])
        for slit in slits.values():
            if slit.row == r:
                for j in slit.interior():
                    upper[j] = slit.lower_ids[j]
        lower = np.array([grid_id(r + 1, j) for j in range(C)])
        faces.append(_grid_band(upper, lower, phi))
    faces.append(_fan([grid_id(R - 1, j) for j in range(C)], bottom))
    mesh.add_faces(np.concatenate(faces), "skin")

    # --- pockets closing the slits
    _mouth_bag(mesh, mouth.loop(grid_id), mouth)
    for slit in (eye_l, eye_r):
        side = 1.0 if slit is eye_l else -1.0
        _eye_socket(mesh, slit.loop(grid_id), EYE_CENTER * np.array([side, 1, 1]), slit.name)

    # --- separate meshes
    for side, part in ((1.0, "eyeball_l"), (-1.0, "eyeball_r")):
        _eyeball(mesh, EYE_CENTER * np.array([side, 1, 1]), part)
    _teeth(mesh)
    _tongue(mesh)

    V, Fc, parts, face_parts, anchors, rings = mesh.arrays()
    Fc = _orient_outwards(V, Fc, face_parts)
    mouth_side, eye_side, rim_weight = _side_labels(len(V), parts, anchors, rings, slits, grid_id, R)
    return _Geometry(V, Fc, parts, face_parts, mouth_side, eye_side, rim_weight, (R, C), slits, anchors, rings,
                     grid_id, phi, theta_rows)


def _grid_band(upper: Array, lower: Array, phi: Array) -> Array:
    """Triangles between two grid rows; diagonals mirror across the face's midline (symmetric topology)."""
    C = len(upper)
    tris = []
    for j in range(C):
        k = (j + 1) % C
        a, b, c, d = upper[j], upper[k], lower[j], lower[k]
        mid = 0.5 * (phi[j] + (phi[k] if k else phi[k] + 2 * np.pi))
        if np.sin(mid) >= 0:
            tris += [(a, c, d), (a, d, b)]
        else:
            tris += [(a, c, b), (b, c, d)]
    return np.asarray(tris)


def _ray_sphere_far(o: Array, d: Array, c: Array, r: float) -> Array | None:
    """Where the ray ``o + s d`` leaves the sphere (the side facing away from ``o``); None if it misses."""
    oc = o - c
    b = oc @ d
    disc = b * b - (oc @ oc - r * r)
    if disc <= 0:
        return None
    return o + d * (-b + np.sqrt(disc))


def _slerp_rings(mesh: _Mesh, loop: list[int], targets: Array, fractions: list[float], center: Array,
                 radius_to: Array | float, part: str) -> list[Array]:
    """Rings interpolated from a loop of existing vertices towards ``targets`` around ``center``."""
    V = np.concatenate(mesh.vertices)
    start = V[loop] - center
    r0 = np.linalg.norm(start, axis=1)
    u0 = start / r0[:, None]
    u1 = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    rings = []
    for f in fractions:
        omega = np.arccos(np.clip((u0 * u1).sum(1), -1, 1))
        so = np.where(omega > 1e-6, np.sin(omega), 1.0)
        w0 = np.where(omega > 1e-6, np.sin((1 - f) * omega) / so, 1 - f)
        w1 = np.where(omega > 1e-6, np.sin(f * omega) / so, f)
        u = w0[:, None] * u0 + w1[:, None] * u1
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        radius = (1 - f) * r0 + f * np.asarray(radius_to)
        rings.append(mesh.add_vertices(center + u * radius[:, None], part, anchors=loop, ring=len(rings)))
    return rings


def _eye_socket(mesh: _Mesh, loop: list[int], center: Array, name: str) -> None:
    """The conjunctival sac: from the eyelid margins back around the eyeball to a pole behind it."""
    part = "socket_l" if name == "eye_l" else "socket_r"
    back = np.tile([0.0, 0.0, -1.0], (len(loop), 1))
    rings = _slerp_rings(mesh, loop, back, [0.3, 0.6, 0.85], center, RIM_RADIUS, part)
    pole = mesh.add_vertices(center[None] + np.array([[0.0, 0.0, -RIM_RADIUS]]), part)[0]
    faces = [_band(loop, rings[0])]
    faces += [_band(rings[i], rings[i + 1]) for i in range(len(rings) - 1)]
    faces.append(_fan(rings[-1], int(pole)))
    mesh.add_faces(np.concatenate(faces), part)


MOUTH_CAVITY = (np.array([0.0, -0.0565, 0.057]), np.array([0.028, 0.0175, 0.042]))


def _mouth_bag(mesh: _Mesh, loop: list[int], slit: _Slit) -> None:
    """The mouth cavity: the lips roll inwards, then a bag lines an ellipsoid back to the throat."""
    V = np.concatenate(mesh.vertices)
    rim = V[loop]
    n_up = slit.j1 - slit.j0 + 1
    vertical = np.where(np.arange(len(loop)) < n_up, 1.0, -1.0)
    vertical[0] = vertical[n_up - 1] = 0.0
    center, radii = MOUTH_CAVITY
    # angle around the opening: the rim's x read as cos(alpha) on an ellipse, upper edge 0..pi, lower pi..2pi
    c = np.clip(rim[:, 0] / (np.abs(rim[:, 0]).max() * 1.0001), -1, 1)
    alpha = np.arctan2(vertical * np.sqrt(1 - c * c), c)
    rings = []
    roll = rim + np.stack([np.zeros(len(loop)), 0.0016 * vertical, np.full(len(loop), -0.0035)], -1)
    rings.append(mesh.add_vertices(roll, "mouth_bag", anchors=loop, ring=0))
    for beta in np.deg2rad([50.0, 82.0, 115.0, 148.0]):
        ring = center + radii * np.stack([np.sin(beta) * np.cos(alpha), np.sin(beta) * np.sin(alpha),
                                          np.full(len(loop), np.cos(beta))], -1)
        rings.append(mesh.add_vertices(ring, "mouth_bag", anchors=loop, ring=len(rings)))
    pole = mesh.add_vertices((center - np.array([0.0, 0.0, radii[2]]))[None], "mouth_bag")[0]
    faces = [_band(loop, rings[0])] + [_band(rings[i], rings[i + 1]) for i in range(len(rings) - 1)]
    faces.append(_fan(rings[-1], int(pole)))
    mesh.add_faces(np.concatenate(faces), "mouth_bag")


def _uv_sphere(center: Array, radii: Array, n_rings: int, n_segments: int, axis: str = "z") -> tuple[Array, Array]:
    """Closed latitude-longitude sphere with poles on ``axis`` (front pole first); vertices and faces (local ids)."""
    lat = np.pi * np.arange(1, n_rings + 1) / (n_rings + 1)
    lon = 2 * np.pi * np.arange(n_segments) / n_segments
    Lt, Ln = np.meshgrid(lat, lon, indexing="ij")
    a, b, c = np.cos(Lt), np.sin(Lt) * np.cos(Ln), np.sin(Lt) * np.sin(Ln)
    if axis == "z":
        unit = np.stack([b, c, a], -1)
    else:  # poles on y
        unit = np.stack([b, a, c], -1)
    pole_f = np.array([0.0, 0.0, 1.0]) if axis == "z" else np.array([0.0, 1.0, 0.0])
    verts = np.concatenate([pole_f[None], unit.reshape(-1, 3), -pole_f[None]]) * radii + center
    ring = lambda i: 1 + i * n_segments + np.arange(n_segments)
    faces = [_fan(ring(0), 0)[:, ::-1]]
    faces += [_band(ring(i), ring(i + 1)) for i in range(n_rings - 1)]
    faces.append(_fan(ring(n_rings - 1), len(verts) - 1))
    return verts, np.concatenate(faces)


EYEBALL_RINGS, EYEBALL_SEGMENTS = 11, 18  # rings every 15 degrees from the front pole: the 6th is the equator


def _eyeball(mesh: _Mesh, center: Array, part: str) -> None:
    verts, faces = _uv_sphere(center, np.full(3, EYE_RADIUS), EYEBALL_RINGS, EYEBALL_SEGMENTS)
    # a slightly bulging cornea over the iris
    front = (verts[:, 2] - center[2]) / EYE_RADIUS
    verts[:, 2] += 0.0007 * np.clip((front - 0.82) / 0.18, 0, 1) ** 0.5
    ids = mesh.add_vertices(verts, part)
    mesh.add_faces(faces + ids[0], part)


def _arch(z_front: float, depth: float, x: Array) -> Array:
    """The dental arch: a parabola through the incisors."""
    return z_front - depth * (x / 0.024) ** 2


def _teeth(mesh: _Mesh) -> None:
    """Upper and lower teeth: closed slabs swept along the dental arch."""
    x = np.linspace(-0.0235, 0.0235, 15)
    for part, y_edge, y_root, z_front in (("upper_teeth", -0.0561, -0.0462, 0.0965),
                                          ("lower_teeth", -0.0566, -0.0665, 0.0945)):
        zf = _arch(z_front, 0.016, x)
        zb = zf - 0.0065
        xb = x * 0.93
        rows = [np.stack([x, np.full_like(x, y_root), zf], -1), np.stack([x, np.full_like(x, y_edge), zf], -1),
                np.stack([xb, np.full_like(x, y_edge), zb], -1), np.stack([xb, np.full_like(x, y_root), zb], -1)]
        ids = [mesh.add_vertices(r, part) for r in rows]
        faces = [_band(ids[i], ids[(i + 1) % 4], closed=False) for i in range(4)]
        for end in (0, -1):
            q = [ids[0][end], ids[1][end], ids[2][end], ids[3][end]]
            cap = np.array([[q[0], q[1], q[2]], [q[0], q[2], q[3]]])
            faces.append(cap[:, ::-1] if end == 0 else cap)
        mesh.add_faces(np.concatenate(faces), part)


def _tongue(mesh: _Mesh) -> None:
    verts, faces = _uv_sphere(np.array([0.0, -0.0655, 0.061]), np.array([0.0195, 0.0062, 0.027]), 7, 12)
    ids = mesh.add_vertices(verts, "tongue")
    mesh.add_faces(faces + ids[0], "tongue")


def _orient_outwards(V: Array, F: Array, face_parts: Array) -> Array:
    """Make every closed part wind counter-clockwise seen from outside (positive signed volume)."""
    F = F.copy()
    for part in np.unique(face_parts):
        sel = face_parts == part
        tri = V[F[sel]]
        vol = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()
        if part in ("mouth_bag", "socket_l", "socket_r"):
            continue  # open pockets: oriented together with the skin below
        if vol < 0:
            F[sel] = F[sel][:, ::-1]
    return F


def _side_labels(n: int, parts: Array, anchors: Array, rings: Array, slits: dict[str, _Slit], grid_id,
                 R: int) -> tuple[Array, Array, Array]:
    """Which side of the mouth and eye slits every vertex lies on (by topology), and its closeness to the edge."""
    mouth_side = np.zeros(n)
    eye_side = np.zeros(n)
    rim_weight = np.zeros(n)
    decay = (1.0, 0.55, 0.2)
    for slit in slits.values():
        target = mouth_side if slit.name == "mouth" else eye_side
        for j in slit.interior():
            for k, w in enumerate(decay):
                if slit.row - k >= 0:
                    vid = grid_id(slit.row - k, j)
                    target[vid] = 1.0
                    rim_weight[vid] = max(rim_weight[vid], w)
                below = slit.lower_ids[j] if k == 0 else (grid_id(slit.row + k, j) if slit.row + k < R else None)
                if below is not None:
                    target[below] = -1.0
                    rim_weight[below] = max(rim_weight[below], w)
    pocket = anchors >= 0
    ring_decay = {"mouth_bag": (0.9, 0.6, 0.3, 0.1, 0.0), "socket_l": (0.6, 0.3, 0.1), "socket_r": (0.6, 0.3, 0.1)}
    for v in np.flatnonzero(pocket):
        a = anchors[v]
        if parts[v] == "mouth_bag":
            mouth_side[v] = mouth_side[a]
        else:
            eye_side[v] = eye_side[a]
        rim_weight[v] = rim_weight[a] * ring_decay[parts[v]][rings[v]]
    return mouth_side, eye_side, rim_weight


@functools.lru_cache(maxsize=1)
def _geometry() -> _Geometry:
    return _build_geometry()


# ----------------------------------------------------------------------------------------------------------------
# skinning

def _laplacian(n: int, faces: Array) -> scipy.sparse.csr_matrix:
    """Uniform graph Laplacian ``D - A`` of the mesh edges."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    A = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    A = (A + A.T).tocsr()
    A.data[:] = 1.0
    return (scipy.sparse.diags(np.asarray(A.sum(1)).ravel()) - A).tocsr()


def _harmonic(L: scipy.sparse.csr_matrix, fixed: Array, values: Array, solver=None) -> Array:
    """Solve ``L x = 0`` on the free vertices with ``x[fixed] = values``."""
    free = np.setdiff1d(np.arange(L.shape[0]), fixed)
    x = np.zeros(L.shape[0])
    x[fixed] = values
    rhs = -L[free][:, fixed] @ values
    x[free] = (solver or scipy.sparse.linalg.splu(L[free][:, free].tocsc())).solve(rhs)
    return x


def _skinning_weights(g: _Geometry) -> Array:
    """``[V, 5]`` weights over (root, neck, jaw, left eye, right eye)."""
    V, parts = g.vertices, g.parts
    x, y, z = V[:, 0], V[:, 1], V[:, 2]
    n = len(V)
    rigged = np.isin(parts, ["skin", "mouth_bag", "socket_l", "socket_r"])
    ids = np.flatnonzero(rigged)
    local = -np.ones(n, dtype=int)
    local[ids] = np.arange(len(ids))
    sub_faces = g.faces[np.all(rigged[g.faces], axis=1)]
    L = _laplacian(len(ids), local[sub_faces])
    skin = parts == "skin"
    bag = parts == "mouth_bag"
    sockets = np.isin(parts, ["socket_l", "socket_r"])

    # jaw: the lower lip, chin and lower half of the mouth follow it; the upper lip, upper face, nape, neck do not
    # the mandible's skin: below the line from under the mouth corners to under the jaw angles, above the chin's base
    mandible = skin & (g.mouth_side <= 0) & (z > 0.01) & (y < -0.062 - 0.016 * (0.09 - z) / 0.09) & (y > -0.102)
    jaw_one = (g.mouth_side < 0) | mandible
    upper_lip_and_nose = skin & (g.mouth_side >= 0) & (y > MOUTH_Y + 0.009) & (np.abs(x) < 0.03) & (z > 0.07)
    jaw_zero = ((g.mouth_side > 0) | sockets | upper_lip_and_nose | (skin & (y > -0.022)) | (skin & (z < -0.028))
                | (skin & (y < -0.142)))
    jaw_zero &= ~jaw_one
    # root: the lower neck; the head never
    root_one = skin & (y < -0.172)
    root_zero = (skin & (y > -0.125)) | bag | sockets | jaw_one
    fixed_jaw = np.flatnonzero((jaw_one | jaw_zero)[ids])
    fixed_root = np.flatnonzero((root_one | root_zero)[ids])
    jaw = _harmonic(L, fixed_jaw, jaw_one[ids][fixed_jaw].astype(float))
    root = _harmonic(L, fixed_root, root_one[ids][fixed_root].astype(float))
    jaw, root = np.clip(jaw, 0, 1), np.clip(root, 0, 1)
    jaw = np.minimum(jaw, 1 - root)

    W = np.zeros((n, 5))
    W[ids, 0] = root
    W[ids, 2] = jaw
    W[ids, 1] = 1 - root - jaw
    W[parts == "eyeball_l", 3] = 1.0
    W[parts == "eyeball_r", 4] = 1.0
    W[parts == "upper_teeth", 1] = 1.0  # GaussianAvatars: upper teeth move with the neck (the skull)
    W[np.isin(parts, ["lower_teeth", "tongue"]), 2] = 1.0
    return W


def _joint_regressor(g: _Geometry) -> Array:
    """``[5, V]``: root, neck and jaw average skin vertices on both sides of the head around the joint; each eye the
    equator of its eyeball (whose mean is exactly the eyeball centre)."""
    V, parts = g.vertices, g.parts
    skin = np.flatnonzero(parts == "skin")
    J = np.zeros((5, len(V)))
    targets = {0: (0.054, -0.165, -0.014), 1: (0.060, -0.040, -0.016), 2: (0.066, -0.004, 0.001)}
    for j, (tx, ty, tz) in targets.items():
        chosen = []
        for side in (1.0, -1.0):
            d = np.linalg.norm(V[skin] - np.array([side * tx, ty, tz]), axis=1)
            chosen.append(skin[np.argsort(d)[:6]])
        chosen = np.concatenate(chosen)
        J[j, chosen] = 1.0 / len(chosen)
    for j, part in ((3, "eyeball_l"), (4, "eyeball_r")):
        ids = np.flatnonzero(parts == part)
        k = EYEBALL_RINGS // 2  # the equator
        equator = ids[1 + k * EYEBALL_SEGMENTS: 1 + (k + 1) * EYEBALL_SEGMENTS]
        J[j, equator] = 1.0 / len(equator)
    return J


# ----------------------------------------------------------------------------------------------------------------
# shape and expression bases: displacement fields of the template

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


# ----------------------------------------------------------------------------------------------------------------
# semantic regions

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


# ----------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _assets() -> HeadAssets:
    g = _geometry()
    return HeadAssets(
        name=BUILTIN_NAME,
        v_template=g.vertices,
        shapedirs=_shape_basis(g),
        exprdirs=_expression_basis(g),
        J_regressor=_joint_regressor(g),
        weights=_skinning_weights(g),
        faces=g.faces,
        posedirs=None,
        parents=FLAME_PARENTS,
        joint_names=JOINT_NAMES,
        face_regions=_regions(g),
    )


def builtin_assets() -> HeadAssets:
    """The built-in head's arrays (built once per process; callers must not modify them)."""
    return _assets()

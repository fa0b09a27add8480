"""The latitude-longitude grid the built-in head's skin is meshed on: row and column angles, the slits cut along a
row (mouth, eyes), and the building blocks of the mesh (a vertex and face accumulator, bands and fans of triangles).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avp.head import _sdf as S
from avp.head.builtin_skin import (
    EYE_CENTER,
    MOUTH_Y,
    N_COLUMNS,
    RAY_ORIGIN,
    RAY_REACH,
    RIM_RADIUS,
    ROW_SEGMENTS,
    _angles,
    _direction,
)

Array = np.ndarray


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

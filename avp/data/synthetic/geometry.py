"""Mesh helpers for building teachers on a canonical head: surface sampling, nearest-face binding, tangent frames,
the head's radial profile (to keep hair outside the skin), and rotation matrices -> quaternions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

SKIN_PRIORITY = ("pupils", "iris", "eyeballs", "eyelids", "eye_sockets", "tongue", "teeth", "mouth_cavity", "lips",
                 "brows", "nose", "ears", "scalp", "forehead", "cheeks", "chin", "jaw", "neck", "face", "eyes", "skin")
"""Region names of the head model, most specific first; a face takes the first region that contains it."""


@dataclass
class CanonicalMesh:
    """A subject's neutral head with per-face data (numpy, float64)."""

    vertices: np.ndarray
    """``[V, 3]``"""
    faces: np.ndarray
    """``[F, 3]``"""
    labels: np.ndarray
    """``[F]`` region name of every face (one label per face, by :data:`SKIN_PRIORITY`; ``other`` when none)."""
    areas: np.ndarray
    """``[F]``"""
    normals: np.ndarray
    """``[F, 3]`` unit outward normals."""
    centroids: np.ndarray
    """``[F, 3]``"""

    @classmethod
    def build(cls, vertices: np.ndarray, faces: np.ndarray, regions: dict[str, np.ndarray]) -> CanonicalMesh:
        v = np.asarray(vertices, np.float64)
        f = np.asarray(faces, np.int64)
        tri = v[f]
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        norm = np.linalg.norm(cross, axis=-1)
        labels = np.full(len(f), "other", dtype=object)
        for name in reversed(SKIN_PRIORITY):  # higher priority written last
            if name in regions:
                labels[np.asarray(regions[name], np.int64)] = name
        return cls(vertices=v, faces=f, labels=labels, areas=norm / 2,
                   normals=cross / np.maximum(norm, 1e-20)[:, None], centroids=tri.mean(1))

    def faces_of(self, *names: str) -> np.ndarray:
        return np.flatnonzero(np.isin(self.labels, names))

    def area_of(self, ids: np.ndarray) -> float:
        return float(self.areas[ids].sum())


def sample_surface(mesh: CanonicalMesh, face_ids: np.ndarray, n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` area-uniform points on the faces ``face_ids``: (points ``[n, 3]``, face ``[n]``, normal ``[n, 3]``)."""
    if n <= 0 or len(face_ids) == 0:
        return np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros((0, 3))
    w = mesh.areas[face_ids]
    chosen = face_ids[rng.choice(len(face_ids), size=n, p=w / w.sum())]
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], -1)
    tri = mesh.vertices[mesh.faces[chosen]]
    return (bary[..., None] * tri).sum(1), chosen, mesh.normals[chosen]


def closest_on_triangles(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Closest points ``[..., 3]`` on triangles ``tri [..., 3, 3]`` to ``p [..., 3]`` (Ericson's region test)."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = np.where(np.abs(va + vb + vc) < 1e-30, 1e-30, va + vb + vc)
    v, w = vb / denom, vc / denom
    out = a + ab * v[..., None] + ac * w[..., None]  # interior
    safe = lambda x: np.where(np.abs(x) < 1e-30, 1e-30, x)
    t_ab = d1 / safe(d1 - d3)
    out = np.where(((vc <= 0) & (d1 >= 0) & (d3 <= 0))[..., None], a + ab * t_ab[..., None], out)
    t_ac = d2 / safe(d2 - d6)
    out = np.where(((vb <= 0) & (d2 >= 0) & (d6 <= 0))[..., None], a + ac * t_ac[..., None], out)
    t_bc = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    out = np.where(((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0))[..., None], b + (c - b) * t_bc[..., None], out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[..., None], a, out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[..., None], b, out)
    out = np.where(((d6 >= 0) & (d5 <= d6))[..., None], c, out)
    return out


def nearest_face(mesh: CanonicalMesh, points: np.ndarray, face_ids: np.ndarray, k: int = 12) -> np.ndarray:
    """For each point the face among ``face_ids`` whose triangle is closest (exact among the ``k`` nearest
    centroids): ``[n]`` face indices."""
    if len(points) == 0:
        return np.zeros(0, np.int64)
    k = min(k, len(face_ids))
    tree = cKDTree(mesh.centroids[face_ids])
    _, idx = tree.query(points, k=k)
    idx = idx.reshape(len(points), k)
    cand = face_ids[idx]  # [n, k]
    tri = mesh.vertices[mesh.faces[cand]]  # [n, k, 3, 3]
    q = closest_on_triangles(points[:, None, :], tri)
    d = np.linalg.norm(q - points[:, None, :], axis=-1)
    return cand[np.arange(len(points)), d.argmin(1)]


def tangent_frames(normals: np.ndarray, direction: np.ndarray | None = None) -> np.ndarray:
    """Rotations ``[n, 3, 3]`` whose columns are (t1, t2, n): t1 follows ``direction`` ``[n, 3]`` (projected to the
    tangent plane) when given, else a stable horizontal tangent."""
    n = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    if direction is None:
        direction = np.broadcast_to(np.array([0.0, 1.0, 0.0]), n.shape)
        direction = np.cross(direction, n)
        weak = np.linalg.norm(direction, axis=-1) < 1e-6
        direction[weak] = np.array([1.0, 0.0, 0.0])
    t1 = direction - (direction * n).sum(-1, keepdims=True) * n
    bad = np.linalg.norm(t1, axis=-1) < 1e-8
    t1[bad] = np.cross(n[bad], np.array([0.0, 0.0, 1.0]) + 1e-3)
    t1 /= np.linalg.norm(t1, axis=-1, keepdims=True)
    t2 = np.cross(n, t1)
    return np.stack([t1, t2, n], axis=-1)


def line_frames(directions: np.ndarray) -> np.ndarray:
    """Rotations ``[n, 3, 3]`` whose first axis is ``directions [n, 3]`` (for strands and wires)."""
    d = directions / np.maximum(np.linalg.norm(directions, axis=-1, keepdims=True), 1e-12)
    helper = np.where(np.abs(d[:, 1:2]) < 0.9, np.array([[0.0, 1.0, 0.0]]), np.array([[1.0, 0.0, 0.0]]))
    b = np.cross(d, helper)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    c = np.cross(d, b)
    return np.stack([d, b, c], axis=-1)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[n, 3, 3]`` -> unit quaternions ``[n, 4]`` wxyz with ``w >= 0``.

    Not :func:`avp.rotations.matrix_to_quaternion` (the package's one torch implementation): synthetic subjects are
    built in float64 numpy end to end, and the teacher splats written into shards come from this formula; another
    algorithm (torch's is Shepperd's) would change their last bits, so every existing shard and seed.
    """
    R = np.asarray(R, np.float64)
    if len(R) == 0:
        return np.zeros((0, 4))
    m00, m11, m22 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    q = np.stack([
        np.sqrt(np.maximum(0, 1 + m00 + m11 + m22)) / 2,
        np.sqrt(np.maximum(0, 1 + m00 - m11 - m22)) / 2,
        np.sqrt(np.maximum(0, 1 - m00 + m11 - m22)) / 2,
        np.sqrt(np.maximum(0, 1 - m00 - m11 + m22)) / 2,
    ], -1)
    q[:, 1] = np.copysign(q[:, 1], R[:, 2, 1] - R[:, 1, 2])
    q[:, 2] = np.copysign(q[:, 2], R[:, 0, 2] - R[:, 2, 0])
    q[:, 3] = np.copysign(q[:, 3], R[:, 1, 0] - R[:, 0, 1])
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


class RadialProfile:
    """The skin's largest distance from the vertical axis ``x = 0, z = z0`` per (height, azimuth) bin, used to
    keep hair and glasses arms outside the head."""

    def __init__(self, vertices: np.ndarray, z0: float = -0.01, n_y: int = 48, n_phi: int = 48) -> None:
        self.z0 = z0
        y = vertices[:, 1]
        self.y_lo, self.y_hi = float(y.min()), float(y.max())
        self.n_y, self.n_phi = n_y, n_phi
        r = np.hypot(vertices[:, 0], vertices[:, 2] - z0)
        iy, ip = self._bins(vertices)
        table = np.zeros((n_y, n_phi))
        np.maximum.at(table, (iy, ip), r)
        for _ in range(3):  # fill empty bins from neighbours
            empty = table == 0
            if not empty.any():
                break
            padded = np.pad(table, ((1, 1), (0, 0)), mode="edge")
            neigh = np.maximum.reduce([padded[:-2], padded[2:], np.roll(table, 1, 1), np.roll(table, -1, 1)])
            table[empty] = neigh[empty]
        self.table = table

    def _bins(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        iy = np.clip(((p[:, 1] - self.y_lo) / (self.y_hi - self.y_lo + 1e-9) * self.n_y).astype(int), 0,
                     self.n_y - 1)
        phi = np.arctan2(p[:, 0], p[:, 2] - self.z0)
        ip = np.clip(((phi + np.pi) / (2 * np.pi) * self.n_phi).astype(int), 0, self.n_phi - 1)
        return iy, ip

    def push_out(self, p: np.ndarray, margin: np.ndarray | float) -> np.ndarray:
        """Move points radially so they sit at least ``margin`` outside the skin profile at their height."""
        iy, ip = self._bins(p)
        r_skin = self.table[iy, ip]
        d = np.stack([p[:, 0], np.zeros(len(p)), p[:, 2] - self.z0], -1)
        r = np.linalg.norm(d, axis=-1)
        want = np.maximum(r, r_skin + margin)
        scale = want / np.maximum(r, 1e-9)
        out = p.copy()
        out[:, 0] = d[:, 0] * scale
        out[:, 2] = d[:, 2] * scale + self.z0
        return out

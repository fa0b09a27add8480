"""The built-in head's pockets closing its slits (the mouth bag, the eye sockets) and its separate closed parts
(eyeballs, teeth, tongue), added to a :class:`~avp.head.builtin_grid._Mesh`."""

from __future__ import annotations

import numpy as np

from avp.head.builtin_grid import _band, _fan, _Mesh, _Slit
from avp.head.builtin_skin import EYE_RADIUS, RIM_RADIUS

Array = np.ndarray


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

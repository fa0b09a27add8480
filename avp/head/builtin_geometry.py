"""The built-in head's geometry: the skin grid warped to open the slits, the pockets and parts, consistent winding,
and every vertex's side of the mouth and eye slits (what the lip and eyelid fields move). Built once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from avp.head import _sdf as S
from avp.head.builtin_grid import _columns, _fan, _grid_band, _Mesh, _nearest, _rows, _Slit, _theta_at_height
from avp.head.builtin_parts import _eye_socket, _eyeball, _mouth_bag, _teeth, _tongue
from avp.head.builtin_skin import (
    EYE_CENTER,
    MOUTH_CORNER,
    MOUTH_Y,
    RAY_ORIGIN,
    RAY_REACH,
    RIM_RADIUS,
    _angles,
    _rays,
    _skin_sdf,
)

Array = np.ndarray


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


def _ray_sphere_far(o: Array, d: Array, c: Array, r: float) -> Array | None:
    """Where the ray ``o + s d`` leaves the sphere (the side facing away from ``o``); None if it misses."""
    oc = o - c
    b = oc @ d
    disc = b * b - (oc @ oc - r * r)
    if disc <= 0:
        return None
    return o + d * (-b + np.sqrt(disc))


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

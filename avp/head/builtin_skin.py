"""The built-in head's design constants, its skin as a signed-distance field, and the rays that mesh it.

Distances in metres, in FLAME's frame: x to the subject's left, y up, z out of the face. The skin is a smooth SDF
(skull, face, jaw, chin, neck, nose, lips, brow ridge, cheekbones, orbits, eyelids, ears); rays cast from a point
inside the head along a latitude-longitude grid (:mod:`avp.head.builtin_grid`) find its surface.
"""

from __future__ import annotations

import numpy as np

from avp.head import _sdf as S

Array = np.ndarray

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

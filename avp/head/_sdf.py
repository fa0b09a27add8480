"""Signed-distance sculpting for the built-in head: primitives, smooth booleans and a culled evaluator (numpy).

Distances are approximate (the ellipsoid is Inigo Quilez's first-order bound), which is all ray casting needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def _norm(v: Array) -> Array:
    return np.sqrt((v * v).sum(-1))


def ellipsoid(p: Array, c: tuple[float, float, float], r: tuple[float, float, float]) -> Array:
    q = p - np.asarray(c)
    r = np.asarray(r)
    k0 = _norm(q / r)
    k1 = _norm(q / (r * r))
    return k0 * (k0 - 1) / np.maximum(k1, 1e-12)


def sphere(p: Array, c: tuple[float, float, float] | Array, r: float) -> Array:
    return _norm(p - np.asarray(c)) - r


def capsule(p: Array, a: tuple[float, float, float], b: tuple[float, float, float], r: float) -> Array:
    a_, ba = np.asarray(a), np.asarray(b) - np.asarray(a)
    pa = p - a_
    h = np.clip((pa @ ba) / (ba @ ba), 0.0, 1.0)
    return _norm(pa - h[..., None] * ba) - r


def round_cone(p: Array, a: tuple[float, float, float], b: tuple[float, float, float], r1: float, r2: float) -> Array:
    """Capsule whose radius goes from ``r1`` at ``a`` to ``r2`` at ``b`` (exact distance)."""
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    ba = b_ - a_
    l2 = ba @ ba
    rr = r1 - r2
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pa = p - a_
    y = pa @ ba
    z = y - l2
    x2 = ((pa * l2 - y[..., None] * ba) ** 2).sum(-1)
    y2 = y * y * l2
    z2 = z * z * l2
    k = np.sign(rr) * rr * rr * x2
    d_end = np.sqrt(x2 + z2) * il2 - r2
    d_start = np.sqrt(x2 + y2) * il2 - r1
    d_mid = (np.sqrt(np.maximum(x2 * a2 * il2, 0.0)) + y * rr) * il2 - r1
    return np.where(np.sign(z) * a2 * z2 > k, d_end, np.where(np.sign(y) * a2 * y2 < k, d_start, d_mid))


def smin(a: Array, b: Array, k: float) -> Array:
    """Polynomial smooth union (blend radius ``k``)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def smax(a: Array, b: Array, k: float) -> Array:
    return -smin(-a, -b, k)


def mirror_x(p: Array) -> Array:
    """Fold the left half onto the right (symmetric features are modelled once, at +x)."""
    q = p.copy()
    q[..., 0] = np.abs(q[..., 0])
    return q


@dataclass
class Feature:
    """One sculpting step: ``d <- smin(d, fn(p), k)`` (``subtract``: ``smax(d, -fn(p), k)``), local to a ball."""

    fn: Callable[[Array], Array]
    center: tuple[float, float, float]
    """Centre of a ball outside which ``fn`` is at least the distance to the ball (mirrored features: the +x one)."""
    radius: float
    k: float
    subtract: bool = False
    mirrored: bool = False


class Sculpt:
    """``base(p)`` followed by local features, each evaluated only where it can change the result."""

    def __init__(self, base: Callable[[Array], Array], features: list[Feature]) -> None:
        self.base = base
        self.features = features

    def __call__(self, p: Array) -> Array:
        d = self.base(p)
        for f in self.features:
            q = mirror_x(p) if f.mirrored else p
            gap = _norm(q - np.asarray(f.center)) - f.radius
            # outside the ball fn >= gap, so the union/subtraction cannot change d there
            reach = f.k + (np.maximum(-d, 0.0) if f.subtract else np.maximum(d, 0.0))
            idx = np.flatnonzero(gap < reach)
            if idx.size == 0:
                continue
            v = f.fn(q[idx])
            d[idx] = smax(d[idx], -v, f.k) if f.subtract else smin(d[idx], v, f.k)
        return d


def raycast(sdf: Callable[[Array], Array], origin: Array, dirs: Array, s_max: float, *, tol: float = 2e-6,
            iterations: int = 80) -> Array:
    """Distance along each ray (from outside, moving towards ``origin``) to the outermost zero of ``sdf``.

    ``origin`` must be inside the surface and ``origin + s_max * dir`` outside. Sphere tracing inwards with a safety
    factor; once a step lands inside, bisection between the last outside and the first inside point. Rays are
    dropped as they converge. Returns the outside end of the final bracket.
    """
    M = dirs.shape[0]
    hi = np.full(M, float(s_max))  # last point known outside
    lo = np.zeros(M)  # first point known inside (the origin until one is seen)
    seen_inside = np.zeros(M, dtype=bool)
    s = hi.copy()
    active = np.arange(M)
    for _ in range(iterations):
        if active.size == 0:
            break
        f = sdf(origin[active] + dirs[active] * s[active, None])
        out = f > 0
        a_out, a_in = active[out], active[~out]
        hi[a_out] = s[a_out]
        lo[a_in] = s[a_in]
        seen_inside[a_in] = True
        step = np.maximum(0.7 * f[out], 0.25 * tol)
        mid_out = 0.5 * (lo[a_out] + hi[a_out])
        s[a_out] = np.where(seen_inside[a_out], np.maximum(s[a_out] - step, mid_out), s[a_out] - step)
        s[a_in] = 0.5 * (lo[a_in] + hi[a_in])
        done = (seen_inside[active] & (hi[active] - lo[active] < tol)) | (out & (f < tol))
        active = active[~done]
    return hi

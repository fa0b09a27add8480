"""Build a subject's teacher Gaussians on its canonical (neutral) head.

The whole visible head is covered: skin (with region-dependent density: eyes, lips and nose denser than the neck),
eyes (sclera, iris, pupil), teeth and mouth cavity, plus identity-specific geometry that a fixed mesh template
cannot express: hair volume off the surface in several styles, beards and moustaches, thick brows, glasses. Every
point is bound to the face it was sampled on, or for volume away from the skin to the nearest face of the
appropriate region (hair to the scalp face under it, glasses rims to the nose, their arms to the temples/ears).
Splat sizes follow the local point spacing, so a few hundred points still cover a head and 20k give fine detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avp.data.schema import TeacherGaussians
from avp.data.synthetic.appearance import Appearance, hair_colour, skin_colour
from avp.data.synthetic.geometry import (
    CanonicalMesh,
    RadialProfile,
    line_frames,
    matrix_to_quat,
    nearest_face,
    sample_surface,
    tangent_frames,
)

SH_C0 = 0.28209479177387814

# relative points per unit area of each skin region
REGION_DENSITY = {"pupils": 4.0, "iris": 4.0, "eyeballs": 2.5, "eyelids": 1.8, "eye_sockets": 0.3, "eyes": 2.0,
                  "lips": 2.6, "nose": 1.8, "brows": 1.6, "ears": 1.1, "forehead": 1.2, "cheeks": 1.3, "chin": 1.3,
                  "jaw": 1.1, "face": 1.3, "skin": 1.0, "neck": 0.55, "scalp": 0.9, "teeth": 1.2, "tongue": 0.8,
                  "mouth_cavity": 0.35, "other": 1.0}
SCLERA = np.array([0.93, 0.91, 0.88])
HAIR_FRACTION = {"short": 0.18, "long": 0.32, "bun": 0.24, "ponytail": 0.24, "curly": 0.36, "bald": 0.0}
BEARD_FRACTION = {"none": 0.0, "stubble": 0.05, "moustache": 0.03, "goatee": 0.06, "full": 0.12}


@dataclass
class Part:
    """One component of a teacher (all arrays have ``n`` rows)."""

    name: str
    means: np.ndarray
    binding: np.ndarray
    rotations: np.ndarray
    """``[n, 3, 3]`` local axes (columns)."""
    scales: np.ndarray
    """``[n, 3]`` standard deviations along the local axes (metres)."""
    rgb: np.ndarray
    opacity: np.ndarray

    @property
    def n(self) -> int:
        return len(self.means)


def _spacing(area: float, n: int) -> float:
    return float(np.sqrt(area / max(n, 1)))


def _surface_part(name: str, mesh: CanonicalMesh, faces: np.ndarray, n: int, rng: np.random.Generator,
                  rgb_fn, *, flatness: float = 0.25, coverage: float = 0.75, opacity: float = 0.97) -> Part:
    pts, face, normals = sample_surface(mesh, faces, n, rng)
    s = _spacing(mesh.area_of(faces), n) * coverage
    scales = np.stack([np.full(n, s), np.full(n, s), np.full(n, s * flatness)], -1) * rng.uniform(0.8, 1.2, (n, 1))
    return Part(name, pts, face, tangent_frames(normals), scales, rgb_fn(pts, face),
                np.clip(rng.normal(opacity, 0.02, n), 0.05, 0.995))


def _eye_centres(mesh: CanonicalMesh) -> np.ndarray:
    """``[2, 3]`` left (+x) and right eyeball centres (mean of each side's eyeball vertices)."""
    ids = mesh.faces_of("pupils", "iris", "eyeballs", "eyes")
    v = np.unique(mesh.faces[ids].reshape(-1))
    p = mesh.vertices[v]
    left, right = p[p[:, 0] > 0], p[p[:, 0] <= 0]
    return np.stack([left.mean(0), right.mean(0)])


def _eye_colour(app: Appearance, mesh: CanonicalMesh, rng: np.random.Generator):
    """Eyeballs: sclera, with the iris and pupil drawn by angle from the gaze axis (+z) when the head model has no
    separate iris/pupil regions."""
    separate = len(mesh.faces_of("iris")) > 0
    centres = _eye_centres(mesh)

    def fn(pts: np.ndarray, _face: np.ndarray) -> np.ndarray:
        out = np.tile(SCLERA, (len(pts), 1)) + rng.normal(0, 0.015, (len(pts), 3))
        if not separate:
            c = np.where(pts[:, :1] > 0, centres[0], centres[1])
            d = pts - c
            cos = d[:, 2] / np.maximum(np.linalg.norm(d, axis=-1), 1e-9)
            iris = cos > np.cos(0.52)
            out[iris] = app.eye * rng.uniform(0.8, 1.2, (int(iris.sum()), 1))
            out[cos > np.cos(0.22)] = 0.03
        return np.clip(out, 0, 1)

    return fn


def _skin_parts(mesh: CanonicalMesh, app: Appearance, budget: int, rng: np.random.Generator) -> list[Part]:
    density = {k: v * float(np.exp(rng.normal(0, 0.2))) for k, v in REGION_DENSITY.items()}
    if app.hair_style != "bald":
        density["scalp"] *= 0.35  # mostly hidden under hair
    if app.thick_brows:
        density["brows"] *= 0.6
    names = [n for n in density if len(mesh.faces_of(n))]
    weight = np.array([density[n] * mesh.area_of(mesh.faces_of(n)) for n in names])
    counts = np.maximum(np.round(budget * weight / weight.sum()).astype(int), 2)
    cheeks = mesh.faces_of("cheeks")
    cheek_centre = mesh.centroids[cheeks].mean(0) if len(cheeks) else None
    parts = []
    for name, n in zip(names, counts):
        faces = mesh.faces_of(name)
        if name in ("eyeballs", "eyes"):
            rgb_fn = _eye_colour(app, mesh, rng)
        elif name == "iris":
            rgb_fn = lambda p, f: np.clip(app.eye * rng.uniform(0.75, 1.25, (len(p), 1)), 0, 1)
        elif name == "pupils":
            rgb_fn = lambda p, f: np.clip(0.03 + rng.normal(0, 0.01, (len(p), 3)), 0, 1)
        elif name in ("tongue", "eye_sockets"):
            base = np.array([0.62, 0.30, 0.30]) if name == "tongue" else app.skin * 0.45
            rgb_fn = lambda p, f, b=base: np.clip(b + rng.normal(0, 0.02, (len(p), 3)), 0, 1)
        elif name == "lips":
            rgb_fn = lambda p, f: np.clip(app.lip * rng.uniform(0.9, 1.08, (len(p), 1)), 0, 1)
        elif name == "teeth":
            rgb_fn = lambda p, f: np.clip(np.array([0.93, 0.91, 0.84]) + rng.normal(0, 0.02, (len(p), 3)), 0, 1)
        elif name == "mouth_cavity":
            rgb_fn = lambda p, f: np.clip(np.array([0.42, 0.12, 0.13]) * app.skin.mean() * 1.6
                                          + rng.normal(0, 0.02, (len(p), 3)), 0, 1)
        elif name == "brows" and not app.thick_brows:
            rgb_fn = lambda p, f: 0.35 * skin_colour(app, p, rng) + 0.65 * app.brow
        elif name == "scalp" and app.hair_style != "bald":
            rgb_fn = lambda p, f: 0.5 * skin_colour(app, p, rng) + 0.5 * app.hair
        else:
            def rgb_fn(p, f, _name=name):
                w = None
                if cheek_centre is not None and _name in ("cheeks", "face"):
                    w = np.exp(-np.sum((np.abs(p) - np.abs(cheek_centre)) ** 2, -1) / (2 * 0.02 ** 2))
                col = skin_colour(app, p, rng, w)
                return np.clip(col * np.array([1.03, 0.97, 0.96]), 0, 1) if _name == "ears" else col
        flat = 0.3 if name in ("eyeballs", "iris", "pupils", "teeth") else 0.25
        parts.append(_surface_part(f"skin:{name}", mesh, faces, int(n), rng, rgb_fn, flatness=flat))
    return parts


def _hair_direction(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Strands run from the crown backwards and down."""
    d = points - centre
    flow = np.stack([d[:, 0] * 0.6, -np.abs(d[:, 1]) - 0.03, -0.6 - d[:, 2] * 2.0], -1)
    return flow / np.linalg.norm(flow, axis=-1, keepdims=True)


def _scalp_faces(mesh: CanonicalMesh, app: Appearance) -> np.ndarray:
    """Scalp (and upper forehead/temple) faces behind the hairline."""
    ids = mesh.faces_of("scalp", "forehead", "other")
    c = mesh.centroids[ids]
    keep = (c[:, 1] > app.hairline) | ((c[:, 2] < 0.04) & (c[:, 1] > 0.0))
    if mesh.faces_of("ears").size:
        ear_top = mesh.centroids[mesh.faces_of("ears")][:, 1].max()
        keep &= (c[:, 1] > ear_top - 0.02) | (c[:, 2] < -0.02)
    return ids[keep]


def _hair_parts(mesh: CanonicalMesh, app: Appearance, n: int, rng: np.random.Generator,
                profile: RadialProfile) -> list[Part]:
    if n <= 0 or app.hair_style == "bald":
        return []
    scalp = _scalp_faces(mesh, app)
    if len(scalp) == 0:
        return []
    centre = mesh.vertices.mean(0)
    style = app.hair_style
    parts = []
    layer_share = {"short": 1.0, "curly": 1.0, "long": 0.45, "bun": 0.55, "ponytail": 0.55}[style]
    n_layer = int(round(n * layer_share))
    area = mesh.area_of(scalp)

    # the layer covering the scalp (volume off the surface)
    pts, face, normals = sample_surface(mesh, scalp, n_layer, rng)
    spacing = _spacing(area, n_layer)
    if style == "curly":
        n_curls = max(n_layer // 12, 1)
        curl_centres = rng.integers(0, n_layer, n_curls)
        owner = rng.integers(0, n_curls, n_layer)
        base = pts[curl_centres][owner]
        base_n = normals[curl_centres][owner]
        face = face[curl_centres][owner]
        lift = rng.uniform(0.3, 1.0, (n_layer, 1)) * app.hair_thickness
        jitter = rng.normal(0, max(0.25 * app.hair_thickness, spacing * 0.8), (n_layer, 3))
        pts = base + base_n * lift + jitter
        pts = profile.push_out(pts, 0.004)
        direction = rng.normal(0, 1, (n_layer, 3))
        scales = np.stack([np.full(n_layer, 1.4), np.full(n_layer, 1.0), np.full(n_layer, 0.8)], -1) * spacing
    else:
        lift = rng.uniform(0.15, 1.0, (n_layer, 1)) * app.hair_thickness
        pts = pts + normals * lift
        direction = _hair_direction(pts, centre)
        scales = np.stack([np.full(n_layer, 2.2), np.full(n_layer, 0.75), np.full(n_layer, 0.45)], -1) * spacing
    rot = line_frames(direction)
    scales = scales * rng.uniform(0.8, 1.2, (n_layer, 1))
    parts.append(Part(f"hair:{style}", pts, nearest_face(mesh, pts, scalp) if style == "curly" else face, rot,
                      scales, hair_colour(app, n_layer, rng), np.clip(rng.normal(0.9, 0.05, n_layer), 0.3, 0.99)))

    n_extra = n - n_layer
    if n_extra <= 0:
        return parts
    if style == "long":
        # a curtain hanging behind and beside the head, down to the shoulders
        length = rng.uniform(0.12, 0.25)
        phi = rng.uniform(np.deg2rad(75), np.deg2rad(285), n_extra)  # from +z: sides and back
        y_top = rng.uniform(-0.01, 0.05)
        y = y_top - rng.random(n_extra) ** 0.8 * length
        p = np.stack([np.sin(phi) * 0.05, y, np.cos(phi) * 0.05 - 0.01], -1)
        p = profile.push_out(p, app.hair_thickness * rng.uniform(0.3, 1.0, n_extra) + 0.004)
        direction = np.tile(np.array([0.0, -1.0, 0.0]), (n_extra, 1)) + rng.normal(0, 0.15, (n_extra, 3))
        sp = _spacing(length * 0.16 * 2 * np.pi * 0.6, n_extra)
        scales = np.stack([np.full(n_extra, 3.0), np.full(n_extra, 0.8), np.full(n_extra, 0.5)], -1) * sp
        parts.append(Part("hair:long_curtain", p, nearest_face(mesh, p, scalp), line_frames(direction), scales,
                          hair_colour(app, n_extra, rng), np.clip(rng.normal(0.9, 0.05, n_extra), 0.3, 0.99)))
    elif style == "bun":
        radius = rng.uniform(0.028, 0.042)
        top = mesh.vertices[np.argmax(mesh.vertices[:, 1] - 0.6 * mesh.vertices[:, 2])]
        c = top + np.array([0.0, 0.4, -0.9]) / np.linalg.norm([0.0, 0.4, -0.9]) * radius * 0.8
        d = rng.normal(0, 1, (n_extra, 3))
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        p = c + d * radius * rng.uniform(0.55, 1.0, (n_extra, 1))
        sp = _spacing(4 * np.pi * radius**2, n_extra)
        scales = np.stack([np.full(n_extra, 1.8), np.full(n_extra, 1.0), np.full(n_extra, 0.6)], -1) * sp
        direction = np.cross(d, np.array([0.0, 1.0, 0.0])) + 1e-3
        parts.append(Part("hair:bun", p, nearest_face(mesh, p, scalp), line_frames(direction), scales,
                          hair_colour(app, n_extra, rng), np.clip(rng.normal(0.92, 0.04, n_extra), 0.3, 0.99)))
    elif style == "ponytail":
        back = mesh.vertices[np.argmin(mesh.vertices[:, 2] + 2.0 * np.abs(mesh.vertices[:, 1] - 0.05))]
        start = back + np.array([0.0, 0.0, -0.015])
        length = rng.uniform(0.12, 0.22)
        s = rng.random(n_extra)
        axis = start + np.stack([np.zeros(n_extra), -s * length, -0.03 * np.sin(np.pi * s) - 0.01 * s], -1)
        r = (0.02 * (1 - s) + 0.008 * s)[:, None] * np.sqrt(rng.random((n_extra, 1)))
        ang = rng.uniform(0, 2 * np.pi, n_extra)
        p = axis + r * np.stack([np.cos(ang), np.zeros(n_extra), np.sin(ang)], -1)
        p = profile.push_out(p, 0.006)
        sp = _spacing(2 * np.pi * 0.014 * length, n_extra)
        scales = np.stack([np.full(n_extra, 3.0), np.full(n_extra, 0.8), np.full(n_extra, 0.6)], -1) * sp
        direction = np.tile(np.array([0.0, -1.0, -0.15]), (n_extra, 1)) + rng.normal(0, 0.1, (n_extra, 3))
        parts.append(Part("hair:ponytail", p, nearest_face(mesh, p, scalp), line_frames(direction), scales,
                          hair_colour(app, n_extra, rng), np.clip(rng.normal(0.92, 0.04, n_extra), 0.3, 0.99)))
    return parts


def _mouth_centre(mesh: CanonicalMesh) -> np.ndarray:
    lips = mesh.faces_of("lips")
    return mesh.centroids[lips].mean(0) if len(lips) else np.array([0.0, -0.055, 0.09])


def _beard_parts(mesh: CanonicalMesh, app: Appearance, n: int, rng: np.random.Generator) -> list[Part]:
    if n <= 0 or app.beard == "none":
        return []
    mouth = _mouth_centre(mesh)
    skin = mesh.faces_of("chin", "jaw", "cheeks", "face", "neck", "other")
    c = mesh.centroids[skin]
    moustache = skin[(c[:, 1] > mouth[1] + 0.004) & (c[:, 1] < mouth[1] + 0.022) & (np.abs(c[:, 0]) < 0.03)
                     & (c[:, 2] > mouth[2] - 0.02)]
    chin = skin[(c[:, 1] < mouth[1] - 0.006) & (np.abs(c[:, 0]) < 0.028) & (c[:, 2] > mouth[2] - 0.045)
                & (c[:, 1] > mouth[1] - 0.065)]
    full = skin[(c[:, 1] < mouth[1] + 0.03) & (c[:, 1] > mouth[1] - 0.075) & (c[:, 2] > -0.03)]
    regions = {"stubble": full, "moustache": moustache, "goatee": np.union1d(chin, moustache),
               "full": np.union1d(full, moustache)}[app.beard]
    if len(regions) == 0:
        return []
    pts, face, normals = sample_surface(mesh, regions, n, rng)
    spacing = _spacing(mesh.area_of(regions), n)
    if app.beard == "stubble":
        lift, opacity = rng.uniform(0.0003, 0.0015, (n, 1)), np.clip(rng.normal(0.45, 0.08, n), 0.1, 0.9)
        scales = np.stack([np.full(n, 0.8), np.full(n, 0.8), np.full(n, 0.25)], -1) * spacing
    else:
        thickness = rng.uniform(0.004, 0.014) if app.beard == "full" else rng.uniform(0.003, 0.008)
        lift, opacity = rng.uniform(0.1, 1.0, (n, 1)) * thickness, np.clip(rng.normal(0.9, 0.05, n), 0.3, 0.99)
        scales = np.stack([np.full(n, 1.6), np.full(n, 0.8), np.full(n, 0.6)], -1) * spacing
    pts = pts + normals * lift
    down = np.tile(np.array([0.0, -1.0, 0.3]), (n, 1)) + rng.normal(0, 0.2, (n, 3))
    rot = tangent_frames(normals, down) if app.beard == "stubble" else line_frames(down)
    colour = hair_colour(app, n, rng) * (0.8 if app.beard == "stubble" else 1.0)
    return [Part(f"beard:{app.beard}", pts, face, rot, scales * rng.uniform(0.8, 1.2, (n, 1)), colour, opacity)]


def _brow_parts(mesh: CanonicalMesh, app: Appearance, n: int, rng: np.random.Generator) -> list[Part]:
    brows = mesh.faces_of("brows")
    if n <= 0 or not app.thick_brows or len(brows) == 0:
        return []
    pts, face, normals = sample_surface(mesh, brows, n, rng)
    pts = pts + normals * rng.uniform(0.0005, 0.004, (n, 1))
    spacing = _spacing(mesh.area_of(brows), n)
    lateral = np.stack([np.sign(pts[:, 0]), np.full(n, 0.15), np.zeros(n)], -1)
    scales = np.stack([np.full(n, 1.6), np.full(n, 0.8), np.full(n, 0.5)], -1) * spacing
    return [Part("brows:thick", pts, face, tangent_frames(normals, lateral), scales,
                 np.clip(app.brow * rng.uniform(0.85, 1.1, (n, 1)), 0, 1), np.clip(rng.normal(0.93, 0.04, n), 0.3, 1))]


def _glasses_parts(mesh: CanonicalMesh, app: Appearance, n: int, rng: np.random.Generator,
                   profile: RadialProfile) -> list[Part]:
    nose, eyes = mesh.faces_of("nose"), mesh.faces_of("pupils", "iris", "eyeballs", "eyes")
    if n <= 0 or not app.glasses or len(nose) == 0 or len(eyes) == 0:
        return []
    temple = mesh.faces_of("forehead", "ears", "scalp", "cheeks", "face", "other")
    centres = _eye_centres(mesh)
    a, b = rng.uniform(0.020, 0.027), rng.uniform(0.014, 0.020)
    z_lens = centres[:, 2].max() + rng.uniform(0.022, 0.03)
    y_lens = centres[:, 1].mean() + rng.uniform(-0.003, 0.004)
    ears = mesh.faces_of("ears")
    ear = mesh.centroids[ears] if len(ears) else np.array([[0.075, 0.01, -0.01]])
    ear_y, ear_z = ear[:, 1].max() - 0.005, ear[:, 2].mean()
    # curve lengths: two rims, a bridge and two arms; points spread by length
    x_c = max(abs(centres[0, 0]), a + 0.008)
    rim_len = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    arm_len = z_lens - ear_z
    bridge_len = 2 * (x_c - a)
    lengths = np.array([rim_len, rim_len, bridge_len, arm_len, arm_len])
    counts = np.maximum(np.round(n * lengths / lengths.sum()).astype(int), 2)
    pts, dirs, kinds = [], [], []
    for side, sign in enumerate((1.0, -1.0)):
        t = rng.uniform(0, 2 * np.pi, counts[side])
        pts.append(np.stack([sign * x_c + a * np.cos(t), y_lens + b * np.sin(t), np.full(len(t), z_lens)], -1))
        dirs.append(np.stack([-a * np.sin(t), b * np.cos(t), np.zeros(len(t))], -1))
        kinds.append(np.zeros(len(t), int))
    s = rng.random(counts[2])
    pts.append(np.stack([(2 * s - 1) * (x_c - a), y_lens + b * 0.35 + 0.004 * np.sin(np.pi * s),
                         np.full(len(s), z_lens + 0.002)], -1))
    dirs.append(np.tile([1.0, 0.0, 0.0], (len(s), 1)))
    kinds.append(np.zeros(len(s), int))
    for k, sign in zip((3, 4), (1.0, -1.0)):
        s = rng.random(counts[k])
        start = np.array([sign * (x_c + a), y_lens + b * 0.3, z_lens])
        end = np.array([sign * 0.07, ear_y, ear_z])
        p = start + s[:, None] * (end - start)
        p = profile.push_out(p, 0.004)
        pts.append(p)
        dirs.append(np.tile(end - start, (len(s), 1)))
        kinds.append(np.ones(len(s), int))
    p, d, kind = np.concatenate(pts), np.concatenate(dirs), np.concatenate(kinds)
    spacing = lengths.sum() / len(p)
    out = []
    for k, name, faces in ((0, "glasses:rims", nose), (1, "glasses:arms", temple)):
        sel = kind == k
        m = int(sel.sum())
        scales = np.stack([np.full(m, max(spacing * 0.8, 0.0012)), np.full(m, 0.0012), np.full(m, 0.0012)], -1)
        colour = np.clip(app.glasses_colour + rng.normal(0, 0.02, (m, 3)), 0, 1)
        out.append(Part(name, p[sel], nearest_face(mesh, p[sel], faces), line_frames(d[sel]), scales, colour,
                        np.full(m, 0.97)))
    return out


def build_teacher(mesh: CanonicalMesh, app: Appearance, n_target: int, rng: np.random.Generator, *,
                  sh_degree: int = 0) -> tuple[TeacherGaussians, dict[str, int]]:
    """The subject's teacher with about ``n_target`` points; returns it and the point count of every part."""
    profile = RadialProfile(mesh.vertices)
    n_hair = int(round(n_target * HAIR_FRACTION[app.hair_style]))
    n_beard = int(round(n_target * BEARD_FRACTION[app.beard]))
    n_brows = int(round(n_target * 0.03)) if app.thick_brows else 0
    n_glasses = max(int(round(n_target * 0.04)), 24) if app.glasses else 0
    n_skin = max(n_target - n_hair - n_beard - n_brows - n_glasses, n_target // 3)
    parts = (_skin_parts(mesh, app, n_skin, rng) + _hair_parts(mesh, app, n_hair, rng, profile)
             + _beard_parts(mesh, app, n_beard, rng) + _brow_parts(mesh, app, n_brows, rng)
             + _glasses_parts(mesh, app, n_glasses, rng, profile))
    parts = [p for p in parts if p.n > 0]
    means = np.concatenate([p.means for p in parts])
    binding = np.concatenate([p.binding for p in parts])
    quats = matrix_to_quat(np.concatenate([p.rotations for p in parts]))
    scales = np.clip(np.concatenate([p.scales for p in parts]), 2e-4, 0.05)
    rgb = np.concatenate([p.rgb for p in parts])
    opacity = np.clip(np.concatenate([p.opacity for p in parts]), 1e-3, 1 - 1e-3)
    k = (sh_degree + 1) ** 2
    sh = np.zeros((len(means), k, 3))
    sh[:, 0] = (rgb - 0.5) / SH_C0
    counts: dict[str, int] = {}
    for p in parts:
        counts[p.name] = counts.get(p.name, 0) + p.n
    teacher = TeacherGaussians(
        means=means.astype(np.float32), binding=binding.astype(np.int32),
        log_scales=np.log(scales).astype(np.float32),
        opacity_logits=np.log(opacity / (1 - opacity)).astype(np.float32), quats=quats.astype(np.float32),
        sh=sh.astype(np.float32))
    return teacher, counts

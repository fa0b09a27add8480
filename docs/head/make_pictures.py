"""Render the pictures of the built-in head in docs/head/ (run: ``.venv/bin/python docs/head/make_pictures.py``).

A small mesh renderer on matplotlib: triangles sorted back to front (painter's algorithm), back faces culled,
Lambert shading from two lights with normals averaged over each triangle's corners (softens the facets). It is
independent of the Gaussian renderer on purpose: these pictures show the mesh itself.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import PolyCollection
from PIL import Image

from avp.atomic import atomic_write_bytes
from avp.head import EXPRESSION_COMPONENTS, SHAPE_COMPONENTS, HeadModel, load_head_model
from avp.types import HeadParams

HERE = Path(__file__).resolve().parent
SKIN = np.array([0.87, 0.70, 0.60])
COLOURS = {  # later entries win
    "lips": (0.80, 0.52, 0.50),
    "brows": (0.36, 0.25, 0.18),
    "eyeballs": (0.96, 0.95, 0.93),
    "iris": (0.30, 0.45, 0.62),
    "pupils": (0.05, 0.05, 0.06),
    "eye_sockets": (0.80, 0.45, 0.45),
    "mouth_cavity": (0.45, 0.12, 0.14),
    "tongue": (0.80, 0.40, 0.42),
    "teeth": (0.97, 0.95, 0.88),
}
REGION_COLOURS = {
    "scalp": (0.45, 0.33, 0.25), "forehead": (0.95, 0.85, 0.55), "brows": (0.30, 0.20, 0.12),
    "eyelids": (0.95, 0.60, 0.65), "nose": (0.95, 0.55, 0.25), "cheeks": (0.98, 0.78, 0.68),
    "lips": (0.82, 0.22, 0.30), "chin": (0.45, 0.65, 0.92), "jaw": (0.45, 0.70, 0.45), "ears": (0.65, 0.45, 0.85),
    "neck": (0.70, 0.70, 0.72), "eyeballs": (1.0, 1.0, 1.0), "iris": (0.30, 0.45, 0.62), "pupils": (0.0, 0.0, 0.0),
    "teeth": (1.0, 1.0, 0.85), "mouth_cavity": (0.45, 0.1, 0.1), "eye_sockets": (0.9, 0.2, 0.2),
}


def face_colours(model: HeadModel, palette: dict[str, tuple[float, float, float]], base: np.ndarray,
                 soften: bool = False) -> np.ndarray:
    """Per-triangle colours from the semantic regions; ``soften`` blends across region borders by one ring."""
    colours = np.tile(base, (model.n_faces, 1))
    for region, colour in palette.items():
        colours[model.face_regions[region].numpy()] = colour
    if soften:
        faces = model.faces.numpy()
        per_vertex = np.zeros((model.n_vertices, 3))
        count = np.zeros(model.n_vertices)
        for k in range(3):
            np.add.at(per_vertex, faces[:, k], colours)
            np.add.at(count, faces[:, k], 1.0)
        colours = 0.5 * colours + 0.5 * (per_vertex / count[:, None])[faces].mean(1)
    return colours


def save(fig: plt.Figure, path: Path, dpi: int) -> None:
    """PNG with a 256-colour adaptive palette (renders of a shaded mesh lose nothing visible), written atomically."""
    raw = io.BytesIO()
    fig.savefig(raw, dpi=dpi, format="png")
    plt.close(fig)
    image = Image.open(io.BytesIO(raw.getvalue())).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    atomic_write_bytes(path, out.getvalue())
    path.chmod(0o644)


def _yaw(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def draw(ax: plt.Axes, vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray, yaw: float,
         window: tuple[float, float, float, float] = (-0.13, 0.13, -0.19, 0.14)) -> None:
    """Orthographic view from +z after turning the head by ``yaw`` degrees (positive: its left cheek to us)."""
    v = vertices @ _yaw(yaw).T
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    vn /= np.linalg.norm(vn, axis=1, keepdims=True) + 1e-12
    n = vn[faces].mean(1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    key = np.array([0.35, 0.45, 1.0])
    fill = np.array([-0.6, 0.1, 0.6])
    light = 0.22 + 0.68 * np.clip(n @ (key / np.linalg.norm(key)), 0, 1) + 0.18 * np.clip(
        n @ (fill / np.linalg.norm(fill)), 0, 1)
    rgb = np.clip(colours * light[:, None], 0, 1)
    visible = fn[:, 2] > 0
    order = np.argsort(tri[:, :, 2].mean(1))
    order = order[visible[order]]
    ax.add_collection(PolyCollection(tri[order][:, :, :2], facecolors=rgb[order], edgecolors=rgb[order],
                                     linewidths=0.3, antialiased=True))
    ax.set_xlim(window[0], window[1])
    ax.set_ylim(window[2], window[3])
    ax.set_aspect("equal")
    ax.axis("off")


def pose(model: HeadModel, shape: dict[str, float] | None = None, expr: dict[str, float] | None = None,
         **fields: list[float]) -> np.ndarray:
    p = HeadParams.zeros(1, n_shape=model.n_shape, n_expr=model.n_expr)
    shape_names = [n for n, _ in SHAPE_COMPONENTS]
    expr_names = [n for n, _ in EXPRESSION_COMPONENTS]
    for name, value in (shape or {}).items():
        p.shape[0, shape_names.index(name)] = value
    for name, value in (expr or {}).items():
        p.expr[0, expr_names.index(name)] = value
    for name, value in fields.items():
        getattr(p, name)[0] = torch.tensor(value)
    with torch.no_grad():
        return model(p).vertices[0].double().numpy()


EXTREME = {"head_width": -2.5, "head_depth": 2.0, "face_length": 2.5, "jaw_width": 2.5, "chin_projection": 2.5,
           "nose_projection": 2.5, "nose_width": 2.0, "nose_bridge": 2.0, "cheekbones": 2.5, "brow_ridge": 2.5,
           "ear_size": 2.5, "ear_protrusion": 2.0, "lip_fullness": 2.5, "neck_thickness": 2.0}
"""A shape +-2.5 standard deviations away from the mean on a dozen components."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNG files")
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_head_model()
    faces = model.faces.numpy()
    colours = face_colours(model, COLOURS, SKIN, soften=True)
    views = (("front", 0.0), ("three-quarter", 40.0), ("side", 90.0))
    states = (
        ("neutral", pose(model)),
        ("shape +-2.5 s.d.", pose(model, shape=EXTREME)),
        ("jaw open + smile", pose(model, expr={"smile": 2.0}, jaw_pose=[0.28, 0.0, 0.0])),
    )
    fig, axes = plt.subplots(len(states), len(views), figsize=(3.2 * len(views), 3.9 * len(states)))
    for row, (label, verts) in enumerate(states):
        for col, (view, yaw) in enumerate(views):
            draw(axes[row, col], verts, faces, colours, yaw)
            axes[row, col].set_title(f"{label}, {view}", fontsize=9)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    save(fig, args.out / "builtin_head.png", args.dpi)

    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.9))
    region_colours = face_colours(model, REGION_COLOURS, np.array([0.6, 0.6, 0.6]))
    for ax, (view, yaw) in zip(axes, (("front", 0.0), ("three-quarter", 40.0), ("back", 180.0))):
        draw(ax, model.v_template.double().numpy(), faces, region_colours, yaw)
        ax.set_title(f"face_regions, {view}", fontsize=9)
    fig.tight_layout()
    save(fig, args.out / "regions.png", args.dpi)

    expressions = (
        ("blink_left 2", {"blink_left": 2.0}, {}),
        ("brow_raise 2", {"brow_raise": 2.0}, {}),
        ("pucker 2", {"pucker": 2.0}, {}),
        ("lips_part 2", {"lips_part": 2.0}, {}),
        ("frown 2 + brow_frown 2", {"frown": 2.0, "brow_frown": 2.0}, {}),
        ("jaw 0.35 rad", {}, {"jaw_pose": [0.35, 0.0, 0.0]}),
        ("neck turn + eyes", {}, {"neck_pose": [0.0, 0.5, 0.0], "eyes_pose": [0.0, 0.35, 0.0, 0.0, 0.35, 0.0]}),
    )
    fig, axes = plt.subplots(1, len(expressions), figsize=(2.6 * len(expressions), 3.2))
    for ax, (label, expr, fields) in zip(axes, expressions):
        draw(ax, pose(model, expr=expr, **fields), faces, colours, 15.0, window=(-0.08, 0.1, -0.12, 0.08))
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    save(fig, args.out / "expressions.png", args.dpi)
    print(f"wrote {', '.join(str(args.out / n) for n in ('builtin_head.png', 'regions.png', 'expressions.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""An INRIA 3DGS *model folder*: what the reference 3D Gaussian Splatting code (graphdeco-inria/gaussian-splatting)
writes after training and what its SIBR viewer (``SIBR_gaussianViewer_app -m FOLDER``) opens::

    FOLDER/
      cfg_args                                    one line: the repr of an argparse Namespace
      cameras.json                                the views, INRIA's JSON camera list
      input.ply                                   the "source" points (x y z nx ny nz red green blue)
      point_cloud/iteration_<N>/point_cloud.ply   the Gaussians (INRIA layout, :func:`avp.export.ply.write_splat_ply`)

What the readers need (checked against their sources):

- ``cfg_args``: INRIA's scripts ``eval`` the line as a ``Namespace(...)`` (:func:`read_cfg_args` reads it without
  ``eval``); SIBR reads it as text, taking the value after ``sh_degree=`` (an int: the number of ``f_rest`` it
  expects, ``3 ((d + 1)^2 - 1)``, so it must match the ply), ``white_background=`` (``True`` anywhere in it) and,
  unless given ``-s``, ``source_path=`` (the characters between the quotes; a value stops at the first ``,`` or
  ``)``). When that folder cannot be loaded as a dataset SIBR falls back to the model folder itself, which it
  recognises by ``cameras.json`` and whose ``input.ply`` it loads as the proxy point cloud. So ``source_path`` names
  this folder (absolute path when written; a moved folder still opens through the fallback).
- ``cameras.json``: a list of ``{"id", "img_name", "width", "height", "position", "rotation", "fx", "fy"}``:
  ``position`` is the camera centre in world space, ``rotation`` the camera-to-world rotation (rows), in OpenCV/COLMAP
  axes (x right, y down, z forward), focal lengths in pixels; the principal point is taken to be the image centre.
- ``point_cloud/iteration_<N>``: SIBR opens the largest ``N`` (any ``N >= 0``); :data:`INRIA_ITERATION` is INRIA's
  default last iteration, which third-party scripts often assume. No training happened at that iteration.

The Gaussians are world space and static: a head avatar at rest (or one pose). Nothing here animates.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avp.atomic import atomic_open, atomic_write_json, atomic_write_text
from avp.export.ply import PlySplats, pad_sh, splats_from_cloud, write_splat_ply
from avp.render.sh import C0
from avp.types import Cameras, GaussianCloud

__all__ = [
    "INRIA_ITERATION",
    "cameras_json",
    "cfg_args_line",
    "read_cfg_args",
    "read_inria_cameras",
    "write_inria_model",
]

INRIA_ITERATION = 30000
"""The ``iteration_<N>`` folder name used by default (INRIA's default ``--iterations``)."""


def cfg_args_line(*, sh_degree: int, source_path: str, model_path: str, white_background: bool = False) -> str:
    """The one line of ``cfg_args``: ``str(argparse.Namespace(...))`` of INRIA's ``ModelParams`` fields, at INRIA's
    defaults except those given (``data_device`` is left out: a device is the reader's choice)."""
    for key, value in (("source_path", source_path), ("model_path", model_path)):
        if re.search(r"[,)'\"\n]", value):
            raise ValueError(f"cfg_args: {key} {value!r} contains a character SIBR cannot read back (, ) quote or "
                             "newline); write the folder under a plainer path")
    namespace = argparse.Namespace(sh_degree=int(sh_degree), source_path=source_path, model_path=model_path,
                                   images="images", depths="", resolution=-1,
                                   white_background=bool(white_background), train_test_exp=False, eval=False)
    return str(namespace)


def read_cfg_args(path: str | Path) -> argparse.Namespace:
    """``cfg_args`` back as the Namespace INRIA's ``get_combined_args`` gets by ``eval``-ing it, read without
    ``eval``: a ``Namespace(key=literal, …)`` call is required, each value read by :func:`ast.literal_eval`."""
    text = Path(path).read_text().strip()
    try:
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace"
                and not call.args and all(k.arg for k in call.keywords)):
            raise ValueError("not a Namespace(key=value, ...) call")
        return argparse.Namespace(**{k.arg: ast.literal_eval(k.value) for k in call.keywords})
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not an INRIA cfg_args line ({e})") from e


def cameras_json(cameras: Cameras, names: list[str] | None = None) -> list[dict[str, Any]]:
    """INRIA's camera list for ``cameras`` (``Ks [V, 3, 3]``, ``viewmats [V, 4, 4]``; world-to-camera, OpenCV)."""
    if cameras.Ks.dim() != 3:
        raise ValueError(f"cameras.json: give one set of views, Ks [V, 3, 3]; got {tuple(cameras.Ks.shape)}")
    V = cameras.n_views
    names = names if names is not None else [f"view_{v:03d}" for v in range(V)]
    if len(names) != V:
        raise ValueError(f"cameras.json: {len(names)} names for {V} views")
    c2w = torch.linalg.inv(cameras.viewmats.detach().double().cpu())  # [V, 4, 4]
    Ks = cameras.Ks.detach().double().cpu()
    return [{"id": v, "img_name": names[v], "width": int(cameras.width), "height": int(cameras.height),
             "position": c2w[v, :3, 3].tolist(), "rotation": c2w[v, :3, :3].tolist(),
             "fy": float(Ks[v, 1, 1]), "fx": float(Ks[v, 0, 0])} for v in range(V)]


def read_inria_cameras(path: str | Path) -> Cameras:
    """A ``cameras.json`` back as :class:`~avp.types.Cameras` (principal point at the image centre; every entry must
    share the first one's size)."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of cameras")
    width, height = int(entries[0]["width"]), int(entries[0]["height"])
    Ks, viewmats = [], []
    for e in entries:
        if (int(e["width"]), int(e["height"])) != (width, height):
            raise ValueError(f"{path}: camera {e['id']} is {e['width']}x{e['height']}, the first {width}x{height}")
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = torch.tensor(e["rotation"], dtype=torch.float64)
        c2w[:3, 3] = torch.tensor(e["position"], dtype=torch.float64)
        viewmats.append(torch.linalg.inv(c2w))
        Ks.append(torch.tensor([[e["fx"], 0.0, width / 2], [0.0, e["fy"], height / 2], [0.0, 0.0, 1.0]],
                               dtype=torch.float64))
    return Cameras(Ks=torch.stack(Ks).float(), viewmats=torch.stack(viewmats).float(), width=width, height=height)


def _write_input_ply(path: Path, splats: PlySplats) -> Path:
    """INRIA's ``input.ply`` layout: float x y z, zero normals, uchar red green blue (the splats' DC colour)."""
    from plyfile import PlyData, PlyElement

    rgb = np.clip(0.5 + C0 * splats.f_dc.astype(np.float64), 0.0, 1.0)
    elements = np.empty(splats.n_points, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"),
                                                 ("nz", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, axis in enumerate("xyz"):
        elements[axis] = splats.xyz[:, i]
        elements[f"n{axis}"] = 0.0
    for i, channel in enumerate(("red", "green", "blue")):
        elements[channel] = np.round(rgb[:, i] * 255).astype(np.uint8)
    with atomic_open(path, "wb") as f:
        PlyData([PlyElement.describe(elements, "vertex")]).write(f)
    return path


def write_inria_model(directory: str | Path, cloud: GaussianCloud | PlySplats, cameras: Cameras, *,
                      iteration: int = INRIA_ITERATION, sh_degree: int = 3, white_background: bool = False,
                      names: list[str] | None = None) -> dict[str, Path]:
    """Write an INRIA 3DGS model folder (see the module docstring) -> ``{"cfg_args", "cameras", "input",
    "point_cloud"}`` paths.

    Args:
        cloud: world-space Gaussians (``[N]`` or ``[1, N]`` activated, or raw :class:`PlySplats` of degree
            ``<= sh_degree``); SH is zero-padded to ``sh_degree``, which ``cfg_args`` records.
        cameras: the views SIBR lists and snaps to (``[V]``; e.g. the training rig's framing around the head).
        iteration: the ``point_cloud/iteration_<N>`` folder.
        white_background: the viewer's background (avp's avatars are trained on white).
        names: ``img_name`` per view (default ``view_000`` …).
    """
    if iteration < 0:
        raise ValueError(f"write_inria_model: iteration must be >= 0, got {iteration}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    root = str(directory.resolve())
    line = cfg_args_line(sh_degree=sh_degree, source_path=root, model_path=root, white_background=white_background)
    splats = pad_sh(cloud, sh_degree) if isinstance(cloud, PlySplats) else splats_from_cloud(cloud, sh_degree=sh_degree)
    paths = {"cfg_args": directory / "cfg_args", "cameras": directory / "cameras.json",
             "input": directory / "input.ply",
             "point_cloud": directory / "point_cloud" / f"iteration_{int(iteration)}" / "point_cloud.ply"}
    write_splat_ply(paths["point_cloud"], splats, sh_degree=None)
    _write_input_ply(paths["input"], splats)
    atomic_write_json(paths["cameras"], cameras_json(cameras, names))
    atomic_write_text(paths["cfg_args"], line)  # INRIA writes no trailing newline either
    return paths

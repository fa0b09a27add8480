"""FLAME loader (2020 ``generic_model.pkl``, 2023 ``flame2023.pkl``) and GaussianAvatars' teeth extension.

FLAME's pickles were written by Python 2 with chumpy: some arrays are ``chumpy.ch.Ch`` objects (a chumpy leaf is
pickled as its class plus a state dict whose ``"x"`` entry is the numpy array) and ``J_regressor`` is a scipy sparse
matrix. :func:`read_flame_pickle` maps chumpy classes to a stand-in that keeps the state, so chumpy need not be
installed, and old numpy/scipy module paths to the current ones. Every array is checked for its key, dtype and shape
and a bad file fails with an error that names the file and the key.

Both releases store 400 blendshape directions: 300 identity (shape) then 100 expression. The key sets we rely on are
the same in both (``v_template``, ``f``, ``shapedirs``, ``posedirs``, ``J_regressor``, ``weights``,
``kintree_table``); other keys (``J``, ``bs_style``, ``bs_type``, ...) are optional and ignored.

The teeth extension reproduces GaussianAvatars' ``FlameHead.add_teeth`` (facts from its ``flame_model/flame.py``):
120 vertices in eight rows of 15 built from the outer lip rings of the template (upper/lower roots and edges, front
and back), 168 triangles appended after FLAME's 9,976 in its order (upper teeth then lower), upper teeth skinned
entirely to the neck joint and lower teeth to the jaw, identity blendshapes copied from the mean of the two lip
rings, expression blendshapes, pose correctives and joint-regressor columns zero. Total 5,143 vertices and 10,144
faces, so GaussianAvatars' ``binding`` indices are valid unchanged.

Releases. FLAME 2020 (``generic_model.pkl``) and FLAME 2023 (``flame2023.pkl``) share the topology but not the
template, blendshapes or skinning, and neither file names its release inside, so the release is read from the file
name (or given as ``HeadConfig.flame_version``) and kept as ``HeadModel.flame_version``. Tracked parameters, static
offsets and GaussianAvatars fits only make sense on the release they were made with; :func:`check_flame_version`
refuses another one, naming the model file and both releases. GaussianAvatars' pre-processed data relies on
FLAME 2023 (its ``doc/download.md``) and VHAP loads ``flame2023.pkl`` by default (``FLAME_MODEL_PATH`` in
``vhap/model/flame.py``), in ShenhanQian/GaussianAvatars and ShenhanQian/VHAP.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from avp.head.model import FLAME_PARENTS, JOINT_NAMES, HeadAssets

__all__ = [
    "FLAME_N_FACES",
    "FLAME_N_VERTICES",
    "FLAME_VERSIONS",
    "FlameFileError",
    "FlameVersionError",
    "LIP_OUTSIDE_RING_LOWER",
    "LIP_OUTSIDE_RING_UPPER",
    "N_TEETH_FACES",
    "N_TEETH_VERTICES",
    "add_teeth",
    "check_flame_version",
    "flame_version_from_path",
    "load_flame_assets",
    "read_flame_pickle",
    "teeth_faces",
]

FLAME_N_VERTICES = 5023
FLAME_N_FACES = 9976
FLAME_N_SHAPE_DIRS = 300
FLAME_VERSIONS = ("2020", "2023")
N_TEETH_VERTICES = 120
N_TEETH_FACES = 168
_TEETH_COLUMNS = 15

# GaussianAvatars' outer lip rings (FLAME vertex ids, left to right), the anchors of its teeth.
LIP_OUTSIDE_RING_UPPER = (1713, 1715, 1716, 1735, 1696, 1694, 1657, 3543, 2774, 2811, 2813, 2850, 2833, 2832, 2830)
LIP_OUTSIDE_RING_LOWER = (1576, 1577, 1773, 1774, 1795, 1802, 1865, 3503, 2948, 2905, 2898, 2881, 2880, 2713, 2712)

REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")

# FLAME_masks.pkl region -> our region names (a face belongs to a region when all three of its vertices do)
FLAME_MASK_REGIONS = {
    "scalp": ("scalp",),
    "face": ("face",),
    "forehead": ("forehead",),
    "nose": ("nose",),
    "lips": ("lips",),
    "neck": ("neck",),
    "ears": ("left_ear", "right_ear"),
    "eyeballs": ("left_eyeball", "right_eyeball"),
    "eyes": ("eye_region", "left_eyeball", "right_eyeball"),
}


class FlameFileError(ValueError):
    """A FLAME (or FLAME masks) file that cannot be used; the message names the file and the key."""


class FlameVersionError(ValueError):
    """Something made with one FLAME release used with a head model of another (or of an unknown) release."""


class _ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling; keeps the pickled state for :func:`_to_array`."""

    chumpy_class = "chumpy.ch.Ch"
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state = kwargs or (args[0] if args else None)


def _stand_in_for(module: str, name: str) -> type:
    return type(name, (_ChumpyStandIn,), {"chumpy_class": f"{module}.{name}"})


class _FlameUnpickler(pickle.Unpickler):
    """Unpickler for Python-2 FLAME files: chumpy classes become stand-ins, old numpy/scipy paths are remapped."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in_for(module, name)
        if module.startswith("scipy.sparse"):
            import scipy.sparse

            if hasattr(scipy.sparse, name):
                return getattr(scipy.sparse, name)
        if module.startswith("numpy.core"):
            modern = "numpy._core" + module[len("numpy.core"):]
            try:
                return getattr(importlib.import_module(modern), name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def read_flame_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle a FLAME file into a dict (chumpy objects left as stand-ins); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FlameFileError(f"FLAME model file {str(path)!r} does not exist (FLAME is licensed: download it from "
                             "https://flame.is.tue.mpg.de and pass its path)")
    try:
        with path.open("rb") as f:
            data = _FlameUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            UnicodeDecodeError, MemoryError) as e:
        raise FlameFileError(f"{path}: not a readable FLAME pickle (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise FlameFileError(f"{path}: expected a FLAME pickle holding a dict, found {type(data).__name__}")
    return data


def _to_array(value: Any, key: str, path: Path) -> np.ndarray:
    """numpy array from an ndarray, a chumpy stand-in, a scipy sparse matrix or a nested list."""
    if isinstance(value, _ChumpyStandIn):
        state = value.state
        if not isinstance(state, dict) or "x" not in state:
            raise FlameFileError(f"{path}: key {key!r} holds a {value.chumpy_class} object without the array state "
                                 "'x' (a derived chumpy expression); re-save the model with plain numpy arrays")
        value = state["x"]
    if hasattr(value, "toarray") and hasattr(value, "tocsr"):
        value = value.toarray()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise FlameFileError(f"{path}: key {key!r} is not an array ({type(value).__name__})") from e
    if arr.dtype == object:
        raise FlameFileError(f"{path}: key {key!r} is not a numeric array (got an object array of "
                             f"{type(arr.flat[0]).__name__ if arr.size else 'nothing'})")
    return arr


def _checked(data: dict[str, Any], key: str, path: Path, shape: tuple[int | None, ...], kind: str) -> np.ndarray:
    if key not in data:
        raise FlameFileError(f"{path}: missing key {key!r} (FLAME pickles hold {list(REQUIRED_KEYS)}; found "
                             f"{sorted(map(str, data))})")
    arr = _to_array(data[key], key, path)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise FlameFileError(f"{path}: key {key!r} has shape {list(arr.shape)}, expected {want}")
    if kind == "float" and not np.issubdtype(arr.dtype, np.floating):
        raise FlameFileError(f"{path}: key {key!r} has dtype {arr.dtype}, expected floating point")
    if kind == "int" and not np.issubdtype(arr.dtype, np.integer):
        raise FlameFileError(f"{path}: key {key!r} has dtype {arr.dtype}, expected integers")
    if kind == "float" and not np.all(np.isfinite(arr)):
        raise FlameFileError(f"{path}: key {key!r} holds non-finite values")
    return arr


def flame_version_from_path(path: str | os.PathLike) -> str:
    """The FLAME release a model file's name says (``flame2023.pkl``, ``FLAME2020/generic_model.pkl``): ``"2020"`` or
    ``"2023"``; FLAME 2020's ``generic_model.pkl`` is 2020; ``""`` when neither the name nor its folder says."""
    path = Path(path)
    for name in (path.name, path.parent.name):
        match = re.search(r"(?<!\d)(20\d\d)(?!\d)", name)
        if match:
            return match.group(1) if match.group(1) in FLAME_VERSIONS else ""
    return "2020" if path.name == "generic_model.pkl" else ""


def check_flame_version(head: Any, expected: str | None, *, what: str) -> None:
    """Refuse ``head`` for something (``what``: a fit, a parameter file) made with FLAME release ``expected``.

    None skips the check. The error names ``what``, the head model's file and both releases.
    """
    if expected is None:
        return
    expected = str(expected)
    if expected not in FLAME_VERSIONS:
        raise ValueError(f"{what}: the FLAME version must be one of {list(FLAME_VERSIONS)}, got {expected!r}")
    actual = getattr(head, "flame_version", None)
    source = getattr(head, "source", None) or f"head model {head.name!r}"
    if actual is None:
        raise FlameVersionError(f"{what} was made with FLAME {expected}, but the head model {head.name!r} is not a "
                                f"FLAME model; build it from the FLAME {expected} file (head.flame_path)")
    if actual == "":
        raise FlameVersionError(f"{what} was made with FLAME {expected}, but which FLAME release {source} is cannot be "
                                "told from its name; set the head config's flame_version ('2020' or '2023') or "
                                f"name the file flame{expected}.pkl")
    if actual != expected:
        raise FlameVersionError(f"{what} was made with FLAME {expected}, but the head model {head.name!r} is FLAME "
                                f"{actual} ({source}); use the FLAME {expected} model file it was made with")


def load_flame_assets(
    path: str | os.PathLike,
    *,
    teeth: bool = True,
    masks_path: str | os.PathLike | None = None,
    version: str | None = None,
) -> HeadAssets:
    """Read and validate a FLAME pickle; optionally add GaussianAvatars' teeth and FLAME's semantic regions.

    All shape (300) and expression directions are kept; :class:`~avp.head.model.HeadModel` truncates them.
    """
    path = Path(path)
    data = read_flame_pickle(path)
    v_template = _checked(data, "v_template", path, (None, 3), "float").astype(np.float64)
    V = v_template.shape[0]
    faces = _checked(data, "f", path, (None, 3), "int").astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= V):
        raise FlameFileError(f"{path}: key 'f' indexes vertices outside [0, {V}) (min {faces.min()}, "
                             f"max {faces.max()})")
    shapedirs = _checked(data, "shapedirs", path, (V, 3, None), "float").astype(np.float64)
    if shapedirs.shape[-1] <= FLAME_N_SHAPE_DIRS:
        raise FlameFileError(f"{path}: key 'shapedirs' has {shapedirs.shape[-1]} directions; FLAME stores "
                             f"{FLAME_N_SHAPE_DIRS} identity directions followed by the expression directions")
    kintree = _checked(data, "kintree_table", path, (2, None), "int")
    J = kintree.shape[1]
    parents = tuple(-1 if j == 0 else int(kintree[0, j]) for j in range(J))
    if parents != FLAME_PARENTS:
        raise FlameFileError(f"{path}: key 'kintree_table' gives parents {list(parents)}; FLAME's tree is "
                             f"{list(FLAME_PARENTS)} (root, neck, jaw, left eye, right eye)")
    posedirs = _checked(data, "posedirs", path, (V, 3, (J - 1) * 9), "float").astype(np.float64)
    J_regressor = _checked(data, "J_regressor", path, (J, V), "float").astype(np.float64)
    weights = _checked(data, "weights", path, (V, J), "float").astype(np.float64)
    if not np.allclose(weights.sum(1), 1.0, atol=1e-4):
        raise FlameFileError(f"{path}: key 'weights' rows must sum to 1")

    if teeth and (V, faces.shape[0]) != (FLAME_N_VERTICES, FLAME_N_FACES):
        raise FlameFileError(f"{path}: the teeth extension needs FLAME's topology ({FLAME_N_VERTICES} vertices, "
                             f"{FLAME_N_FACES} faces); this file has {V} vertices and {faces.shape[0]} faces "
                             "(set teeth=False for other meshes)")
    if version is None:
        version = flame_version_from_path(path)
    elif str(version) not in FLAME_VERSIONS:
        raise FlameFileError(f"{path}: flame_version must be one of {list(FLAME_VERSIONS)}, got {version!r}")
    version = str(version)
    assets = HeadAssets(
        name=f"flame{version}" + ("+teeth" if teeth else ""),
        v_template=v_template,
        shapedirs=shapedirs[..., :FLAME_N_SHAPE_DIRS],
        exprdirs=shapedirs[..., FLAME_N_SHAPE_DIRS:],
        # FLAME's [V, 3, P] -> [P, V*3] (row p is the displacement field of pose feature p)
        posedirs=posedirs.reshape(V * 3, -1).T.copy(),
        J_regressor=J_regressor,
        weights=weights,
        faces=faces,
        parents=FLAME_PARENTS,
        joint_names=JOINT_NAMES,
        flame_version=version,
        source=str(path),
    )
    vertex_masks = _read_masks(Path(masks_path), V) if masks_path is not None else {}
    if teeth:
        assets = add_teeth(assets)
    assets.face_regions.update(_regions_from_vertex_masks(vertex_masks, assets.faces[:faces.shape[0]], V))
    return assets


def teeth_faces() -> np.ndarray:
    """``[168, 3]`` GaussianAvatars' teeth triangles in its order, indexing the 120 teeth vertices (0-based).

    Rows of 15 teeth vertices: upper root 0, lower root 15, upper edge 30, lower edge 45, upper root back 60, upper
    edge back 75, lower root back 90, lower edge back 105. Each of the six strips (front, back, and the biting edge
    joining them, for the upper then the lower teeth) splits its quads along one diagonal on the first 7 columns and
    along the other on the last 7, with the winding GaussianAvatars uses.
    """
    n = _TEETH_COLUMNS

    def strip(p: int, q: int, first: str, reverse: bool) -> list[tuple[int, int, int]]:
        tris: list[tuple[int, int, int]] = []
        for i in range(n - 1):
            kind = first if i < (n - 1) // 2 else ("d2" if first == "d1" else "d1")
            if kind == "d1":  # diagonal p_i -- q_{i+1}
                pair = [(p + i, q + i + 1, q + i), (p + i, p + i + 1, q + i + 1)]
            else:  # diagonal p_{i+1} -- q_i
                pair = [(p + i, p + i + 1, q + i), (p + i + 1, q + i + 1, q + i)]
            tris += [(a, c, b) for a, b, c in pair] if reverse else pair
        return tris

    upper = strip(0, 30, "d1", False) + strip(60, 75, "d1", True) + strip(75, 30, "d2", True)
    lower = strip(45, 15, "d2", False) + strip(90, 105, "d1", False) + strip(105, 45, "d2", False)
    return np.asarray(upper + lower, dtype=np.int64)


def add_teeth(assets: HeadAssets) -> HeadAssets:
    """GaussianAvatars' teeth appended to a FLAME topology model (see the module docstring)."""
    V = assets.v_template.shape[0]
    if (V, assets.faces.shape[0]) != (FLAME_N_VERTICES, FLAME_N_FACES):
        raise ValueError(f"{assets.name}: teeth need FLAME's topology ({FLAME_N_VERTICES} vertices, {FLAME_N_FACES} "
                         f"faces), got {V} and {assets.faces.shape[0]}")
    up = np.asarray(LIP_OUTSIDE_RING_UPPER)
    lo = np.asarray(LIP_OUTSIDE_RING_LOWER)
    lip_up, lip_lo = assets.v_template[up], assets.v_template[lo]
    gap = np.linalg.norm(lip_up - lip_lo, axis=-1).mean()
    middle = (lip_up + lip_lo) / 2
    middle[:, 1] = middle[:, 1].mean()
    middle[:, 2] -= 1.5 * gap  # teeth sit 1.5 lip gaps behind the lips
    y = np.array([0.0, gap, 0.0])
    z = np.array([0.0, 0.0, gap])
    upper_edge = middle + 0.1 * y
    upper_root = upper_edge + 2 * y
    lower_edge = middle - 0.1 * y - 0.4 * z
    lower_root = lower_edge - 2 * y
    thickness = 1.0 * z
    rows = [upper_root, lower_root, upper_edge, lower_edge,
            upper_root - thickness, upper_edge - thickness, lower_root - thickness, lower_edge - thickness]
    v_teeth = np.concatenate(rows, axis=0)  # [120, 3]
    upper_rows, lower_rows = (0, 2, 4, 5), (1, 3, 6, 7)
    n = _TEETH_COLUMNS
    upper_ids = np.concatenate([np.arange(r * n, (r + 1) * n) for r in upper_rows])
    lower_ids = np.concatenate([np.arange(r * n, (r + 1) * n) for r in lower_rows])

    shape_mean = (assets.shapedirs[up] + assets.shapedirs[lo]) / 2  # [15, 3, S]
    shapedirs_teeth = np.tile(shape_mean, (8, 1, 1))  # row r, column i <- lip ring column i
    exprdirs_teeth = np.zeros((N_TEETH_VERTICES, 3, assets.exprdirs.shape[-1]))
    J = len(assets.parents)
    weights_teeth = np.zeros((N_TEETH_VERTICES, J))
    weights_teeth[upper_ids, JOINT_NAMES.index("neck")] = 1.0
    weights_teeth[lower_ids, JOINT_NAMES.index("jaw")] = 1.0
    posedirs = assets.posedirs
    if posedirs is not None:
        posedirs = np.concatenate([posedirs, np.zeros((posedirs.shape[0], N_TEETH_VERTICES * 3))], axis=1)
    faces_teeth = teeth_faces() + V
    F = assets.faces.shape[0]
    regions = dict(assets.face_regions)
    regions["teeth"] = np.arange(F, F + N_TEETH_FACES)
    regions["upper_teeth"] = np.arange(F, F + N_TEETH_FACES // 2)
    regions["lower_teeth"] = np.arange(F + N_TEETH_FACES // 2, F + N_TEETH_FACES)
    return HeadAssets(
        name=assets.name,
        v_template=np.concatenate([assets.v_template, v_teeth]),
        shapedirs=np.concatenate([assets.shapedirs, shapedirs_teeth]),
        exprdirs=np.concatenate([assets.exprdirs, exprdirs_teeth]),
        J_regressor=np.concatenate([assets.J_regressor, np.zeros((J, N_TEETH_VERTICES))], axis=1),
        weights=np.concatenate([assets.weights, weights_teeth]),
        faces=np.concatenate([assets.faces, faces_teeth]),
        posedirs=posedirs,
        parents=assets.parents,
        joint_names=assets.joint_names,
        face_regions=regions,
        flame_version=assets.flame_version,
        source=assets.source,
    )


def _read_masks(path: Path, n_vertices: int) -> dict[str, np.ndarray]:
    data = read_flame_pickle(path)
    masks: dict[str, np.ndarray] = {}
    for key, value in data.items():
        arr = _to_array(value, str(key), path)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise FlameFileError(f"{path}: mask {key!r} must be a 1-D integer array of vertex ids, got "
                                 f"{arr.dtype} {list(arr.shape)}")
        if arr.size and (arr.min() < 0 or arr.max() >= n_vertices):
            raise FlameFileError(f"{path}: mask {key!r} indexes vertices outside [0, {n_vertices})")
        masks[str(key)] = arr.astype(np.int64)
    return masks


def _regions_from_vertex_masks(masks: dict[str, np.ndarray], faces: np.ndarray, n_vertices: int
                               ) -> dict[str, np.ndarray]:
    if not masks:
        return {}
    regions: dict[str, np.ndarray] = {}
    for region, sources in FLAME_MASK_REGIONS.items():
        present = [masks[s] for s in sources if s in masks]
        if not present:
            continue
        inside = np.zeros(n_vertices, dtype=bool)
        inside[np.concatenate(present)] = True
        regions[region] = np.flatnonzero(inside[faces].all(axis=1))
    return regions

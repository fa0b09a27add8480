"""The built-in head's rig: harmonic skinning weights over FLAME's joints (root, neck, jaw, eyes) and the joint
regressor."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from avp.head.builtin_geometry import _Geometry
from avp.head.builtin_parts import EYEBALL_RINGS, EYEBALL_SEGMENTS
from avp.head.builtin_skin import MOUTH_Y

Array = np.ndarray


def _laplacian(n: int, faces: Array) -> scipy.sparse.csr_matrix:
    """Uniform graph Laplacian ``D - A`` of the mesh edges."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    A = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    A = (A + A.T).tocsr()
    A.data[:] = 1.0
    return (scipy.sparse.diags(np.asarray(A.sum(1)).ravel()) - A).tocsr()


def _harmonic(L: scipy.sparse.csr_matrix, fixed: Array, values: Array, solver=None) -> Array:
    """Solve ``L x = 0`` on the free vertices with ``x[fixed] = values``."""
    free = np.setdiff1d(np.arange(L.shape[0]), fixed)
    x = np.zeros(L.shape[0])
    x[fixed] = values
    rhs = -L[free][:, fixed] @ values
    x[free] = (solver or scipy.sparse.linalg.splu(L[free][:, free].tocsc())).solve(rhs)
    return x


def _skinning_weights(g: _Geometry) -> Array:
    """``[V, 5]`` weights over (root, neck, jaw, left eye, right eye)."""
    V, parts = g.vertices, g.parts
    x, y, z = V[:, 0], V[:, 1], V[:, 2]
    n = len(V)
    rigged = np.isin(parts, ["skin", "mouth_bag", "socket_l", "socket_r"])
    ids = np.flatnonzero(rigged)
    local = -np.ones(n, dtype=int)
    local[ids] = np.arange(len(ids))
    sub_faces = g.faces[np.all(rigged[g.faces], axis=1)]
    L = _laplacian(len(ids), local[sub_faces])
    skin = parts == "skin"
    bag = parts == "mouth_bag"
    sockets = np.isin(parts, ["socket_l", "socket_r"])

    # jaw: the lower lip, chin and lower half of the mouth follow it; the upper lip, upper face, nape, neck do not
    # the mandible's skin: below the line from under the mouth corners to under the jaw angles, above the chin's base
    mandible = skin & (g.mouth_side <= 0) & (z > 0.01) & (y < -0.062 - 0.016 * (0.09 - z) / 0.09) & (y > -0.102)
    jaw_one = (g.mouth_side < 0) | mandible
    upper_lip_and_nose = skin & (g.mouth_side >= 0) & (y > MOUTH_Y + 0.009) & (np.abs(x) < 0.03) & (z > 0.07)
    jaw_zero = ((g.mouth_side > 0) | sockets | upper_lip_and_nose | (skin & (y > -0.022)) | (skin & (z < -0.028))
                | (skin & (y < -0.142)))
    jaw_zero &= ~jaw_one
    # root: the lower neck; the head never
    root_one = skin & (y < -0.172)
    root_zero = (skin & (y > -0.125)) | bag | sockets | jaw_one
    fixed_jaw = np.flatnonzero((jaw_one | jaw_zero)[ids])
    fixed_root = np.flatnonzero((root_one | root_zero)[ids])
    jaw = _harmonic(L, fixed_jaw, jaw_one[ids][fixed_jaw].astype(float))
    root = _harmonic(L, fixed_root, root_one[ids][fixed_root].astype(float))
    jaw, root = np.clip(jaw, 0, 1), np.clip(root, 0, 1)
    jaw = np.minimum(jaw, 1 - root)

    W = np.zeros((n, 5))
    W[ids, 0] = root
    W[ids, 2] = jaw
    W[ids, 1] = 1 - root - jaw
    W[parts == "eyeball_l", 3] = 1.0
    W[parts == "eyeball_r", 4] = 1.0
    W[parts == "upper_teeth", 1] = 1.0  # GaussianAvatars: upper teeth move with the neck (the skull)
    W[np.isin(parts, ["lower_teeth", "tongue"]), 2] = 1.0
    return W


def _joint_regressor(g: _Geometry) -> Array:
    """``[5, V]``: root, neck and jaw average skin vertices on both sides of the head around the joint; each eye the
    equator of its eyeball (whose mean is exactly the eyeball centre)."""
    V, parts = g.vertices, g.parts
    skin = np.flatnonzero(parts == "skin")
    J = np.zeros((5, len(V)))
    targets = {0: (0.054, -0.165, -0.014), 1: (0.060, -0.040, -0.016), 2: (0.066, -0.004, 0.001)}
    for j, (tx, ty, tz) in targets.items():
        chosen = []
        for side in (1.0, -1.0):
            d = np.linalg.norm(V[skin] - np.array([side * tx, ty, tz]), axis=1)
            chosen.append(skin[np.argsort(d)[:6]])
        chosen = np.concatenate(chosen)
        J[j, chosen] = 1.0 / len(chosen)
    for j, part in ((3, "eyeball_l"), (4, "eyeball_r")):
        ids = np.flatnonzero(parts == part)
        k = EYEBALL_RINGS // 2  # the equator
        equator = ids[1 + k * EYEBALL_SEGMENTS: 1 + (k + 1) * EYEBALL_SEGMENTS]
        J[j, equator] = 1.0 / len(equator)
    return J

"""Where mediapipe's face-mesh landmarks lie on the head model: a face index and barycentric coordinates per landmark.

A :class:`LandmarkEmbedding` covers a subset of mediapipe's 478 landmarks (:data:`LANDMARK_GROUPS`: eye contours
and irises, brows, nose, outer and inner lip contours, the lower jaw contour); the fit projects the embedded surface
points into the image and compares them with the detected landmarks.

Sources:

- **Built-in head** (:func:`builtin_landmark_embedding`): computed deterministically from the head's own geometry.
  The eye and mouth openings are found as the vertex loops shared by the skin and the eye-socket / mouth-cavity
  pockets; their corners are the loops' ends in x and their upper and lower margins are separated by height (eyes)
  or by jaw skinning weight (lips, whose margins coincide at rest). Mediapipe's eye and inner-lip contours are placed
  on those margins at the same relative x between the corners as in mediapipe's canonical face model (shipped in the
  landmarker's task file), bound to the skin triangle on the margin's side. The other landmarks are taken from the
  canonical face model, registered to the head by a per-axis scale and offset fitted on the eye corners, mouth
  corners, nose tip and mouth centre, and projected to the closest point of the skin triangles of their region
  (upper-lip landmarks to triangles skinned to the head, lower-lip ones to triangles skinned to the jaw). Irises go
  to the front pole of each eyeball.
- **FLAME** (:func:`load_landmark_embedding`): a user-supplied ``.npz`` in the layout several FLAME trackers use
  (MICA / metrical-tracker's ``mediapipe_landmark_embedding.npz``): ``lmk_face_idx [L]`` (int, FLAME face
  indices), ``lmk_b_coords [L, 3]`` (float barycentric coordinates) and ``landmark_indices [L]`` (int, mediapipe
  landmark indices, 0..477); optional ``lmk_weights [L]``. FLAME's own faces keep their indices in the teeth
  extension, so the same file serves ``flame2023+teeth``.
"""

from __future__ import annotations

import functools
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avp.atomic import atomic_open

__all__ = [
    "LANDMARK_GROUPS",
    "GROUP_WEIGHTS",
    "LandmarkEmbedding",
    "MissingLandmarkEmbedding",
    "builtin_landmark_embedding",
    "canonical_face_model",
    "landmark_embedding",
    "load_landmark_embedding",
]

N_MEDIAPIPE = 478

# mediapipe face-mesh indices ("right" = the subject's right, on the image's left in a frontal photo); contours run
# from one corner to the other
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "right_eye_upper": (33, 246, 161, 160, 159, 158, 157, 173, 133),
    "right_eye_lower": (7, 163, 144, 145, 153, 154, 155),
    "left_eye_upper": (263, 466, 388, 387, 386, 385, 384, 398, 362),
    "left_eye_lower": (249, 390, 373, 374, 380, 381, 382),
    "irises": (468, 473),
    "brows": (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285),
    "nose": (168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 129, 358),
    "lips_outer_upper": (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291),
    "lips_outer_lower": (146, 91, 181, 84, 17, 314, 405, 321, 375),
    "lips_inner_upper": (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308),
    "lips_inner_lower": (95, 88, 178, 87, 14, 317, 402, 318, 324),
    "jaw": (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454),
}
"""The landmark subset the built-in embedding covers, by group."""

GROUP_WEIGHTS = {"brows": 0.5, "jaw": 0.3}
"""Fit weights of the groups whose mediapipe definition is loosest (brow ridges and the face oval are not sharp
features); every other group weighs 1."""

# anchors of the canonical-model registration: mediapipe index -> what it is on the head
_ANCHORS = (33, 133, 362, 263, 61, 291, 4, 13)
_TASK_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"


class MissingLandmarkEmbedding(FileNotFoundError):
    """A head model without a built-in landmark embedding (FLAME) and no embedding file given."""


@dataclass
class LandmarkEmbedding:
    """``L`` mediapipe landmarks embedded on a head model's surface."""

    landmark_indices: Tensor
    """``[L]`` long mediapipe landmark index (0..477) of each embedded landmark."""
    face_idx: Tensor
    """``[L]`` long head-model face of each landmark."""
    bary: Tensor
    """``[L, 3]`` barycentric coordinates in that face (rows sum to 1)."""
    weights: Tensor
    """``[L]`` fit weight of each landmark."""
    head_model_name: str
    """The head model the faces index."""
    groups: list[str] = field(default_factory=list)
    """``[L]`` group name of each landmark (empty for files that carry none)."""
    source: str = ""
    """Where the embedding came from (``builtin`` or the file)."""

    @property
    def n_landmarks(self) -> int:
        return int(self.landmark_indices.shape[0])

    def points(self, vertices: Tensor, faces: Tensor) -> Tensor:
        """Surface points of the landmarks on a mesh: ``vertices [..., V, 3]``, ``faces [F, 3]`` -> ``[..., L, 3]``."""
        corners = faces.to(vertices.device)[self.face_idx.to(vertices.device)]  # [L, 3]
        tri = vertices[..., corners, :]  # [..., L, 3, 3]
        return (self.bary.to(vertices)[..., None] * tri).sum(-2)

    def select(self, landmarks: Tensor | np.ndarray) -> Tensor:
        """The embedded landmarks out of mediapipe's full set: ``[..., 478, C]`` -> ``[..., L, C]``."""
        landmarks = torch.as_tensor(np.asarray(landmarks) if not isinstance(landmarks, Tensor) else landmarks)
        if landmarks.shape[-2] != N_MEDIAPIPE:
            raise ValueError(f"landmarks must be [..., {N_MEDIAPIPE}, C] (mediapipe's face mesh with irises), got "
                             f"{tuple(landmarks.shape)}")
        return landmarks[..., self.landmark_indices.to(landmarks.device), :]

    def group_mask(self, *names: str) -> Tensor:
        """``[L]`` bool: landmarks of the named groups."""
        return torch.tensor([g in names for g in self.groups], dtype=torch.bool)

    def save(self, path: str | Path) -> Path:
        """Write the embedding in the tracker layout (``lmk_face_idx``, ``lmk_b_coords``, ``landmark_indices``) plus
        ``lmk_weights`` and ``lmk_groups``."""
        buf = io.BytesIO()
        np.savez(buf, lmk_face_idx=self.face_idx.cpu().numpy().astype(np.int64),
                 lmk_b_coords=self.bary.cpu().numpy().astype(np.float64),
                 landmark_indices=self.landmark_indices.cpu().numpy().astype(np.int64),
                 lmk_weights=self.weights.cpu().numpy().astype(np.float64),
                 lmk_groups=np.array(self.groups if self.groups else [""] * self.n_landmarks))
        path = Path(path)
        with atomic_open(path, "wb") as f:
            f.write(buf.getvalue())
        return path


# ------------------------------------------------------------------------------------------ loading a file

def load_landmark_embedding(path: str | Path, head_model: torch.nn.Module) -> LandmarkEmbedding:
    """Read a landmark embedding ``.npz`` (layout in the module docstring) for ``head_model``; errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise MissingLandmarkEmbedding(f"{path}: no such landmark embedding file")
    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: cannot read as an npz landmark embedding ({type(e).__name__}: {e})") from e
    missing = [k for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing keys {missing} (found {sorted(arrays)}); a mediapipe landmark embedding "
                         "holds lmk_face_idx [L], lmk_b_coords [L, 3] and landmark_indices [L]")
    face_idx = np.asarray(arrays["lmk_face_idx"]).reshape(-1)
    bary = np.asarray(arrays["lmk_b_coords"], dtype=np.float64)
    indices = np.asarray(arrays["landmark_indices"]).reshape(-1)
    L = face_idx.shape[0]
    if bary.shape != (L, 3) or indices.shape != (L,):
        raise ValueError(f"{path}: lmk_face_idx {face_idx.shape}, lmk_b_coords {bary.shape} and landmark_indices "
                         f"{indices.shape} must be [L], [L, 3] and [L]")
    if L == 0:
        raise ValueError(f"{path}: the embedding is empty")
    if not np.issubdtype(face_idx.dtype, np.integer) and np.any(face_idx != np.round(face_idx)):
        raise ValueError(f"{path}: lmk_face_idx must hold integer face indices")
    if face_idx.min() < 0 or face_idx.max() >= head_model.n_faces:
        raise ValueError(f"{path}: lmk_face_idx must index faces of {head_model.name} in [0, {head_model.n_faces}); "
                         f"got values in [{face_idx.min()}, {face_idx.max()}] (an embedding for another head model?)")
    if indices.min() < 0 or indices.max() >= N_MEDIAPIPE:
        raise ValueError(f"{path}: landmark_indices must be mediapipe indices in [0, {N_MEDIAPIPE})")
    if not np.all(np.isfinite(bary)) or np.any(bary < -1e-4) or not np.allclose(bary.sum(1), 1.0, atol=1e-3):
        raise ValueError(f"{path}: lmk_b_coords rows must be non-negative and sum to 1")
    weights = np.asarray(arrays.get("lmk_weights", np.ones(L)), dtype=np.float64).reshape(-1)
    if weights.shape != (L,) or np.any(weights < 0):
        raise ValueError(f"{path}: lmk_weights must be [L] and non-negative")
    groups = [str(g) for g in arrays["lmk_groups"]] if "lmk_groups" in arrays else []
    return LandmarkEmbedding(
        landmark_indices=torch.as_tensor(indices.astype(np.int64)), face_idx=torch.as_tensor(face_idx.astype(np.int64)),
        bary=torch.as_tensor(bary / bary.sum(1, keepdims=True), dtype=torch.float32),
        weights=torch.as_tensor(weights, dtype=torch.float32), head_model_name=head_model.name,
        groups=groups if len(groups) == L else [], source=str(path))


def landmark_embedding(head_model: torch.nn.Module, path: str | Path | None = None) -> LandmarkEmbedding:
    """The embedding to fit ``head_model`` with: the file at ``path`` when given, else the built-in head's own.

    Raises :class:`MissingLandmarkEmbedding` for a FLAME model without a file.
    """
    if path is not None:
        return load_landmark_embedding(path, head_model)
    from avp.head.builtin import BUILTIN_NAME

    if head_model.name == BUILTIN_NAME:
        return builtin_landmark_embedding(head_model)
    raise MissingLandmarkEmbedding(
        f"head model {head_model.name!r} has no built-in landmark embedding: give a mediapipe landmark embedding "
        "file (--landmark-embedding FILE.npz with lmk_face_idx [L], lmk_b_coords [L, 3], landmark_indices [L], e.g. "
        "the mediapipe_landmark_embedding.npz distributed with FLAME trackers such as MICA / metrical-tracker)")


# ---------------------------------------------------------------------------------- mediapipe's canonical model

def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _proto_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of a protobuf message (the wire format; no schema needed)."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i : i + n], i + n
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


@functools.cache
def canonical_face_model() -> np.ndarray:
    """``[468, 3]`` mediapipe's canonical face mesh in metres (x to the subject's left, y up, z out of the face).

    Read from the ``GeometryPipelineMetadata`` inside the face landmarker's task file (``canonical_mesh``, field 1;
    its ``vertex_buffer``, field 3, holds x y z u v per vertex in centimetres).
    """
    from avp.face._models import landmarker_task_file

    with zipfile.ZipFile(landmarker_task_file()) as z:
        data = z.read(_TASK_MEMBER)
    mesh = next(v for n, w, v in _proto_fields(data) if n == 1 and w == 2)
    floats: list[float] = []
    for number, wire, value in _proto_fields(mesh):
        if number == 3 and wire == 5:
            floats.append(float(np.frombuffer(value, "<f4")[0]))
        elif number == 3 and wire == 2:  # packed encoding
            floats.extend(np.frombuffer(value, "<f4").tolist())
    buffer = np.asarray(floats, dtype=np.float64)
    if buffer.size != 468 * 5:
        raise ValueError(f"mediapipe's canonical face model has {buffer.size} floats, expected {468 * 5}")
    return buffer.reshape(468, 5)[:, :3] / 100.0


# -------------------------------------------------------------------------------------------- built-in head

@dataclass
class _Opening:
    """An eye or mouth opening: corners (min x, max x) and the upper/lower margins sorted by x, corners included."""

    upper: np.ndarray
    lower: np.ndarray


def _vertices_of(faces: np.ndarray, ids: np.ndarray) -> set[int]:
    return set(faces[ids].ravel().tolist())


def _opening(V: np.ndarray, F: np.ndarray, skin: np.ndarray, pocket: np.ndarray, upper_of: np.ndarray) -> _Opening:
    """The loop shared by the skin and a pocket, split into margins by ``upper_of [V]`` bool (corners in both)."""
    loop = np.array(sorted(_vertices_of(F, skin) & _vertices_of(F, pocket)))
    if loop.size < 4:
        raise ValueError(f"built-in head: an opening loop has {loop.size} vertices")
    corners = loop[[np.argmin(V[loop, 0]), np.argmax(V[loop, 0])]]
    inner = loop[~np.isin(loop, corners)]
    chain = lambda ids: np.concatenate([corners[:1], ids[np.argsort(V[ids, 0])], corners[1:]])
    return _Opening(upper=chain(inner[upper_of[inner]]), lower=chain(inner[~upper_of[inner]]))


def _on_margin(V: np.ndarray, chain: np.ndarray, fraction: float) -> tuple[int, int, float]:
    """The point of a margin polyline at ``fraction`` of the corner-to-corner x extent: ``(a, b, t)``."""
    x = V[chain, 0]
    target = x[0] + fraction * (x[-1] - x[0])
    k = int(np.clip(np.searchsorted(x, target) - 1, 0, len(chain) - 2))
    t = float(np.clip((target - x[k]) / max(x[k + 1] - x[k], 1e-12), 0.0, 1.0))
    return int(chain[k]), int(chain[k + 1]), t


def _edge_face(F: np.ndarray, allowed: np.ndarray, a: int, b: int) -> tuple[int, np.ndarray]:
    """A face of ``allowed`` holding edge ``(a, b)`` and the barycentric weights ``(1, 0)`` pattern positions."""
    rows = F[allowed]
    hit = np.flatnonzero((rows == a).any(1) & (rows == b).any(1))
    if hit.size == 0:
        raise ValueError(f"built-in head: no skin face holds margin edge ({a}, {b})")
    face = int(allowed[hit[0]])
    return face, F[face]


def _closest(V: np.ndarray, F: np.ndarray, allowed: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of the ``allowed`` faces to each target: ``(face [n], bary [n, 3])``."""
    from avp.head.rig import closest_point_on_triangle

    tri = torch.as_tensor(V[F[allowed]])  # [A, 3, 3]
    p = torch.as_tensor(targets)[:, None, :]  # [n, 1, 3]
    bary = closest_point_on_triangle(p.expand(-1, tri.shape[0], -1), tri[None].expand(p.shape[0], -1, -1, -1))
    surface = (bary[..., None] * tri[None]).sum(-2)  # [n, A, 3]
    best = ((surface - p) ** 2).sum(-1).argmin(1)  # [n]
    rows = torch.arange(p.shape[0])
    return allowed[best.numpy()], bary[rows, best].numpy()


def _register(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis scale and offset mapping ``source [n, 3]`` onto ``target [n, 3]`` in the least-squares sense."""
    scale, offset = np.zeros(3), np.zeros(3)
    for k in range(3):
        A = np.stack([source[:, k], np.ones(len(source))], 1)
        (scale[k], offset[k]), *_ = np.linalg.lstsq(A, target[:, k], rcond=None)
    return scale, offset


@functools.lru_cache(maxsize=2)
def _builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    from avp.head import load_head_model
    from avp.head.builtin import BUILTIN_NAME

    if name != BUILTIN_NAME:
        raise ValueError(f"no built-in landmark embedding for head model {name!r}")
    head = load_head_model()
    V = head.v_template.double().numpy()
    F = head.faces.numpy()
    regions = {k: v.numpy() for k, v in head.face_regions.items()}
    jaw_weight = head.lbs_weights[:, head.joint_names.index("jaw")].double().numpy()
    canon = canonical_face_model()
    skin = regions["skin"]
    side = np.sign(V[F].mean(1)[:, 0])  # [F] which half a face lies in

    eyes = {}
    for eye, sgn in (("left", 1.0), ("right", -1.0)):
        sockets = regions["eye_sockets"][side[regions["eye_sockets"]] == sgn]
        loop_ids = np.array(sorted(_vertices_of(F, skin) & _vertices_of(F, sockets)))
        a, b = loop_ids[np.argmin(V[loop_ids, 0])], loop_ids[np.argmax(V[loop_ids, 0])]
        above = np.zeros(len(V), dtype=bool)
        line_y = lambda x, a=a, b=b: V[a, 1] + (x - V[a, 0]) * (V[b, 1] - V[a, 1]) / (V[b, 0] - V[a, 0])
        above[loop_ids] = V[loop_ids, 1] > line_y(V[loop_ids, 0])
        eyes[eye] = _opening(V, F, skin, sockets, above)
    mouth = _opening(V, F, skin, regions["mouth_cavity"], jaw_weight < 0.5)

    def margin_point(chain: np.ndarray, fraction: float) -> tuple[int, np.ndarray]:
        a, b, t = _on_margin(V, chain, fraction)
        face, corners = _edge_face(F, skin, a, b)
        bary = np.where(corners == a, 1.0 - t, 0.0) + np.where(corners == b, t, 0.0)
        return face, bary

    def contour(ids: tuple[int, ...], chain: np.ndarray, corner_ids: tuple[int, int]) -> list[tuple[int, np.ndarray]]:
        x0, x1 = sorted((canon[corner_ids[0], 0], canon[corner_ids[1], 0]))
        return [margin_point(chain, float(np.clip((canon[i, 0] - x0) / (x1 - x0), 0, 1))) for i in ids]

    out: dict[int, tuple[int, np.ndarray, str]] = {}

    def put(group: str, ids: tuple[int, ...], placed: list[tuple[int, np.ndarray]]) -> None:
        for i, (face, bary) in zip(ids, placed):
            out[i] = (face, bary, group)

    put("right_eye_upper", LANDMARK_GROUPS["right_eye_upper"],
        contour(LANDMARK_GROUPS["right_eye_upper"], eyes["right"].upper, (33, 133)))
    put("right_eye_lower", LANDMARK_GROUPS["right_eye_lower"],
        contour(LANDMARK_GROUPS["right_eye_lower"], eyes["right"].lower, (33, 133)))
    put("left_eye_upper", LANDMARK_GROUPS["left_eye_upper"],
        contour(LANDMARK_GROUPS["left_eye_upper"], eyes["left"].upper, (263, 362)))
    put("left_eye_lower", LANDMARK_GROUPS["left_eye_lower"],
        contour(LANDMARK_GROUPS["left_eye_lower"], eyes["left"].lower, (263, 362)))
    put("lips_inner_upper", LANDMARK_GROUPS["lips_inner_upper"],
        contour(LANDMARK_GROUPS["lips_inner_upper"], mouth.upper, (78, 308)))
    put("lips_inner_lower", LANDMARK_GROUPS["lips_inner_lower"],
        contour(LANDMARK_GROUPS["lips_inner_lower"], mouth.lower, (78, 308)))

    # the rest: the canonical model registered onto the head by its anchors, then projected onto region skin
    nose_vertices = np.array(sorted(_vertices_of(F, regions["nose"])))
    mouth_mid = mouth.upper[np.argmin(np.abs(V[mouth.upper, 0]))]
    anchor_points = np.stack([V[eyes["right"].upper[0]], V[eyes["right"].upper[-1]], V[eyes["left"].upper[0]],
                              V[eyes["left"].upper[-1]], V[mouth.upper[0]], V[mouth.upper[-1]],
                              V[nose_vertices[np.argmax(V[nose_vertices, 2])]], V[mouth_mid]])
    scale, offset = _register(canon[list(_ANCHORS)], anchor_points)
    registered = lambda ids: canon[list(ids)] * scale + offset
    face_jaw = jaw_weight[F].mean(1)  # [F] mean jaw weight of each face's corners
    union = lambda *names: np.unique(np.concatenate([regions[n] for n in names]))
    upper_skin = union("lips", "cheeks", "nose")
    lower_skin = union("lips", "chin", "jaw", "cheeks")
    allowed = {
        "brows": union("brows", "forehead"),
        "nose": union("nose", "cheeks"),
        "lips_outer_upper": upper_skin[face_jaw[upper_skin] < 0.5],
        "lips_outer_lower": lower_skin[face_jaw[lower_skin] >= 0.5],
        "jaw": union("jaw", "chin", "cheeks"),
    }
    for group, faces_allowed in allowed.items():
        ids = LANDMARK_GROUPS[group]
        faces_, barys = _closest(V, F, faces_allowed, registered(ids))
        put(group, ids, list(zip(faces_.tolist(), barys)))
    # mouth corners are the opening's corners, for the outer contour as for the inner one
    for i, corner in ((61, mouth.upper[0]), (291, mouth.upper[-1])):
        face, corners = _edge_face(F, skin, corner, mouth.upper[1] if i == 61 else mouth.upper[-2])
        out[i] = (face, (corners == corner).astype(np.float64), "lips_outer_upper")
    # irises: the front pole of each eyeball (the right iris, 468, on the subject's right eye at -x)
    for i, region in ((468, "right_eyeball"), (473, "left_eyeball")):
        ball = regions[region]
        verts = np.array(sorted(_vertices_of(F, ball)))
        pole = verts[np.argmax(V[verts, 2])]
        face = int(ball[np.flatnonzero((F[ball] == pole).any(1))[0]])
        out[i] = (face, (F[face] == pole).astype(np.float64), "irises")

    order = [i for group in LANDMARK_GROUPS.values() for i in group]
    return (np.array(order, dtype=np.int64), np.array([out[i][0] for i in order], dtype=np.int64),
            np.stack([out[i][1] for i in order]), tuple(out[i][2] for i in order))


def builtin_landmark_embedding(head_model: torch.nn.Module) -> LandmarkEmbedding:
    """The built-in head's embedding of :data:`LANDMARK_GROUPS` (deterministic; computed once per process)."""
    indices, faces, bary, groups = _builtin_arrays(head_model.name)
    weights = [GROUP_WEIGHTS.get(g, 1.0) for g in groups]
    return LandmarkEmbedding(landmark_indices=torch.as_tensor(indices), face_idx=torch.as_tensor(faces),
                             bary=torch.as_tensor(bary, dtype=torch.float32),
                             weights=torch.tensor(weights, dtype=torch.float32), head_model_name=head_model.name,
                             groups=list(groups), source="builtin")

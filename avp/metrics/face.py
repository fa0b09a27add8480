"""Face metrics on renders: identity similarity to the source portrait (with face-detection rate), AKD and APD.

- Identity: dlib's 128-d face descriptor (:mod:`avp.face.identity`) of the source portrait and of each render;
  reported as mean cosine similarity, mean Euclidean distance and the fraction of renders dlib would call the same
  person (distance < 0.6), over renders where a face is found, plus the detection rate over all renders. dlib
  descriptor cosines are high even between different people (see :mod:`avp.face.identity`); compare methods, not
  absolute values with ArcFace CSIM.
- AKD (average keypoint distance, pixels): mean distance between mediapipe's 478 landmarks of a render and of its
  reference frame (ground truth for self-reenactment, the driving frame for cross-reenactment), both expressed at a
  fixed ``resolution`` (the image width is mapped to ``resolution`` pixels), over pairs where both have a face.
- APD (average pose distance, degrees): mean over the same pairs of ``|Δyaw| + |Δpitch| + |Δroll|`` between the
  head poses (:mod:`avp.face.landmarks` convention); the per-axis means are reported too.

All face tools run on the CPU; inputs may live on any device. When the ``face`` extra is missing, ``compute`` gives
:class:`~avp.metrics.unavailable.Unavailable` values carrying the install hint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from avp.metrics.unavailable import MetricValue, Unavailable

AKD_RESOLUTION = 512


def _face_tools_reason(*, identity: bool, landmarks: bool) -> str | None:
    """None when the needed face tools load, else the reason they do not."""
    from avp.face import FaceToolsUnavailable
    from avp.face._models import dlib_model_file, import_dlib, import_mediapipe, landmarker_task_file

    try:
        if identity:
            import_dlib()
            dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")
            dlib_model_file("shape_predictor_5_face_landmarks.dat")
        if landmarks:
            import_mediapipe()
            landmarker_task_file()
    except FaceToolsUnavailable as e:
        return str(e)
    return None


@dataclass(frozen=True)
class IdentityScores:
    """Per-render identity comparison with the source."""

    cosine: Tensor
    """[B] cosine similarity of descriptors (NaN where a face is missing)"""
    distance: Tensor
    """[B] Euclidean distance of descriptors (NaN where a face is missing)"""
    render_detected: Tensor
    """[B] bool: a face was found in the render"""
    source_detected: Tensor
    """[B] bool: a face was found in the render's source"""


def identity_scores(renders: Tensor, source: Tensor, *, upsample: int = 1) -> IdentityScores:
    """Compare ``renders [B, 3, H, W]`` with ``source [B, 3, H, W]`` (paired) or ``[3, H, W]`` (shared), 0..1."""
    from avp.face.identity import cosine_similarity, embed_faces, euclidean_distance

    if source.ndim == 3:
        source = source[None]
    if renders.ndim != 4 or source.ndim != 4 or source.shape[0] not in (1, renders.shape[0]):
        raise ValueError(f"expected renders [B, 3, H, W] and source [B or 1, 3, H, W]; got {tuple(renders.shape)} "
                         f"and {tuple(source.shape)}")
    rend = embed_faces(renders, upsample=upsample)
    src = embed_faces(source, upsample=upsample)
    src_vectors = src.vectors.expand(renders.shape[0], -1)
    src_detected = src.detected.expand(renders.shape[0])
    both = rend.detected & src_detected
    nan = torch.full(both.shape, float("nan"), device=renders.device)
    return IdentityScores(
        cosine=torch.where(both, cosine_similarity(rend.vectors, src_vectors), nan),
        distance=torch.where(both, euclidean_distance(rend.vectors, src_vectors), nan),
        render_detected=rend.detected,
        source_detected=src_detected,
    )


class IdentitySimilarity(Metric):
    """Identity similarity of renders to their source portrait and the face-detection rate on renders.

    ``update(renders [B, 3, H, W], source [B, 3, H, W] | [3, H, W])``; ``compute()`` -> dict with
    ``identity_cosine`` (↑), ``identity_distance`` (↓), ``identity_same_rate`` (↑, distance < 0.6) over renders with a
    face whose source has one, and ``face_detection_rate`` (↑, renders with a face / all renders).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    cosine_sum: Tensor
    distance_sum: Tensor
    same: Tensor
    pairs: Tensor
    detected: Tensor
    renders: Tensor

    def __init__(self, upsample: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.upsample = upsample
        self.reason = _face_tools_reason(identity=True, landmarks=False)
        for name in ("cosine_sum", "distance_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("same", "pairs", "detected", "renders"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")

    @property
    def available(self) -> bool:
        return self.reason is None

    def update(self, renders: Tensor, source: Tensor) -> None:
        if self.reason is not None:
            return
        from avp.face.identity import SAME_PERSON_DISTANCE

        scores = identity_scores(renders, source, upsample=self.upsample)
        both = ~scores.cosine.isnan()
        self.cosine_sum += scores.cosine[both].double().sum()
        self.distance_sum += scores.distance[both].double().sum()
        self.same += (scores.distance[both] < SAME_PERSON_DISTANCE).sum()
        self.pairs += both.sum()
        self.detected += scores.render_detected.sum()
        self.renders += renders.shape[0]

    def compute(self) -> dict[str, MetricValue | Tensor]:
        keys = ("identity_cosine", "identity_distance", "identity_same_rate", "face_detection_rate")
        if self.reason is not None:
            return {k: Unavailable(self.reason) for k in keys}
        if self.renders == 0:
            return {k: Unavailable("no images") for k in keys}
        out: dict[str, MetricValue | Tensor] = {"face_detection_rate": (self.detected / self.renders).float()}
        if self.pairs == 0:
            none = Unavailable("no render with a detected face whose source has one")
            out.update({k: none for k in keys[:3]})
        else:
            out["identity_cosine"] = (self.cosine_sum / self.pairs).float()
            out["identity_distance"] = (self.distance_sum / self.pairs).float()
            out["identity_same_rate"] = (self.same / self.pairs).float()
        return {k: out[k] for k in keys}


@dataclass(frozen=True)
class KeypointPoseScores:
    """Per-pair landmark and pose distances between renders and reference frames."""

    akd: Tensor
    """[B] mean landmark distance in pixels at the fixed resolution (NaN where either face is missing)"""
    pose_diff: Tensor
    """[B, 3] absolute yaw, pitch, roll differences in degrees (NaN where either face is missing)"""
    render_detected: Tensor
    """[B] bool"""
    reference_detected: Tensor
    """[B] bool"""

    @property
    def apd(self) -> Tensor:
        """[B] ``|Δyaw| + |Δpitch| + |Δroll|`` in degrees."""
        return self.pose_diff.sum(-1)


def keypoint_pose_scores(renders: Tensor, references: Tensor, *,
                         resolution: int = AKD_RESOLUTION) -> KeypointPoseScores:
    """Landmark (AKD) and head-pose (APD) distances of ``renders`` to ``references``, both ``[B, 3, H, W]`` in 0..1.

    The pair may differ in size but must share an aspect ratio; landmark coordinates are rescaled so each image is
    ``resolution`` pixels wide.
    """
    from avp.face.image import to_uint8_rgb_batch
    from avp.face.landmarks import detect_landmarks_array

    if renders.ndim != 4 or references.ndim != 4 or renders.shape[0] != references.shape[0]:
        raise ValueError(f"expected renders and references [B, 3, H, W] with one B; got {tuple(renders.shape)} and "
                         f"{tuple(references.shape)}")
    (rh, rw), (fh, fw) = renders.shape[-2:], references.shape[-2:]
    if abs(rh / rw - fh / fw) > 1e-3:
        raise ValueError(f"renders ({rh}x{rw}) and references ({fh}x{fw}) must share an aspect ratio for AKD")
    b = renders.shape[0]
    akd = np.full(b, np.nan)
    pose = np.full((b, 3), np.nan)
    found = np.zeros((2, b), dtype=bool)
    for i, (r, f) in enumerate(zip(to_uint8_rgb_batch(renders), to_uint8_rgb_batch(references))):
        faces = [detect_landmarks_array(r), detect_landmarks_array(f)]
        found[:, i] = [bool(faces[0]), bool(faces[1])]
        if not all(faces):
            continue
        a, c = faces[0][0], faces[1][0]
        xy_a = a.xy * (resolution / rw)  # [478, 2] at the fixed resolution
        xy_c = c.xy * (resolution / fw)
        akd[i] = np.linalg.norm(xy_a - xy_c, axis=-1).mean()
        pose[i] = np.abs(a.pose.angles() - c.pose.angles())
    device = renders.device
    return KeypointPoseScores(
        akd=torch.from_numpy(akd).float().to(device),
        pose_diff=torch.from_numpy(pose).float().to(device),
        render_detected=torch.from_numpy(found[0]).to(device),
        reference_detected=torch.from_numpy(found[1]).to(device),
    )


class KeypointPoseDistance(Metric):
    """AKD (pixels at ``resolution``) and APD (degrees) between renders and their reference frames (lower is better).

    ``update(renders [B, 3, H, W], references [B, 3, H, W])``; ``compute()`` -> dict with ``akd``, ``apd``,
    ``apd_yaw``, ``apd_pitch``, ``apd_roll`` over pairs where both images have a face, and ``keypoint_pair_rate``
    (such pairs / all pairs).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    akd_sum: Tensor
    pose_sum: Tensor
    pairs: Tensor
    total: Tensor

    def __init__(self, resolution: int = AKD_RESOLUTION, **kwargs) -> None:
        super().__init__(**kwargs)
        self.resolution = resolution
        self.reason = _face_tools_reason(identity=False, landmarks=True)
        self.add_state("akd_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pose_sum", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    @property
    def available(self) -> bool:
        return self.reason is None

    def update(self, renders: Tensor, references: Tensor) -> None:
        if self.reason is not None:
            return
        scores = keypoint_pose_scores(renders, references, resolution=self.resolution)
        valid = ~scores.akd.isnan()
        self.akd_sum += scores.akd[valid].double().sum()
        self.pose_sum += scores.pose_diff[valid].double().sum(0)
        self.pairs += valid.sum()
        self.total += renders.shape[0]

    def compute(self) -> dict[str, MetricValue | Tensor]:
        keys = ("akd", "apd", "apd_yaw", "apd_pitch", "apd_roll", "keypoint_pair_rate")
        if self.reason is not None:
            return {k: Unavailable(self.reason) for k in keys}
        if self.total == 0:
            return {k: Unavailable("no images") for k in keys}
        out: dict[str, MetricValue | Tensor] = {"keypoint_pair_rate": (self.pairs / self.total).float()}
        if self.pairs == 0:
            out.update({k: Unavailable("no render/reference pair with a face in both") for k in keys[:5]})
        else:
            per_axis = (self.pose_sum / self.pairs).float()
            out.update(akd=(self.akd_sum / self.pairs).float(), apd=per_axis.sum(), apd_yaw=per_axis[0],
                       apd_pitch=per_axis[1], apd_roll=per_axis[2])
        return {k: out[k] for k in keys}

"""A real photo -> the portrait the model was trained on: detect the face, crop and align it to the training framing,
optionally replace the background, and fit the head model to its landmarks.

Training framing (:class:`PortraitFraming`). Synthetic portraits (``avp.data.synthetic``) are renders by a camera
about 1 m in front of the head looking at a point just in front of the neck top, with a vertical field of view that
spans ``PORTRAIT_HEIGHT_M`` at that distance, square. Alignment projects the embedded landmarks of the mean head at
rest through that camera, finds the 2D similarity (scale, in-plane rotation, shift) that maps the detected landmarks
onto them (weighted least squares, eye corners, nose and lips dominating; the jaw outline barely counts) and warps the
photo with it. The head fit then uses that same camera, so the fitted head parameters live in the frame the
generator was conditioned in.

Background (``background=``): ``keep`` leaves the photo as it is; ``grabcut`` segments the person with OpenCV's
GrabCut (no model file: colour models of a foreground seeded by the face landmarks and a background seeded by the
image border) and composites onto a plain colour, as the training portraits have. Mediapipe's selfie segmenter would
be the better tool, but its model ships in no installed wheel.

Refusals: a photo without a face raises :class:`avp.face.NoFaceFound` (``no face found in <what> …``); several faces
without ``choose="largest"`` raise :class:`avp.face.MultipleFacesFound`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from avp.face import FaceAnalysis, analyze, to_uint8_rgb
from avp.head.framing import PORTRAIT_HEIGHT_M, TARGET
from avp.portrait.fit import FitConfig, FitResult, fit_landmarks, project
from avp.portrait.landmarks_embedding import LandmarkEmbedding, landmark_embedding
from avp.render.cameras import intrinsics, look_at
from avp.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from avp.signals import ignore_profiling_signal
from avp.types import Cameras, HeadParams

__all__ = ["Portrait", "PortraitFraming", "align_transform", "load_image", "portrait_from_parameters",
           "preprocess_portrait", "warp_image"]

Background = Literal["keep", "grabcut"]


@dataclass
class PortraitFraming:
    """The camera of the training portraits (defaults: the synthetic generator's nominal portrait camera)."""

    size: int = 512
    """Crop size in pixels (square). The generator resizes to its own input size."""
    distance: float = 1.0
    """Metres from the camera to ``target``."""
    target: tuple[float, float, float] = (float(TARGET[0]), float(TARGET[1] + 0.015), float(TARGET[2]))
    """What the camera looks at (head canonical space)."""
    frame_height: float = PORTRAIT_HEIGHT_M
    """Vertical extent in metres covered at ``distance``."""

    def camera(self, device: torch.device | str | None = None) -> Cameras:
        """``Cameras`` with ``Ks [1, 3, 3]`` and ``viewmats [1, 4, 4]``: frontal, looking along -z."""
        if self.size < 8 or self.distance <= 0 or self.frame_height <= 0:
            raise ValueError(f"PortraitFraming: need size >= 8 and positive distance and height, got {self}")
        target = torch.tensor(self.target, dtype=torch.float64)
        eye = target + torch.tensor([0.0, 0.0, self.distance], dtype=torch.float64)
        viewmat = look_at(eye, target, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
        fov = math.degrees(2 * math.atan(self.frame_height / 2 / self.distance))
        K = intrinsics(fov, self.size, self.size, dtype=torch.float64)
        return Cameras(Ks=K[None].float().to(device), viewmats=viewmat[None].float().to(device), width=self.size,
                       height=self.size)


@dataclass
class Portrait:
    """A photo made ready for the model."""

    image: Tensor
    """``[3, S, S]`` the aligned crop in 0..1 (background replaced when asked)."""
    head: HeadParams
    """``[1]`` head parameters fitted to the crop's landmarks (the generator's ``portrait_head``)."""
    camera: Cameras
    """The portrait camera (``Ks [1, 3, 3]``, ``viewmats [1, 4, 4]``) the fit used."""
    fit: FitResult | None = None
    """The landmark fit (residuals in crop pixels); None when the head parameters were given."""
    landmarks: Tensor | None = None
    """``[478, 3]`` mediapipe landmarks in crop pixels (z scaled alike); None when the head parameters were given."""
    transform: np.ndarray | None = None
    """``[2, 3]`` affine map from the original photo's pixels to the crop's."""
    analysis: FaceAnalysis | None = None
    """Detection and landmarks on the original photo; None when the head parameters were given."""
    mask: Tensor | None = None
    """``[1, S, S]`` foreground mask when the background was removed."""
    source: str = "the image"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """Crop pixels per original pixel."""
        return float(math.sqrt(abs(np.linalg.det(self.transform[:, :2]))))

    def report(self) -> dict[str, Any]:
        """JSON-ready: where the face was, the alignment, the fit and its residual (crop and original pixels)."""
        head = {k: np.round(v.detach().cpu().numpy().reshape(-1), 5).tolist() for k, v in self.head.as_dict().items()}
        if self.analysis is None or self.fit is None:
            return {"source": self.source, "head_source": "given (no detection or landmark fit)",
                    "crop_size": int(self.image.shape[-1]), "crop_scale": round(self.scale, 5), "head": head}
        box = self.analysis.box
        pose = self.analysis.pose
        return {
            "source": self.source,
            "image_size": list(self.analysis.image_size),
            "faces_found": len(self.analysis.boxes),
            "face_box_xyxy": [round(v, 1) for v in box.as_tuple()],
            "mediapipe_pose_deg": {"yaw": round(pose.yaw, 2), "pitch": round(pose.pitch, 2),
                                   "roll": round(pose.roll, 2)},
            "crop_size": int(self.image.shape[-1]),
            "crop_scale": round(self.scale, 5),
            "crop_transform": np.round(self.transform, 6).tolist(),
            "background": self.meta.get("background", "keep"),
            "fit_crop_px": self.fit.report(),
            "fit_original_px": self.fit.report(pixel_scale=1.0 / self.scale),
            "head_source": "landmark fit",
            "head": head,
        }


def portrait_from_parameters(image: Any, head: HeadParams, framing: PortraitFraming | None = None) -> Portrait:
    """A portrait whose head parameters are known (another tracker's, or a synthetic shard's): no detection and no
    landmark fit. The photo must already be framed like the training portraits; it is only resized to the framing.

    Args:
        image: anything :func:`load_image` reads; head: ``[1]`` (or unbatched) head parameters of the portrait.
    """
    from PIL import Image

    framing = framing or PortraitFraming()
    array, name = load_image(image)
    H, W = array.shape[:2]
    if H != W:
        raise ValueError(f"{name}: a portrait with given head parameters must be square (framed like the training "
                         f"portraits), got {W}x{H}")
    resized = np.asarray(Image.fromarray(array).resize((framing.size, framing.size), Image.BICUBIC))
    head = head.map(lambda t: t.reshape(1, t.shape[-1]).float())
    transform = np.array([[framing.size / W, 0.0, 0.0], [0.0, framing.size / H, 0.0]])
    return Portrait(image=torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255, head=head,
                    camera=framing.camera(), transform=transform, source=name, meta={"head": "given"})


# ------------------------------------------------------------------------------------------------ images

def load_image(image: str | Path | np.ndarray | Tensor | Any) -> tuple[np.ndarray, str]:
    """A photo as contiguous uint8 ``[H, W, 3]`` RGB and a name for messages.

    Accepts a file path (EXIF orientation applied, alpha composited onto white), a PIL image, a uint8/float array
    ``[H, W, 3]`` or a float tensor ``[3, H, W]`` in 0..1.
    """
    from PIL import Image, ImageOps

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            with Image.open(path) as im:
                pil = ImageOps.exif_transpose(im)
                pil.load()
        except Exception as e:
            raise ValueError(f"{path}: cannot read as an image ({type(e).__name__}: {e})") from e
        return _pil_rgb(pil), str(path)
    if isinstance(image, Image.Image):
        return _pil_rgb(image), "the image"
    return to_uint8_rgb(image), "the image"


def _pil_rgb(pil: Any) -> np.ndarray:
    from PIL import Image

    if pil.mode in ("RGBA", "LA", "P"):
        pil = pil.convert("RGBA")
        white = Image.new("RGBA", pil.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(white, pil)
    return np.ascontiguousarray(np.asarray(pil.convert("RGB")))


def align_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares 2D similarity (Umeyama) with ``dst ~ M @ [src; 1]``: ``src, dst [n, 2]`` -> ``[2, 3]``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a  # [2, 2]
    U, sig, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, d])
    R = U @ D @ Vt
    var = (w * (a * a).sum(1)).sum()
    s = (sig * np.diag(D)).sum() / var
    t = mu_d - s * R @ mu_s
    return np.concatenate([s * R, t[:, None]], 1)


def warp_image(image: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """Warp uint8 ``[H, W, 3]`` by the ``[2, 3]`` affine ``transform`` (source -> output pixels) into ``size`` x
    ``size``; strong reductions are pre-filtered (area resampling) so the crop does not alias; borders replicate."""
    import cv2

    M = np.asarray(transform, np.float64).copy()
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    src = image
    if scale < 0.5:
        factor = scale * 2.0  # leave the final factor-of-two-or-less step to the bilinear warp
        h, w = image.shape[:2]
        new = (max(1, round(w * factor)), max(1, round(h * factor)))
        src = cv2.resize(image, new, interpolation=cv2.INTER_AREA)
        # with pixel edges at integers a resize is a pure scaling of coordinates: x_small = x * (new / old)
        pre = np.diag([new[0] / w, new[1] / h])
        M = np.concatenate([M[:, :2] @ np.linalg.inv(pre), M[:, 2:]], 1)
    # OpenCV maps integer pixel coordinates (centres at 0); ours have centres at +0.5
    centre = np.array([0.5, 0.5])
    M_cv = M.copy()
    M_cv[:, 2] = M[:, :2] @ centre + M[:, 2] - centre
    return cv2.warpAffine(np.ascontiguousarray(src), M_cv, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:, :2].T + transform[:, 2]


def grabcut_mask(image: np.ndarray, landmarks: np.ndarray, iterations: int = 5) -> np.ndarray:
    """``[H, W]`` float foreground mask of a portrait crop by GrabCut, seeded by the face landmarks ``[478, 2]``."""
    import cv2

    h, w = image.shape[:2]
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    xy = landmarks[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    face_w, face_h = hi - lo
    # probable foreground: the head with hair (above and beside the face) and the neck and shoulders below
    x0, x1 = int(max(0, lo[0] - 0.6 * face_w)), int(min(w, hi[0] + 0.6 * face_w))
    y0 = int(max(0, lo[1] - 0.7 * face_h))
    mask[y0:, x0:x1] = cv2.GC_PR_FGD
    shoulders = int(min(h, hi[1] + 0.4 * face_h))
    mask[shoulders:, int(max(0, lo[0] - 1.2 * face_w)):int(min(w, hi[0] + 1.2 * face_w))] = cv2.GC_PR_FGD
    hull = cv2.convexHull(np.round(xy).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, cv2.GC_FGD)
    border = max(2, h // 64)
    mask[:border, :] = cv2.GC_BGD
    mask[:, :border] = cv2.GC_BGD
    mask[:, w - border:] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation draws random numbers
    cv2.grabCut(np.ascontiguousarray(image), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    return cv2.GaussianBlur(fg, (0, 0), sigmaX=max(0.5, h / 512))


# ------------------------------------------------------------------------------------------------ main entry

def mediapipe_rotation(analysis: FaceAnalysis, transform: np.ndarray) -> Tensor:
    """``[3]`` axis-angle head rotation from mediapipe's pose, after the crop's in-plane rotation."""
    R_mp = torch.as_tensor(analysis.pose.matrix[:3, :3], dtype=torch.float64)
    u, _, vt = torch.linalg.svd(R_mp)
    R_mp = u @ vt
    # an image rotation by a (x right, y down) is a rotation by -a about +z in the head frame (y up, z to the camera)
    angle = math.atan2(transform[1, 0], transform[0, 0])
    R_align = axis_angle_to_matrix(torch.tensor([0.0, 0.0, -angle], dtype=torch.float64))
    return matrix_to_axis_angle(R_align @ R_mp).float()


def preprocess_portrait(image: str | Path | np.ndarray | Tensor | Any, head_model: torch.nn.Module, *,
                        framing: PortraitFraming | None = None, embedding: LandmarkEmbedding | None = None,
                        embedding_path: str | Path | None = None, choose: Literal["largest"] | None = None,
                        background: Background = "keep",
                        background_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
                        fit_config: FitConfig | None = None, what: str | None = None,
                        progress: Callable[[int, int, float], None] | None = None) -> Portrait:
    """Detect, align, optionally cut out, and fit one portrait (see the module docstring).

    Args:
        image: a path, PIL image, uint8 ``[H, W, 3]`` or float tensor ``[3, H, W]``.
        head_model: the head model of the checkpoints.
        framing: the training framing (default: the synthetic generator's).
        embedding / embedding_path: landmark embedding (default: the built-in head's; FLAME needs a file).
        choose: ``"largest"`` picks the largest of several faces; None refuses several faces.
        background: ``keep`` or ``grabcut`` (then composited onto ``background_color``).
        fit_config: the landmark fit's settings.
        what: the photo's name in error messages (default: its path).
        progress: ``progress(step, steps, loss)`` during the fit.
    """
    if background not in ("keep", "grabcut"):
        raise ValueError(f"preprocess: background must be 'keep' or 'grabcut', got {background!r}")
    framing = framing or PortraitFraming()
    array, name = load_image(image)
    what = what or name
    ignore_profiling_signal()
    analysis = analyze(array, choose=choose, what=what)
    emb = embedding or landmark_embedding(head_model, embedding_path)
    camera = framing.camera()

    with torch.no_grad():
        zero = HeadParams.zeros(1, n_shape=head_model.n_shape, n_expr=head_model.n_expr)
        rest = head_model(zero).vertices  # [1, V, 3]
        template, _ = project(emb.points(rest, head_model.faces), camera.Ks, camera.viewmats)  # [1, L, 2]
    detected = emb.select(torch.as_tensor(analysis.landmarks))[:, :2].numpy()
    align_w = emb.weights.numpy() * np.array([0.0 if g == "jaw" else 1.0 for g in emb.groups] if emb.groups
                                             else np.ones(emb.n_landmarks))
    transform = align_transform(detected, template[0].numpy(), align_w)
    crop = warp_image(array, transform, framing.size)
    scale = math.sqrt(abs(np.linalg.det(transform[:, :2])))
    landmarks = analysis.landmarks.copy()
    landmarks[:, :2] = _apply(transform, landmarks[:, :2])
    landmarks[:, 2] *= scale

    mask = None
    out = crop.astype(np.float32) / 255.0
    if background == "grabcut":
        m = grabcut_mask(crop, landmarks)
        out = out * m[..., None] + np.asarray(background_color, np.float32) * (1 - m[..., None])
        mask = torch.from_numpy(m)[None]

    init = HeadParams.zeros(1, n_shape=head_model.n_shape, n_expr=head_model.n_expr)
    init.global_rot = mediapipe_rotation(analysis, transform)[None]
    fit = fit_landmarks(head_model, emb, torch.as_tensor(landmarks)[None], camera, config=fit_config, init=init,
                        progress=progress)
    return Portrait(image=torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous(), head=fit.head,
                    camera=fit.camera, fit=fit, landmarks=torch.as_tensor(landmarks, dtype=torch.float32),
                    transform=transform, analysis=analysis, mask=mask, source=what,
                    meta={"background": background, "embedding": emb.source})

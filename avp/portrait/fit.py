"""Fitting the head model to 2D face landmarks: shape, expression, pose (global, neck, jaw, eyes), translation and
optionally the focal length, with Gaussian priors; our stand-in for the paper's Pixel3DMM step.

The objective, for ``B`` frames of one person (a portrait is ``B = 1``; a video is fitted as one batch with a shared
identity and a temporal smoothness term)::

    sum_l w_l rho(|pi(x_l) - y_l| / s) / sum_l w_l                       landmark term (robust, scale-free)
    + shape_prior |beta|^2 + expr_prior |psi|^2 + jaw_prior |jaw|^2 + neck_prior |neck|^2 + eyes_prior |eyes|^2
    + temporal * mean_t |p_{t+1} - p_t|^2                                 (sequences only)

``pi`` projects the embedded landmark points (:mod:`avp.portrait.landmarks_embedding`) through the pinhole camera,
``s`` is the face size in pixels (outer eye corner to outer eye corner, or the landmark box), ``rho`` is the
Charbonnier (smooth L1) penalty with a 2% scale. The jaw only opens about x (its y and z components are held at a
strong prior). Optimisation is Adam, first on the rigid pose (global rotation, translation) and then on everything.
Only the vertices of the landmark triangles are evaluated (:class:`LandmarkHead`), so the fit costs the same for
any mesh size. Residuals are reported in pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from avp.head.lbs import blend_shapes, forward_kinematics, pose_feature, skin
from avp.portrait.landmarks_embedding import LandmarkEmbedding
from avp.types import Cameras, HeadParams

__all__ = ["FitConfig", "FitResult", "LandmarkHead", "fit_landmarks", "project"]


@dataclass
class FitConfig:
    """How the head model is fitted to landmarks."""

    steps: int = 300
    """Adam steps in total (the first ``rigid_fraction`` on the rigid pose only)."""
    rigid_fraction: float = 0.3
    lr: float = 0.03
    """Adam learning rate (parameters are radians, metres/10 and unit-variance coefficients)."""
    shape_prior: float = 2e-5
    """Weights of the Gaussian priors (coefficient units; the landmark term is a mean over landmarks)."""
    expr_prior: float = 2e-5
    jaw_prior: float = 1e-3
    neck_prior: float = 5e-3
    """The neck and the root both turn the head; the prior gives the turn to the root unless the data says more."""
    eyes_prior: float = 1e-3
    jaw_twist_prior: float = 1.0
    """Prior on the jaw's y and z rotation (jaws open about x)."""
    robust_scale: float = 0.02
    """Charbonnier scale as a fraction of the face size."""
    fit_shape: bool = True
    camera: Literal["fixed", "focal"] = "fixed"
    """``fixed``: the given camera (the training camera; the head translation absorbs framing); ``focal``: the focal
    length is fitted too (a pinhole camera of unknown field of view)."""
    temporal: float = 0.01
    """Smoothness weight between consecutive frames (sequences): squared frame-to-frame changes of the pose
    (radians), expression coefficients and translation (decimetres). Frames without landmarks are filled by it."""

    def validate(self) -> None:
        if self.steps < 1 or not 0 <= self.rigid_fraction < 1 or self.lr <= 0:
            raise ValueError(f"fit: need steps >= 1, 0 <= rigid_fraction < 1, lr > 0; got {self}")
        if self.camera not in ("fixed", "focal"):
            raise ValueError(f"fit: camera must be 'fixed' or 'focal', got {self.camera!r}")


class LandmarkHead(nn.Module):
    """The head model evaluated at its landmark points only: ``forward(params [B]) -> [B, L, 3]``.

    Same formula as :meth:`avp.head.HeadModel.forward` (blendshapes, joints regressed from the full shaped mesh,
    pose correctives, skinning, translation) restricted to the corners of the landmark triangles.
    """

    def __init__(self, head_model: nn.Module, embedding: LandmarkEmbedding) -> None:
        super().__init__()
        if embedding.head_model_name != head_model.name:
            raise ValueError(f"fit: the landmark embedding is for {embedding.head_model_name!r}, the head model is "
                             f"{head_model.name!r}")
        object.__setattr__(self, "head_model", head_model)  # not a submodule: moving this module leaves it alone
        faces = head_model.faces.cpu()
        corners = faces[embedding.face_idx.cpu()]  # [L, 3]
        used, inverse = torch.unique(corners.flatten(), return_inverse=True)
        self.register_buffer("corners", inverse.reshape(corners.shape), persistent=False)  # [L, 3] into `used`
        self.register_buffer("bary", embedding.bary.float().cpu(), persistent=False)
        t = {k: v.detach().float().cpu() if v is not None else None
             for k, v in head_model.tensors(torch.zeros((), dtype=torch.float32)).items()}
        J_reg = t["J_regressor"]  # [J, V]
        self.register_buffer("v_template", t["v_template"][used], persistent=False)
        self.register_buffer("shapedirs", t["shapedirs"][used], persistent=False)
        self.register_buffer("exprdirs", t["exprdirs"][used], persistent=False)
        self.register_buffer("weights", t["lbs_weights"][used], persistent=False)
        self.register_buffer("joints_template", J_reg @ t["v_template"], persistent=False)
        self.register_buffer("joints_shapedirs", torch.einsum("jv,vcs->jcs", J_reg, t["shapedirs"]), persistent=False)
        self.register_buffer("joints_exprdirs", torch.einsum("jv,vce->jce", J_reg, t["exprdirs"]), persistent=False)
        posedirs = t["posedirs"]
        if posedirs is not None:
            P, V = posedirs.shape[0], t["v_template"].shape[0]
            posedirs = posedirs.reshape(P, V, 3)[:, used].reshape(P, -1)
        self.register_buffer("posedirs", posedirs, persistent=False)

    def forward(self, params: HeadParams) -> Tensor:
        rest = (self.v_template + blend_shapes(params.shape, self.shapedirs)
                + blend_shapes(params.expr, self.exprdirs))  # [..., U, 3]
        joints = (self.joints_template + blend_shapes(params.shape, self.joints_shapedirs)
                  + blend_shapes(params.expr, self.joints_exprdirs))  # [..., J, 3]
        rot_mats = self.head_model.pose_matrices(params)
        if self.posedirs is not None:
            rest = rest + (pose_feature(rot_mats) @ self.posedirs).unflatten(-1, (rest.shape[-2], 3))
        _, transforms = forward_kinematics(rot_mats, joints, self.head_model.parents)
        posed = skin(rest, self.weights, transforms) + params.translation[..., None, :]
        tri = posed[..., self.corners, :]  # [..., L, 3, 3]
        return (self.bary[..., None] * tri).sum(-2)


def project(points: Tensor, Ks: Tensor, viewmats: Tensor) -> tuple[Tensor, Tensor]:
    """Pinhole projection: ``points [..., L, 3]`` world, ``Ks [..., 3, 3]``, ``viewmats [..., 4, 4]`` -> pixels
    ``[..., L, 2]`` and camera depth ``[..., L]``."""
    cam = (viewmats[..., None, :3, :3] @ points[..., None]).squeeze(-1) + viewmats[..., None, :3, 3]
    z = cam[..., 2]
    uv = (Ks[..., None, :2, :2] @ (cam[..., :2] / z.clamp_min(1e-6)[..., None])[..., None]).squeeze(-1)
    return uv + Ks[..., None, :2, 2], z


@dataclass
class FitResult:
    """A head-model fit to the landmarks of ``B`` frames."""

    head: HeadParams
    """``[B]`` fitted parameters (one shared ``shape``, repeated per frame)."""
    camera: Cameras
    """``Ks [B, 3, 3]``, ``viewmats [B, 4, 4]`` the camera of each frame (fitted focal when asked)."""
    projected: Tensor
    """``[B, L, 2]`` the fitted landmark points in pixels."""
    target: Tensor
    """``[B, L, 2]`` the detected landmarks in pixels."""
    residual: Tensor
    """``[B, L]`` pixel distance between them."""
    valid: Tensor
    """``[B]`` bool, frames that had landmarks (the others are interpolated by the smoothness term)."""
    face_size: Tensor
    """``[B]`` pixels: the scale the residuals are normalised by."""
    groups: list[str] = field(default_factory=list)
    """``[L]`` landmark group names."""
    landmark_indices: Tensor | None = None
    """``[L]`` mediapipe indices."""
    loss_history: list[float] = field(default_factory=list)

    def rms_px(self) -> float:
        """Root-mean-square landmark error over valid frames (pixels)."""
        r = self.residual[self.valid]
        return float(r.pow(2).mean().sqrt()) if r.numel() else float("nan")

    def report(self, pixel_scale: float = 1.0) -> dict:
        """JSON-ready summary; ``pixel_scale`` converts the fit's pixels into another image's (e.g. the original)."""
        r = self.residual[self.valid].double() * pixel_scale
        per_group = {}
        for g in dict.fromkeys(self.groups):
            sel = torch.tensor([x == g for x in self.groups])
            per_group[g] = round(float(r[:, sel].pow(2).mean().sqrt()), 3) if r.numel() else None
        size = self.face_size[self.valid].double() * pixel_scale
        return {
            "frames": int(self.valid.numel()),
            "frames_with_landmarks": int(self.valid.sum()),
            "landmarks": int(self.residual.shape[-1]),
            "rms_px": round(float(r.pow(2).mean().sqrt()), 3) if r.numel() else None,
            "median_px": round(float(r.median()), 3) if r.numel() else None,
            "max_px": round(float(r.max()), 3) if r.numel() else None,
            "rms_over_face_size": round(float((r / size[:, None]).pow(2).mean().sqrt()), 5) if r.numel() else None,
            "face_size_px": round(float(size.mean()), 2) if size.numel() else None,
            "rms_px_by_group": per_group,
            "final_loss": round(self.loss_history[-1], 6) if self.loss_history else None,
        }


def _face_size(target: Tensor, indices: Tensor | None) -> Tensor:
    """``[B]`` outer-eye-corner distance when both corners are embedded, else the landmark box diagonal."""
    if indices is not None:
        ids = indices.tolist()
        if 33 in ids and 263 in ids:
            return (target[:, ids.index(33)] - target[:, ids.index(263)]).norm(dim=-1)
    lo, hi = target.min(1).values, target.max(1).values
    return (hi - lo).norm(dim=-1) / 2


def fit_landmarks(head_model: nn.Module, embedding: LandmarkEmbedding, landmarks: Tensor | np.ndarray,
                  camera: Cameras, *, config: FitConfig | None = None, valid: Tensor | None = None,
                  init: HeadParams | None = None, shape: Tensor | None = None,
                  progress: Callable[[int, int, float], None] | None = None) -> FitResult:
    """Fit the head model to mediapipe landmarks of ``B`` frames of one person.

    Args:
        head_model: the head model.
        embedding: where the landmarks lie on it.
        landmarks: ``[B, 478, >=2]`` (or ``[478, >=2]``) mediapipe landmarks in pixels (x, y first).
        camera: ``Ks [3, 3] | [B, 3, 3]``, ``viewmats [4, 4] | [B, 4, 4]`` (OpenCV); the image size for reference.
        valid: ``[B]`` bool, frames whose landmarks count (default all).
        init: ``[B]`` starting parameters (e.g. the rotation from mediapipe's pose); zeros otherwise.
        shape: ``[S]`` a known identity to keep fixed (skips the shape fit).
        progress: called as ``progress(step, steps, loss)``.
    """
    cfg = config or FitConfig()
    cfg.validate()
    target_all = torch.as_tensor(np.asarray(landmarks) if not isinstance(landmarks, Tensor) else landmarks)
    if target_all.dim() == 2:
        target_all = target_all[None]
    if target_all.dim() != 3 or target_all.shape[1] != 478 or target_all.shape[2] < 2:
        raise ValueError(f"fit: landmarks must be [B, 478, 2+] mediapipe landmarks, got {tuple(target_all.shape)}")
    B = target_all.shape[0]
    device = camera.Ks.device
    target = embedding.select(target_all[..., :2].double()).float().to(device)  # [B, L, 2]
    valid = torch.ones(B, dtype=torch.bool, device=device) if valid is None else valid.to(device).bool()
    if not bool(valid.any()):
        raise ValueError("fit: no frame has landmarks")
    lhead = LandmarkHead(head_model, embedding).to(device)
    S, E = head_model.n_shape, head_model.n_expr
    Ks = camera.Ks.float().expand(B, 3, 3).clone()
    viewmats = camera.viewmats.float().expand(B, 4, 4)
    w = embedding.weights.float().to(device)  # [L]
    size = _face_size(target, embedding.landmark_indices).clamp_min(1.0)  # [B]

    zeros = lambda n: torch.zeros(B, n, device=device)
    start = init.to(device) if init is not None else None
    pick = lambda name, n: (getattr(start, name).detach().float().reshape(B, n).clone() if start is not None
                            else zeros(n))
    p = {
        "global_rot": pick("global_rot", 3), "neck_pose": pick("neck_pose", 3), "jaw_pose": pick("jaw_pose", 3),
        "eyes_pose": pick("eyes_pose", 6), "expr": pick("expr", E),
        # translation in decimetres: the same step size as the rotations' radians
        "translation": pick("translation", 3) * 10.0,
    }
    fixed_shape = shape is not None or not cfg.fit_shape
    shape0 = (shape.detach().float().reshape(1, S).to(device) if shape is not None else
              start.shape.detach().float().reshape(B, S)[:1].clone() if start is not None else torch.zeros(1, S,
                                                                                                        device=device))
    p["shape"] = shape0.clone()
    p["log_focal"] = torch.zeros(1, device=device)
    params = {k: v.requires_grad_(True) for k, v in p.items()}
    rigid = ["global_rot", "translation"] + (["log_focal"] if cfg.camera == "focal" else [])
    everything = [k for k in params if k not in ("log_focal",) or cfg.camera == "focal"]
    if fixed_shape:
        everything.remove("shape")
    n_rigid = int(round(cfg.steps * cfg.rigid_fraction))
    eps = cfg.robust_scale
    vmask = valid.float()

    def head_params() -> HeadParams:
        return HeadParams(shape=params["shape"].expand(B, S), expr=params["expr"], global_rot=params["global_rot"],
                          neck_pose=params["neck_pose"], jaw_pose=params["jaw_pose"], eyes_pose=params["eyes_pose"],
                          translation=params["translation"] / 10.0)

    focal_mask = torch.zeros(3, 3, device=device)
    focal_mask[:2, :2] = 1.0

    def intrinsics_now() -> Tensor:
        return Ks * (1 + (params["log_focal"].exp() - 1) * focal_mask)  # [B, 3, 3], the focal block scaled

    def residuals() -> tuple[Tensor, Tensor]:
        uv, _ = project(lhead(head_params()), intrinsics_now(), viewmats)
        return uv, (uv - target).norm(dim=-1)  # [B, L, 2], [B, L]

    def objective() -> Tensor:
        _, r = residuals()
        x = r / size[:, None] / eps
        rho = (torch.sqrt(1 + x * x) - 1) * eps * eps  # Charbonnier in face-size units
        data = ((rho * w).sum(1) / w.sum() * vmask).sum() / vmask.sum()
        jaw = params["jaw_pose"]
        prior = (cfg.shape_prior * params["shape"].pow(2).sum() + (
            cfg.expr_prior * params["expr"].pow(2).sum(-1) + cfg.jaw_prior * jaw[:, 0].pow(2)
            + cfg.jaw_twist_prior * jaw[:, 1:].pow(2).sum(-1) + cfg.neck_prior * params["neck_pose"].pow(2).sum(-1)
            + cfg.eyes_prior * params["eyes_pose"].pow(2).sum(-1)).mean())
        loss = data + prior
        if B > 1 and cfg.temporal > 0:
            smooth = sum((params[k][1:] - params[k][:-1]).pow(2).sum(-1).mean()
                         for k in ("global_rot", "neck_pose", "jaw_pose", "eyes_pose", "expr", "translation"))
            loss = loss + cfg.temporal * smooth
        return loss

    history: list[float] = []
    for _stage, names, steps in (("rigid", rigid, n_rigid), ("all", everything, cfg.steps - n_rigid)):
        if steps <= 0:
            continue
        opt = torch.optim.Adam([params[k] for k in names], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr * 0.05)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = objective()
            loss.backward()
            opt.step()
            sched.step()
            history.append(float(loss.detach()))
            if progress is not None:
                progress(len(history), cfg.steps, history[-1])

    with torch.no_grad():
        uv, r = residuals()
        K = intrinsics_now()
        head = head_params().detach()
    return FitResult(head=head, camera=Cameras(Ks=K.detach(), viewmats=viewmats.clone(), width=camera.width,
                                               height=camera.height),
                     projected=uv.detach(), target=target, residual=r.detach(), valid=valid, face_size=size,
                     groups=list(embedding.groups), landmark_indices=embedding.landmark_indices.clone(),
                     loss_history=history)

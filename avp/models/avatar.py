"""The stage-2 avatar model: the frozen AR generator, the Gaussian decoder, the template points and the head rig, as
one pure ``nn.Module`` (no Lightning, no files, no logging), used the way SAM's predictor is::

    inputs = model.prepare(portrait, portrait_head, points="generated", generator=rng)   # expensive, once
    decoded = model.decode(inputs)                                                       # the decoder's splats
    avatar = model.avatar(inputs, decoded, portrait_head=portrait_head)                  # one subject's Avatar
    cloud = avatar.animate(head)                    # [T] head parameters -> GaussianCloud [T, N], cheap
    rgb = avatar.render(cameras, head).rgb          # [T, V, 3, H, W]

:meth:`AvatarModel.prepare` encodes the portrait into the generator's condition tokens, gets the points (sampled by
the generator, the teacher cloud, or the template points on the subject's neutral head) as tokens, dequantises them
to bin centres, computes the generator's hidden states of their 4 tokens with the contexts sampling uses, and binds
them to the head model once (:class:`~avp.head.PointRig`). :meth:`AvatarModel.decode` is the only step with
gradients (training trains the decoder through it). An :class:`Avatar` is one subject's decoded splats with its rig:
posing is two small matrix products over the points per frame (LBS) and no gathers.

A tracked subject's ``static_offset [B, V, 3]`` (shards converted from VHAP/GaussianAvatars fits,
:attr:`~avp.types.AvatarBatch.static_offset`) is part of its neutral mesh: template points sit on it and the rig binds
and poses on it (:meth:`AvatarModel.prepare_batch` passes the batch's); None (photos, synthetic data) changes nothing.

Checkpoints are read elsewhere (:mod:`avp.checkpoints`); training is :class:`avp.lit.decoder.DecoderModule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from avp.head import HeadConfig, PointRig, animate_gaussians
from avp.head.framing import ViewFraming, view_cameras
from avp.models.conditional import ConditionalPointGenerator
from avp.models.decoder import DecoderOutput, GaussianDecoder
from avp.models.pixel_aligned import pixel_features
from avp.models.sampling import SamplingConfig
from avp.render import render
from avp.types import AvatarBatch, Cameras, GaussianCloud, HeadParams, RenderOutput, TensorContainer

PointSource = Literal["teacher", "generated", "template"]
POINT_SOURCES = ("teacher", "generated", "template")
AnimationMode = Literal["lbs", "face_frame"]
ANIMATION_MODES = ("lbs", "face_frame")
CLOUD_FIELDS = ("means", "quats", "scales", "opacities", "sh")
"""The splat fields of an avatar's cloud (no padding mask: an avatar holds only its real points)."""


def template_binding(head_model: nn.Module, n_points: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed set of surface points on the head model: ``face_idx [M]`` long and barycentric ``bary [M, 3]``.

    Faces are drawn area-weighted on the mean head (``v_template``) with a seeded generator and barycentric
    coordinates uniform on each triangle, so the set is the same for every subject and run; evaluate it on a
    subject's neutral head with :func:`template_points`.
    """
    if n_points < 1:
        raise ValueError(f"DecoderModule: template_points must be >= 1, got {n_points}")
    verts = head_model.v_template.detach().double().cpu()
    faces = head_model.faces.cpu()
    tri = verts[faces]  # [F, 3, 3]
    areas = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1) / 2
    g = torch.Generator().manual_seed(seed)
    face_idx = torch.multinomial(areas.float(), n_points, replacement=True, generator=g)
    u, v = torch.rand(n_points, generator=g), torch.rand(n_points, generator=g)
    su = u.sqrt()
    bary = torch.stack([1 - su, su * (1 - v), su * v], dim=-1)  # uniform on a triangle
    return face_idx, bary.float()


def template_points(head_model: nn.Module, face_idx: Tensor, bary: Tensor, shape: Tensor,
                    static_offset: Tensor | None = None) -> Tensor:
    """Points ``[B, M, 3]`` on the neutral heads of ``shape [B, S]`` (plus ``static_offset [B, V, 3]`` when given)
    at the template's faces and barycentrics."""
    verts = head_model.canonical(shape, static_offset)  # [B, V, 3]
    corners = head_model.tensors(shape)["faces"][face_idx]  # [M, 3]
    tri = verts[:, corners]  # [B, M, 3, 3]
    return (bary.to(verts.dtype)[None, :, :, None] * tri).sum(-2)


@dataclass
class PointInputs(TensorContainer):
    """What the frozen parts give the decoder for ``B`` avatars (``N`` = the most points): see
    :meth:`AvatarModel.prepare`."""

    points: Tensor
    """``[B, N, 3]`` dequantised canonical points (zeros on padding)."""
    binding: Tensor
    """``[B, N]`` long face of each point (0 on padding)."""
    mask: Tensor
    """``[B, N]`` bool, True for real points."""
    n_points: Tensor
    """``[B]`` long."""
    features: Tensor
    """``[B, N, 4, D]`` the generator's final hidden states at each point's 4 token positions."""
    condition: Tensor
    """``[B, C, D]`` the generator's condition tokens."""
    finished: Tensor
    """``[B]`` bool (False: sampling stopped at ``max_points``)."""
    rig: PointRig
    """The points bound to the head model."""
    pixel: Tensor | None = None
    """``[B, N, C]`` portrait colours where each point projects (decoder ``appearance: pixel``), else None."""


@dataclass
class Avatar:
    """One animatable avatar: canonical Gaussians bound to the head model, and what made them.

    The one avatar type of the package: :meth:`AvatarModel.avatar` makes it, evaluation renders it, the pipeline
    returns it and :mod:`avp.export` writes and reads it.
    """

    cloud: GaussianCloud
    """``[1, N]`` activated Gaussians in the subject's canonical space (its neutral head), no padding."""
    binding: Tensor
    """``[N]`` long head-model face of every splat."""
    points: Tensor
    """``[N, 3]`` the points the splats were decoded at (the rig's points; ``cloud.means`` adds the decoder's
    offsets)."""
    shape: Tensor
    """``[S]`` the identity (shape coefficients) the avatar is bound to."""
    head_model: nn.Module
    rig: PointRig
    """The binding, built once: every ``animate`` reuses it."""
    animation: str = "lbs"
    """``lbs`` (the paper's) or ``face_frame`` (GaussianAvatars'), as the decoder was trained."""
    finished: bool = True
    """False when sampling stopped at ``max_points`` before EOS."""
    portrait_head: HeadParams | None = None
    """``[1]`` head parameters fitted to the portrait."""
    head_config: HeadConfig | None = None
    """Rebuilds the head model (FLAME files are never stored)."""
    portrait: Tensor | None = None
    """``[3, H, W]`` the aligned portrait the avatar was made from."""
    portrait_camera: Cameras | None = None
    """``Ks [1, 3, 3]``, ``viewmats [1, 4, 4]``: the camera of the portrait fit."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Seed, sampling settings, checkpoints, fit report, provenance."""

    @property
    def n_points(self) -> int:
        return int(self.binding.shape[0])

    @property
    def device(self) -> torch.device:
        return self.cloud.means.device

    @property
    def static_offset(self) -> Tensor | None:
        """``[V, 3]`` the subject's tracked per-vertex offsets the rig is bound with (None: none)."""
        return None if self.rig.static_offset is None else self.rig.static_offset[0]

    def to(self, device: torch.device | str) -> Avatar:
        """The avatar on another device (the rig moves with it; the head model adapts per call)."""
        return dataclasses.replace(
            self, cloud=self.cloud.to(device), binding=self.binding.to(device), points=self.points.to(device),
            shape=self.shape.to(device),
            portrait_head=None if self.portrait_head is None else self.portrait_head.to(device),
            rig=dataclasses.replace(self.rig.to(device), model=self.head_model),
            portrait_camera=None if self.portrait_camera is None else self.portrait_camera.to(device))

    def neutral(self, frames: int = 1) -> HeadParams:
        """``[frames]`` rest parameters (zero expression and pose) with the avatar's identity."""
        p = HeadParams.zeros(frames, n_shape=self.head_model.n_shape, n_expr=self.head_model.n_expr,
                             device=self.device)
        p.shape = self.shape.to(p.shape)[None].expand(frames, -1).clone()
        return p

    def _frames(self, head: HeadParams) -> HeadParams:
        """``[T]`` (or ``[1, T]``) parameters -> ``[1, T]`` on the avatar's device, identity replaced by its own."""
        batch = head.global_rot.shape[:-1]
        if len(batch) == 2 and batch[0] == 1:
            head = head.map(lambda t: t[0])
        elif len(batch) != 1:
            raise ValueError(f"Avatar: head parameters must be [T] (or [1, T]), got leading dims {tuple(batch)}")
        T = head.global_rot.shape[0]
        if head.expr.shape[-1] != self.head_model.n_expr:
            raise ValueError(f"Avatar: expr has {head.expr.shape[-1]} components but head model "
                             f"{self.head_model.name!r} has {self.head_model.n_expr}")
        head = head.to(device=self.device, dtype=torch.float32)
        head = dataclasses.replace(head, shape=self.shape.float()[None].expand(T, -1))
        return head.map(lambda t: t[None])

    def animate(self, head: HeadParams) -> GaussianCloud:
        """Pose the avatar for ``T`` frames: ``head [T]`` -> ``GaussianCloud [T, N]`` (world space)."""
        with torch.no_grad():
            return animate_gaussians(self.rig, self.cloud, self._frames(head), mode=self.animation)

    def render(self, cameras: Cameras, head: HeadParams | None = None, *,
               background: Tensor | float | tuple[float, float, float] = 1.0, backend: str = "auto",
               chunk: int = 16) -> RenderOutput:
        """Render ``T`` frames (``head [T]``; None: the rest pose) from ``V`` cameras: ``Ks [V, 3, 3]`` shared by
        every frame, or ``[T, V, 3, 3]`` one set per frame (a moving camera).

        Returns ``rgb [T, V, 3, H, W]`` and ``alpha``; frames are rendered ``chunk`` at a time. The default white
        background is that of the synthetic training frames; ``background`` may be a float or ``[3]``.
        """
        head = self.neutral(1) if head is None else head
        T = head.global_rot.shape[-2] if head.global_rot.dim() == 3 else head.global_rot.shape[0]
        per_frame = cameras.Ks.dim() == 4
        if not (cameras.Ks.dim() == 3 or (per_frame and cameras.Ks.shape[0] == T)):
            raise ValueError(f"Avatar.render: cameras must hold Ks [V, 3, 3] or [T={T}, V, 3, 3], got "
                             f"{tuple(cameras.Ks.shape)}")
        cams = cameras.to(self.device)
        bg = torch.as_tensor(background, dtype=torch.float32, device=self.device)
        if bg.dim() == 0:
            bg = bg.expand(3)
        frames = self._frames(head).map(lambda t: t[0])  # [T]
        rgb, alpha = [], []
        for start in range(0, T, chunk):
            part = frames.map(lambda t, s=start: t[s : s + chunk])
            posed = self.animate(part)  # [t, N]
            # shared [V] cameras reach every frame inside render(); per-frame ones are this chunk's [t, V]
            views = cams.map(lambda t, s=start: t[s : s + chunk]) if per_frame else cams
            with torch.no_grad():
                out = render(posed, views, background=bg, backend=backend)
            rgb.append(out.rgb)
            alpha.append(out.alpha)
        return RenderOutput(rgb=torch.cat(rgb), alpha=torch.cat(alpha))

    def view_cameras(self, yaw_deg: Sequence[float] | Tensor, *, size: int = 512,
                     pitch_deg: float | Sequence[float] = 0.0, framing: ViewFraming | None = None) -> Cameras:
        """Cameras of the training rig's framing at the given yaws (see :func:`avp.head.framing.view_cameras`)."""
        return view_cameras(yaw_deg, size=size, pitch_deg=pitch_deg, framing=framing, device=self.device)


class AvatarModel(nn.Module):
    """Stage 2 as a pure module: frozen generator features + points -> Gaussians bound to the head model.

    Args:
        generator: the frozen stage-1 network (its head model is the avatars' head model).
        decoder: the Gaussian decoder (the only trained part here).
        head_config: the config the head model was built from (stored with avatars).
        sampling: how ``generated`` points are sampled (its ``window`` is replaced by ``feature_window``).
        feature_window: generator context for teacher-forced features (the generator's training window).
        template_points, template_seed: size and seed of the fixed template set (``points: template``).
        animation: ``lbs`` (the paper's) or ``face_frame`` (GaussianAvatars' rigid triangle frames).
        render_backend: ``auto`` | ``torch`` | ``gsplat``.
    """

    def __init__(self, generator: ConditionalPointGenerator, decoder: GaussianDecoder, head_config: HeadConfig, *,
                 sampling: SamplingConfig, feature_window: int, template_points: int = 4096, template_seed: int = 0,
                 animation: AnimationMode = "lbs", render_backend: Literal["auto", "torch", "gsplat"] = "auto"):
        super().__init__()
        if animation not in ANIMATION_MODES:
            raise ValueError(f"DecoderModule: animation must be one of {ANIMATION_MODES}, got {animation!r}")
        self.generator = generator
        self.generator.requires_grad_(False)
        self.generator.eval()
        self.decoder = decoder
        self.head_config = head_config
        self.feature_window = int(feature_window)
        self.sampling = dataclasses.replace(sampling, window=self.feature_window)
        self.sampling.validate()
        self.animation: str = animation
        self.render_backend: str = render_backend
        face_idx, bary = template_binding(self.head_model, template_points, template_seed)
        self.register_buffer("template_face_idx", face_idx, persistent=False)
        self.register_buffer("template_bary", bary, persistent=False)

    def train(self, mode: bool = True) -> AvatarModel:
        """Train mode for the decoder only: the frozen generator always stays in eval mode."""
        super().train(mode)
        self.generator.eval()
        return self

    @property
    def tokenizer(self) -> Any:
        return self.generator.tokenizer

    @property
    def head_model(self) -> nn.Module:
        """The head model (the generator's; unregistered: rebuilt from its config, never in checkpoints)."""
        return self.generator.head_model

    # ----------------------------------------------------------------------------------------------- points
    @torch.no_grad()
    def encode_condition(self, portrait: Tensor, portrait_head: HeadParams, static_offset: Tensor | None = None,
                         portrait_camera: Cameras | None = None) -> Tensor:
        """Condition tokens ``[B, C, D]`` of the frozen generator (portrait ``[B, 3, H, W]`` + its head fit, on the
        subjects' tracked mesh when ``static_offset [B, V, 3]`` is given; the portrait's camera for pixel-aligned
        mesh tokens)."""
        return self.generator.encode_condition(portrait, portrait_head, static_offset, portrait_camera)

    def template_cloud(self, shape: Tensor, static_offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The template points on each subject's neutral head (``shape [B, S]``, ``static_offset [B, V, 3]`` or
        None): ``means [B, M, 3]``, ``binding [B, M]``."""
        face_idx = self.template_face_idx.to(shape.device)
        means = template_points(self.head_model, face_idx, self.template_bary.to(shape.device), shape, static_offset)
        return means, face_idx[None].expand(shape.shape[0], -1)

    @torch.no_grad()
    def token_features(self, condition: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
        """The generator's hidden states ``[B, N, 4, D]`` of every point's tokens (``tokens [B, L]``, ``lengths
        [B]``), teacher-forced with the contexts sampling uses."""
        return self.generator.teacher_features(condition, tokens, lengths, self.feature_window, self.sampling.keep)

    @torch.no_grad()
    def prepare(self, portrait: Tensor, portrait_head: HeadParams, *, points: PointSource = "generated",
                teacher_means: Tensor | None = None, teacher_binding: Tensor | None = None,
                teacher_mask: Tensor | None = None, shape: Tensor | None = None,
                sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                on_step: Callable[[int, int], None] | None = None,
                portrait_camera: Cameras | None = None, static_offset: Tensor | None = None) -> PointInputs:
        """Everything the decoder consumes, from the frozen parts (no gradients): points, their hidden states, the
        condition tokens and the rig.

        Args:
            portrait: ``[B, 3, H, W]`` in 0..1; portrait_head: its head parameters ``[B]``.
            points: ``generated`` (sampled from the portrait), ``teacher`` (needs ``teacher_means [B, N, 3]``,
                ``teacher_binding [B, N]``, optional ``teacher_mask [B, N]``) or ``template``.
            shape: ``[B, S]`` the subject's identity for the rig and template points (default: the portrait's).
            sampling: overrides of :attr:`sampling` for ``generated`` (its window is the feature window).
            generator: RNG of the sampling (on the portrait's device).
            on_step: progress of the sampling, ``on_step(position, max_position)`` (see
                :func:`avp.models.sampling.sample`).
            portrait_camera: the portrait's camera (``Ks [B, 1, 3, 3]`` or ``[B, 3, 3]``); required when the decoder's
                ``appearance`` is ``pixel`` or the condition's mesh tokens are pixel-aligned.
            static_offset: ``[B, V, 3]`` the subjects' tracked per-vertex offsets (part of their neutral meshes: the
                condition's mesh tokens, nearest-face sampling, the template points and the rig use them), or None.
        """
        if points not in POINT_SOURCES:
            raise ValueError(f"DecoderModule: points must be one of {POINT_SOURCES}, got {points!r}")
        shape = portrait_head.shape if shape is None else shape
        condition = self.encode_condition(portrait, portrait_head, static_offset, portrait_camera)
        if points == "generated":
            cfg = self.sampling if sampling is None else dataclasses.replace(sampling, window=self.feature_window)
            out = self.generator.sample(condition, cfg, generator, on_step, shape=shape, static_offset=static_offset)
            return self._inputs(out.points, out.binding, out.mask, out.n_points, out.point_hidden, out.finished,
                                condition, portrait, portrait_head, shape, portrait_camera, static_offset)
        if points == "teacher":
            if teacher_means is None or teacher_binding is None:
                raise ValueError("DecoderModule: points='teacher' needs teacher_means and teacher_binding")
            means, binding, mask = teacher_means, teacher_binding, teacher_mask
        else:
            means, binding = self.template_cloud(shape, static_offset)
            mask = None
        tokens, lengths = self.generator.teacher_tokens(means, binding, mask)
        finished = torch.ones(portrait.shape[0], dtype=torch.bool, device=portrait.device)
        return self.prepare_tokens(condition, tokens, lengths, finished, portrait, portrait_head, shape,
                                   portrait_camera, static_offset=static_offset)

    def prepare_batch(self, batch: AvatarBatch, points: PointSource = "teacher", *,
                      sampling: SamplingConfig | None = None, generator: torch.Generator | None = None) -> PointInputs:
        """:meth:`prepare` for an :class:`~avp.types.AvatarBatch`: its portraits, teacher clouds, portrait cameras,
        the subjects' identity ``head.shape`` and their ``static_offset``."""
        return self.prepare(batch.portrait, batch.portrait_head, points=points, teacher_means=batch.teacher.means,
                            teacher_binding=batch.binding, teacher_mask=batch.teacher.valid_mask(),
                            shape=batch.head.shape, sampling=sampling, generator=generator,
                            portrait_camera=batch.portrait_camera, static_offset=batch.static_offset)

    @torch.no_grad()
    def prepare_tokens(self, condition: Tensor, tokens: Tensor, lengths: Tensor, finished: Tensor, portrait: Tensor,
                       portrait_head: HeadParams, shape: Tensor, portrait_camera: Cameras | None = None, *,
                       static_offset: Tensor | None = None) -> PointInputs:
        """:meth:`prepare` of given token sequences (``tokens [B, L]``, ``lengths [B]``, ``finished [B]``; e.g. stored
        samples), their features teacher-forced; ``static_offset [B, V, 3]`` as in :meth:`prepare`."""
        pts, bind, mask, n_points = self.tokenizer.decode_batch(tokens, lengths)
        features = self.token_features(condition, tokens, lengths)
        return self._inputs(pts, bind, mask, n_points, features, finished, condition, portrait, portrait_head, shape,
                            portrait_camera, static_offset)

    def _inputs(self, pts: Tensor, bind: Tensor, mask: Tensor, n_points: Tensor, features: Tensor, finished: Tensor,
                condition: Tensor, portrait: Tensor, portrait_head: HeadParams, shape: Tensor,
                portrait_camera: Cameras | None, static_offset: Tensor | None = None) -> PointInputs:
        """Bind the points to the head model (and sample the portrait at them) -> :class:`PointInputs`."""
        if int(n_points.min()) < 1:
            raise ValueError("DecoderModule: a sample has no points (the generator emitted EOS at once); raise "
                             "sampling.min_points")
        pts = pts.float()
        rig = self.head_model.rig(bind, pts, shape.to(pts.dtype), static_offset)
        pixel = self.pixel_features(portrait, portrait_head, portrait_camera, rig, mask)
        return PointInputs(points=pts, binding=bind, mask=mask, n_points=n_points, features=features,
                           condition=condition, finished=finished, rig=rig, pixel=pixel)

    def pixel_features(self, portrait: Tensor, portrait_head: HeadParams, portrait_camera: Cameras | None,
                       rig: PointRig, mask: Tensor) -> Tensor | None:
        """The portrait's colours ``[B, N, C]`` at the points posed as in the portrait (``appearance: pixel``), else
        None."""
        config = self.decoder.config
        if config.appearance != "pixel":
            return None
        if portrait_camera is None:
            raise ValueError("DecoderModule: decoder.appearance 'pixel' needs the portrait's camera (portrait_camera); "
                             "shards carry it in portrait_camera.npz, a photo gets it from its head fit")
        B = portrait.shape[0]
        head = portrait_head.map(lambda t: t[:, None].to(rig.points.dtype))  # [B, 1]: one frame, the portrait's
        posed = rig.deform(head, mode=self.animation).means[:, 0]  # [B, N, 3]
        Ks = portrait_camera.Ks.reshape(B, 3, 3).to(posed)
        viewmats = portrait_camera.viewmats.reshape(B, 4, 4).to(posed)
        return pixel_features(portrait, posed, mask, Ks, viewmats, levels=config.pixel_levels)

    # ----------------------------------------------------------------------------------------------- decoding
    def decode(self, inputs: PointInputs) -> DecoderOutput:
        """The decoder on prepared inputs -> canonical splats ``[B, N]`` and offsets (gradients reach the decoder
        only)."""
        return self.decoder(inputs.points, inputs.features.to(inputs.points.dtype), inputs.mask, inputs.condition,
                            inputs.pixel)

    def avatar(self, inputs: PointInputs, decoded: DecoderOutput, index: int = 0, *,
               portrait_head: HeadParams | None = None, portrait: Tensor | None = None,
               portrait_camera: Cameras | None = None, meta: dict[str, Any] | None = None) -> Avatar:
        """Avatar ``index`` of a decoded batch: its real points only (float32), bound to its identity.

        ``portrait_head`` (``[1]``), ``portrait`` (``[3, H, W]``), ``portrait_camera`` and ``meta`` are recorded with
        it (what saving and exporting it need)."""
        n = int(inputs.n_points[index])
        one = slice(index, index + 1)
        cloud = GaussianCloud(**{k: getattr(decoded.cloud, k)[one, :n].float() for k in CLOUD_FIELDS})
        binding, points = inputs.binding[one, :n], inputs.points[one, :n]
        shape = inputs.rig.shape[one]
        offset = None if inputs.rig.static_offset is None else inputs.rig.static_offset[one]
        if inputs.points.shape == (1, n, 3):
            rig = inputs.rig
        else:  # the batch's rig holds padding or other subjects: bind this avatar's points alone
            rig = self.head_model.rig(binding, points, shape, offset)
        return Avatar(cloud=cloud, binding=binding[0].long(), points=points[0].float(), shape=shape[0].float(),
                      head_model=self.head_model, rig=rig, animation=self.animation,
                      finished=bool(inputs.finished[index]), portrait_head=portrait_head,
                      head_config=self.head_config, portrait=portrait, portrait_camera=portrait_camera,
                      meta=dict(meta or {}))

    def render_batch(self, cloud: GaussianCloud, rig: PointRig, head: HeadParams, cameras: Cameras,
                     background: Tensor | float | None = None) -> Tensor:
        """Animate a batch of decoded splats (``cloud [B, N]`` on ``rig``) to ``head [B, T]`` (its ``shape`` is not
        read, ``[B, S]`` or ``[B, T, S]``: the rig holds the identity) and render every frame from ``cameras``
        (``Ks [B, V, 3, 3]`` or ``[V, 3, 3]``), differentiably (training's renders).

        ``background``: ``[B, 3]`` per avatar, ``[3]``, a float or None (black). Runs in float32 outside autocast
        (the renderer and the skinning need it). Returns ``rgb [B, T, V, 3, H, W]``.
        """
        device = rig.points.device
        with torch.autocast(device_type=device.type, enabled=False):
            cloud = cloud.map(lambda t: t.float() if t.is_floating_point() else t)
            head = head.map(lambda t: t.float())
            B, T = head.global_rot.shape[:2]
            posed = animate_gaussians(rig, cloud, head, mode=self.animation)  # [B * T, N], b-major
            V = cameras.Ks.shape[-3]
            # [V] or [B, V] cameras -> [B, T, V] (views, no copies): render() gives frame b * T + t the views [b, t]
            cams = Cameras(Ks=cameras.Ks.float().unsqueeze(-4).expand(B, T, V, 3, 3),
                           viewmats=cameras.viewmats.float().unsqueeze(-4).expand(B, T, V, 4, 4),
                           width=cameras.width, height=cameras.height)
            bg = background
            if isinstance(background, Tensor):
                if background.shape not in ((3,), (B, 3)):
                    raise ValueError(f"render_frames: background must be [3] or [B, 3] = [{B}, 3], got "
                                     f"{tuple(background.shape)}")
                bg = background.float().to(device).expand(B, 3)[:, None, None].expand(B, T, V, 3)
            out = render(posed, cams, background=bg, backend=self.render_backend)
        return out.rgb.unflatten(0, (B, T))  # [B, T, V, 3, H, W]

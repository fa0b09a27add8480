"""Portrait -> animatable avatar with trained checkpoints, in the style of a predictor::

    pipe = AvatarPipeline.from_checkpoints("generator.ckpt", "decoder.ckpt", device="auto")
    avatar = pipe.reconstruct("photo.jpg", seed=0, temperature=0.9)      # expensive, once
    cloud = avatar.animate(head_params)                                   # [T] -> GaussianCloud [T, N], cheap
    frames = avatar.render(avatar.view_cameras([0.0], size=512), head_params).rgb
    avatar.save("out/avatar"); avatar = Avatar.load("out/avatar")

``reconstruct`` preprocesses the photo (:mod:`avp.portrait`: face, crop to the training framing, head fit), samples
the point cloud autoregressively (a progress bar over tokens), decodes the splats and binds them to the head model
once (the :class:`~avp.head.PointRig`). ``animate`` reuses that rig: per frame it is two small matrix products over
the points (LBS mode) and no gathers, so driving and rendering are the cheap part.

The decoder checkpoint is self-contained (it carries its frozen generator's weights and configuration). A generator
checkpoint given beside it is checked against the copy inside: a decoder is trained on the features of one
generator, and pairing it with another would silently give wrong splats.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from avp.atomic import atomic_open, atomic_write_json
from avp.data.synthetic.cameras import FRAME_HEIGHT_M, TARGET
from avp.head import HeadConfig, PointRig, animate_gaussians, load_head_model
from avp.portrait.preprocess import Portrait, PortraitFraming, portrait_from_parameters, preprocess_portrait
from avp.render import look_at, render
from avp.render.cameras import intrinsics
from avp.types import HEAD_PARAM_FIELDS, Cameras, GaussianCloud, HeadParams, RenderOutput

__all__ = ["AVATAR_FORMAT", "Avatar", "AvatarPipeline", "ViewFraming"]

AVATAR_FORMAT = "avp-avatar"
AVATAR_VERSION = 1
_CLOUD_FIELDS = ("means", "quats", "scales", "opacities", "sh")


@dataclass
class ViewFraming:
    """Cameras for looking at an avatar: the synthetic clips' rig (about 1 m away, framing neck to hair top)."""

    distance: float = 1.0
    target: tuple[float, float, float] = (float(TARGET[0]), float(TARGET[1]), float(TARGET[2]))
    frame_height: float = FRAME_HEIGHT_M
    """Metres covered vertically at ``distance``."""


def view_cameras(yaw_deg: Sequence[float] | Tensor, *, size: int = 512, pitch_deg: float | Sequence[float] = 0.0,
                 framing: ViewFraming | None = None, device: torch.device | str | None = None) -> Cameras:
    """``V`` cameras around the head (yaw 0 = frontal, positive towards the subject's left, +x): ``Ks [V, 3, 3]``,
    ``viewmats [V, 4, 4]``, square ``size``."""
    framing = framing or ViewFraming()
    yaw = torch.deg2rad(torch.as_tensor(yaw_deg, dtype=torch.float64).reshape(-1))
    pitch = torch.deg2rad(torch.as_tensor(pitch_deg, dtype=torch.float64).reshape(-1)).expand_as(yaw)
    target = torch.tensor(framing.target, dtype=torch.float64)
    offset = torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch), torch.cos(yaw) * torch.cos(pitch)], -1)
    eye = target + framing.distance * offset
    viewmats = look_at(eye, target.expand_as(eye), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    fov = math.degrees(2 * math.atan(framing.frame_height / 2 / framing.distance))
    K = intrinsics(fov, size, size, dtype=torch.float64).expand(len(yaw), 3, 3)
    return Cameras(Ks=K.float().to(device).contiguous(), viewmats=viewmats.float().to(device), width=size,
                   height=size)


@dataclass
class Avatar:
    """One animatable avatar: canonical Gaussians bound to the head model, and what made them."""

    cloud: GaussianCloud
    """``[1, N]`` activated Gaussians in the subject's canonical space (its neutral head), no padding."""
    binding: Tensor
    """``[N]`` long head-model face of every splat."""
    points: Tensor
    """``[N, 3]`` the generated points the splats were decoded at (the rig's points; ``cloud.means`` adds the
    decoder's offsets)."""
    shape: Tensor
    """``[S]`` the identity (shape coefficients) the avatar is bound to."""
    portrait_head: HeadParams
    """``[1]`` head parameters fitted to the portrait."""
    head_config: HeadConfig
    """Rebuilds the head model (FLAME files are never stored)."""
    head_model: torch.nn.Module
    rig: PointRig
    """The binding, built once: every ``animate`` reuses it."""
    animation: str = "lbs"
    """``lbs`` (the paper's) or ``face_frame`` (GaussianAvatars'), as the decoder was trained."""
    portrait: Tensor | None = None
    """``[3, H, W]`` the aligned portrait the avatar was made from."""
    portrait_camera: Cameras | None = None
    """``Ks [1, 3, 3]``, ``viewmats [1, 4, 4]``: the camera of the portrait fit."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Seed, sampling settings, checkpoints, fit report, provenance."""

    # ------------------------------------------------------------------------------------------ properties
    @property
    def n_points(self) -> int:
        return int(self.binding.shape[0])

    @property
    def device(self) -> torch.device:
        return self.cloud.means.device

    def to(self, device: torch.device | str) -> Avatar:
        """The avatar on another device (the rig moves with it; the head model adapts per call)."""
        return dataclasses.replace(
            self, cloud=self.cloud.to(device), binding=self.binding.to(device), points=self.points.to(device),
            shape=self.shape.to(device), portrait_head=self.portrait_head.to(device),
            rig=dataclasses.replace(self.rig.to(device), model=self.head_model),
            portrait_camera=None if self.portrait_camera is None else self.portrait_camera.to(device))

    # ------------------------------------------------------------------------------------------ driving
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
        """Render ``T`` frames (``head [T]``; None: the rest pose) from ``V`` cameras (``Ks [V, 3, 3]``).

        Returns ``rgb [T, V, 3, H, W]`` and ``alpha``; frames are rendered ``chunk`` at a time. The default white
        background is that of the synthetic training frames.
        """
        head = self.neutral(1) if head is None else head
        T = head.global_rot.shape[-2] if head.global_rot.dim() == 3 else head.global_rot.shape[0]
        if cameras.Ks.dim() != 3:
            raise ValueError(f"Avatar.render: cameras must hold Ks [V, 3, 3], got {tuple(cameras.Ks.shape)}")
        cams = cameras.to(self.device)
        bg = torch.as_tensor(background, dtype=torch.float32, device=self.device)
        if bg.dim() == 0:
            bg = bg.expand(3)
        frames = self._frames(head).map(lambda t: t[0])  # [T]
        rgb, alpha = [], []
        for start in range(0, T, chunk):
            part = frames.map(lambda t, s=start: t[s : s + chunk])
            posed = self.animate(part)  # [t, N]
            n = posed.means.shape[0]
            V = cams.n_views
            batch = Cameras(Ks=cams.Ks.expand(n, V, 3, 3), viewmats=cams.viewmats.expand(n, V, 4, 4),
                            width=cams.width, height=cams.height)
            with torch.no_grad():
                out = render(posed, batch, background=bg.expand(n, V, 3), backend=backend)
            rgb.append(out.rgb)
            alpha.append(out.alpha)
        return RenderOutput(rgb=torch.cat(rgb), alpha=torch.cat(alpha))

    def view_cameras(self, yaw_deg: Sequence[float] | Tensor, *, size: int = 512,
                     pitch_deg: float | Sequence[float] = 0.0, framing: ViewFraming | None = None) -> Cameras:
        """Cameras of the training rig's framing at the given yaws (see :func:`view_cameras`)."""
        return view_cameras(yaw_deg, size=size, pitch_deg=pitch_deg, framing=framing, device=self.device)

    # ------------------------------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write ``avatar.json`` (configs, meta), ``avatar.npz`` (splats, binding, points, identity, portrait fit)
        and ``portrait.png`` (when present) into ``directory``, each atomically."""
        import io

        from PIL import Image

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        c = self.cloud.map(lambda t: t[0].detach().cpu())
        arrays: dict[str, np.ndarray] = {k: getattr(c, k).numpy() for k in _CLOUD_FIELDS}
        arrays["binding"] = self.binding.cpu().numpy().astype(np.int64)
        arrays["points"] = self.points.detach().cpu().numpy()
        arrays["shape"] = self.shape.detach().cpu().numpy()
        for k in HEAD_PARAM_FIELDS:
            arrays[f"portrait_head_{k}"] = getattr(self.portrait_head, k).detach().cpu().numpy()
        if self.portrait_camera is not None:
            arrays["portrait_Ks"] = self.portrait_camera.Ks.cpu().numpy()
            arrays["portrait_viewmats"] = self.portrait_camera.viewmats.cpu().numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with atomic_open(directory / "avatar.npz", "wb") as f:
            f.write(buf.getvalue())
        info = {
            "format": AVATAR_FORMAT, "version": AVATAR_VERSION, "head_model": self.head_model.name,
            "head_config": dataclasses.asdict(self.head_config), "animation": self.animation,
            "n_points": self.n_points, "sh_degree": self.cloud.sh_degree,
            "portrait_size": None if self.portrait_camera is None else [self.portrait_camera.height,
                                                                       self.portrait_camera.width],
            "meta": self.meta,
        }
        atomic_write_json(directory / "avatar.json", info)
        if self.portrait is not None:
            img = (self.portrait.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            png = io.BytesIO()
            Image.fromarray(img).save(png, format="PNG")
            with atomic_open(directory / "portrait.png", "wb") as f:
                f.write(png.getvalue())
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: torch.device | str = "cpu",
             head: HeadConfig | None = None) -> Avatar:
        """Read an avatar written by :meth:`save`; the rig is rebuilt (once) from the stored points.

        ``head`` replaces the stored head config (e.g. the FLAME file lives elsewhere on this machine); it must build
        the same head model.
        """
        from PIL import Image

        directory = Path(directory)
        info_path, npz_path = directory / "avatar.json", directory / "avatar.npz"
        for p in (info_path, npz_path):
            if not p.is_file():
                raise FileNotFoundError(f"{directory}: not an avatar folder ({p.name} is missing)")
        info = json.loads(info_path.read_text())
        if info.get("format") != AVATAR_FORMAT or info.get("version") != AVATAR_VERSION:
            raise ValueError(f"{info_path}: format {info.get('format')!r} version {info.get('version')!r}; expected "
                             f"{AVATAR_FORMAT!r} version {AVATAR_VERSION}")
        config = head or HeadConfig(**info["head_config"])
        head_model = load_head_model(config)
        if head_model.name != info["head_model"]:
            raise ValueError(f"{info_path}: the avatar is bound to head model {info['head_model']!r} but the head "
                             f"config builds {head_model.name!r}")
        with np.load(str(npz_path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        needed = [*_CLOUD_FIELDS, "binding", "points", "shape", *(f"portrait_head_{k}" for k in HEAD_PARAM_FIELDS)]
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise ValueError(f"{npz_path}: missing arrays {missing}")
        t = lambda k: torch.from_numpy(np.ascontiguousarray(arrays[k])).to(device)
        cloud = GaussianCloud(**{k: t(k)[None] for k in _CLOUD_FIELDS})
        binding, points, shape = t("binding").long(), t("points").float(), t("shape").float()
        if int(binding.max()) >= head_model.n_faces:
            raise ValueError(f"{npz_path}: binding reaches face {int(binding.max())}; {head_model.name} has "
                             f"{head_model.n_faces}")
        portrait_head = HeadParams(**{k: t(f"portrait_head_{k}") for k in HEAD_PARAM_FIELDS})
        camera = None
        if "portrait_Ks" in arrays:
            size = info.get("portrait_size") or [int(round(float(arrays["portrait_Ks"][0, 1, 2] * 2)))] * 2
            camera = Cameras(Ks=t("portrait_Ks"), viewmats=t("portrait_viewmats"), width=int(size[1]),
                             height=int(size[0]))
        portrait = None
        if (directory / "portrait.png").is_file():
            with Image.open(directory / "portrait.png") as im:
                portrait = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
            portrait = portrait.to(device)
        rig = head_model.rig(binding[None], points[None], shape[None])
        return cls(cloud=cloud, binding=binding, points=points, shape=shape, portrait_head=portrait_head,
                   head_config=config, head_model=head_model, rig=rig, animation=info.get("animation", "lbs"),
                   portrait=portrait, portrait_camera=camera, meta=info.get("meta", {}))


def _trained_head_config(decoder_ckpt: Path, flame_path: str | Path) -> HeadConfig:
    """The head config a decoder checkpoint was trained with, with its FLAME file moved to ``flame_path``."""
    try:
        ckpt = torch.load(decoder_ckpt, map_location="cpu", weights_only=False, mmap=True)
        hp = ckpt["hyper_parameters"]
        trained = hp.get("head") or hp["generator_hparams"]["head"]
    except Exception as e:
        raise ValueError(f"{decoder_ckpt}: cannot read its head config ({type(e).__name__}: {e})") from e
    return HeadConfig(**{**dict(trained), "flame_path": str(flame_path)})


class AvatarPipeline:
    """Trained checkpoints -> avatars (see the module docstring).

    Args:
        decoder_module: a loaded :class:`avp.lit.decoder.DecoderModule` (its frozen generator inside).
        device: where everything runs.
        framing: the portrait framing of the training data.
        landmark_embedding: a mediapipe landmark embedding file (FLAME needs one; the built-in head has its own).
        head_config: the head config the checkpoints' head model is rebuilt from.
    """

    def __init__(self, decoder_module: torch.nn.Module, *, device: torch.device, framing: PortraitFraming | None = None,
                 landmark_embedding: str | Path | None = None, head_config: HeadConfig | None = None,
                 checkpoints: dict[str, str | None] | None = None) -> None:
        self.module = decoder_module.to(device).eval()
        self.device = device
        self.framing = framing or PortraitFraming()
        self.landmark_embedding = landmark_embedding
        hp = dict(getattr(decoder_module, "hparams", {}))
        head_cfg = head_config or hp.get("head") or hp.get("generator_hparams", {}).get("head") or {}
        self.head_config = head_cfg if isinstance(head_cfg, HeadConfig) else HeadConfig(**dict(head_cfg))
        self.checkpoints = dict(checkpoints or {})

    @property
    def head_model(self) -> torch.nn.Module:
        return self.module.head_model

    @classmethod
    def from_checkpoints(cls, generator_ckpt: str | Path | None, decoder_ckpt: str | Path, *,
                         device: str | torch.device = "auto", head: HeadConfig | None = None,
                         flame_path: str | Path | None = None, framing: PortraitFraming | None = None,
                         landmark_embedding: str | Path | None = None) -> AvatarPipeline:
        """Load a decoder checkpoint (``avp fit`` of the decoder stage) and check it against ``generator_ckpt``.

        Args:
            generator_ckpt: the GeneratorModule checkpoint the decoder was trained on, or None to trust the copy in
                the decoder checkpoint. When given, its weights must equal that copy.
            decoder_ckpt: the DecoderModule checkpoint.
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda:1`` …
            head: a head config replacing the checkpoints'.
            flame_path: the FLAME pickle on this machine, replacing only the path in the checkpoints' head config
                (sizes and options stay as trained).
            framing: the portrait framing (default: the synthetic data's).
            landmark_embedding: mediapipe landmark embedding ``.npz`` (required for FLAME).
        """
        from avp.device import select_device
        from avp.lit.decoder import DecoderModule, read_generator_checkpoint

        dev = select_device(device) if isinstance(device, str) else torch.device(device)
        path = Path(decoder_ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such decoder checkpoint (written by `avp fit` of the decoder stage)")
        if flame_path is not None and head is None:
            head = _trained_head_config(path, flame_path)
        kwargs: dict[str, Any] = {"map_location": "cpu"}
        if head is not None:
            kwargs["head"] = head
        try:
            module = DecoderModule.load_from_checkpoint(str(path), **kwargs)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a DecoderModule checkpoint ({type(e).__name__}: {e})") from e
        if generator_ckpt is not None:
            hp, state = read_generator_checkpoint(generator_ckpt)
            ours = module.generator.state_dict()
            theirs = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
            if set(ours) != set(theirs) or any(not torch.equal(ours[k].cpu(), theirs[k].cpu()) for k in ours):
                raise ValueError(f"{generator_ckpt}: this generator is not the one decoder checkpoint {path} was "
                                 "trained with (its weights differ from the copy inside the decoder checkpoint); pass "
                                 "the matching generator checkpoint, or none to use the decoder's own copy")
        return cls(module, device=dev, framing=framing, landmark_embedding=landmark_embedding, head_config=head,
                   checkpoints={"generator": None if generator_ckpt is None else str(generator_ckpt),
                                "decoder": str(path)})

    # ------------------------------------------------------------------------------------------ steps
    def preprocess(self, image: Any, *, choose: Literal["largest"] | None = None,
                   background: Literal["keep", "grabcut"] = "keep", fit_config: Any = None,
                   what: str | None = None, progress: bool = True, head: HeadParams | None = None) -> Portrait:
        """Detect, align and fit a photo (see :func:`avp.portrait.preprocess.preprocess_portrait`); with ``head``
        (the portrait's known head parameters) the photo is taken as framed and neither detected nor fitted."""
        from tqdm import tqdm

        if head is not None:
            return portrait_from_parameters(image, head, self.framing)

        bar = tqdm(desc="portrait head fit", unit="step", disable=not progress)

        def step(i: int, n: int, loss: float) -> None:
            bar.total = n
            bar.update()

        try:
            return preprocess_portrait(image, self.head_model, framing=self.framing,
                                       embedding_path=self.landmark_embedding, choose=choose, background=background,
                                       fit_config=fit_config, what=what, progress=step)
        finally:
            bar.close()

    def reconstruct(self, image: Any, *, seed: int = 0, temperature: float | None = None, top_k: int | None = None,
                    top_p: float | None = None, max_points: int | None = None,
                    points: Literal["generated", "template"] = "generated", progress: bool = True,
                    **preprocess_kwargs: Any) -> Avatar:
        """Photo (or a :class:`Portrait` from :meth:`preprocess`) -> :class:`Avatar`: the expensive part, once.

        Args:
            image: path, array, tensor, PIL image, or a preprocessed :class:`Portrait`.
            seed: sampling seed (same seed, same avatar on the same device).
            temperature, top_k, top_p, max_points: sampling overrides (None: the checkpoint's settings).
            points: ``generated`` (the method) or ``template`` (the fixed-surface baseline).
            progress: tqdm bars (head fit, sampling).
            preprocess_kwargs: passed to :meth:`preprocess` (``choose``, ``background``, ``fit_config``, ``what``).
        """
        from tqdm import tqdm

        portrait = image if isinstance(image, Portrait) else self.preprocess(image, progress=progress,
                                                                             **preprocess_kwargs)
        m = self.module
        pimg = portrait.image[None].to(self.device)  # [1, 3, S, S]
        phead = portrait.head.to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        overrides = {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                                       ("max_points", max_points)) if v is not None}
        sampling = dataclasses.replace(m.sampling, **overrides, window=m.feature_window)
        sampling.validate()
        with torch.no_grad():
            if points not in ("generated", "template"):
                raise ValueError(f"reconstruct: points must be 'generated' or 'template', got {points!r}")
            bar = tqdm(total=4 * sampling.max_points + 1, desc="sampling points", unit="tok",
                       disable=not progress or points != "generated")
            try:
                camera = None if portrait.camera is None else portrait.camera.to(self.device)
                inputs = m.prepare(pimg, phead, points=points, sampling=sampling, generator=generator,
                                   on_step=lambda pos, last: bar.update(pos + 1 - bar.n), portrait_camera=camera)
            finally:
                bar.close()
            _, decoded = m.decode_prepared(inputs)
        n = int(decoded.n_points[0])
        keep = lambda t: t[:, :n]
        cloud = GaussianCloud(**{k: keep(getattr(decoded.cloud, k)).float() for k in _CLOUD_FIELDS})
        rig = decoded.rig if decoded.points.shape[1] == n else self.head_model.rig(
            decoded.binding[:, :n], decoded.points[:, :n], phead.shape.float())
        from avp.provenance import git_sha

        meta = {
            "seed": int(seed), "points": points, "sampling": dataclasses.asdict(sampling),
            "finished": bool(decoded.finished[0]), "n_points": n, "checkpoints": self.checkpoints,
            "device": str(self.device), "source": portrait.source,
            "fit": portrait.fit.report() if portrait.fit is not None else None, "git": git_sha(),
        }
        return Avatar(cloud=cloud, binding=decoded.binding[0, :n].long(), points=decoded.points[0, :n].float(),
                      shape=phead.shape[0].float(), portrait_head=phead, head_config=self.head_config,
                      head_model=self.head_model, rig=rig, animation=m.animation, portrait=portrait.image,
                      portrait_camera=portrait.camera, meta=meta)

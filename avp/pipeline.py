"""Portrait -> animatable avatar with trained checkpoints, in the style of a predictor::

    pipe = AvatarPipeline.from_checkpoints("generator.ckpt", "decoder.ckpt", device="auto")
    avatar = pipe.reconstruct("photo.jpg", seed=0, temperature=0.9)      # expensive, once
    cloud = avatar.animate(head_params)                                   # [T] -> GaussianCloud [T, N], cheap
    frames = avatar.render(avatar.view_cameras([0.0], size=512), head_params).rgb
    save_avatar(avatar, "out/avatar"); avatar = load_avatar("out/avatar")         # avp.export

``reconstruct`` preprocesses the photo (:mod:`avp.portrait`: face, crop to the training framing, head fit), samples
the point cloud autoregressively (a progress bar over tokens), decodes the splats and binds them to the head model
once (the :class:`~avp.head.PointRig`). ``animate`` reuses that rig: per frame it is two small matrix products over
the points (LBS mode) and no gathers, so driving and rendering are the cheap part.

The decoder checkpoint is self-contained (it carries its frozen generator's weights and configuration) and is read by
:mod:`avp.checkpoints` into the pure :class:`~avp.models.avatar.AvatarModel` (no Lightning). A generator checkpoint
given beside it is checked against the copy inside: a decoder is trained on the features of one generator, and
pairing it with another would silently give wrong splats.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

from avp.checkpoints import check_same_generator, load_avatar_model, trained_head_config
from avp.head import HeadConfig
from avp.models.avatar import Avatar, AvatarModel
from avp.portrait.preprocess import Portrait, PortraitFraming, portrait_from_parameters, preprocess_portrait
from avp.types import HeadParams

__all__ = ["AvatarPipeline"]


class AvatarPipeline:
    """Trained checkpoints -> avatars (see the module docstring).

    Args:
        model: the stage-2 model (:func:`avp.checkpoints.load_avatar_model`; its frozen generator inside).
        device: where everything runs.
        framing: the portrait framing of the training data.
        landmark_embedding: a mediapipe landmark embedding file (FLAME needs one; the built-in head has its own).
        hparams: the decoder checkpoint's hyper-parameters.
        checkpoints: the checkpoint files (recorded in every avatar's meta).
    """

    def __init__(self, model: AvatarModel, *, device: torch.device, framing: PortraitFraming | None = None,
                 landmark_embedding: str | Path | None = None, hparams: dict[str, Any] | None = None,
                 checkpoints: dict[str, str | None] | None = None) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.framing = framing or PortraitFraming()
        self.landmark_embedding = landmark_embedding
        self.hparams = dict(hparams or {})
        self.checkpoints = dict(checkpoints or {})

    @property
    def head_model(self) -> torch.nn.Module:
        return self.model.head_model

    @property
    def head_config(self) -> HeadConfig:
        """The head config the checkpoints' head model is rebuilt from."""
        return self.model.head_config

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

        dev = select_device(device) if isinstance(device, str) else torch.device(device)
        path = Path(decoder_ckpt)
        if flame_path is not None and head is None and path.is_file():
            head = trained_head_config(path, flame_path)
        model, hparams = load_avatar_model(path, head=head)
        if generator_ckpt is not None:
            check_same_generator(model, generator_ckpt)
        return cls(model, device=dev, framing=framing, landmark_embedding=landmark_embedding, hparams=hparams,
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
        m = self.model
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

            def step(position: int, last: int) -> None:
                bar.update(position + 1 - bar.n)

            try:
                camera = None if portrait.camera is None else portrait.camera.to(self.device)
                inputs = m.prepare(pimg, phead, points=points, sampling=sampling, generator=generator, on_step=step,
                                   portrait_camera=camera)
            finally:
                bar.close()
            decoded = m.decode(inputs)
        from avp.provenance import git_sha

        meta = {
            "seed": int(seed), "points": points, "sampling": dataclasses.asdict(sampling),
            "finished": bool(inputs.finished[0]), "n_points": int(inputs.n_points[0]),
            "checkpoints": self.checkpoints, "device": str(self.device), "source": portrait.source,
            "fit": portrait.fit.report() if portrait.fit is not None else None, "git": git_sha(),
        }
        return m.avatar(inputs, decoded, portrait_head=phead, portrait=portrait.image,
                        portrait_camera=portrait.camera, meta=meta)

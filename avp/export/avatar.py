"""An :class:`~avp.models.avatar.Avatar` folder: ``avatar.json`` (format, head config, animation, meta),
``avatar.npz`` (splats, binding, points, identity and, for a tracked subject, its ``static_offset [V, 3]``, portrait
fit) and ``portrait.png`` (when the avatar has one), each written atomically. :func:`load_avatar` rebuilds the head
model from the stored config and the rig (once) from the stored points (and offset), so a loaded avatar animates
exactly like the one saved."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import torch

from avp.atomic import atomic_open, atomic_write_json
from avp.head import HeadConfig, load_head_model
from avp.models.avatar import CLOUD_FIELDS, Avatar
from avp.types import HEAD_PARAM_FIELDS, Cameras, GaussianCloud, HeadParams

AVATAR_FORMAT = "avp-avatar"
AVATAR_VERSION = 1


def save_avatar(avatar: Avatar, directory: str | Path) -> Path:
    """Write ``avatar`` into ``directory`` (see the module docstring); it needs its ``portrait_head`` and
    ``head_config``."""
    from PIL import Image

    if avatar.portrait_head is None or avatar.head_config is None:
        raise ValueError("save_avatar: the avatar has no portrait_head/head_config (make it with "
                         "AvatarModel.avatar(..., portrait_head=...))")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = avatar.cloud.map(lambda t: t[0].detach().cpu())
    arrays: dict[str, np.ndarray] = {k: getattr(c, k).numpy() for k in CLOUD_FIELDS}
    arrays["binding"] = avatar.binding.cpu().numpy().astype(np.int64)
    arrays["points"] = avatar.points.detach().cpu().numpy()
    arrays["shape"] = avatar.shape.detach().cpu().numpy()
    if avatar.static_offset is not None:  # optional: avatars without one are written (and read) as before
        arrays["static_offset"] = avatar.static_offset.detach().float().cpu().numpy()
    for k in HEAD_PARAM_FIELDS:
        arrays[f"portrait_head_{k}"] = getattr(avatar.portrait_head, k).detach().cpu().numpy()
    if avatar.portrait_camera is not None:
        arrays["portrait_Ks"] = avatar.portrait_camera.Ks.cpu().numpy()
        arrays["portrait_viewmats"] = avatar.portrait_camera.viewmats.cpu().numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_open(directory / "avatar.npz", "wb") as f:
        f.write(buf.getvalue())
    info = {
        "format": AVATAR_FORMAT, "version": AVATAR_VERSION, "head_model": avatar.head_model.name,
        "head_config": dataclasses.asdict(avatar.head_config), "animation": avatar.animation,
        "n_points": avatar.n_points, "sh_degree": avatar.cloud.sh_degree,
        "portrait_size": None if avatar.portrait_camera is None else [avatar.portrait_camera.height,
                                                                     avatar.portrait_camera.width],
        "meta": avatar.meta,
    }
    atomic_write_json(directory / "avatar.json", info)
    if avatar.portrait is not None:
        img = (avatar.portrait.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        png = io.BytesIO()
        Image.fromarray(img).save(png, format="PNG")
        with atomic_open(directory / "portrait.png", "wb") as f:
            f.write(png.getvalue())
    return directory


def load_avatar(directory: str | Path, *, device: torch.device | str = "cpu", head: HeadConfig | None = None) -> Avatar:
    """Read an avatar written by :func:`save_avatar`; the rig is rebuilt (once) from the stored points.

    ``head`` replaces the stored head config (e.g. the FLAME file lives elsewhere on this machine); it must build the
    same head model.
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
    needed = [*CLOUD_FIELDS, "binding", "points", "shape", *(f"portrait_head_{k}" for k in HEAD_PARAM_FIELDS)]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ValueError(f"{npz_path}: missing arrays {missing}")

    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[key])).to(device)

    cloud = GaussianCloud(**{k: tensor(k)[None] for k in CLOUD_FIELDS})
    binding, points, shape = tensor("binding").long(), tensor("points").float(), tensor("shape").float()
    if int(binding.max()) >= head_model.n_faces:
        raise ValueError(f"{npz_path}: binding reaches face {int(binding.max())}; {head_model.name} has "
                         f"{head_model.n_faces}")
    portrait_head = HeadParams(**{k: tensor(f"portrait_head_{k}") for k in HEAD_PARAM_FIELDS})
    camera = None
    if "portrait_Ks" in arrays:
        size = info.get("portrait_size") or [int(round(float(arrays["portrait_Ks"][0, 1, 2] * 2)))] * 2
        camera = Cameras(Ks=tensor("portrait_Ks"), viewmats=tensor("portrait_viewmats"), width=int(size[1]),
                         height=int(size[0]))
    portrait = None
    if (directory / "portrait.png").is_file():
        with Image.open(directory / "portrait.png") as im:
            portrait = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
        portrait = portrait.to(device)
    offset = tensor("static_offset").float()[None] if "static_offset" in arrays else None  # [1, V, 3]
    rig = head_model.rig(binding[None], points[None], shape[None], offset)
    meta = info.get("meta", {})
    return Avatar(cloud=cloud, binding=binding, points=points, shape=shape, head_model=head_model, rig=rig,
                  animation=info.get("animation", "lbs"), finished=bool(meta.get("finished", True)),
                  portrait_head=portrait_head, head_config=config, portrait=portrait, portrait_camera=camera,
                  meta=meta)

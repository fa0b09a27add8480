"""What ``avp view`` can show, loaded into one :class:`ViewSource`: an avatar plus the driving sequences that came
with it.

- an avatar folder (``avatar.json`` + ``avatar.npz``, :func:`avp.export.avatar.save_avatar`), or an ``avp avatarize``
  output folder holding one in ``avatar/`` (its ``driving.npz`` becomes a motion);
- a GaussianAvatars folder: ``point_cloud.ply`` (face-local splats with ``binding_0``) and ``flame_param.npz`` (the
  identity, its ``static_offset`` and a motion), or the ply file itself; animated with face frames on the offset mesh,
  as GaussianAvatars does. FLAME-topology plys need ``flame`` (the FLAME pickle); without it the built-in head is used
  (and an offset of another vertex count is dropped, with a note);
- a decoder checkpoint and a photo: avatarized here (:class:`avp.pipeline.AvatarPipeline`), once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avp.driving import DrivingSequence, load_driving_npz
from avp.models.avatar import Avatar
from avp.view import ViewError

__all__ = ["ViewSource", "avatarize_source", "load_drive", "load_source"]


@dataclass
class ViewSource:
    """An avatar to show and the sequences to drive it with."""

    avatar: Avatar
    label: str
    """What the GUI title says (the folder or photo)."""
    motions: dict[str, DrivingSequence] = field(default_factory=dict)
    """Loaded driving sequences by name (the built-in motions are added by the viewer)."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know (expressions dropped from a sequence, the head model guessed)."""


def load_drive(path: str | Path, avatar: Avatar, notes: list[str] | None = None) -> DrivingSequence:
    """A driving npz (avp's, GaussianAvatars' ``flame_param.npz`` or a VHAP folder) for ``avatar``'s head model.

    Expressions of another basis cannot drive this head: then the poses are kept and the expressions dropped, with a
    note (``notes``) rather than an error, since looking at the head motion is still useful.
    """
    shape = avatar.shape.detach().cpu()
    try:
        return load_driving_npz(path, avatar.head_model, shape=shape)
    except ValueError as e:
        if "expression coefficients of another basis" not in str(e):
            raise ViewError(str(e)) from e
        if notes is not None:
            notes.append(f"{path}: expressions of another head model dropped (poses kept)")
        return load_driving_npz(path, avatar.head_model, shape=shape, expression="drop")


def _static_offset(npz: Path, head_model: torch.nn.Module, notes: list[str]) -> torch.Tensor | None:
    """``[V, 3]`` the fit's ``static_offset`` from its ``flame_param.npz``; None when it has none, it is zero or it does
    not fit the head model (then with a note)."""
    import numpy as np

    from avp.data.gaussian_avatars_io import ConversionError, load_npz, read_static_offset

    try:
        arrays = load_npz(npz)
        n_file = int(np.size(arrays.get("static_offset", ())) // 3)
        if n_file and n_file != head_model.n_vertices and not head_model.name.startswith("flame"):
            raise ConversionError(f"{npz}: static_offset has {n_file} vertices, head model {head_model.name} "
                                  f"{head_model.n_vertices}")  # (FLAME's teeth-less 5,023 are padded, not others)
        offset = read_static_offset(arrays, head_model.n_vertices, f"{npz} (head model {head_model.name!r})")
    except ConversionError as e:
        notes.append(f"static offset dropped: {e}")
        return None
    return None if offset is None or not np.any(offset) else torch.from_numpy(offset)


def _on_offset_mesh(splats: Any, head_model: torch.nn.Module, shape: torch.Tensor,
                    offset: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """GaussianAvatars' face-local splats on the neutral head *plus* its static offset (``canonical(shape) + offset``,
    GaussianAvatars' mesh): ``(cloud [1, N], binding [1, N])`` as :func:`~avp.export.ply.from_gaussian_avatars`."""
    from avp.export.ply import cloud_from_splats
    from avp.head import face_frames, local_to_world_log_scales, local_to_world_points, local_to_world_quats
    from avp.types import GaussianCloud

    binding = torch.as_tensor(splats.binding, dtype=torch.long)
    verts = head_model.canonical(shape.reshape(1, -1).double(), offset.double()[None])[0]  # [V, 3]
    frames = face_frames(verts, head_model.tensors(verts)["faces"]).gather(binding)
    raw = cloud_from_splats(splats, dtype=torch.float64).map(lambda x: x[0])
    cloud = GaussianCloud(means=local_to_world_points(raw.means, frames),
                          quats=local_to_world_quats(raw.quats, frames),
                          scales=local_to_world_log_scales(raw.scales.log(), frames).exp(),
                          opacities=raw.opacities, sh=raw.sh)
    return cloud.map(lambda x: x.float()[None]), binding[None]


def _gaussian_avatars(ply: Path, npz: Path, *, device: torch.device, flame: str | None) -> ViewSource:
    from avp.export.ply import PlyError, from_gaussian_avatars, read_gaussian_avatars_ply
    from avp.head import HeadConfig, load_head_model

    config = HeadConfig(flame_path=flame)
    head_model = load_head_model(config)
    notes = [] if flame else [f"{ply}: shown on the built-in head ({head_model.name}); pass --flame for FLAME plys"]
    try:
        splats = read_gaussian_avatars_ply(ply)
    except (PlyError, FileNotFoundError) as e:
        raise ViewError(f"{e} (a GaussianAvatars point_cloud.ply binds every splat to a triangle in 'binding_0')") \
            from e
    if splats.binding is not None and splats.n_points and int(splats.binding.max()) >= head_model.n_faces:
        hint = "" if flame else "; pass --flame FLAME.pkl for FLAME plys"
        raise ViewError(f"{ply}: binding_0 reaches face {int(splats.binding.max())} but head model {head_model.name} "
                        f"has {head_model.n_faces} faces{hint}")
    try:
        sequence = load_driving_npz(npz, head_model)
    except ValueError as e:
        if "expression coefficients of another basis" not in str(e):
            raise ViewError(str(e)) from e
        sequence = load_driving_npz(npz, head_model, expression="drop")
        notes.append(f"{npz}: expressions of another head model dropped (poses kept)")
    shape = sequence.head.shape[0]
    offset = _static_offset(npz, head_model, notes) if splats.binding is not None else None
    if offset is None:
        cloud, binding = from_gaussian_avatars(splats, head_model, shape)
    else:
        cloud, binding = _on_offset_mesh(splats, head_model, shape, offset)
        offset = offset.float().to(device)[None]  # [1, V, 3]
    cloud, binding, shape = cloud.to(device), binding.to(device), shape.to(device)
    head_model = head_model.to(device)
    with torch.no_grad():
        rig = head_model.rig(binding, cloud.means, shape[None], offset)
    avatar = Avatar(cloud=cloud, binding=binding[0], points=cloud.means[0], shape=shape, head_model=head_model,
                    rig=rig, animation="face_frame", head_config=config, meta={"source": str(ply)})
    return ViewSource(avatar=avatar, label=str(ply.parent), motions={npz.name: sequence}, notes=notes)


def load_source(path: str | Path, *, device: torch.device | str = "cpu", flame: str | None = None) -> ViewSource:
    """An avatar folder, an ``avp avatarize`` output folder, or a GaussianAvatars folder / ``point_cloud.ply`` (see
    the module docstring); :class:`~avp.view.ViewError` names what is missing."""
    from avp.export.avatar import load_avatar

    path = Path(path)
    device = torch.device(device)
    if not path.exists():
        raise ViewError(f"{path}: no such avatar folder or file")
    if path.is_file():
        if path.suffix.lower() != ".ply":
            raise ViewError(f"{path}: not an avatar: give a folder (avp avatar, avp avatarize output or "
                            "GaussianAvatars point_cloud.ply + flame_param.npz) or a point_cloud.ply")
        npz = path.with_name("flame_param.npz")
        if not npz.is_file():
            raise ViewError(f"{path}: a GaussianAvatars ply needs flame_param.npz beside it ({npz} is missing)")
        return _gaussian_avatars(path, npz, device=device, flame=flame)
    for folder, motions in ((path, {}), (path / "avatar", {"driving.npz": path / "driving.npz"})):
        if (folder / "avatar.json").is_file() or (folder / "avatar.npz").is_file():
            try:
                avatar = load_avatar(folder, device=device)
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise ViewError(f"{folder}: cannot load the avatar: {e}") from e
            notes: list[str] = []
            loaded = {name: load_drive(p, avatar, notes) for name, p in motions.items() if p.is_file()}
            return ViewSource(avatar=avatar, label=str(path), motions=loaded, notes=notes)
    for folder in (path, path / "gaussian_avatars"):
        if (folder / "point_cloud.ply").is_file():
            npz = folder / "flame_param.npz"
            if not npz.is_file():
                raise ViewError(f"{folder}: point_cloud.ply without flame_param.npz beside it")
            return _gaussian_avatars(folder / "point_cloud.ply", npz, device=device, flame=flame)
    found = sorted(p.name for p in path.iterdir())[:12]
    raise ViewError(f"{path}: not an avatar folder: expected avatar.json + avatar.npz (an avp avatar), avatar/ (avp "
                    f"avatarize output) or point_cloud.ply + flame_param.npz (GaussianAvatars); it holds {found}")


def avatarize_source(decoder: str | Path, image: str | Path, *, generator: str | Path | None = None, seed: int = 0,
                     device: str = "auto", portrait_head: str | Path | None = None, fit_steps: int = 300,
                     flame: str | None = None, landmark_embedding: str | None = None, max_points: int | None = None,
                     progress: bool = True) -> ViewSource:
    """Avatarize ``image`` with the decoder checkpoint now (the expensive part, once) and show the result."""
    from avp.pipeline import AvatarPipeline
    from avp.portrait.fit import FitConfig

    for name, p in (("decoder checkpoint", decoder), ("photo", image), ("generator checkpoint", generator),
                    ("portrait head npz", portrait_head)):
        if p is not None and not Path(p).is_file():
            raise ViewError(f"{p}: no such {name}")
    pipe = AvatarPipeline.from_checkpoints(generator, decoder, device=device, flame_path=flame,
                                           landmark_embedding=landmark_embedding)
    kwargs: dict[str, Any] = {"fit_config": FitConfig(steps=fit_steps), "progress": progress}
    if portrait_head is not None:
        kwargs["head"] = load_driving_npz(portrait_head, pipe.head_model).head.map(lambda t: t[:1])
    portrait = pipe.preprocess(image, **kwargs)
    avatar = pipe.reconstruct(portrait, seed=seed, max_points=max_points, progress=progress)
    avatar = dataclasses.replace(avatar, meta={**avatar.meta, "image": str(image)})
    return ViewSource(avatar=avatar, label=f"{Path(image).name} ({Path(decoder).name}, seed {seed})")

"""``avp avatarize``: one photo -> an animatable avatar, driven, filmed and exported, in one command.

::

    avp avatarize --image PHOTO --out DIR --generator GEN.ckpt --decoder DEC.ckpt \\
        [--drive talk|smile|nod|turn|VIDEO|NPZ|FLAME_PARAM_FOLDER] [--seed 0] [--temperature T] [--top-k K]
        [--top-p P] [--max-points N] [--size 512] [--frames 75] [--fps 25] [--orbit-frames 60] [--device auto]
        [--sibr]

Writes into ``DIR`` (and prints each path):

- ``portrait.png``: the aligned crop the model saw; ``fit_report.json``: face detection, alignment, head-fit
  residuals (crop and original pixels), sampling settings, point count, timings and every output path;
- ``driven.mp4``: the avatar driven by ``--drive`` (frontal training camera); ``orbit.mp4``: the avatar at rest seen
  from a camera orbiting over the training cameras' +-60 degree arc;
- ``gaussian_avatars/point_cloud.ply`` + ``gaussian_avatars/flame_param.npz``: GaussianAvatars' layout (face-local
  splats with ``binding_0``; the driving sequence as FLAME-named parameters). GaussianAvatars' own viewer needs a
  FLAME-topology avatar (``flame2023+teeth``); avatars on the built-in head keep the layout but not the topology;
- ``avatar_world.ply``: the avatar at rest in world space, INRIA 3DGS layout (SH padded to degree 3), for ordinary
  splat viewers;
- ``driving.npz``: the driving sequence in avp's npz layout; ``avatar/``: the avatar itself
  (:func:`avp.export.load_avatar`);
- with ``--sibr``: ``sibr/``, the same world-space splats as an INRIA 3DGS model folder (``cfg_args``,
  ``cameras.json`` with 9 views of the training framing over +-60 degrees of yaw, ``input.ply``,
  ``point_cloud/iteration_30000/point_cloud.ply``) that ``SIBR_gaussianViewer_app -m DIR/sibr`` opens
  (:func:`avp.export.inria.write_inria_model`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

__all__ = ["main", "parser"]


def parser() -> ArgumentParser:
    from avp.driving import MOTIONS
    from avp.tool_parser import tool_parser

    p = tool_parser("avp avatarize", __doc__.split("\n\n")[0], raw_text=True)
    p.add_argument("--image", type=str, required=True, help="the portrait photo (jpg/png/...)")
    p.add_argument("--out", type=str, required=True, help="output folder (created)")
    p.add_argument("--decoder", type=str, required=True, help="DecoderModule checkpoint (avp fit of the decoder stage)")
    p.add_argument("--generator", type=str, default=None,
                   help="GeneratorModule checkpoint the decoder was trained on (checked against the decoder's copy)")
    p.add_argument("--drive", type=str, default="talk",
                   help=f"a built-in motion ({', '.join(MOTIONS)}), a video file, an npz of head parameters (avp or "
                        "GaussianAvatars/VHAP flame_param) or a folder of VHAP flame_param/<t>.npz (default: talk)")
    p.add_argument("--drive-expression", type=Literal["auto", "drop"], default="auto",
                   help="expression coefficients of a parameter file: auto (use them when they fit the head model) "
                        "or drop (poses only)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: checkpoint's)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling (0: off; default: checkpoint's)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (1: off; default: checkpoint's)")
    p.add_argument("--max-points", type=int, default=None, help="most points to sample (default: checkpoint's)")
    p.add_argument("--size", type=int, default=512, help="video size in pixels (square)")
    p.add_argument("--frames", type=int, default=75,
                   help="frames of a built-in motion; for a driving video, the most frames read (0: all)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of built-in motions and the orbit video")
    p.add_argument("--orbit-frames", type=int, default=60, help="frames of the orbit video")
    p.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--choose-largest", action="store_true",
                   help="with several faces in the photo, use the largest (default: refuse)")
    p.add_argument("--background", type=Literal["keep", "grabcut"], default="keep",
                   help="keep the photo's background or replace it by white (GrabCut segmentation)")
    p.add_argument("--landmark-embedding", type=str, default=None,
                   help="mediapipe landmark embedding npz (lmk_face_idx, lmk_b_coords, landmark_indices); needed "
                        "for FLAME")
    p.add_argument("--flame", type=str, default=None, help="FLAME pickle replacing the path stored in the checkpoints")
    p.add_argument("--fit-steps", type=int, default=300, help="Adam steps of the portrait head fit")
    p.add_argument("--portrait-head", type=str, default=None,
                   help="npz with the portrait's head parameters (our layout, e.g. a synthetic shard's or another "
                        "tracker's): skips face detection and the landmark fit; the photo must be framed like the "
                        "training portraits")
    p.add_argument("--sibr", action="store_true",
                   help="also write sibr/: an INRIA 3DGS model folder (cfg_args, cameras.json, input.ply, "
                        "point_cloud/iteration_30000/point_cloud.ply) for SIBR_gaussianViewer_app -m")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _say(message: str) -> None:
    print(message, flush=True)


def _render_video(avatar: Any, path: Path, head: Any, cameras: Any, fps: float, desc: str, progress: bool,
                  chunk: int = 8) -> Path:
    """An mp4 of ``head [T]`` frames seen by one camera, or (``T = 1``) of one pose seen by each of ``V`` cameras
    in turn (an orbit); rendered ``chunk`` frames at a time."""
    from tqdm import tqdm

    from avp.export.video import VideoWriter
    from avp.types import Cameras

    T, V = head.global_rot.shape[0], cameras.n_views
    if T > 1 and V > 1:
        raise ValueError("render video: give several frames or several cameras, not both")
    with VideoWriter(path, fps) as writer, tqdm(total=max(T, V), desc=desc, unit="frame",
                                                disable=not progress) as bar:
        for start in range(0, max(T, V), chunk):
            if T > 1 or V == 1:
                part = head.map(lambda t, s=start: t[s : s + chunk])
                rgb = avatar.render(cameras, part).rgb[:, 0]  # [n, 3, H, W]
            else:
                views = Cameras(Ks=cameras.Ks[start : start + chunk], viewmats=cameras.viewmats[start : start + chunk],
                                width=cameras.width, height=cameras.height)
                rgb = avatar.render(views, head).rgb[0]  # [n, 3, H, W]
            writer.write(rgb)
            bar.update(rgb.shape[0])
    return path


def run(args: Namespace) -> dict[str, Any]:
    """Do the work of ``avp avatarize``; returns the report (also written to ``fit_report.json``)."""
    import torch

    from avp.atomic import atomic_write_json
    from avp.driving import VIDEO_SUFFIXES, load_driving, load_driving_npz, save_driving_npz
    from avp.export.avatar import save_avatar
    from avp.export.ply import (
        to_gaussian_avatars,
        write_flame_param_npz,
        write_gaussian_avatars_ply,
        write_splat_ply,
    )
    from avp.pipeline import AvatarPipeline
    from avp.portrait.fit import FitConfig

    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    outputs: dict[str, str] = {}

    def done(name: str, path: Path) -> None:
        outputs[name] = str(path)
        _say(f"{name:<22} {path}")

    t0 = time.perf_counter()
    pipe = AvatarPipeline.from_checkpoints(args.generator, args.decoder, device=args.device, flame_path=args.flame,
                                           landmark_embedding=args.landmark_embedding)
    timings["load_s"] = time.perf_counter() - t0
    _say(f"loaded checkpoints on {pipe.device}: head model {pipe.head_model.name}")

    t0 = time.perf_counter()
    given = None
    if args.portrait_head is not None:
        given = load_driving_npz(args.portrait_head, pipe.head_model).head.map(lambda t: t[:1])
    portrait = pipe.preprocess(args.image, choose="largest" if args.choose_largest else None,
                               background=args.background, fit_config=FitConfig(steps=args.fit_steps),
                               progress=progress, head=given)
    timings["preprocess_s"] = time.perf_counter() - t0
    fit = portrait.report()
    if given is not None:
        _say(f"head parameters given by {args.portrait_head}: no detection or landmark fit")
    else:
        _say(f"face found; head fit residual {fit['fit_crop_px']['rms_px']:.2f} px RMS in the "
             f"{portrait.image.shape[-1]}px crop ({fit['fit_original_px']['rms_px']:.2f} px in the photo)")
    from PIL import Image

    from avp.atomic import atomic_open

    crop = (portrait.image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    with atomic_open(out / "portrait.png", "wb") as f:
        Image.fromarray(crop).save(f, format="PNG")
    done("portrait crop", out / "portrait.png")

    t0 = time.perf_counter()
    avatar = pipe.reconstruct(portrait, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, max_points=args.max_points, progress=progress)
    timings["reconstruct_s"] = time.perf_counter() - t0
    _say(f"avatar: {avatar.n_points} points" + ("" if avatar.meta["finished"] else
                                                 " (sampling stopped at max_points before EOS)"))
    save_avatar(avatar, out / "avatar")
    done("avatar", out / "avatar")

    t0 = time.perf_counter()
    video = {"embedding_path": args.landmark_embedding, "framing": pipe.framing}
    is_video = Path(args.drive).suffix.lower() in VIDEO_SUFFIXES
    sequence = load_driving(args.drive, pipe.head_model, frames=args.frames, fps=args.fps,
                            expression=args.drive_expression, shape=avatar.shape.cpu(), progress=progress,
                            **(video if is_video else {}))
    timings["driving_s"] = time.perf_counter() - t0
    save_driving_npz(out / "driving.npz", sequence, head_model_name=pipe.head_model.name)
    done("driving parameters", out / "driving.npz")

    t0 = time.perf_counter()
    frontal = avatar.view_cameras([0.0], size=args.size)
    driven = _render_video(avatar, out / "driven.mp4", sequence.head, frontal, sequence.fps, "driven video",
                           progress)
    done("driven video", driven)
    n_orbit = max(1, args.orbit_frames)
    yaw = 60.0 * torch.sin(torch.linspace(0, 2 * torch.pi, n_orbit + 1)[:-1])
    orbit = _render_video(avatar, out / "orbit.mp4", avatar.neutral(1), avatar.view_cameras(yaw, size=args.size),
                          args.fps, "orbit video", progress)
    done("orbit video", orbit)
    timings["render_s"] = time.perf_counter() - t0

    ga = to_gaussian_avatars(avatar.cloud, avatar.binding, pipe.head_model, avatar.shape.cpu())
    done("GaussianAvatars ply", write_gaussian_avatars_ply(out / "gaussian_avatars" / "point_cloud.ply", ga))
    done("GaussianAvatars npz", write_flame_param_npz(out / "gaussian_avatars" / "flame_param.npz", sequence.head,
                                                      pipe.head_model.n_vertices))
    world = avatar.animate(avatar.neutral(1))
    done("world-space ply", write_splat_ply(out / "avatar_world.ply", world))
    if args.sibr:
        from avp.export.inria import write_inria_model

        views = avatar.view_cameras(torch.linspace(-60.0, 60.0, 9), size=args.size)
        model = write_inria_model(out / "sibr", world, views, white_background=True)
        done("SIBR model folder", model["cfg_args"].parent)

    report = {
        "image": str(args.image), "head_model": pipe.head_model.name, "checkpoints": pipe.checkpoints,
        "device": str(pipe.device), "portrait": fit, "avatar": {k: avatar.meta[k] for k in
                                                                ("seed", "sampling", "finished", "n_points")},
        "driving": {"source": sequence.source, "frames": sequence.n_frames, "fps": sequence.fps,
                    "meta": sequence.meta},
        "timings_s": {k: round(v, 3) for k, v in timings.items()}, "outputs": outputs,
    }
    outputs["fit report"] = str(out / "fit_report.json")
    atomic_write_json(out / "fit_report.json", json.loads(json.dumps(report, default=str)))
    done("fit report", out / "fit_report.json")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from avp.face import FaceToolsUnavailable, MultipleFacesFound, NoFaceFound
    from avp.portrait.landmarks_embedding import MissingLandmarkEmbedding

    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except (NoFaceFound, MultipleFacesFound, MissingLandmarkEmbedding, FaceToolsUnavailable, FileNotFoundError,
            ValueError) as e:
        print(f"avp avatarize: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

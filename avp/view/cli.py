"""``avp view``: look at an avatar and drive it in the browser.

::

    avp view AVATAR [--port 8080] [--host 127.0.0.1] [--drive NPZ ...] [--out DIR] [--device auto]
    avp view --decoder DEC.ckpt --image PHOTO [--generator GEN.ckpt] [--seed 0] [--portrait-head NPZ]

``AVATAR``: an ``avp avatarize`` output folder (e.g. ``demo/avatars/synthetic``), an avatar folder (``avatar.json``),
or a GaussianAvatars folder / ``point_cloud.ply`` with ``flame_param.npz`` beside it (``--flame`` for FLAME plys).
The viewer runs on this machine and listens on loopback only; from a laptop, tunnel the port:
``ssh -L 8080:localhost:8080 NODE`` and open http://localhost:8080.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

__all__ = ["main", "parser"]


def parser() -> ArgumentParser:
    from avp.tool_parser import tool_parser

    p = tool_parser("avp view", __doc__.split("\n\n")[0], raw_text=True, epilog=__doc__.split("::")[1])
    # no default: an optional positional's default would replace the value a config file gives
    p.add_argument("avatar", type=str, nargs="?", default=argparse.SUPPRESS,
                   help="avp avatarize output folder, avatar folder, or GaussianAvatars folder / point_cloud.ply")
    p.add_argument("--decoder", type=str, default=None,
                   help="avatarize --image with this DecoderModule checkpoint instead")
    p.add_argument("--image", type=str, default=None, help="the photo to avatarize (with --decoder)")
    p.add_argument("--generator", type=str, default=None,
                   help="GeneratorModule checkpoint to check the decoder against")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --decoder)")
    p.add_argument("--max-points", type=int, default=None, help="most points to sample (with --decoder)")
    p.add_argument("--portrait-head", type=str, default=None,
                   help="npz of the photo's head parameters (skips the face fit)")
    p.add_argument("--fit-steps", type=int, default=300, help="Adam steps of the portrait head fit")
    p.add_argument("--landmark-embedding", type=str, default=None, help="mediapipe landmark embedding npz (FLAME)")
    p.add_argument("--flame", type=str, default=None,
                   help="FLAME pickle (GaussianAvatars plys of FLAME topology, checkpoints)")
    p.add_argument("--drive", action="append", default=[],
                   help="a driving npz (avp, GaussianAvatars flame_param, VHAP folder) for the motion list; repeatable")
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to listen on (default loopback; anything else exposes the viewer to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    p.add_argument("--out", type=str, default="view_renders", help="folder of the PNG renders (default ./view_renders)")
    p.add_argument("--expressions", type=int, default=10, help="expression components with a slider")
    p.add_argument("--frames", type=int, default=75, help="frames of the built-in motions")
    p.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N (where animation runs)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads while serving (default 1: a frame's small tensors lose to thread contention "
                        "on a busy machine; see avp bench view)")
    p.add_argument("--stop-after", type=float, default=None,
                   help="stop serving after this many seconds (scripts, screenshots); default: until Ctrl-C")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from avp.view import ViewError, ViewerUnavailable, require_viser

    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    avatar_path = args.get("avatar")
    # a config file may give a single driving file as a string rather than a list
    drives = [args.drive] if isinstance(args.drive, str) else args.drive
    if (avatar_path is None) == (args.decoder is None):
        print("avp view: give an AVATAR folder, or --decoder CKPT --image PHOTO (not both)", file=sys.stderr)
        return 2
    if args.decoder is not None and args.image is None:
        print("avp view: --decoder needs --image PHOTO", file=sys.stderr)
        return 2
    try:
        require_viser()  # before minutes of loading
        from avp.device import select_device
        from avp.view.app import AvatarViewer, is_loopback
        from avp.view.source import avatarize_source, load_drive, load_source

        device = select_device(args.device)
        if avatar_path is not None:
            source = load_source(avatar_path, device=device, flame=args.flame)
        else:
            source = avatarize_source(args.decoder, args.image, generator=args.generator, seed=args.seed,
                                      device=str(device), portrait_head=args.portrait_head, fit_steps=args.fit_steps,
                                      flame=args.flame, landmark_embedding=args.landmark_embedding,
                                      max_points=args.max_points)
        from pathlib import Path

        for drive in drives:
            source.motions[Path(drive).name] = load_drive(drive, source.avatar, source.notes)
        if device.type == "cpu":
            import torch

            torch.set_num_threads(max(1, args.threads))  # after loading: avatarizing a photo uses them all
        if not is_loopback(args.host):
            print(f"avp view: warning: listening on {args.host}, not loopback: anyone who can reach this machine can "
                  "open the viewer and write renders; prefer the default and an SSH tunnel", file=sys.stderr)
        viewer = AvatarViewer(source, host=args.host, port=args.port, out_dir=args.out,
                              expressions=args.expressions, motion_frames=args.frames)
    except (ViewError, ViewerUnavailable, FileNotFoundError, ValueError) as e:
        print(f"avp view: {e}", file=sys.stderr)
        return 2
    avatar = source.avatar
    for note in source.notes:
        print(f"avp view: note: {note}", flush=True)
    print(f"avp view: {source.label}: {avatar.n_points:,} splats on {avatar.head_model.name} ({avatar.animation}), "
          f"motions: {', '.join(viewer.motions)}", flush=True)
    print(f"avp view: open {viewer.url}   (remote machine: ssh -L {viewer.port}:localhost:{viewer.port} NODE, then "
          f"http://localhost:{viewer.port}); PNG renders go to {Path(args.out).resolve()}; Ctrl-C stops", flush=True)
    viewer.serve_forever(args.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())

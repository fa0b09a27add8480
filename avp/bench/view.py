"""``avp bench view``: splat updates per second of ``avp view`` for a synthetic avatar (default 10k splats).

Per update: :meth:`Avatar.animate` of one frame of the ``talk`` motion, the conversion to viser's arrays, and (with
the ``view`` extra) viser packing the splat buffer and sending it to a websocket client on loopback, one update in
flight at a time (:mod:`avp.view.bench`). Target: at least 20 updates per second on a 2-core CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

DESCRIPTION = "avp view: splat updates per second (animate + convert to viser's arrays + send) of a 10k-splat avatar"


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--n-points", type=int, default=10_000, help="splats of the synthetic avatar")
    parser.add_argument("--frames", type=int, default=100, help="timed updates per animation mode")
    parser.add_argument("--no-send", action="store_true", help="time animate + convert only (no viser server)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: Namespace) -> dict[str, Any]:
    import dataclasses

    from avp.view.bench import measure_updates, synthetic_avatar

    avatar = synthetic_avatar(args.n_points, seed=args.seed)
    modes = {}
    for mode in ("lbs", "face_frame"):
        posed = dataclasses.replace(avatar, animation=mode)
        modes[mode] = measure_updates(posed, frames=args.frames, send=not args.no_send)
    return {"n_splats": avatar.n_points, "target_updates_per_s": 20, "modes": modes}

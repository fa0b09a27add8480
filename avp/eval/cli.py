"""``avp eval``: evaluate a trained model on a versioned protocol (``configs/eval/*.yaml``) and write a run folder.

    avp eval --protocol configs/eval/self_reenactment.yaml --decoder runs/decoder/…/last.ckpt \\
        [--generator runs/generator/…/last.ckpt] [--template-decoder runs/decoder-template/…/last.ckpt] \\
        [--points generated teacher] [--data data/shards] [--out runs/eval/self] [--limit 8] [--device auto]

Rows: the full model on generated points (and on the teacher's points with ``--points teacher``), the template
baseline (``--template-decoder``) and the teacher fit (upper bound). See :mod:`avp.eval.runner` for the outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def build_parser() -> ArgumentParser:
    from avp.tool_parser import tool_parser

    p = tool_parser(
        "avp eval",
        "Full-pipeline evaluation on a protocol: portrait -> sampled points -> decoder -> animation -> "
                    "renders -> metrics, with the template baseline and the teacher upper bound as reference rows.")
    p.add_argument("--protocol", type=str, required=True,
                   help="protocol YAML (configs/eval/self_reenactment.yaml, …)")
    p.add_argument("--decoder", type=str, required=True,
                   help="DecoderModule checkpoint of the full model (holds its generator)")
    p.add_argument("--generator", type=str, default=None,
                   help="generator checkpoint; checked to be the decoder's frozen generator and recorded (optional)")
    p.add_argument("--template-decoder", type=str, default=None,
                   help="decoder checkpoint trained with points: template (the baseline row)")
    p.add_argument("--points", type=Literal["generated", "teacher", "resampled", "none"], nargs="+",
                   default=["generated"],
                   help="full-model rows: generated (the method; default) and/or teacher (teacher points, which "
                        "separates generator from decoder error) and/or resampled (a new surface sampling of a "
                        "synthetic subject's teacher: what a perfect generator could give); none: only the "
                        "reference rows")
    p.add_argument("--no-teacher", action="store_true",
                   help="leave out the teacher-fit row (recorded as the override reference.teacher=false)")
    p.add_argument("--data", type=str, default=None,
                   help="dataset root (folder with shards.json); default: the protocol's data.root")
    p.add_argument("--out", type=str, default=None, help="run folder (default runs/eval/<protocol>-v<version>-<time>)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples of the protocol")
    p.add_argument("--device", type=str, default="auto", help="auto (CUDA when present), cpu, cuda:1, …")
    p.add_argument("--batch-frames", type=int, default=4, help="frames rendered per call (memory only)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="change a protocol key for this run, recorded with the results (e.g. render.resolution=128); "
                        "may repeat")
    p.add_argument("--overwrite", action="store_true", help="replace an evaluation already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from avp.eval.protocol import ProtocolError, load_protocol
    from avp.eval.runner import EvalConfig, run_evaluation

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print("avp eval: --limit must be >= 1", file=sys.stderr)
        return 2
    # a config file may give a single override as a string rather than a list
    given = [args.override] if isinstance(args.override, str) else list(args.override)
    overrides = given + (["reference.teacher=false"] if args.no_teacher else [])
    try:
        protocol = load_protocol(args.protocol, overrides)
    except (ProtocolError, FileNotFoundError) as e:
        print(f"avp eval: {e}", file=sys.stderr)
        return 2
    out = args.out or str(Path("runs") / "eval" /
                          f"{protocol.name}-v{protocol.version}-{datetime.now():%Y%m%d-%H%M%S}")
    if "none" in args.points and len(set(args.points)) > 1:
        print("avp eval: --points none cannot be combined with generated/teacher", file=sys.stderr)
        return 2
    points = tuple(p for p in dict.fromkeys(args.points) if p != "none")
    config = EvalConfig(
        protocol=protocol, decoder=args.decoder, out_dir=out, data_root=args.data, generator=args.generator,
        template_decoder=args.template_decoder, points=points, limit=args.limit,
        device=args.device, batch_frames=args.batch_frames, overwrite=args.overwrite, progress=not args.no_progress,
        protocol_file=args.protocol, overrides=tuple(overrides), command=["avp", "eval", *argv],
    )
    try:
        result = run_evaluation(config)
    except (ProtocolError, FileNotFoundError, FileExistsError) as e:
        print(f"avp eval: {e}", file=sys.stderr)
        return 2
    print(result.table)
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

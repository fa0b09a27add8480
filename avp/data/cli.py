"""``avp data synth|convert|preview|validate|index``: build, inspect and check shard datasets."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from avp.tool_parser import tool_parser

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

USAGE = """usage: avp data COMMAND [options]   (avp data COMMAND --help)

commands:
  synth      render a synthetic multi-view head dataset (built-in head model, all cores, deterministic per seed)
  convert    GaussianAvatars fit + VHAP/NeRSemble export -> one shard (then re-index the folder)
  preview    contact sheet PNG of a shard, a dataset folder or a pattern
  validate   verify checksums, decode and check every sample (values, cameras, manifest, duplicates, split
             leakage); exit 1 naming shard/sample/member/field on a problem
  index      rebuild shards.json from the *.tar files of a folder (refuses duplicate keys and leaking splits)

every command also takes --config FILE (YAML of its options) and --print_config
"""


def synth_parser() -> ArgumentParser:
    from avp.data.synthetic.generate import SynthConfig

    d = SynthConfig()
    p = tool_parser("avp data synth", "Render a synthetic multi-view head dataset.")
    p.add_argument("--out", type=str, required=True, help="output folder (shards + shards.json)")
    p.add_argument("--subjects", type=int, default=d.subjects, help=f"number of subjects (default {d.subjects})")
    p.add_argument("--views", type=int, default=d.views, help=f"cameras per clip (default {d.views})")
    p.add_argument("--frames", type=int, default=d.frames, help=f"timesteps per clip (default {d.frames})")
    p.add_argument("--size", type=int, default=d.size, help=f"frame size in pixels (default {d.size})")
    p.add_argument("--portrait-size", type=int, default=None, help="portrait size (default: --size)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"dataset seed (default {d.seed})")
    p.add_argument("--points", type=int, nargs=2, default=list(d.points), metavar=("MIN", "MAX"),
                   help=f"teacher point count range per subject (default {d.points[0]} {d.points[1]})")
    p.add_argument("--sh-degree", type=int, default=d.sh_degree,
                   help=f"SH degree of the teacher (default {d.sh_degree})")
    p.add_argument("--cameras", type=Literal["arc", "sphere"], default=d.cameras,
                   help="arc: NeRSemble-like frontal arc (default); sphere: all around the head")
    p.add_argument("--hair-volume", type=float, default=d.hair_volume,
                   help="hair depth off the scalp relative to the default look, capped at 5 cm (default 1)")
    p.add_argument("--background", type=float, nargs=3, default=list(d.background), metavar=("R", "G", "B"),
                   help="frame background in 0..1 (default white, as VHAP exports)")
    p.add_argument("--portrait-background", type=Literal["random", "same", "white", "black"],
                   default=d.portrait_background, help="portrait background (default: random plain colour)")
    p.add_argument("--portrait-points", type=int, default=d.portrait_points,
                   help="0: render the portrait from the teacher (default); N: from an independent N-point sampling "
                        "of the subject (a sharp, photo-like portrait)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--shard-samples", type=int, default=d.shard_samples, help="samples per shard")
    p.add_argument("--workers", type=int, default=0, help="processes (default 0: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    return p


def _synth(argv: list[str]) -> int:
    from avp.data.synthetic.generate import SynthConfig, synthesize

    a = synth_parser().parse_args(argv)
    cfg = SynthConfig(subjects=a.subjects, views=a.views, frames=a.frames, size=a.size,
                      portrait_size=a.portrait_size or a.size, seed=a.seed, points=(a.points[0], a.points[1]),
                      sh_degree=a.sh_degree, cameras=a.cameras, hair_volume=a.hair_volume,
                      background=tuple(a.background),
                      portrait_background=a.portrait_background, portrait_points=a.portrait_points,
                      val_fraction=a.val_fraction,
                      test_fraction=a.test_fraction, shard_samples=a.shard_samples)
    manifest = synthesize(cfg, a.out, workers=a.workers or None, overwrite=a.overwrite, progress=True)
    print(json.dumps({"out": str(a.out), "shards": len(manifest.shards),
                      "samples": {s: manifest.samples(s) for s in manifest.splits}}, indent=2))
    return 0


def convert_parser() -> ArgumentParser:
    from jsonargparse.typing import restricted_string_type

    # --cameras 0,4,8,12: the same string in a config file, checked at parse time and split by _convert
    camera_indices = restricted_string_type("CameraIndices", r"^\d+(,\d+)*$")
    p = tool_parser("avp data convert", "Convert a GaussianAvatars fit and its VHAP export into a shard.")
    p.add_argument("ga_dir", type=str, help="GaussianAvatars model folder (or its point_cloud/iteration_<k>/ folder)")
    p.add_argument("export_dir", type=str,
                   help="the VHAP export folder the fit was trained on (a combined UNION export too)")
    p.add_argument("--source-sequence", type=str, default=None, metavar="FOLDER",
                   help="of a combined (UNION) export: the sequence folder to convert (as its sequences_*.txt name it)")
    p.add_argument("--principal-point", type=Literal["centred", "calibrated"], default="centred",
                   help="frame cameras: centred (GaussianAvatars' camera, under which the teacher was fitted) or "
                        "calibrated (VHAP's principal point and fl_y)")
    p.add_argument("--out", type=str, required=True, help="dataset folder (shard written there, shards.json updated)")
    p.add_argument("--flame", type=str, required=True, help="FLAME pickle (flame2023.pkl or generic_model.pkl)")
    p.add_argument("--flame-masks", type=str, default=None, help="FLAME_masks.pkl (optional, for face regions)")
    p.add_argument("--fit-flame-version", type=Literal["2020", "2023"], default="2023",
                   help="the FLAME release the fit was tracked with (default 2023, GaussianAvatars' and VHAP's); "
                        "a --flame file of another release is refused")
    p.add_argument("--n-shape", type=int, default=300, help="shape components (GaussianAvatars: 300)")
    p.add_argument("--n-expr", type=int, default=100, help="expression components (GaussianAvatars: 100)")
    p.add_argument("--subject", type=str, default=None, help="subject id (default: from the export folder name)")
    p.add_argument("--sequence", type=str, default=None, help="sequence id (default: from the export folder name)")
    p.add_argument("--split", type=str, default=None, help="train/val/test (default: from a hash of the subject id)")
    p.add_argument("--split-fractions", type=float, nargs=3, default=[0.9, 0.05, 0.05],
                   metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--size", type=int, default=512, help="square frame size (pad to square, resize)")
    p.add_argument("--portrait-size", type=int, default=512)
    p.add_argument("--frames", type=int, default=None, help="at most this many timesteps, evenly spaced")
    p.add_argument("--cameras", type=camera_indices, default=None,
                   help="camera indices to keep, e.g. 0,4,8,12 (default all)")
    p.add_argument("--format", type=Literal["jpg", "png"], default="jpg", help="frame/portrait encoding")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--max-points", type=int, default=None, help="keep the N most visible Gaussians")
    p.add_argument("--portrait-camera", type=int, default=None, help="default: the most frontal camera")
    p.add_argument("--portrait-timestep", type=int, default=None, help="default: the first converted timestep")
    p.add_argument("--flame-source", type=Literal["auto", "ga", "vhap"], default="auto",
                   help="per-timestep FLAME parameters: the fit's flame_param.npz (ga) or VHAP's files")
    p.add_argument("--no-static-offset", action="store_true", help="ignore FLAME static offsets")
    p.add_argument("--legacy-quat-order", action="store_true",
                   help="fits saved by GaussianAvatars before its March 2024 rotation-order fix")
    p.add_argument("--no-index", action="store_true", help="do not rewrite shards.json (run `avp data index` later)")
    return p


def _convert(argv: list[str]) -> int:
    from avp.data.convert_gaussian_avatars import ConversionError, convert, default_ids
    from avp.data.manifest import split_for_subject
    from avp.head import HeadConfig, load_head_model
    from avp.head.flame import FlameVersionError

    a = convert_parser().parse_args(argv)
    head = load_head_model(HeadConfig(flame_path=a.flame, n_shape=a.n_shape, n_expr=a.n_expr, teeth=True,
                                      flame_masks_path=a.flame_masks))
    cameras = None if a.cameras is None else [int(i) for i in a.cameras.split(",")]
    subject = a.subject or default_ids(Path(a.source_sequence or a.export_dir))[0]
    split = a.split or split_for_subject(subject, dict(zip(("train", "val", "test"), a.split_fractions)))
    try:
        path = convert(head, a.ga_dir, a.export_dir, a.out, index=not a.no_index, jpeg_quality=a.jpeg_quality,
                       subject=subject, sequence=a.sequence, split=split, size=a.size, portrait_size=a.portrait_size,
                       max_frames=a.frames, cameras=cameras, frame_format=a.format, max_points=a.max_points,
                       portrait_camera=a.portrait_camera, portrait_timestep=a.portrait_timestep,
                       flame_source=a.flame_source, static_offset=not a.no_static_offset,
                       legacy_quat_order=a.legacy_quat_order, principal_point=a.principal_point,
                       source_sequence=a.source_sequence, fit_flame_version=a.fit_flame_version)
    except (ConversionError, FlameVersionError) as e:
        print(f"avp data convert: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"shard": str(path), "subject": subject, "split": split}))
    return 0


def preview_parser() -> ArgumentParser:
    p = tool_parser("avp data preview", "Contact sheet of shard samples.")
    p.add_argument("source", type=str, help="a .tar shard, a dataset folder, or a glob/brace pattern")
    p.add_argument("--out", type=str, required=True, help="PNG to write")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--split", type=str, default=None, help="with a dataset folder: only this split")
    p.add_argument("--max-views", type=int, default=6)
    p.add_argument("--max-frames", type=int, default=4)
    return p


def _preview(argv: list[str]) -> int:
    from avp.data.preview import preview

    a = preview_parser().parse_args(argv)
    print(preview(a.source, a.out, samples=a.samples, split=a.split, max_views=a.max_views,
                  max_frames=a.max_frames))
    return 0


def _validate_refs(root: str, split: str | None) -> list:
    """The shards ``validate`` checks: a single ``.tar`` (with its manifest entry when the folder has one listing
    it), or what :func:`~avp.data.reader.resolve_shards` finds."""
    from avp.data.manifest import MANIFEST_NAME, read_manifest
    from avp.data.reader import ShardRef, manifest_refs, resolve_shards

    path = Path(root)
    if root.endswith(".tar") and path.is_file():
        if (path.parent / MANIFEST_NAME).exists():
            manifest = read_manifest(path.parent)
            listed = [r for r in manifest_refs(manifest) if Path(r.path).resolve() == path.resolve()]
            if listed:
                return listed
        return [ShardRef(path=root, name=path.name)]
    return resolve_shards(root, split)[0]


def validate(root: str, split: str | None = None, *, keep_going: bool = False, progress: bool = True) -> dict:
    """Check every shard before reading its samples (checksum, tar structure, duplicate keys, the manifest's sample
    count), decode every sample with all its frames through the schema's value rules (against the manifest's split,
    subjects and head model when there is one), and refuse a sample key in two shards and a subject in two splits.

    Returns a report dict with ``errors`` (messages naming shard/sample/member/field). Raises the first error unless
    ``keep_going`` (then a broken shard is reported once, a broken sample each).
    """
    from tqdm import tqdm

    from avp.data.layout import META, REASON_DUPLICATE, REASON_MANIFEST
    from avp.data.reader import iter_raw_samples
    from avp.data.schema import ShardError, decode_sample

    refs = _validate_refs(root, split)
    report: dict = {"shards": len(refs), "samples": 0, "points": [], "errors": []}
    key_shard: dict[str, str] = {}  # sample key -> the shard that holds it
    subject_split: dict[str, tuple[str, str]] = {}  # subject -> (its split, the first shard it was seen in)

    def failed(e: ShardError) -> None:
        if not keep_going:
            raise e
        report["errors"].append(str(e))

    def check(raw: dict[str, bytes], name: str, expect) -> int:
        key = raw["__key__"].decode()
        if key in key_shard:
            raise ShardError(name, key, None, f"the sample key also appears in shard {key_shard[key]!r}; keys must be "
                                              "unique in a dataset", reason=REASON_DUPLICATE)
        key_shard[key] = name
        s = decode_sample(raw, shard=name, expect=expect)
        subject, its_split = s.meta["subject"], s.meta["split"]
        first_split, first_shard = subject_split.setdefault(subject, (its_split, name))
        if first_split != its_split:
            raise ShardError(name, key, META, f"subject {subject!r} is in split {its_split!r} here but in split "
                                              f"{first_split!r} in shard {first_shard!r}: the splits leak", "subject",
                             reason=REASON_MANIFEST)
        return s.gaussians.n_points

    for ref in tqdm(refs, desc="validate", unit="shard", disable=not progress):
        try:
            for raw in iter_raw_samples(ref):  # the shard is checked whole before its first sample
                try:
                    report["points"].append(check(raw, ref.name, ref.expect))
                    report["samples"] += 1
                except ShardError as e:
                    failed(e)
        except ShardError as e:
            failed(e)
    pts = report.pop("points")
    if pts:
        report["points_min"], report["points_max"] = min(pts), max(pts)
        report["points_mean"] = round(sum(pts) / len(pts), 1)
    return report


def validate_parser() -> ArgumentParser:
    p = tool_parser("avp data validate", "Decode and check every sample.")
    p.add_argument("root", type=str, help="dataset folder, shards.json, a .tar, or a pattern")
    p.add_argument("--split", type=str, default=None)
    p.add_argument("--keep-going", action="store_true", help="report every broken shard instead of the first")
    return p


def _validate(argv: list[str]) -> int:
    from avp.data.schema import ShardError

    a = validate_parser().parse_args(argv)
    try:
        report = validate(a.root, a.split, keep_going=a.keep_going)
    except (ShardError, FileNotFoundError, ValueError) as e:
        print(f"avp data validate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


def index_parser() -> ArgumentParser:
    p = tool_parser("avp data index", "Rebuild shards.json from the shards.")
    p.add_argument("root", type=str)
    p.add_argument("--partial", action="store_true",
                   help="index the shards of an interrupted `avp data synth` as they are (default: refuse)")
    return p


def _index(argv: list[str]) -> int:
    from avp.data.manifest import index_directory

    a = index_parser().parse_args(argv)
    try:
        m = index_directory(a.root, progress=True, partial=a.partial)
    except (ValueError, FileNotFoundError) as e:
        print(f"avp data index: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"shards": len(m.shards), "samples": {s: m.samples(s) for s in m.splits}}, indent=2))
    return 0


COMMANDS = {"synth": _synth, "convert": _convert, "preview": _preview, "validate": _validate, "index": _index}
PARSERS = {"synth": synth_parser, "convert": convert_parser, "preview": preview_parser, "validate": validate_parser,
           "index": index_parser}
"""Each command's parser builder (what ``avp data COMMAND`` parses its options with)."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"avp data: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation protocols: versioned YAML files (``configs/eval/*.yaml``) that fix everything a number depends on.

A protocol names the held-out subjects (split, optional list), which clip frames and cameras are compared, the
resolution and background of the renders, whether foreground masks are used, how generated points are sampled (seed,
temperature, top-k, top-p), where the face metrics look (their own, larger resolution), which local weights the
learned metrics read, and for cross-reenactment which subject drives which. Its ``name``, ``version`` and full content
are recorded with every result (:meth:`EvalProtocol.record`); change a protocol's meaning, bump its ``version``.

Two tasks:

- ``self``: each held-out clip's portrait is avatarized and driven by the clip's own frames (expression, pose), and
  the renders are compared with the ground-truth views: PSNR/SSIM (masked and unmasked), LPIPS, FID, identity
  similarity to the portrait, AKD/APD to the ground truth, CLIP similarity to the portrait.
- ``cross``: subject A's avatar (A's portrait and identity) is driven by subject B's motion and rendered from B's
  cameras. There is no ground truth: identity/CLIP similarity to A's portrait (``cross_identity_cosine``,
  ``cross_clip``), Cross-FID against B's real frames and AKD/APD against B's driving frames.

:func:`load_protocol` reads and checks a file with jsonargparse (:func:`protocol_parser`, the mechanism of every
other config here): types, choices, unknown and missing keys are its errors; ranges and consistency are
:func:`validate`'s. Every problem raises :class:`ProtocolError` naming the file and the key (``…/p.yaml: Parser key
"render.resolution": Expected a <class 'int'>. Got value: big``). ``avp eval --override KEY=VALUE`` changes a key
for one run (:func:`override_flags`: the parser's own ``--KEY=VALUE`` flags, applied after the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ProtocolError(ValueError):
    """A protocol file or override that cannot be used; the message names the file and the key."""


@dataclass
class DataSelection:
    """Which held-out clips are evaluated."""

    split: str = "test"
    """Split of the shard manifest whose clips are evaluated (subjects never seen in training)."""
    subjects: list[str] | None = None
    """Subject ids to evaluate, in this order; null: every subject of the split, sorted by id."""
    max_subjects: int | None = None
    """Evaluate at most this many subjects (the first ones of the order above); null: all."""
    root: str | None = None
    """Dataset folder (``shards.json``) or shard pattern; usually given on the command line (``--data``)."""


@dataclass
class FrameSelection:
    """Which clip timesteps are driven and compared (of the driving clip in cross-reenactment)."""

    skip_portrait_frame: bool = True
    """Self-reenactment only: drop the clip frame the portrait was taken from (converted data records it in
    ``meta.extra.portrait.timestep``; synthetic portraits are separate renders, so nothing is dropped)."""
    indices: list[int] | None = None
    """Explicit clip frame indices (after which ``stride``/``max_frames`` are not used); null: all frames."""
    stride: int = 1
    """Use every ``stride``-th remaining frame."""
    max_frames: int | None = None
    """At most this many frames, evenly spaced over the remaining ones; null: all."""


@dataclass
class ViewSelection:
    """Which cameras of a clip are rendered and compared."""

    indices: list[int] | None = None
    """Clip camera indices; null: every camera of the clip."""
    max_views: int | None = None
    """At most this many cameras, evenly spaced over the selected ones; null: all."""


@dataclass
class RenderSettings:
    """How renders and ground-truth frames are brought to a common image."""

    resolution: int = 512
    """Square size in pixels of renders and ground truth (frames are padded to square with the clip background and
    resized, intrinsics adjusted, as the data module does)."""
    background: Literal["clip", "white", "black"] | list[float] = "clip"
    """``clip`` (the shards' background colour, what the frames show), ``white``, ``black`` or ``[r, g, b]`` in 0..1.
    Another colour than the clip's re-composites the ground truth with its foreground masks (masks required)."""
    rig_identity: Literal["clip", "portrait"] = "clip"
    """Identity (shape) the avatar is bound to and animated with: ``clip`` (the clip's tracked shape, which the
    target frames' expression and pose were tracked with) or ``portrait`` (the shape estimated for the portrait, as
    ``avp avatarize`` does). The teacher row always uses the clip's shape (its points live in that space)."""


@dataclass
class MaskSettings:
    """Foreground masks for the masked PSNR/SSIM."""

    use: bool = True
    """Also report ``psnr_masked``/``ssim_masked`` weighted by the shards' foreground masks (unavailable when the
    shards have none). Self-reenactment only (cross-reenactment has no ground truth)."""


@dataclass
class FaceSettings:
    """Face metrics (identity similarity with detection rate, AKD, APD) with models that ship in wheels."""

    enabled: bool = True
    """Compute the face metrics (they need the ``face`` extra; without it they are reported unavailable)."""
    resolution: int = 256
    """Renders, references and the portrait are resized (bicubic) to this square size for the face tools only:
    dlib's HOG detector and mediapipe miss small faces, so small renders are upscaled before detection. The
    detection rate is reported with the values."""
    identity_upsample: int = 1
    """dlib detector pyramid upsampling (0: none; 1 finds faces about 40 px wide)."""
    akd_resolution: int = 512
    """AKD is measured in pixels of an image this wide (landmarks rescaled)."""
    views: list[int] | None = None
    """Clip camera indices (among the evaluated ones) whose renders get face metrics; null: all evaluated views."""


@dataclass
class SamplingSettings:
    """How the generator samples points (``generated`` rows); the decoder's own settings fill what is null."""

    seed: int = 0
    """Base seed; each source clip samples with a seed derived from it and the clip key (``--limit`` does not change
    the other clips' samples)."""
    temperature: float = 1.0
    """Softmax temperature (0: greedy)."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 0.95
    """Nucleus sampling mass (1: all)."""
    max_points: int | None = None
    """Stop after this many points; null: the decoder checkpoint's ``sampling.max_points``."""
    min_points: int | None = None
    """No EOS before this many points; null: the decoder checkpoint's ``sampling.min_points``."""
    draws: int | None = None
    """Clouds drawn per portrait and merged into one (``SamplingConfig.draws``); null: the decoder checkpoint's."""


@dataclass
class WeightsSettings:
    """Learned metrics: computed only with real weights from local files, otherwise reported unavailable."""

    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    """LPIPS backbone: ``alex`` | ``vgg`` | ``squeeze``."""
    lpips_weights: str | None = None
    """torchvision backbone file; null reads ``$TORCH_HOME/hub/checkpoints``."""
    fid_weights: str | None = None
    """torch-fidelity Inception file; null reads ``$TORCH_HOME/hub/checkpoints``."""
    fid_feature: int = 2048
    """Inception feature size (2048 is the standard FID)."""
    clip_model: str = "ViT-B-32"
    """open_clip model name."""
    clip_weights: str | None = None
    """open_clip/OpenAI checkpoint file of ``clip_model``; null: CLIP similarity is unavailable."""


@dataclass
class PairSettings:
    """Cross-reenactment: which subject drives which."""

    shift: int = 1
    """Source subject ``i`` (in the selection's order) is driven by subject ``i + shift`` (cyclically)."""
    explicit: list[list[str]] | None = None
    """``[[source, driver], ...]`` subject pairs instead of ``shift``."""


@dataclass
class ReferenceSettings:
    """The reference rows evaluated beside the model."""

    teacher: bool = True
    """Render the shards' teacher fit (the upper bound of what the decoder can reach from these points)."""
    teacher_animation: Literal["auto", "lbs", "face_frame"] = "auto"
    """How the teacher is animated: ``auto`` (``lbs`` for synthetic shards, which were rendered that way;
    ``face_frame`` for GaussianAvatars conversions), ``lbs`` or ``face_frame``."""


@dataclass
class ReportSettings:
    """What the markdown table shows."""

    columns: list[str] | None = None
    """Metric keys, in order; null: the task's default columns (:data:`DEFAULT_COLUMNS`)."""


DEFAULT_COLUMNS = {
    "self": ["psnr", "psnr_masked", "ssim", "ssim_masked", "lpips", "fid", "identity_cosine", "face_detection_rate",
             "akd", "apd", "keypoint_pair_rate"],
    "cross": ["cross_identity_cosine", "face_detection_rate", "akd", "apd", "keypoint_pair_rate", "cross_fid",
              "cross_clip"],
}
"""Markdown table columns per task when the protocol does not list them."""


@dataclass
class EvalProtocol:
    """A versioned evaluation protocol (one YAML file in ``configs/eval/``)."""

    name: str
    """Identifier recorded with the results (e.g. ``self_reenactment``)."""
    version: int
    """Bumped whenever a change would change a number; recorded with the results."""
    task: Literal["self", "cross"]
    """``self`` (the subject's own later frames, with ground truth) or ``cross`` (another subject's motion)."""
    description: str = ""
    """What the protocol measures, in a sentence or two."""
    data: DataSelection = field(default_factory=DataSelection)
    frames: FrameSelection = field(default_factory=FrameSelection)
    views: ViewSelection = field(default_factory=ViewSelection)
    render: RenderSettings = field(default_factory=RenderSettings)
    masks: MaskSettings = field(default_factory=MaskSettings)
    face: FaceSettings = field(default_factory=FaceSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    weights: WeightsSettings = field(default_factory=WeightsSettings)
    pairs: PairSettings | None = None
    """Cross-reenactment pairing (required for ``cross``; must be absent for ``self``)."""
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    report: ReportSettings = field(default_factory=ReportSettings)

    def to_dict(self) -> dict[str, Any]:
        """The protocol as plain data (what is recorded and what :func:`protocol_from_dict` reads back)."""
        return dataclasses.asdict(self)

    def columns(self) -> list[str]:
        """The markdown table's metric columns."""
        return list(self.report.columns) if self.report.columns is not None else list(DEFAULT_COLUMNS[self.task])

    def record(self, source: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
        """What a run stores about its protocol: name, version, task, the file and its SHA-256, the overrides given on
        the command line, and the full effective content."""
        content = self.to_dict()
        text = yaml.safe_dump(content, sort_keys=False)
        record: dict[str, Any] = {"name": self.name, "version": self.version, "task": self.task,
                                  "file": source, "file_sha256": None, "overrides": list(overrides),
                                  "content_sha256": hashlib.sha256(text.encode()).hexdigest(), "content": content}
        if source is not None and Path(source).is_file():
            record["file_sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        return record


# ----------------------------------------------------------------------------------------------- reading and checks

SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(EvalProtocol)
            if dataclasses.is_dataclass(f.default_factory)}
"""Top-level keys that hold a section (a mapping of one settings dataclass's fields)."""


@functools.lru_cache(maxsize=1)
def protocol_parser() -> Any:
    """The jsonargparse parser of a protocol: ``--config FILE`` then dotted ``--render.resolution=128`` flags.

    It checks types (``Literal`` choices included), unknown and missing keys, and names the key in its errors; built
    once (parsing does not change it)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="avp eval protocol", exit_on_error=False, default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="protocol YAML")
    parser.add_class_arguments(EvalProtocol, None, fail_untyped=True)
    return parser


def _check_sections(data: Mapping[str, Any]) -> None:
    """A section given as anything but a mapping: jsonargparse would take it and fail later without naming it."""
    for name, cls in SECTIONS.items():
        if name in data and not isinstance(data[name], Mapping):
            raise ProtocolError(f"{name}: expected a mapping of {cls.__name__} fields, got {type(data[name]).__name__} "
                                f"{data[name]!r}")


def _instantiate(namespace: Any) -> EvalProtocol:
    """The parsed namespace as an :class:`EvalProtocol` (its sections built by jsonargparse)."""
    parser = protocol_parser()
    built = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(namespace)  # renamed in 4.49
    return EvalProtocol(**{f.name: built[f.name] for f in dataclasses.fields(EvalProtocol)})


def _positive(value: int | None, where: str, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise ProtocolError(f"{where}: must be >= {minimum}, got {value}")


def validate(protocol: EvalProtocol) -> EvalProtocol:
    """Range and consistency checks beyond types (which the parser checks); raises :class:`ProtocolError` naming
    the key."""
    p = protocol
    if not p.name.strip():
        raise ProtocolError("name: must not be empty")
    _positive(p.version, "version")
    _positive(p.data.max_subjects, "data.max_subjects")
    if p.data.subjects is not None and len(set(p.data.subjects)) != len(p.data.subjects):
        raise ProtocolError(f"data.subjects: lists a subject twice: {p.data.subjects}")
    _positive(p.frames.stride, "frames.stride")
    _positive(p.frames.max_frames, "frames.max_frames")
    _positive(p.views.max_views, "views.max_views")
    for key, indices in (("frames.indices", p.frames.indices), ("views.indices", p.views.indices),
                         ("face.views", p.face.views)):
        if indices is not None:
            if not indices:
                raise ProtocolError(f"{key}: must not be empty (null selects all)")
            if min(indices) < 0 or len(set(indices)) != len(indices):
                raise ProtocolError(f"{key}: indices must be distinct and >= 0, got {indices}")
    if p.face.views is not None and p.views.indices is not None and not set(p.face.views) <= set(p.views.indices):
        raise ProtocolError(f"face.views: {p.face.views} must be among views.indices {p.views.indices}")
    _positive(p.render.resolution, "render.resolution", 16)
    bg = p.render.background
    if isinstance(bg, list) and (len(bg) != 3 or not all(0 <= c <= 1 for c in bg)):
        raise ProtocolError(f"render.background: an [r, g, b] colour needs three values in 0..1, got {bg}")
    _positive(p.face.resolution, "face.resolution", 32)
    _positive(p.face.akd_resolution, "face.akd_resolution", 32)
    _positive(p.face.identity_upsample, "face.identity_upsample", 0)
    s = p.sampling
    if s.temperature < 0:
        raise ProtocolError(f"sampling.temperature: must be >= 0, got {s.temperature}")
    if s.top_k < 0:
        raise ProtocolError(f"sampling.top_k: must be >= 0, got {s.top_k}")
    if not 0 < s.top_p <= 1:
        raise ProtocolError(f"sampling.top_p: must be in (0, 1], got {s.top_p}")
    _positive(s.max_points, "sampling.max_points")
    _positive(s.min_points, "sampling.min_points", 0)
    _positive(s.draws, "sampling.draws")
    if s.max_points is not None and s.min_points is not None and s.min_points > s.max_points:
        raise ProtocolError(f"sampling.min_points: {s.min_points} exceeds sampling.max_points {s.max_points}")
    if p.task == "cross":
        if p.pairs is None:
            raise ProtocolError("pairs: cross-reenactment needs a pairs section (shift or explicit)")
        if p.pairs.explicit is not None:
            for i, pair in enumerate(p.pairs.explicit):
                if len(pair) != 2 or pair[0] == pair[1]:
                    raise ProtocolError(f"pairs.explicit[{i}]: expected [source, driver] of two subjects, got {pair}")
    elif p.pairs is not None:
        raise ProtocolError("pairs: only cross-reenactment protocols pair subjects (task is 'self')")
    if p.report.columns is not None and not p.report.columns:
        raise ProtocolError("report.columns: must not be empty (null uses the task's defaults)")
    return p


def protocol_from_dict(data: Mapping[str, Any], source: str = "protocol") -> EvalProtocol:
    """Build and check a protocol from plain data; errors are prefixed with ``source`` (e.g. the file)."""
    try:
        if not isinstance(data, Mapping):
            raise ProtocolError(f"expected a mapping of protocol keys, got {type(data).__name__}")
        _check_sections(data)
        try:
            namespace = protocol_parser().parse_object(dict(data))
        except argparse.ArgumentError as e:
            raise ProtocolError(str(e)) from None
        return validate(_instantiate(namespace))
    except ProtocolError as e:
        raise ProtocolError(f"{source}: {e}") from None


def override_flags(overrides: Sequence[str]) -> list[str]:
    """``KEY=VALUE`` overrides (dotted keys, YAML values: ``render.resolution=128``, ``views.indices=[0,2]``,
    ``data.subjects=null``) as the parser's ``--KEY=VALUE`` flags."""
    flags = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ProtocolError(f"override {item!r}: expected KEY=VALUE (e.g. render.resolution=128)")
        flags.append(f"--{key.strip()}={value}")
    return flags


def load_protocol(path: str | Path, overrides: Sequence[str] = ()) -> EvalProtocol:
    """Read a protocol YAML file (then ``KEY=VALUE`` overrides) and check it; errors name the file and the key (and
    the override that brought the error in)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"evaluation protocol {file} does not exist (see configs/eval/)")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ProtocolError(f"{file}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{file}: expected a mapping of protocol keys at the top level, got {type(data).__name__}")
    try:
        _check_sections(data)
    except ProtocolError as e:
        raise ProtocolError(f"{file}: {e}") from None
    flags = override_flags(overrides)
    parser = protocol_parser()
    # the file alone, then each override on top: an error is blamed on the file or on the override that caused it
    for count, item in enumerate([None, *overrides]):
        try:
            namespace = parser.parse_args(["--config", str(file), *flags[:count]])
        except argparse.ArgumentError as e:
            where = f"{file}" if item is None else f"{file}: override {item!r}"
            raise ProtocolError(f"{where}: {e}") from None
    try:
        return validate(_instantiate(namespace))
    except ProtocolError as e:
        raise ProtocolError(f"{file}: {e}") from None

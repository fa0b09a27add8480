"""Full-pipeline evaluation of an avatar model on a protocol (``avp eval``): every number regenerable from its folder.

The run is a short loop over the modules that each do one part:

1. :mod:`avp.eval.plan`: the split's clips, the protocol's samples (seeded), frames and views;
2. :mod:`avp.eval.methods`: the table's rows, each turning a source clip into an :class:`~avp.models.avatar.Avatar`
   (checkpoints read by :mod:`avp.checkpoints`; nothing here imports Lightning);
3. here: every avatar animated to the target frames' head parameters and rendered in the protocol's views at its
   resolution over its background (:mod:`avp.eval.clips` decodes sources and targets);
4. :mod:`avp.eval.scores`: the renders scored per sample and over the run: PSNR/SSIM (masked and unmasked), LPIPS,
   FID, identity similarity with detection rate, AKD/APD, CLIP (self); identity/CLIP to the source portrait, AKD/APD to
   the driving frames, Cross-FID (cross). Metrics without their weights are reported unavailable;
5. :mod:`avp.eval.report`: the run folder.

The run folder holds ``run.json`` (protocol name, version, file hash and full content; checkpoints with SHA-256;
data root and manifest hash; the command's options; per-sample seeds; git SHA; environment; the ``avp eval`` command
that recomputes the run), ``protocol.yaml`` (the effective protocol, overrides applied), ``samples.jsonl``
(every method x sample), ``metrics.json``, ``metrics.csv``, ``table.md`` (paper layout: methods x metrics),
``examples.png`` (the first sample's first frame per method), per-method reports under ``methods/<key>/`` (readable by
:func:`avp.eval.report.read_metrics`) and TensorBoard event files under ``tensorboard/<key>/`` (``test/*`` scalars).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from avp.atomic import atomic_write_json, atomic_write_text
from avp.checkpoints import check_same_generator, load_avatar_model
from avp.eval.clips import SourceClip, TargetClip, source_from_sample, target_from_sample
from avp.eval.methods import DecoderMethod, Method, TeacherMethod, sampling_config
from avp.eval.plan import EvalSample, file_record, list_clips, plan_samples, select_frames, select_views, stream_samples
from avp.eval.protocol import EvalProtocol, ProtocolError
from avp.eval.report import RUN_SCHEMA, write_run_reports
from avp.eval.scores import MethodScores, resize_images
from avp.metrics.unavailable import MetricValue
from avp.models.avatar import Avatar, AvatarModel
from avp.provenance import environment, git_sha
from avp.types import HeadParams


@dataclass
class EvalResult:
    """What a finished run wrote."""

    out_dir: Path
    metrics: dict[str, dict[str, MetricValue]]
    """method key -> metric -> value"""
    labels: dict[str, str]
    table: str
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """An evaluation run (what ``avp eval`` parses)."""

    protocol: EvalProtocol
    decoder: str
    """DecoderModule checkpoint of the full model."""
    out_dir: str
    data_root: str | None = None
    """Dataset root; None: the protocol's ``data.root``."""
    generator: str | None = None
    """Generator checkpoint; checked to be the decoder's frozen generator and recorded."""
    template_decoder: str | None = None
    """DecoderModule checkpoint trained with ``points: template`` (the baseline row)."""
    points: tuple[str, ...] = ("generated",)
    """Rows of the full model: ``generated`` (the method), ``teacher`` (teacher points), ``resampled`` (a new
    sampling of a synthetic subject's teacher); empty: none (the decoder then only supplies the head model for the
    reference rows)."""
    limit: int | None = None
    """Only the first N samples of the protocol."""
    device: str = "auto"
    batch_frames: int = 4
    """Frames rendered per call (memory only; numbers do not depend on it)."""
    overwrite: bool = False
    progress: bool = True
    protocol_file: str | None = None
    overrides: tuple[str, ...] = ()
    command: list[str] | None = None


def build_methods(config: EvalConfig, device: torch.device) -> tuple[AvatarModel, list[Method], dict[str, Any]]:
    """Load the checkpoints (checked and hashed) and the table's rows: ``(decoder, methods, checkpoint records)``."""
    protocol = config.protocol
    checkpoints: dict[str, Any] = {"decoder": file_record(config.decoder)}
    decoder, hparams = load_avatar_model(config.decoder, device=device)
    if config.generator is not None:
        checkpoints["generator"] = file_record(config.generator)
        check_same_generator(decoder, config.generator)
    sampling = sampling_config(decoder, protocol)
    methods: list[Method] = []
    for points, key in (("generated", "generated"), ("teacher", "teacher_points"), ("resampled", "resampled_teacher")):
        if points in config.points:
            methods.append(DecoderMethod(key, decoder, hparams, points, sampling, protocol.render.rig_identity,
                                         checkpoints["decoder"]))
    if config.template_decoder is not None:
        checkpoints["template_decoder"] = file_record(config.template_decoder)
        template, template_hparams = load_avatar_model(config.template_decoder, device=device)
        if template_hparams.get("points") != "template":
            raise ValueError(f"--template-decoder {config.template_decoder} was trained with points: "
                             f"{template_hparams.get('points')!r}; the baseline row needs a decoder trained with "
                             "points: template")
        if template.head_model.name != decoder.head_model.name:
            raise ValueError(f"--template-decoder uses head model {template.head_model.name!r}, the decoder "
                             f"{decoder.head_model.name!r}")
        methods.append(DecoderMethod("template", template, template_hparams, "template", sampling,
                                     protocol.render.rig_identity, checkpoints["template_decoder"]))
    if protocol.reference.teacher:
        methods.append(TeacherMethod(decoder.head_model, protocol.reference.teacher_animation))
    return decoder, methods, checkpoints


def run_evaluation(config: EvalConfig) -> EvalResult:
    """Evaluate the model (and the reference rows) on the protocol; write the run folder; return its numbers."""
    from avp.device import select_device

    protocol = config.protocol
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    out = Path(config.out_dir)
    root = _check_config(config, out)
    device = select_device(config.device)

    decoder, methods, checkpoints = build_methods(config, device)
    labels = {m.key: m.label for m in methods}
    clips, data_record = list_clips(root, protocol.data.split)
    samples = plan_samples(protocol, clips, config.limit)
    head_name = data_record.get("head_model")
    if head_name is not None and head_name != decoder.head_model.name:
        raise ValueError(f"{root}: the shards were written for head model {head_name!r} but the decoder uses "
                         f"{decoder.head_model.name!r}")

    run_record = _start_run(config, out, checkpoints, methods, data_record, samples, device, started)
    scores = {m.key: MethodScores(protocol) for m in methods}
    records, example = _evaluate(config, root, decoder.head_model.name, methods, samples, scores, device)

    records.sort(key=lambda r: (r["order"], list(labels).index(r["method"])))
    metrics = {m.key: scores[m.key].compute() for m in methods}
    files = write_run_reports(out, protocol, run_record, labels, metrics, records, example)
    run_record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_record["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "run.json", run_record)
    return EvalResult(out_dir=out, metrics=metrics, labels=labels, table=files["table"].read_text(), files=files)


def _check_config(config: EvalConfig, out: Path) -> str:
    """Refuse a run that cannot succeed before anything is loaded; returns the data root."""
    protocol = config.protocol
    if (out / "metrics.json").exists() and not config.overwrite:
        raise FileExistsError(f"{out} already holds an evaluation (metrics.json); choose another --out or pass "
                              "--overwrite")
    root = config.data_root or protocol.data.root
    if root is None:
        raise ProtocolError("data.root: no dataset given; pass --data ROOT (a folder with shards.json)")
    unknown = [p for p in config.points if p not in ("generated", "teacher", "resampled")]
    if unknown:
        raise ValueError(f"points: expected generated, teacher and/or resampled, got {list(config.points)}")
    if not config.points and config.template_decoder is None and not protocol.reference.teacher:
        raise ValueError("nothing to evaluate: no points rows, no template decoder and reference.teacher is false")
    if config.batch_frames < 1:
        raise ValueError(f"batch_frames must be >= 1, got {config.batch_frames}")
    for name, path in (("LPIPS", protocol.weights.lpips_weights), ("FID", protocol.weights.fid_weights),
                       ("CLIP", protocol.weights.clip_weights)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"weights.{name.lower()}_weights: {name} weights {path} do not exist")
    return root


def _start_run(config: EvalConfig, out: Path, checkpoints: dict[str, Any], methods: list[Method],
               data_record: dict[str, Any], samples: list[EvalSample], device: torch.device,
               started: datetime) -> dict[str, Any]:
    """Write ``protocol.yaml`` and the first ``run.json`` (all but the timings) before any avatar is built, so that
    an interrupted run still says what it was; returns the run record."""
    protocol = config.protocol
    run_record: dict[str, Any] = {
        "schema": RUN_SCHEMA,
        "command": config.command,
        "protocol": protocol.record(config.protocol_file, config.overrides),
        "checkpoints": checkpoints,
        "methods": {m.key: m.describe() for m in methods},
        "data": data_record,
        "options": {"points": list(config.points), "limit": config.limit, "device": str(device),
                    "batch_frames": config.batch_frames},
        "seeds": {"sampling_base": protocol.sampling.seed,
                  "per_sample": {s.id: s.seed for s in samples}},
        "samples": [dataclasses.asdict(s) for s in samples],
        "git_sha": git_sha(),
        "environment": environment(),
        "started": started.isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "protocol.yaml", f"# effective protocol of this run ({protocol.name} v{protocol.version}"
                      f"{', overrides: ' + ' '.join(config.overrides) if config.overrides else ''})\n"
                      + yaml.safe_dump(protocol.to_dict(), sort_keys=False))
    run_record["regenerate"] = regenerate_command(config, out)
    atomic_write_json(out / "run.json", run_record)
    return run_record


def _evaluate(config: EvalConfig, root: str, head_model: str, methods: list[Method], samples: list[EvalSample],
              scores: dict[str, MethodScores], device: torch.device) -> tuple[list[dict[str, Any]], list[Tensor]]:
    """Every method on every sample, streaming the targets' shards once: the per-sample records (unsorted) and the
    example image columns (``[V, 3, H, W]``: portrait, ground truth, then each method's first frame)."""
    from tqdm import tqdm

    from avp.data.schema import decode_meta, decode_sample

    protocol = config.protocol
    records: list[dict[str, Any]] = []
    example: list[Tensor] = []
    bar = tqdm(total=len(samples) * len(methods), desc=f"eval {protocol.name}", unit="avatar",
               disable=not config.progress)

    sources: dict[str, SourceClip] = {}
    if protocol.task == "cross":  # drivers are streamed below; their sources (other clips) are read first
        wanted = {s.source for s in samples}
        for shard, raw in stream_samples(root, protocol.data.split, wanted):
            sample = decode_sample(raw, shard=shard, decode_frames=False)
            sources[sample.key] = source_from_sample(sample).to(device)
    by_target: dict[str, list[EvalSample]] = {}
    for s in samples:
        by_target.setdefault(s.target, []).append(s)

    for shard, raw in stream_samples(root, protocol.data.split, set(by_target)):
        meta = decode_meta(raw, shard=shard)
        key = raw["__key__"].decode()
        fi, vi = select_frames(protocol, meta, key), select_views(protocol, meta, key)
        clip = decode_sample(raw, shard=shard, frame_index=fi, view_index=vi)
        target = target_from_sample(clip, protocol)
        if protocol.task == "self":
            sources[key] = source_from_sample(clip).to(device)
        for sample in by_target[key]:
            source = sources[sample.source]
            if source.head_model != head_model:
                raise ValueError(f"clip {source.key!r} was written for head model {source.head_model!r} but the "
                                 f"decoder uses {head_model!r}")
            head = target.head.to(device)
            head.shape = source.shape.expand(head.shape.shape[0], -1)  # the source's identity, the target's motion
            first = not example
            if first:
                example.append(resize_images(source.portrait[None], protocol.render.resolution).expand(
                    len(vi), -1, -1, -1).cpu())
                example.append(target.frames[0].cpu())
            for method in methods:
                t0 = time.perf_counter()
                bar.set_postfix_str(f"{method.key} {sample.id}")
                avatar = method.build(source, sample.seed)
                values, first_frame = _score(config, scores[method.key], avatar, method.render_backend, source,
                                             target, head, device)
                if first:
                    example.append(first_frame)
                records.append({
                    "order": sample.order, "method": method.key, "sample": sample.id, "source": sample.source,
                    "target": sample.target, "subject": source.subject, "driver": target.subject
                    if protocol.task == "cross" else None, "frames": fi, "views": vi, "seed": sample.seed,
                    "n_points": avatar.n_points, "finished": avatar.finished,
                    "seconds": round(time.perf_counter() - t0, 3), "metrics": values,
                })
                bar.update(1)
        if protocol.task == "self":
            del sources[key]
    bar.close()
    done = {r["sample"] for r in records}
    lost = [s.id for s in samples if s.id not in done]
    if lost:
        raise RuntimeError(f"samples {lost[:5]} were planned but never read from {root} (shards changed?)")
    return records, example


def _score(config: EvalConfig, scores: MethodScores, avatar: Avatar, backend: str, source: SourceClip,
           target: TargetClip, head: HeadParams, device: torch.device) -> tuple[dict[str, MetricValue], Tensor]:
    """Render ``avatar`` animated by ``head [T]`` in the target's views, ``batch_frames`` frames per call, and score
    it: the sample's values and its first frame ``[V, 3, H, W]`` (on the CPU)."""
    face = config.protocol.face
    face_views = [j for j, v in enumerate(target.view_index) if face.views is None or v in face.views]
    face_portrait = resize_images(source.portrait[None], face.resolution)[0]
    n = len(target.frame_index)
    first_frame = torch.empty(0)
    scores.start_sample()
    for lo in range(0, n, config.batch_frames):
        hi = min(lo + config.batch_frames, n)
        rgb = avatar.render(target.cameras.to(device), head.map(lambda t, lo=lo, hi=hi: t[lo:hi]),
                            background=target.background.to(device), backend=backend,
                            chunk=hi - lo).rgb  # [t, V, 3, H, W]
        rgb = rgb.float().clamp(0, 1)
        gt = target.frames[lo:hi].to(device)
        masks = target.masks[lo:hi].to(device) if target.masks is not None else None
        face_r = face_t = None
        if face.enabled and face_views:
            face_r = resize_images(rgb[:, face_views].flatten(0, 1), face.resolution)
            face_t = resize_images(gt[:, face_views].flatten(0, 1), face.resolution)
        scores.update(rgb.flatten(0, 1), gt.flatten(0, 1), masks.flatten(0, 1) if masks is not None else None,
                      source.portrait, face_r, face_t, face_portrait)
        if lo == 0:
            first_frame = rgb[0].cpu()
    return scores.finish_sample(avatar.n_points, avatar.finished), first_frame


def regenerate_command(config: EvalConfig, out: Path) -> list[str]:
    """The ``avp eval`` command that recomputes this run from its folder (its ``protocol.yaml``)."""
    root = str(config.data_root or config.protocol.data.root)
    if Path(root).exists():
        root = str(Path(root).resolve())
    cmd = ["avp", "eval", "--protocol", str(out.resolve() / "protocol.yaml"), "--decoder",
           str(Path(config.decoder).resolve()), "--data", root, "--points", *(config.points or ["none"]), "--out",
           str(out.resolve()) + "-again"]
    if config.generator is not None:
        cmd += ["--generator", str(Path(config.generator).resolve())]
    if config.template_decoder is not None:
        cmd += ["--template-decoder", str(Path(config.template_decoder).resolve())]
    if config.limit is not None:
        cmd += ["--limit", str(config.limit)]
    return cmd

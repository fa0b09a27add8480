"""The evaluation protocol end to end on tiny synthetic shards with tiny checkpoints trained here for a few steps:
every report file, PSNR equal to an independent computation on renders known exactly (and the teacher within 8-bit
rounding of its own renders), unavailable metrics written as such, the records that regenerate a number, and the
selection rules (frames, views, subjects, pairs)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from avp.checkpoints import check_same_generator, load_avatar_model
from avp.eval.methods import METHOD_LABELS, TeacherMethod
from avp.eval.plan import ClipEntry, plan_samples, sample_seed, select_frames, select_views
from avp.eval.protocol import ProtocolError, load_protocol, protocol_from_dict
from avp.eval.report import read_metrics
from avp.eval.runner import EvalConfig, run_evaluation

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"
# tiny renders; face tools on 64 px upscales (cheap; faces this small are rarely found, which the report must say)
TINY = ["render.resolution=32", "face.resolution=64", "face.akd_resolution=64"]


def _fit(module, datamodule, steps: int, path: Path) -> Path:
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shards from ``avp data synth`` (2 test subjects) and generator / decoder / template-decoder checkpoints."""
    from avp.cli import main
    from avp.lit.data import AvatarDataModule
    from avp.lit.decoder import DecoderModule
    from avp.lit.generator import GeneratorModule
    from avp.losses import LossWeights
    from avp.models.decoder import DecoderConfig
    from avp.models.encoders import ConditionConfig, ImageEncoderConfig, MeshEncoderConfig
    from avp.models.generator import GeneratorConfig
    from avp.models.sampling import SamplingConfig

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    assert main(["data", "synth", "--out", str(data), "--subjects", "5", "--views", "2", "--frames", "2", "--size",
                 "32", "--points", "60", "120", "--val-fraction", "0", "--test-fraction", "0.4", "--workers",
                 "1"]) == 0
    condition = ConditionConfig(image=ImageEncoderConfig(arch="tiny", image_size=32, freeze=False, tiny_width=32,
                                                         tiny_depth=1, tiny_heads=2, tiny_patch=16),
                                mesh=MeshEncoderConfig(n_points=16, n_layers=1, n_heads=2))
    generator = GeneratorModule(condition=condition, model=GeneratorConfig(n_layers=1, width=32, n_heads=2),
                                train_window=64, lr=3e-3, warmup_steps=1, val_sample_every_n_epochs=0)
    gen = _fit(generator, AvatarDataModule(str(data), batch_size=1, num_workers=0, frames_per_sample=0,
                                           views_per_sample=0), 2, root / "generator.ckpt")
    out = {"data": data, "generator": gen}
    for name, points in (("decoder", "teacher"), ("template", "template")):
        module = DecoderModule(generator_ckpt=str(gen), points=points, template_points=64, lr=3e-3, warmup_steps=1,
                               decoder=DecoderConfig(width=16, n_layers=1, n_heads=2, feature_hidden=16,
                                                     n_frequencies=2),
                               loss=LossWeights(lpips=0.0), sampling=SamplingConfig(max_points=48))
        dm = AvatarDataModule(str(data), batch_size=1, num_workers=0, frames_per_sample=1, views_per_sample=1,
                              image_size=32)
        out[name] = _fit(module, dm, 2, root / f"{name}.ckpt")
    return out


@pytest.fixture(scope="session")
def self_run(tiny_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    protocol = load_protocol(CONFIGS / "self_reenactment.yaml", TINY)
    out = tmp_path_factory.mktemp("self") / "run"
    config = EvalConfig(protocol=protocol, decoder=str(tiny_run["decoder"]), out_dir=str(out),
                        data_root=str(tiny_run["data"]), generator=str(tiny_run["generator"]),
                        template_decoder=str(tiny_run["template"]), points=("generated", "teacher"),
                        progress=False, protocol_file=str(CONFIGS / "self_reenactment.yaml"), overrides=tuple(TINY))
    return config, run_evaluation(config)


def test_self_reenactment_writes_every_report_file(self_run, tiny_run) -> None:
    config, result = self_run
    out = result.out_dir
    for name in ("run.json", "protocol.yaml", "samples.jsonl", "metrics.json", "metrics.csv", "table.md",
                 "examples.png"):
        assert (out / name).is_file(), name
    methods = ["generated", "teacher_points", "template", "teacher"]
    assert list(result.metrics) == methods

    # per-sample lines: every method x sample, in protocol order, with what regenerates them
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(methods)
    assert [r["method"] for r in lines[:4]] == methods and lines[0]["sample"] == lines[3]["sample"]
    assert lines[0]["frames"] == [0, 1] and lines[0]["views"] == [0, 1]
    assert lines[0]["seed"] == sample_seed(0, lines[0]["source"]) and lines[0]["n_points"] >= 1

    # the markdown table: one row per method, the protocol's columns with arrows, unavailable cells explained
    table = (out / "table.md").read_text()
    assert "| Method | PSNR↑ | PSNR (mask)↑ | SSIM↑ | SSIM (mask)↑ | LPIPS↓ | FID↓ |" in table
    for key in methods:
        assert f"| {METHOD_LABELS[key]} |" in table
    assert "unavailable [" in table and "self_reenactment v1" in table

    # CSV: a row per method with protocol version and checkpoint hash
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["method"] for r in rows] == methods
    assert rows[0]["protocol"] == "self_reenactment" and rows[0]["protocol_version"] == "1"
    assert rows[0]["checkpoint_sha256"] == hashlib.sha256(tiny_run["decoder"].read_bytes()).hexdigest()

    # per-method run reports readable by the report reader (avp.eval.report.table_from_runs)
    for key in methods:
        run = read_metrics(out / "methods" / key)
        assert run.method == METHOD_LABELS[key] and run.protocol["version"] == 1
        assert run.metrics["psnr"] == pytest.approx(result.metrics[key]["psnr"])

    # TensorBoard: test/* scalars per method
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "teacher")).Reload()
    tags = events.Tags()["scalars"]
    assert "test/psnr" in tags and "test/lpips" not in tags  # unavailable values are not logged as numbers
    assert events.Scalars("test/psnr")[0].value == pytest.approx(result.metrics["teacher"]["psnr"])


def test_the_run_records_what_regenerates_it(self_run, tiny_run) -> None:
    config, result = self_run
    record = json.loads((result.out_dir / "run.json").read_text())
    protocol = record["protocol"]
    assert protocol["name"] == "self_reenactment" and protocol["version"] == 1 and protocol["overrides"] == TINY
    assert protocol["content"] == config.protocol.to_dict()
    assert protocol["file_sha256"] == hashlib.sha256((CONFIGS / "self_reenactment.yaml").read_bytes()).hexdigest()
    for name, key in (("decoder", "decoder"), ("generator", "generator"), ("template_decoder", "template")):
        ckpt = record["checkpoints"][name]
        assert ckpt["sha256"] == hashlib.sha256(tiny_run[key].read_bytes()).hexdigest()
        assert Path(ckpt["path"]) == tiny_run[key].resolve()
    assert record["methods"]["template"]["trained_points"] == "template"
    assert record["methods"]["generated"]["sampling"]["top_p"] == config.protocol.sampling.top_p
    assert record["data"]["manifest"]["sha256"] and record["data"]["split"] == "test"
    assert set(record["seeds"]["per_sample"]) == {s["id"] for s in record["samples"]}
    assert record["git_sha"] is None or len(record["git_sha"]) >= 40
    assert record["environment"]["torch"] == torch.__version__ and record["finished"]
    # the effective protocol (overrides applied) is a protocol file of its own, and the recorded command uses it
    assert load_protocol(result.out_dir / "protocol.yaml") == config.protocol
    command = record["regenerate"]
    assert command[:4] == ["avp", "eval", "--protocol", str(result.out_dir / "protocol.yaml")]
    assert command[command.index("--template-decoder") + 1] == str(tiny_run["template"].resolve())
    from avp.eval.cli import build_parser

    args = build_parser().parse_args(command[2:])  # a valid `avp eval` command line
    assert args.points == ["generated", "teacher"] and args.decoder == str(tiny_run["decoder"].resolve())


class _BackgroundOnly(TeacherMethod):
    """The teacher with every opacity zeroed: its renders are exactly the clip background, so its PSNR follows from
    the stored frames alone."""

    key, label = "blank", "Background only"

    def build(self, source, seed):
        avatar = super().build(source, seed)
        avatar.cloud = dataclasses.replace(avatar.cloud, opacities=torch.zeros_like(avatar.cloud.opacities))
        return avatar


def _stored_images(data: Path, key: str, frames: list[int], views: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(frames [n, H, W, 3], masks [n, H, W, 1])`` in 0..1 (float64), read straight from the test tar."""
    manifest = json.loads((data / "shards.json").read_text())
    images, masks = [], []
    for shard in [s["path"] for s in manifest["shards"] if s["split"] == "test"]:
        with tarfile.open(data / shard) as tar:
            names = set(tar.getnames())
            for t in frames:
                for v in views:
                    name = f"{key}.t{t:04d}.v{v:02d}"
                    if f"{name}.png" in names:
                        for member, out in ((f"{name}.png", images), (f"{name}.mask.png", masks)):
                            out.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))))
    assert len(images) == len(frames) * len(views), key
    return np.stack(images) / 255.0, np.stack(masks)[..., None] / 255.0


def test_psnr_matches_an_independent_computation_on_known_renders(tiny_run, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose renders are known exactly (the background: every opacity zeroed) must score the PSNR computed
    here with numpy from the stored frames, per sample and over the run, masked and unmasked; the teacher, whose
    renders the frames are up to 8-bit rounding (at most 0.5/255 per pixel), must score at least that bound."""
    import avp.eval.runner as runner

    build = runner.build_methods

    def with_blank(config, device):
        decoder, methods, checkpoints = build(config, device)
        return decoder, [*methods, _BackgroundOnly(decoder.head_model, "auto")], checkpoints

    monkeypatch.setattr(runner, "build_methods", with_blank)
    protocol = load_protocol(CONFIGS / "self_reenactment.yaml", [*TINY, "face.enabled=false"])
    result = run_evaluation(EvalConfig(protocol=protocol, decoder=str(tiny_run["decoder"]), points=(),
                                       data_root=str(tiny_run["data"]), out_dir=str(tmp_path / "run"),
                                       progress=False))
    assert list(result.metrics) == ["teacher", "blank"]
    lines = [json.loads(line) for line in (result.out_dir / "samples.jsonl").read_text().splitlines()]
    blank = [r for r in lines if r["method"] == "blank"]
    assert len(blank) == 2

    per_image, per_image_masked = [], []
    for record in blank:
        gt, mask = _stored_images(tiny_run["data"], record["sample"], record["frames"], record["views"])
        meta_bg = np.asarray(json.loads(_member(tiny_run["data"], record["sample"], "meta.json"))["background"])
        err = (gt - meta_bg) ** 2  # [n, H, W, 3]: the render is the background everywhere
        psnr = 10 * np.log10(1 / err.mean(axis=(1, 2, 3)))
        psnr_m = 10 * np.log10(1 / ((err * mask).sum(axis=(1, 2, 3)) / (3 * mask.sum(axis=(1, 2, 3)))))
        assert record["metrics"]["psnr"] == pytest.approx(psnr.mean(), abs=1e-3)
        assert record["metrics"]["psnr_masked"] == pytest.approx(psnr_m.mean(), abs=1e-3)
        per_image += list(psnr)
        per_image_masked += list(psnr_m)
    assert len(set(np.round(per_image, 3))) > 1  # the images differ: a mean over the wrong ones would show
    assert result.metrics["blank"]["psnr"] == pytest.approx(np.mean(per_image), abs=1e-3)
    assert result.metrics["blank"]["psnr_masked"] == pytest.approx(np.mean(per_image_masked), abs=1e-3)
    # the background pixels are exact, so the errors concentrate in the foreground: masked, the blank row is worse
    assert result.metrics["blank"]["psnr_masked"] < result.metrics["blank"]["psnr"]

    bound = 10 * np.log10(1 / (0.5 / 255) ** 2)  # 54.15 dB: every pixel off by at most half a grey level
    teacher = result.metrics["teacher"]
    assert teacher["psnr"] >= bound - 0.01 and teacher["psnr_masked"] >= bound - 0.01
    assert teacher["ssim"] > 0.99 and result.metrics["blank"]["ssim"] < teacher["ssim"] - 0.05


def _member(data: Path, key: str, member: str) -> bytes:
    manifest = json.loads((data / "shards.json").read_text())
    for shard in [s["path"] for s in manifest["shards"]]:
        with tarfile.open(data / shard) as tar:
            if f"{key}.{member}" in tar.getnames():
                return tar.extractfile(f"{key}.{member}").read()
    raise KeyError(f"{key}.{member}")


def test_unavailable_metrics_are_written_as_unavailable(self_run) -> None:
    _, result = self_run
    record = json.loads((result.out_dir / "metrics.json").read_text())
    teacher = record["methods"]["teacher"]["metrics"]
    # no LPIPS/FID/CLIP weights on this machine (tests never configure them): reasons, never numbers
    for key in ("lpips", "fid", "clip"):
        assert set(teacher[key]) == {"unavailable"} and teacher[key]["unavailable"], key
    assert isinstance(teacher["psnr"], float) and 0 <= teacher["face_detection_rate"] <= 1
    line = json.loads((result.out_dir / "samples.jsonl").read_text().splitlines()[0])
    assert "unavailable" in line["metrics"]["lpips"]
    csv_row = next(csv.DictReader((result.out_dir / "methods" / "teacher" / "metrics.csv").open()))
    assert csv_row["lpips"].startswith("unavailable (")


def test_numbers_regenerate_and_do_not_depend_on_limit(self_run, tiny_run, tmp_path: Path) -> None:
    """Re-running the first sample alone (``--limit 1``) reproduces its recorded values exactly."""
    config, result = self_run
    again = run_evaluation(EvalConfig(protocol=config.protocol, decoder=config.decoder, out_dir=str(tmp_path / "r"),
                                      data_root=config.data_root, points=("generated",), limit=1, progress=False))
    first = json.loads((result.out_dir / "samples.jsonl").read_text().splitlines()[0])
    redo = json.loads((tmp_path / "r" / "samples.jsonl").read_text().splitlines()[0])
    assert redo["sample"] == first["sample"] and redo["n_points"] == first["n_points"]
    assert redo["metrics"]["psnr"] == first["metrics"]["psnr"]
    assert list(again.metrics) == ["generated", "teacher"]
    with pytest.raises(FileExistsError, match="already holds an evaluation"):
        run_evaluation(EvalConfig(protocol=config.protocol, decoder=config.decoder, out_dir=str(tmp_path / "r"),
                                  data_root=config.data_root, limit=1, progress=False))


def test_cross_reenactment_through_the_cli(tiny_run, tmp_path: Path) -> None:
    from avp.cli import main

    out = tmp_path / "cross"
    args = ["eval", "--protocol", str(CONFIGS / "cross_reenactment.yaml"), "--decoder", str(tiny_run["decoder"]),
            "--data", str(tiny_run["data"]), "--out", str(out), "--no-progress", "--no-teacher"]
    for item in [*TINY, "face.enabled=false"]:
        args += ["--override", item]
    assert main(args) == 0
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["method"] for r in lines] == ["generated", "generated"]
    assert {r["subject"] for r in lines} == {r["driver"] for r in lines} and all(
        r["subject"] != r["driver"] for r in lines)  # shift 1 over two subjects: each drives the other
    table = (out / "table.md").read_text()
    assert "| Method | Cross-ID cos↑ | Face det.↑ | AKD↓ | APD↓ | Landmark pairs↑ | Cross-FID↓ | Cross-CLIP↑ |" in table
    record = json.loads((out / "metrics.json").read_text())["methods"]["generated"]["metrics"]
    assert record["akd"] == {"unavailable": "face metrics are disabled (face.enabled: false)"}
    assert "psnr" not in record and "cross_fid" in record and "cross_clip" in record


def test_bad_inputs_are_refused_with_clear_errors(tiny_run, tmp_path: Path) -> None:
    protocol = load_protocol(CONFIGS / "self_reenactment.yaml", TINY)
    base = {"protocol": protocol, "decoder": str(tiny_run["decoder"]), "out_dir": str(tmp_path / "x"),
            "data_root": str(tiny_run["data"]), "progress": False}
    with pytest.raises(ValueError, match="trained with points: 'teacher'"):
        run_evaluation(EvalConfig(**base, template_decoder=str(tiny_run["decoder"])))
    with pytest.raises(ValueError, match="is not a DecoderModule checkpoint"):
        run_evaluation(EvalConfig(**{**base, "decoder": str(tiny_run["generator"])}))
    with pytest.raises(ProtocolError, match="data.root"):
        run_evaluation(EvalConfig(**{**base, "data_root": None}))
    with pytest.raises(FileNotFoundError, match="weights.lpips_weights"):
        run_evaluation(EvalConfig(**{**base, "protocol": load_protocol(
            CONFIGS / "self_reenactment.yaml", [*TINY, f"weights.lpips_weights={tmp_path / 'none.pth'}"])}))
    # a generator other than the decoder's frozen one
    decoder, _ = load_avatar_model(tiny_run["decoder"], device=torch.device("cpu"))
    check_same_generator(decoder, tiny_run["generator"])
    ckpt = torch.load(tiny_run["generator"], map_location="cpu", weights_only=False)
    name = next(k for k in ckpt["state_dict"] if k.startswith("net.") and ckpt["state_dict"][k].is_floating_point())
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 1
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match="is not the generator the decoder was trained on"):
        check_same_generator(decoder, other)


# ----------------------------------------------------------------------------------------------- selection rules

def _clips(n: int = 4) -> list[ClipEntry]:
    return [ClipEntry(key=f"s{i}__c", subject=f"s{i}", sequence="c", shard="t.tar", frames=10, views=4)
            for i in (3, 1, 2, 0)[:n]]


def _protocol(task: str = "self", **sections) -> object:
    data = {"name": "t", "version": 1, "task": task, **sections}
    if task == "cross":
        data.setdefault("pairs", {"shift": 1})
    return protocol_from_dict(data)


def test_frame_and_view_selection() -> None:
    meta = {"frames": 10, "views": 4, "extra": {"portrait": {"timestep": 30}, "timesteps": [0, 10, 20, 30, 40, 50,
                                                                                          60, 70, 80, 90]}}
    p = _protocol()
    assert select_frames(p, meta, "k") == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # the portrait's frame (index 3) is skipped
    assert select_frames(_protocol("cross"), meta, "k") == list(range(10))  # ...only in self-reenactment
    assert select_frames(_protocol(frames={"stride": 2, "max_frames": 3}), meta, "k") == [0, 5, 9]
    assert select_frames(_protocol(frames={"indices": [3, 1]}), meta, "k") == [3, 1]
    with pytest.raises(ProtocolError, match=r"frames.indices: clip 'k' has 10 frames; indices \[12\]"):
        select_frames(_protocol(frames={"indices": [12]}), meta, "k")
    assert select_views(p, meta, "k") == [0, 1, 2, 3]
    assert select_views(_protocol(views={"max_views": 2}), meta, "k") == [0, 3]
    with pytest.raises(ProtocolError, match="views.indices: clip 'k' has 4 cameras"):
        select_views(_protocol(views={"indices": [4]}), meta, "k")


def test_sample_planning() -> None:
    clips = _clips()
    selfp = plan_samples(_protocol(), clips)
    assert [s.id for s in selfp] == ["s0__c", "s1__c", "s2__c", "s3__c"]  # sorted by subject
    assert [s.id for s in plan_samples(_protocol(data={"subjects": ["s2", "s0"]}), clips)] == ["s2__c", "s0__c"]
    assert len(plan_samples(_protocol(data={"max_subjects": 3}), clips, limit=2)) == 2
    cross = plan_samples(_protocol("cross"), clips)
    assert [(s.source, s.target) for s in cross] == [("s0__c", "s1__c"), ("s1__c", "s2__c"), ("s2__c", "s3__c"),
                                                     ("s3__c", "s0__c")]
    assert cross[0].seed == selfp[0].seed == sample_seed(0, "s0__c")  # a source samples the same avatar in both
    explicit = plan_samples(_protocol("cross", pairs={"explicit": [["s3", "s1"]]}), clips)
    assert [(s.source, s.target) for s in explicit] == [("s3__c", "s1__c")]
    with pytest.raises(ProtocolError, match=r"data.subjects: \['s9'\] are not in split 'test'"):
        plan_samples(_protocol(data={"subjects": ["s9"]}), clips)
    with pytest.raises(ProtocolError, match="pairs.shift: a shift of 4 over 4 subjects"):
        plan_samples(_protocol("cross", pairs={"shift": 4}), clips)
    with pytest.raises(ProtocolError, match="at least two subjects"):
        plan_samples(_protocol("cross"), _clips(1))
    with pytest.raises(ProtocolError, match=r"pairs.explicit: subjects \['s7'\]"):
        plan_samples(_protocol("cross", pairs={"explicit": [["s7", "s1"]]}), clips)


def test_face_metrics_through_the_pipeline_on_head_sized_renders(tiny_run, tmp_path_factory) -> None:
    """At 128 px (face tools at 256 px) mediapipe finds the synthetic faces: the teacher's renders give AKD/APD close
    to its own ground truth (8-bit rounding moves landmarks a little), and the detection rates are reported."""
    from avp.cli import main

    data = tmp_path_factory.mktemp("faces") / "data"
    assert main(["data", "synth", "--out", str(data), "--subjects", "2", "--views", "2", "--frames", "1", "--size",
                 "128", "--points", "2500", "3000", "--val-fraction", "0", "--test-fraction", "1", "--workers",
                 "1"]) == 0
    protocol = load_protocol(CONFIGS / "self_reenactment.yaml", ["render.resolution=128", "face.resolution=256"])
    result = run_evaluation(EvalConfig(protocol=protocol, decoder=str(tiny_run["decoder"]), data_root=str(data),
                                       out_dir=str(data.parent / "run"), points=(), progress=False))
    teacher = result.metrics["teacher"]
    assert teacher["keypoint_pair_rate"] > 0
    assert 0 <= teacher["akd"] < 15 and 0 <= teacher["apd"] < 30  # pixels at 512 wide, degrees
    assert 0 <= teacher["face_detection_rate"] <= 1  # dlib's HOG detector: whatever it finds, reported as found
    lines = [json.loads(line) for line in (result.out_dir / "samples.jsonl").read_text().splitlines()]
    assert lines and {r["method"] for r in lines} == {"teacher"}

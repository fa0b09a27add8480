"""Evaluation protocols: the shipped YAML files load, round-trip and are recorded whole; every bad key or value is
refused with a message naming the file and the key (jsonargparse's for types, choices and unknown or missing keys;
ours for ranges and consistency); overrides are the parser's own flags and go through the same checks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from avp.eval.methods import sampling_config
from avp.eval.protocol import (
    DEFAULT_COLUMNS,
    EvalProtocol,
    ProtocolError,
    load_protocol,
    protocol_from_dict,
)
from avp.models.sampling import SamplingConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"


def _write(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load((CONFIGS / "self_reenactment.yaml").read_text())


def test_the_shipped_protocols_load_and_state_everything_a_number_depends_on() -> None:
    selfp = load_protocol(CONFIGS / "self_reenactment.yaml")
    cross = load_protocol(CONFIGS / "cross_reenactment.yaml")
    assert (selfp.name, selfp.task, cross.name, cross.task) == ("self_reenactment", "self", "cross_reenactment",
                                                                 "cross")
    for p in (selfp, cross):
        assert p.version >= 1 and p.data.split == "test" and p.description
        assert p.render.resolution >= 16 and p.render.background == "clip"
        assert p.sampling.seed == 0 and 0 < p.sampling.top_p <= 1
        # every key is written in the file: nothing silently comes from code defaults
        raw = yaml.safe_load((CONFIGS / f"{p.name}.yaml").read_text())
        assert set(raw) == set(p.to_dict()) - ({"pairs"} if p.pairs is None else set())
        for section, values in p.to_dict().items():
            if isinstance(values, dict):
                assert set(raw[section]) == set(values), section
    assert selfp.pairs is None and cross.pairs is not None and cross.pairs.shift == 1
    assert selfp.masks.use and not cross.masks.use
    assert selfp.columns() == DEFAULT_COLUMNS["self"] and cross.columns() == DEFAULT_COLUMNS["cross"]


def test_round_trip_and_record(tmp_path: Path) -> None:
    path = CONFIGS / "cross_reenactment.yaml"
    p = load_protocol(path)
    assert protocol_from_dict(p.to_dict()) == p
    again = load_protocol(_write(tmp_path, p.to_dict()))
    assert again == p
    record = p.record(str(path), ["render.resolution=64"])
    assert record["name"] == "cross_reenactment" and record["version"] == p.version and record["task"] == "cross"
    assert record["content"] == p.to_dict() and record["overrides"] == ["render.resolution=64"]
    assert len(record["file_sha256"]) == 64 and len(record["content_sha256"]) == 64
    changed = load_protocol(path, ["render.resolution=64"])
    assert changed.record()["content_sha256"] != record["content_sha256"]  # the content hash sees any change


@pytest.mark.parametrize(("edit", "message"), [
    # types, choices, unknown and missing keys: jsonargparse's errors (they name the key)
    (lambda d: d["render"].update(resolutoin=64), "render' does not accept option 'resolutoin'"),
    (lambda d: d.update(bogus=1), "'bogus' is not accepted"),
    (lambda d: d["render"].update(resolution="big"), 'Parser key "render.resolution"'),
    (lambda d: d.pop("version"), "required: version"),
    (lambda d: d.update(task="both"), 'Parser key "task"'),
    (lambda d: d["masks"].update(use="maybe"), 'Parser key "masks.use"'),
    (lambda d: d["render"].update(background="grey"), 'Parser key "render.background"'),
    (lambda d: d["render"].update(rig_identity="mean"), 'Parser key "render.rig_identity"'),
    (lambda d: d["weights"].update(lpips_net="resnet"), 'Parser key "weights.lpips_net"'),
    (lambda d: d["reference"].update(teacher_animation="rigid"), 'Parser key "reference.teacher_animation"'),
    (lambda d: d["sampling"].update(seed=1.5), 'Parser key "sampling.seed"'),
    (lambda d: d.update(data=[]), "data: expected a mapping of DataSelection fields"),
    # ranges and consistency: ours
    (lambda d: d["render"].update(resolution=8), "render.resolution: must be >= 16"),
    (lambda d: d["sampling"].update(top_p=1.5), "sampling.top_p: must be in (0, 1]"),
    (lambda d: d["sampling"].update(temperature=-1), "sampling.temperature: must be >= 0"),
    (lambda d: d["sampling"].update(draws=0), "sampling.draws: must be >= 1"),
    (lambda d: d["frames"].update(indices=[0, 0]), "frames.indices: indices must be distinct"),
    (lambda d: d["views"].update(indices=[]), "views.indices: must not be empty"),
    (lambda d: d["render"].update(background=[1, 1]), "render.background: an [r, g, b] colour needs three"),
    (lambda d: d.update(pairs={"shift": 1}), "pairs: only cross-reenactment protocols pair subjects"),
    (lambda d: d.update(task="cross"), "pairs: cross-reenactment needs a pairs section"),
    (lambda d: d["data"].update(subjects=["a", "a"]), "data.subjects: lists a subject twice"),
    (lambda d: d["face"].update(views=[7], resolution=256) or d["views"].update(indices=[0]),
     "face.views: [7] must be among views.indices"),
])
def test_bad_protocols_name_the_file_and_the_key(tmp_path: Path, edit, message: str) -> None:
    data = _base()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    with pytest.raises(ProtocolError) as err:  # plain data goes through the same checks
        protocol_from_dict(data, "where")
    assert str(err.value).startswith("where: ") and message in str(err.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_protocol(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProtocolError, match="bad.yaml: not valid YAML"):
        load_protocol(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ProtocolError, match="expected a mapping of protocol keys"):
        load_protocol(bad)


def test_overrides_change_values_and_go_through_the_same_checks(tmp_path: Path) -> None:
    path = CONFIGS / "self_reenactment.yaml"
    p = load_protocol(path, ["render.resolution=64", "views.indices=[0, 2]", "data.subjects=null",
                             "sampling.temperature=0.5", "report.columns=[psnr, ssim]"])
    assert p.render.resolution == 64 and p.views.indices == [0, 2] and p.sampling.temperature == 0.5
    assert p.columns() == ["psnr", "ssim"]
    cross = load_protocol(CONFIGS / "cross_reenactment.yaml", ["pairs.explicit=[[a, b]]"])
    assert cross.pairs is not None and cross.pairs.explicit == [["a", "b"]]
    selfp = load_protocol(path, ["pairs.shift=2", "task=cross", "reference.teacher=false"])
    assert selfp.task == "cross" and selfp.pairs is not None and selfp.pairs.shift == 2
    assert not selfp.reference.teacher
    # an error names the file, the override that brought it in and the key
    for items, message in ((["render.resolution=64", "render.resolutoin=64"], "--render.resolutoin=64"),
                           (["render.resolution=large"], 'Parser key "render.resolution"'),
                           (["version.major=2"], 'Parser key "version"'),
                           (["render.background=grey"], 'Parser key "render.background"')):
        with pytest.raises(ProtocolError) as err:
            load_protocol(path, items)
        assert str(err.value).startswith(f"{path}: override {items[-1]!r}: ") and message in str(err.value)
    with pytest.raises(ProtocolError, match="expected KEY=VALUE"):
        load_protocol(path, ["render.resolution"])
    with pytest.raises(ProtocolError, match=f"{path}: render.resolution: must be >= 16"):  # ranges after overrides
        load_protocol(path, ["render.resolution=8"])
    # a file error is the file's, whatever the overrides
    bad = _base()
    bad["render"]["resolution"] = "big"
    with pytest.raises(ProtocolError) as err:
        load_protocol(_write(tmp_path, bad), ["render.resolution=64"])
    assert ": override " not in str(err.value) and 'Parser key "render.resolution"' in str(err.value)


def test_sampling_settings_override_the_decoders_only_where_given() -> None:
    decoder = SimpleNamespace(sampling=SamplingConfig(temperature=1.0, max_points=250, min_points=100, draws=3,
                                                      bind_nearest=16))
    kept = sampling_config(decoder, load_protocol(CONFIGS / "self_reenactment.yaml", ["sampling.temperature=0.8"]))
    assert (kept.temperature, kept.max_points, kept.min_points, kept.draws, kept.bind_nearest) == (0.8, 250, 100, 3, 16)
    changed = sampling_config(decoder, load_protocol(CONFIGS / "self_reenactment.yaml",
                                                     ["sampling.draws=5", "sampling.max_points=300"]))
    assert (changed.draws, changed.max_points, changed.min_points) == (5, 300, 100)
    assert decoder.sampling.draws == 3  # the checkpoint's settings are left as they were


def test_defaults_are_a_complete_self_protocol() -> None:
    p = protocol_from_dict({"name": "x", "version": 1, "task": "self"})
    assert isinstance(p, EvalProtocol) and p.pairs is None and p.face.resolution == 256

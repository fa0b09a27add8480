"""Every tool verb parses with jsonargparse: ``--config FILE`` gives the same options as the command line,
``--print_config`` writes a config that reads back to the same options, errors name the key, ``--help`` works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from avp import bench
from avp.cli import main as avp_main
from avp.data.cli import PARSERS as DATA_PARSERS
from avp.data.cli import synth_parser
from avp.eval.cli import build_parser as eval_parser
from avp.view.cli import parser as view_parser

SYNTH_FLAGS = ["--out", "data/toy", "--subjects", "3", "--views", "2", "--frames", "1", "--size", "32",
               "--portrait-size", "48", "--points", "100", "200", "--cameras", "sphere", "--background", "0", "0.5",
               "1", "--hair-volume", "2", "--seed", "7", "--overwrite"]
SYNTH_CONFIG = {"out": "data/toy", "subjects": 3, "views": 2, "frames": 1, "size": 32, "portrait_size": 48,
                "points": [100, 200], "cameras": "sphere", "background": [0, 0.5, 1], "hair_volume": 2, "seed": 7,
                "overwrite": True}

EVAL_FLAGS = ["--protocol", "configs/eval/self_reenactment.yaml", "--decoder", "runs/dec.ckpt", "--template-decoder",
              "runs/tpl.ckpt", "--points", "generated", "teacher", "--override", "render.resolution=64", "--override",
              "data.frames=2", "--no-teacher", "--limit", "2", "--device", "cpu", "--no-progress"]
EVAL_CONFIG = {"protocol": "configs/eval/self_reenactment.yaml", "decoder": "runs/dec.ckpt",
               "template_decoder": "runs/tpl.ckpt", "points": ["generated", "teacher"],
               "override": ["render.resolution=64", "data.frames=2"], "no_teacher": True, "limit": 2,
               "device": "cpu", "no_progress": True}

# the smallest `avp bench render` (as tests/render/test_bench.py runs it)
RENDER_FLAGS = ["--device", "cpu", "--sizes", "200,400", "--resolutions", "32", "--dense-fb", "200x32", "--dense-fwd",
                "400x32", "--repeat", "1", "--threads", "1"]
RENDER_CONFIG = {"device": "cpu", "sizes": "200,400", "resolutions": "32", "dense_fb": "200x32",
                 "dense_fwd": "400x32", "repeat": 1, "threads": 1}

VERBS = {
    "data synth": (synth_parser, SYNTH_FLAGS, SYNTH_CONFIG),
    "eval": (eval_parser, EVAL_FLAGS, EVAL_CONFIG),
    "bench render": (lambda: bench.build_parser("render", bench.available()["render"]), RENDER_FLAGS, RENDER_CONFIG),
}


def options(namespace) -> dict:
    """The parsed options, without the config files they came from."""
    parsed = namespace.as_dict()
    parsed.pop("config", None)
    return parsed


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("verb", VERBS)
def test_a_config_file_gives_the_same_options_as_the_command_line(verb: str, tmp_path: Path) -> None:
    build, flags, config = VERBS[verb]
    from_flags = build().parse_args(flags)
    from_file = build().parse_args(["--config", str(write_yaml(tmp_path / "options.yaml", config))])
    assert options(from_file) == options(from_flags)
    assert [type(v) for v in options(from_file).values()] == [type(v) for v in options(from_flags).values()]
    assert from_file.config and not from_flags.config


@pytest.mark.parametrize("verb", VERBS)
def test_print_config_round_trips_through_config(verb: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    build, flags, _ = VERBS[verb]
    with pytest.raises(SystemExit) as exit_info:
        build().parse_args([*flags, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "config" not in yaml.safe_load(printed)
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    assert options(build().parse_args(["--config", str(path)])) == options(build().parse_args(flags))


def test_flags_after_the_config_file_override_it(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "synth.yaml", SYNTH_CONFIG)
    parsed = synth_parser().parse_args(["--config", str(path), "--subjects", "9"])
    assert parsed.subjects == 9 and parsed.views == SYNTH_CONFIG["views"]


@pytest.mark.usefixtures("one_thread")
def test_bench_render_runs_the_same_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end through ``avp bench``: the same cases measured, the same scenes (timings differ run to run)."""
    def cases(result: dict) -> list:
        return [(r["n"], r["resolution"], r["dense_forward"], r["dense_forward_backward"], r["visible_splats"],
                 r["coverage"]) for r in result["cpu"]["runs"]]

    assert avp_main(["bench", "render", *RENDER_FLAGS]) == 0
    from_flags = json.loads(capsys.readouterr().out)
    config = write_yaml(tmp_path / "render.yaml", RENDER_CONFIG)
    assert avp_main(["bench", "render", "--config", str(config)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert cases(from_file) == cases(from_flags) and len(cases(from_flags)) == 2


@pytest.mark.parametrize(("content", "named"), [
    ({"out": "x", "subjects": "many"}, '"subjects"'),
    ({"out": "x", "cameras": "ring"}, '"cameras"'),
    ({"out": "x", "points": [1, "lots"]}, '"points"'),
    ({"out": 3}, '"out"'),
    ({"out": "x", "subject": 3}, "'subject'"),
])
def test_a_bad_config_value_is_refused_naming_its_key(content: dict, named: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "bad.yaml", content)
    with pytest.raises(SystemExit) as exit_info:
        avp_main(["data", "synth", "--config", str(path)])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err.split("error:", 1)[1]  # the usage above it names every option


def test_an_optional_positional_comes_from_the_config_file_too(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "view.yaml", {"avatar": "demo/avatars/synthetic", "port": 0})
    parsed = view_parser().parse_args(["--config", str(path)])
    assert parsed.avatar == "demo/avatars/synthetic" and parsed.port == 0
    assert view_parser().parse_args(["--config", str(path), "elsewhere"]).avatar == "elsewhere"
    assert view_parser().parse_args([]).get("avatar") is None


HELP = [["data", c] for c in DATA_PARSERS] + [["bench", b] for b in bench.available()] + [
    ["eval"], ["view"], ["compare"], ["sweep"], ["avatarize"]]


@pytest.mark.parametrize("verb", HELP, ids=" ".join)
def test_every_verb_has_help_config_and_print_config(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        avp_main([*verb, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: avp {' '.join(verb)}" in text and "--config CONFIG" in text and "--print_config" in text


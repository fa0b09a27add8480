"""Every YAML under configs/ and experiments/ goes through the real CLI parser (no instantiation).

Kinds (experiments/README.md defines them):
- sweep specs (``*.sweep.yaml``): validated by the spec parser, and every variant's merged config by the CLI;
- deltas (a ``# bases: …`` header, or ``configs/debug/<stage>.yaml`` on ``configs/<stage>/base.yaml``): parsed on
  top of each base; deltas under ``experiments/`` must also change only scalar leaves, each reading back unchanged;
- tool configs (``# not-a-lightning-config: …`` header, or neither a ``model`` nor a ``trainer`` section, like the
  ``configs/eval`` protocols): read by a tool verb, only checked to be YAML mappings;
- everything else is a complete config and must parse alone.
Bad input (an unknown key, a wrong type) fails with jsonargparse's error naming the key and a non-zero exit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from avp import cli
from avp.sweep.spec import SpecError, expand, importable, load_spec, parse_with_cli, resolve_run_config

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(p for d in ("configs", "experiments") for ext in ("*.yaml", "*.yml") for p in (ROOT / d).rglob(ext))
HEADER_KEY = re.compile(r"^#\s*([a-z][a-z-]*):\s*(.*)$")


def header(path: Path) -> dict[str, str]:
    """The leading ``# key: value`` comment lines (indented ``#   …`` lines continue the previous value)."""
    out: dict[str, str] = {}
    last = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = HEADER_KEY.match(line)
        if match:
            last = match.group(1)
            out[last] = match.group(2).strip()
        elif last is not None and line.startswith("#  "):
            out[last] += " " + line.lstrip("# ").strip()
    return out


def bases(path: Path) -> list[Path]:
    declared = header(path).get("bases")
    if declared:
        return [ROOT / b.strip() for b in declared.split(",") if b.strip()]
    rel = path.relative_to(ROOT)
    if rel.parts[:2] == ("configs", "debug"):
        implicit = ROOT / "configs" / path.stem / "base.yaml"
        if implicit.exists():
            return [implicit]
    return []


LIGHTNING_SECTIONS = ("model", "trainer")


def kind(path: Path) -> str:
    if path.name.endswith((".sweep.yaml", ".sweep.yml")):
        return "sweep"
    if "not-a-lightning-config" in header(path):
        return "other"
    if bases(path):
        return "delta"
    content = yaml.safe_load(path.read_text())
    if isinstance(content, dict) and not any(k in content for k in LIGHTNING_SECTIONS):
        return "other"  # a tool's config (e.g. configs/eval protocols): no model or trainer section
    return "complete"


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def of_kind(name: str) -> list[Path]:
    return [p for p in YAMLS if kind(p) == name]


def parse(*configs: Path) -> dict[str, Any]:
    args = [a for c in configs for a in ("--config", str(c))]
    with importable(ROOT):
        return parse_with_cli(args, " + ".join(rel(c) for c in configs))


def scalar_leaves(tree: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every leaf; raises ValueError at a list or an empty mapping (not a scalar change)."""
    if isinstance(tree, dict):
        if not tree:
            raise ValueError(f"{'.'.join(prefix) or '<root>'}: an empty mapping replaces a whole section")
        return [leaf for key, value in tree.items() for leaf in scalar_leaves(value, (*prefix, str(key)))]
    if isinstance(tree, (list, tuple)):
        raise ValueError(f"{'.'.join(prefix)}: a list replaces a whole value; deltas change scalar leaves only")
    if prefix and prefix[-1] == "class_path":
        raise ValueError(f"{'.'.join(prefix)}: a delta never changes a class_path")
    return [(prefix, tree)]


def lookup(tree: dict, path: tuple) -> Any:
    node: Any = tree
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            where = '.'.join(path[:i]) or '<root>'
            raise KeyError(f"{'.'.join(path)}: no such key in the parsed config (stops at {where})")
        node = node[key]
    return node


def test_the_config_tree_is_not_empty() -> None:
    assert of_kind("complete") and of_kind("delta") and of_kind("sweep")


@pytest.mark.parametrize("path", of_kind("complete"), ids=rel)
def test_a_complete_config_parses_alone(path: Path) -> None:
    config = parse(path)
    assert config["model"]["class_path"] and config["data"]["class_path"]


@pytest.mark.parametrize("path,base", [(p, b) for p in of_kind("delta") for b in bases(p)],
                         ids=lambda x: rel(x) if isinstance(x, Path) else str(x))
def test_a_delta_parses_on_its_base_and_sets_what_it_says(path: Path, base: Path) -> None:
    assert base.is_file(), f"{rel(path)}: declared base {base} does not exist"
    assert kind(base) == "complete", f"{rel(path)}: base {rel(base)} must be a complete config"
    resolved = parse(base, path)
    if rel(path).startswith("configs/"):
        return  # overlays (configs/debug) may replace lists; they only have to parse
    head = header(path)
    assert head.get("hypothesis") and head.get("metric"), f"{rel(path)}: header needs # hypothesis: and # metric:"
    for key, value in scalar_leaves(yaml.safe_load(path.read_text())):
        lookup(parse(base), key)  # the key exists in the base: a delta adds nothing
        assert lookup(resolved, key) == value, f"{rel(path)}: {'.'.join(key)} resolved to {lookup(resolved, key)!r}"


@pytest.mark.parametrize("path", of_kind("sweep"), ids=rel)
def test_a_sweep_spec_validates_and_every_variant_parses(path: Path) -> None:
    spec = load_spec(path, workdir=ROOT)
    runs = expand(spec)
    assert len(runs) == len(spec.variants) * len(spec.seeds)
    for run in runs:
        if run.seed == spec.seeds[0]:  # the seed changes one scalar; one run per variant is parsed
            text = resolve_run_config(run)
            assert yaml.safe_load(text)["trainer"]["default_root_dir"] == str(run.run_dir)


@pytest.mark.parametrize("path", of_kind("other"), ids=rel)
def test_a_tool_config_is_a_yaml_mapping(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text()), dict)


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def generator_base() -> Path:
    path = ROOT / "configs" / "generator" / "base.yaml"
    assert path.is_file(), "configs/generator/base.yaml is missing: the bad-input tests need the shipped base"
    return path


@pytest.mark.parametrize("delta,names", [
    ({"model": {"init_args": {"tokenizer": {"levelz": 256}}}}, "levelz"),
    ({"trainer": {"max_steps": "many"}}, "max_steps"),
    ({"trainer": {"max_stepz": 3}}, "max_stepz"),
])
def test_an_unknown_key_or_a_wrong_type_fails_naming_the_key(tmp_path: Path, capsys, generator_base: Path,
                                                            delta: dict, names: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(delta))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(generator_base), "--config", str(bad), "--print_config"])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "error:" in err and names in err
    with pytest.raises(SpecError, match=names):
        parse(generator_base, bad)


def test_the_delta_checks_catch_violations() -> None:
    with pytest.raises(ValueError, match="a list"):
        scalar_leaves({"trainer": {"callbacks": [{"class_path": "x"}]}})
    with pytest.raises(ValueError, match="class_path"):
        scalar_leaves({"model": {"class_path": "avp.lit.other.Module"}})
    with pytest.raises(ValueError, match="empty mapping"):
        scalar_leaves({"model": {"init_args": {}}})
    assert scalar_leaves({"a": {"b": 1, "c": None}}) == [(("a", "b"), 1), (("a", "c"), None)]
    with pytest.raises(KeyError, match="a.x"):
        lookup({"a": {"b": 1}}, ("a", "x"))


def test_header_and_kinds(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("# bases: configs/a.yaml, configs/b.yaml\n# hypothesis: one\n#   two\n# metric: val/loss\nx: 1\n")
    assert header(path) == {"bases": "configs/a.yaml, configs/b.yaml", "hypothesis": "one two", "metric": "val/loss"}
    assert [rel(b) for b in bases(path)] == ["configs/a.yaml", "configs/b.yaml"]


# ------------------------------------------------------------------------------------------- fit-time config rules
def fit_rule_errors(config: dict[str, Any]) -> list[str]:
    """What :mod:`avp.lit.config_rules` refuses in a parsed config (empty: it may fit)."""
    from avp.lit.config_rules import decoder_fit_errors, generator_fit_errors
    from avp.losses import LossWeights
    from avp.models.decoder import DecoderConfig
    from avp.models.encoders import ConditionConfig
    from avp.types import as_config

    model, data = config["model"], (config.get("data") or {}).get("init_args") or {}
    init = model.get("init_args") or {}
    if model["class_path"].endswith("GeneratorModule"):
        return generator_fit_errors(as_config(ConditionConfig, init["condition"]))
    if model["class_path"].endswith("DecoderModule"):
        return decoder_fit_errors(as_config(DecoderConfig, init["decoder"]), as_config(LossWeights, init["loss"]),
                                  data.get("frames_per_sample"), data.get("views_per_sample"),
                                  init.get("points", "generated"))
    return []


@pytest.mark.parametrize("configs", [[p] for p in of_kind("complete")] + [[b, p] for p in of_kind("delta")
                                                                        for b in bases(p)],
                         ids=lambda cs: " + ".join(rel(c) for c in cs))
def test_every_shipped_config_passes_the_fit_rules(configs: list[Path]) -> None:
    assert fit_rule_errors(parse(*configs)) == []


def test_the_generator_base_trains_its_image_encoder_unless_weights_are_given() -> None:
    image = parse(ROOT / "configs" / "generator" / "base.yaml")["model"]["init_args"]["condition"]["image"]
    assert image.get("pretrained_path") is None and image["freeze"] is False  # (the dump leaves out nulls)


def test_a_frozen_random_image_encoder_is_refused_naming_both_keys() -> None:
    from avp.lit.config_rules import GENERATOR_FIT_RULES, generator_fit_errors
    from avp.models.encoders import ConditionConfig, ImageEncoderConfig

    [error] = generator_fit_errors(ConditionConfig(image=ImageEncoderConfig(freeze=True, pretrained_path=None)))
    assert "model.condition.image.freeze" in error and "model.condition.image.pretrained_path" in error
    assert "model.condition.image.freeze" in GENERATOR_FIT_RULES[0]
    for fine in (ImageEncoderConfig(freeze=True, pretrained_path="dinov2.pth"), ImageEncoderConfig(freeze=False)):
        assert generator_fit_errors(ConditionConfig(image=fine)) == []
    assert generator_fit_errors(ConditionConfig(image=ImageEncoderConfig(freeze=True), use_image=False)) == []


def test_the_generator_module_refuses_it_when_fitting_starts_only() -> None:
    """A frozen random encoder is refused by ``setup("fit")``; building the module (as a decoder does to rebuild its
    frozen generator without the weights file) and evaluating are not."""
    from avp.lit.generator import GeneratorModule

    module = GeneratorModule(condition={"image": {"arch": "tiny", "image_size": 32, "freeze": True},
                                        "mesh": {"n_points": 8, "n_layers": 1, "n_heads": 2}},
                             model={"n_layers": 1, "width": 16, "n_heads": 2}, train_window=64)
    for stage in ("validate", "test", "predict"):
        module.setup(stage)
    with pytest.raises(ValueError, match="refusing to fit") as info:
        module.setup("fit")
    message = str(info.value)
    assert "model.condition.image.freeze" in message and "model.condition.image.pretrained_path" in message
    assert "Rules of this stage" in message


@pytest.mark.parametrize("change,keys", [
    ({"decoder": {"inputs": "position", "cross_attention": True}},
     ["model.decoder.inputs", "model.decoder.cross_attention"]),
    ({"loss": {"l1": 0.0, "ssim": 0.0, "lpips": 0.0}}, ["model.loss.l1", "model.loss.ssim", "model.loss.lpips"]),
    ({"frames_per_sample": 0}, ["data.frames_per_sample"]),
    ({"views_per_sample": 0}, ["data.views_per_sample"]),
])
def test_each_decoder_rule_fires_naming_its_keys(change: dict, keys: list[str]) -> None:
    from types import SimpleNamespace

    from avp.lit.config_rules import DECODER_FIT_RULES, check_decoder_fit, decoder_fit_errors
    from avp.losses import LossWeights
    from avp.models.decoder import DecoderConfig

    decoder = DecoderConfig(**change.get("decoder", {"cross_attention": True}))
    loss = LossWeights(**change.get("loss", {"lpips": 0.0}))
    frames, views = change.get("frames_per_sample", 1), change.get("views_per_sample", 2)
    [error] = decoder_fit_errors(decoder, loss, frames, views)
    assert all(key in error for key in keys), error
    module = SimpleNamespace(model=SimpleNamespace(decoder=SimpleNamespace(config=decoder)), loss_weights=loss)
    datamodule = SimpleNamespace(config=SimpleNamespace(frames_per_sample=frames, views_per_sample=views))
    with pytest.raises(ValueError) as info:
        check_decoder_fit(module, datamodule)
    assert all(key in str(info.value) for key in keys)
    assert all(rule in str(info.value) for rule in DECODER_FIT_RULES)  # the message lists every rule
    # the same settings otherwise are fine
    assert decoder_fit_errors(DecoderConfig(cross_attention=True), LossWeights(lpips=0.0), 1, 2) == []
    assert decoder_fit_errors(DecoderConfig(inputs="position", cross_attention=False), LossWeights(), 1, 2) == []
    # template points may attend to the condition (LAM-style "FLAME position"); generated points may not
    position_attending = DecoderConfig(inputs="position", cross_attention=True)
    assert decoder_fit_errors(position_attending, LossWeights(), 1, 2, points="template") == []
    assert decoder_fit_errors(position_attending, LossWeights(), 1, 2, points="generated_bank") != []

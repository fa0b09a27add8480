"""What `avp fit` writes to TensorBoard besides curves, read back from the event files: the HParams tab lists the
run's real metrics and its hyper-parameters (no hp_metric, no Lightning-private keys), the resolved config is a text
summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from avp.lit.tensorboard import flatten_hparams
from tests.lit.toy import run_cli, toy_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _hparams_plugin(acc: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in acc.PluginTagToContent("hparams").items()}


def test_the_hparams_tab_has_the_metrics_and_the_config_is_shown(tmp_path: Path) -> None:
    config = toy_config(max_steps=4, model={"lr": 0.07})
    config["trainer"].update({"default_root_dir": str(tmp_path), "limit_val_batches": 1, "val_check_interval": 2,
                              "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                         "init_args": {"save_dir": str(tmp_path / "runs"), "name": "toy",
                                                       "default_hp_metric": False}}})
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    run_cli(["fit", "--config", str(tmp_path / "toy.yaml")], cwd=tmp_path)
    [log_dir] = list((tmp_path / "runs" / "toy").iterdir())
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()

    plugin = _hparams_plugin(acc)
    experiment = plugin["_hparams_/experiment"].experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"val/loss", "val/psnr", "val/fscore"} <= metric_tags
    start = plugin["_hparams_/session_start_info"].session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(0.07)
    assert not {"_instantiator", "_class_path"} & set(start.hparams)
    assert "hp_metric" not in acc.Tags()["scalars"]  # the placeholder metric is gone
    assert len(acc.Scalars("val/loss")) == 2  # the registered metric is filled by the run's own values only
    [text] = acc.Tensors("config/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert "ToyRegression" in shown and "max_steps: 4" in shown


def test_hyper_parameters_flatten_to_what_tensorboard_can_show() -> None:
    flat = flatten_hparams({"lr": 1e-3, "decoder": {"width": 64, "inputs": "both", "pixel_levels": [1, 2]},
                            "head": None, "_instantiator": "x", "scale": float("nan"), "freeze": False})
    assert flat == {"lr": 1e-3, "decoder.width": 64, "decoder.inputs": "both", "decoder.pixel_levels": "[1, 2]",
                    "head": "null", "scale": "NaN", "freeze": False}

"""`make benchmark` in miniature: every row and seed trained and evaluated, the results file, the table, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from avp.benchmark import (
    ROWS,
    Benchmark,
    BenchmarkConfig,
    BenchmarkEval,
    BenchmarkPoints,
    build_parser,
    config_from_namespace,
    eval_overrides,
    main,
    summarize,
)
from avp.benchmark_points import tau_name
from avp.benchmark_report import markdown_table

REPO = Path(__file__).resolve().parents[1]
QUICK = {
    "data": {"subjects": 10, "val_fraction": 0.2, "test_fraction": 0.2, "views": 2, "frames": 2, "size": 24,
             "portrait_size": 48, "points": [40, 60]},
    "generator_data": {"subjects": 6, "val_fraction": 0.2, "test_fraction": 0.2, "views": 2, "frames": 2,
                       "size": 24, "portrait_size": 48, "points": [40, 60], "seed": 7},
    "generator": {"max_steps": 2, "batch_size": 2, "samples_per_epoch": 4},
    "decoder": {"max_steps": 2, "batch_size": 1, "samples_per_epoch": 2,
                "delta": {"trainer": {"limit_val_batches": 1, "enable_model_summary": False,
                                      "enable_progress_bar": False},
                          "model": {"init_args": {"sampling": {"max_points": 12, "min_points": 4, "bind_nearest": 8},
                                                  "template_points": 30}}}},
    "seeds": [0, 1],
    "sheet": {"subjects": 1, "size": 32},
    "eval": {"limit": 1, "overrides": ["render.resolution=24", "face.resolution=128", "face.akd_resolution=128",
                                       "frames.max_frames=1", "views.max_views=1"]},
}


def test_summary_statistics() -> None:
    assert summarize([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert summarize([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    nan = summarize([math.nan, None])
    assert nan["n"] == 0 and math.isnan(nan["mean"])
    assert tau_name(0.01) == "fscore_1cm" and tau_name(0.005) == "fscore_0.5cm"


def test_the_shipped_config_has_every_row_faithfully() -> None:
    config = config_from_namespace(build_parser().parse_args(["--config", str(REPO / "configs" / "benchmark.yaml")]))
    assert isinstance(config, BenchmarkConfig) and set(config.rows) == set(ROWS) and len(config.seeds) >= 3
    init = {name: row.delta.get("model", {}).get("init_args", {}) for name, row in config.rows.items()}
    # the position-only row sees neither the AR features nor the condition tokens (the paper's row)
    assert init["ar_position_only"]["decoder"] == {"inputs": "position", "cross_attention": False}
    assert init["ar_feature_only"]["decoder"] == {"inputs": "ar_feature"}
    # "FLAME position" is LAM-style: template points and the condition, no generated sequence to take features from
    assert init["template"]["decoder"] == {"inputs": "position"}
    # every row is trained on the kind of points it is evaluated on
    assert {name: row.eval_points for name, row in config.rows.items()} == {
        "full": "generated", "ar_position_only": "generated", "ar_feature_only": "generated",
        "template": "template", "teacher_points": "teacher", "resampled_teacher": "resampled"}
    # the generator's own dataset shares no subject with the one the rows are evaluated on
    assert config.generator_data is not None and config.generator_data.seed != config.data.seed
    for name in ("full", "ar_position_only", "ar_feature_only"):
        assert init[name]["points"] == "generated_bank"
    assert init["template"]["points"] == "template" and init["teacher_points"]["points"] == "teacher"
    assert config.rows["resampled_teacher"].decoder_from == "teacher_points"


def test_each_seed_evaluates_its_own_draws_unless_the_overrides_fix_them() -> None:
    assert eval_overrides(["render.resolution=64"], 2) == ["sampling.seed=2", "render.resolution=64"]
    assert eval_overrides([" sampling.seed = 5", "render.resolution=64"], 2) == [" sampling.seed = 5",
                                                                                  "render.resolution=64"]


def test_point_metrics_sample_as_the_evaluation_does(tmp_path: Path) -> None:
    config = BenchmarkConfig(eval=BenchmarkEval(overrides=["render.resolution=64", "sampling.temperature = 0.8",
                                                           "sampling.draws=5"]))
    bench = Benchmark(config, tmp_path, "python")
    assert (bench._sampling("temperature", float), bench._sampling("draws", int)) == (0.8, 5)
    assert bench._sampling("top_k", int) is None  # not overridden: the decoder's own setting
    config.points = BenchmarkPoints(temperature=1.0, draws=2)  # the points section wins
    assert (bench._sampling("temperature", float), bench._sampling("draws", int)) == (1.0, 2)


def test_unknown_rows_and_bad_sharing_are_refused(tmp_path: Path) -> None:
    parser = build_parser()
    for bad, message in (({"rows": {"fancy": {}}}, "not benchmark rows"),
                         ({"rows": {"resampled_teacher": {"decoder_from": "teacher_points"}}}, "decoder_from"),
                         ({"rows": {"full": {}}, "data": {"seed": 3}, "generator_data": {"seed": 3}},
                          "generator_data.seed must differ")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=message):
            config_from_namespace(parser.parse_args(["--config", str(path)]))


def test_the_whole_benchmark_runs_in_miniature_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    quick = tmp_path / "quick.yaml"
    quick.write_text(yaml.safe_dump(QUICK))
    out, docs = tmp_path / "bench", tmp_path / "docs"
    argv = ["--config", str(REPO / "configs" / "benchmark.yaml"), "--config", str(quick), "--out", str(out),
            "--docs", str(docs), "--in-process"]
    assert main(argv) == 0

    results = json.loads((docs / "results.json").read_text())
    assert results["seeds"] == [0, 1] and set(results["rows"]) == set(ROWS)
    for row, metrics in results["rows"].items():
        for name in ("psnr", "psnr_mask", "ssim", "chamfer", "fscore_1cm"):
            assert set(metrics[name]) == {"mean", "std", "n"}, (row, name)
        assert metrics["psnr"]["n"] == 2 and math.isfinite(metrics["psnr"]["mean"]), row
    rows = results["rows"]
    # the ceilings' point metrics: the teacher is its own nearest neighbour; a resampling is not
    assert rows["teacher_points"]["chamfer"]["mean"] == 0 and rows["teacher_points"]["fscore_1cm"]["mean"] == 1
    assert rows["resampled_teacher"]["chamfer"]["mean"] > 0
    # the three generated rows share the generator's clouds
    assert rows["full"]["chamfer"] == rows["ar_position_only"]["chamfer"] == rows["ar_feature_only"]["chamfer"]
    # the resampled-teacher ceiling evaluates the teacher-points decoders on other points
    assert not (out / "runs" / "resampled_teacher").exists()
    assert rows["resampled_teacher"]["psnr"] != rows["teacher_points"]["psnr"]
    table = (docs / "table.md").read_text()
    assert table == markdown_table(results)
    assert all(label in table for label in ("Full", "AR position only", "Template", "resampled teacher"))
    assert (docs / "curves.png").stat().st_size > 0 and (docs / "contact_sheet.png").stat().st_size > 0
    # the rows' configs say what the rows are
    # (the layers avp benchmark wrote, and the config LightningCLI ran with)
    position = yaml.safe_load((out / "runs" / "ar_position_only" / "seed1" / "version_0" / "config.yaml").read_text())
    assert yaml.safe_load((out / "configs" / "ar_position_only-seed1" / "3-row.yaml").read_text()) == {
        "model": {"init_args": {"points": "generated_bank", "eval_points": "generated",
                                "decoder": {"inputs": "position", "cross_attention": False}}}}
    decoder = position["model"]["init_args"]["decoder"]
    assert decoder["inputs"] == "position" and decoder["cross_attention"] is False
    assert position["seed_everything"] == 1 and position["model"]["init_args"]["seed"] == 1
    # each decoder seed's evaluation draws its own clouds (the seed spread includes the draws)
    for seed in (0, 1):
        run = json.loads((out / "eval" / "full" / f"seed{seed}" / "run.json").read_text())
        assert run["seeds"]["sampling_base"] == seed
    # the generator learns from its own dataset, the decoders from the evaluated one
    generator = yaml.safe_load((out / "runs" / "generator" / "seed0" / "version_0" / "config.yaml").read_text())
    assert generator["data"]["init_args"]["root"] == str(out / "generator_data")
    assert position["data"]["init_args"]["root"] == str(out / "data")
    assert json.loads((out / "generator_data" / "shards.json").read_text())["created_by"]["config"]["seed"] == 7

    capsys.readouterr()
    assert main(argv) == 0  # everything finished: only the summary is redone
    again = capsys.readouterr().out
    # two datasets, the generator, 6 rows x 2 seeds of fits (the resampled row checks the teacher row's) and of
    # evaluations
    assert again.count("already done") == 2 + 1 + 6 * 2 + 6 * 2

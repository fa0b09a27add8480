"""avp compare: tables (final/best, mean ± std over seeds, rows = variants) and plots from TensorBoard event files."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from avp.compare import compare, main, mean_curve, read_scalars
from avp.metrics.goals import goal_of


def write_run(run_dir: Path, variant: str, seed: int, index: int, curves: dict[str, list[tuple[int, float]]],
              config: dict | None = None) -> None:
    """A sweep-like run folder: run.json + TensorBoard scalars under tb/ (+ its resolved config.yaml)."""
    run_dir.mkdir(parents=True)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "run.json").write_text(json.dumps({"variant": variant, "seed": seed, "index": index}))
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for tag, points in curves.items():
            for step, value in points:
                writer.add_scalar(tag, value, step)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two variants x two seeds with known numbers (listed out of order on disk: 'zeta' comes first in the sweep)."""
    root = tmp_path / "sweep"
    # val/loss: final values zeta 1.0, 3.0 (mean 2, std sqrt 2); best = min. val/psnr: higher is better
    write_run(root / "zeta" / "seed0", "zeta", 0, 0, {"val/loss": [(0, 5.0), (10, 0.5), (20, 1.0)],
                                                      "val/psnr": [(0, 10.0), (10, 20.0), (20, 18.0)],
                                                      "train/loss": [(s, 9.0 - s / 10) for s in range(21)]})
    write_run(root / "zeta" / "seed1", "zeta", 1, 1, {"val/loss": [(0, 6.0), (10, 2.0), (20, 3.0)],
                                                      "val/psnr": [(0, 12.0), (10, 22.0), (20, 21.0)]})
    write_run(root / "alpha" / "seed0", "alpha", 0, 2, {"val/loss": [(0, 4.0), (10, 0.25), (20, 0.25)],
                                                        "val/psnr": [(0, 11.0), (10, 30.0), (20, 30.0)]})
    write_run(root / "alpha" / "seed1", "alpha", 1, 3, {"val/loss": [(0, 4.0), (10, 0.75), (20, 0.75)],
                                                        "val/psnr": [(0, 11.0), (10, 26.0), (20, 26.0)]})
    return root


def test_the_table_has_final_and_best_mean_std_per_variant(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = compare([sweep], out)
    assert result.metrics == ["val/loss", "val/psnr"]  # val/* only when there are any
    assert [(r.variant, r.seed) for r in result.runs] == [("zeta", 0), ("zeta", 1), ("alpha", 0), ("alpha", 1)]

    final, best = result.markdown.split("**Best values**")
    assert "| variant | seeds | val/loss ↓ | val/psnr ↑ |" in final
    assert f"| zeta | 2 | 2 ± {math.sqrt(2):.4g} | 19.5 ± 2.121 |" in final
    assert "| alpha | 2 | **0.5 ± 0.3536** | **28 ± 2.828** |" in final  # winners in bold
    assert "| zeta | 2 | 1.25 ± 1.061 | 21 ± 1.414 |" in best  # min loss 0.5/2.0, max psnr 20/22
    assert "| alpha | 2 | **0.5 ± 0.3536** | **28 ± 2.828** |" in best

    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["variant"] for r in rows] == ["zeta", "alpha"] and rows[0]["seeds"] == "2"
    assert float(rows[0]["val/loss final mean"]) == pytest.approx(2.0)
    assert float(rows[0]["val/loss final std"]) == pytest.approx(math.sqrt(2))
    assert float(rows[1]["val/psnr best mean"]) == pytest.approx(28.0)
    per_run = list(csv.DictReader((out / "runs.csv").open()))
    assert len(per_run) == 4 and per_run[0]["last step"] == "20" and float(per_run[0]["val/loss best"]) == 0.5

    for name in ("curves_val_loss.png", "curves_val_psnr.png", "ablation.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 150
    assert (out / "table.md").read_text().startswith("# avp compare\n")


def test_metric_selection_and_direction(sweep: Path, tmp_path: Path) -> None:
    result = compare([sweep], tmp_path / "o", metrics=["train/*"], plots=False)
    assert result.metrics == ["train/loss"]
    assert "| zeta | 2 | 7 (n=1) |" in result.markdown and "| alpha | 2 | n/a |" in result.markdown
    assert goal_of("val/psnr").better == "higher" and goal_of("val/lpips").better == "lower"
    assert goal_of("test/fscore_1cm").better == "higher" and goal_of("val/acc_b").better == "higher"
    assert goal_of("val/finished_fraction").better == goal_of("val/binding_agreement").better == "higher"
    assert goal_of("val/count_ratio").best([0.5, 1.3, 0.9]) == 0.9  # closest to 1, neither max nor min
    assert goal_of("val/chamfer", higher=["val/cham*"]).better == "higher" and goal_of("val/chamfer").better == "lower"
    assert goal_of("val/id_sim") is None  # undeclared: tabulated, never ranked
    with pytest.raises(ValueError, match="no metric matches"):
        compare([sweep], tmp_path / "o", metrics=["nothing/*"])


def test_a_resumed_run_counts_each_step_once(tmp_path: Path) -> None:
    run = tmp_path / "plain" / "version_0"
    with SummaryWriter(str(run)) as writer:
        for step in range(10):
            writer.add_scalar("train/loss", 100.0 + step, step)  # killed after step 9, checkpoint at step 6
    # the resumed process starts later: event files sort by their creation time (whole seconds), and within one
    # second by a per-process counter that is not zero-padded, so two writers made in the same second of this
    # process could sort either way depending on how many writers earlier tests made
    with mock.patch("time.time", return_value=time.time() + 5), \
            SummaryWriter(str(run), purge_step=6) as writer:
        for step in range(6, 12):
            writer.add_scalar("train/loss", float(step), step)
    series = read_scalars(run)["train/loss"]
    assert [s for s, _ in series] == list(range(12))
    assert [v for _, v in series] == [100.0 + s for s in range(6)] + [float(s) for s in range(6, 12)]
    # folders named version_<k> / seed<k> are seeds of their parent
    result = compare([tmp_path / "plain"], tmp_path / "o", plots=False)
    assert [(r.variant, r.seed) for r in result.runs] == [("plain", 0)]


def test_mean_curve_aligns_seeds_on_steps() -> None:
    steps, mean, std = mean_curve([[(0, 1.0), (2, 3.0)], [(0, 3.0), (1, 5.0), (2, 5.0)]])
    assert steps.tolist() == [0, 1, 2]
    assert mean.tolist() == [2.0, 5.0, 4.0]
    assert std[0] == pytest.approx(np.std([1, 3], ddof=1)) and std[1] == 0.0


def test_the_cli_prints_the_table_and_fails_clearly_without_logs(sweep: Path, tmp_path: Path, capsys) -> None:
    assert main([str(sweep), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| zeta | 2 |" in out and "table.csv" in out
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no TensorBoard scalars under" in capsys.readouterr().err
    assert main([str(tmp_path / "absent")]) == 2
    assert "no such run or sweep folder" in capsys.readouterr().err


def _config(seed: int, levels: int = 64, lr: float = 1e-3) -> dict:
    return {"seed_everything": seed, "trainer": {"max_steps": 20, "logger": {"init_args": {"version": seed}}},
            "model": {"init_args": {"lr": lr, "seed": seed, "tokenizer": {"levels": levels}}}}


def test_count_ratio_is_best_at_one_and_direction_follows_the_goal(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for i, (variant, ratio, fraction) in enumerate([("under", 0.7, 0.9), ("exact", 1.02, 0.5), ("over", 1.6, 1.0)]):
        write_run(root / variant / "seed0", variant, 0, i, {"val/count_ratio": [(0, ratio)],
                                                            "val/finished_fraction": [(0, fraction)]},
                  _config(0))
    result = compare([root], tmp_path / "o", plots=False)
    final = result.markdown.split("**Best values**")[0]
    assert "| variant | seeds | val/count_ratio →1 | val/finished_fraction ↑ |" in final
    assert "| exact | 1 | **1.02** | 0.5 |" in final  # neither the largest nor the smallest ratio
    assert "| over | 1 | 1.6 | **1** |" in final and "| under | 1 | 0.7 | 0.9 |" in final
    assert result.warnings == []


def test_pooling_runs_with_different_configs_is_reported_with_the_keys(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    write_run(root / "a" / "seed0", "a", 0, 0, {"val/psnr": [(0, 20.0)]}, _config(0))
    write_run(root / "a" / "seed1", "a", 1, 1, {"val/psnr": [(0, 21.0)]}, _config(1, lr=3e-3))  # not just a seed
    write_run(root / "b" / "seed0", "b", 0, 2, {"val/psnr": [(0, 19.0)]}, _config(0))
    write_run(root / "b" / "seed1", "b", 1, 3, {"val/psnr": [(0, 19.5)]}, _config(1))  # seeds differ only
    result = compare([root], tmp_path / "o", plots=False)
    assert result.warnings == ["variant 'a' pools runs whose configs differ beyond the seed: model.init_args.lr"]
    assert "> **Warning:** variant 'a' pools runs" in (tmp_path / "o" / "table.md").read_text()
    assert main([str(root), "--out", str(tmp_path / "o2"), "--no-plots"]) == 0
    assert "warning: variant 'a' pools runs whose configs differ beyond the seed: model.init_args.lr" in \
        capsys.readouterr().err


def test_losses_over_different_quantisations_are_not_ranked(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    write_run(root / "coarse" / "seed0", "coarse", 0, 0, {"val/loss": [(0, 2.0)], "val/fscore": [(0, 0.3)]},
              _config(0, levels=64))
    write_run(root / "fine" / "seed0", "fine", 0, 1, {"val/loss": [(0, 3.5)], "val/fscore": [(0, 0.4)]},
              _config(0, levels=1024))
    result = compare([root], tmp_path / "o", plots=False)
    final = result.markdown.split("**Best values**")[0]
    assert "| coarse | 1 | 0.3 | 2 |" in final  # the lower cross-entropy is not bold: other vocabulary
    assert "| fine | 1 | **0.4** | 3.5 |" in final  # F-score does not depend on the quantisation
    assert result.warnings == ["val/loss: not ranked, its scale depends on settings the runs differ in: "
                               "model.init_args.tokenizer.levels"]

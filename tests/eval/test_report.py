from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from avp.eval import (
    PAPER_COLUMNS,
    RunReport,
    flatten_metrics,
    markdown_table,
    read_metrics,
    scalars_for_logging,
    table_from_runs,
    write_markdown_table,
)
from avp.metrics import Unavailable

PROTOCOL = {"name": "self-reenactment", "version": "1.0", "subjects": ["s01", "s02"], "resolution": 512}
NO_LPIPS = Unavailable("no pretrained alex backbone")

# PAPER.md §6.2, the paper's main comparison
PAPER = {
    "Portrait4Dv2": {"lpips": 0.20, "fid": 123.02, "akd": 5.32, "apd": 34.53, "cross_fid": 191.13, "cross_clip": 0.63},
    "AvatarArtist": {"lpips": 0.21, "fid": 118.94, "akd": 6.87, "apd": 39.58, "cross_fid": 175.69, "cross_clip": 0.61},
    "LAM": {"lpips": 0.24, "fid": 136.01, "akd": 4.37, "apd": 61.83, "cross_fid": 238.54, "cross_clip": 0.54},
    "GAGAvatar": {"lpips": 0.18, "fid": 111.76, "akd": 3.93, "apd": 27.94, "cross_fid": 181.22, "cross_clip": 0.71},
    "Ours": {"lpips": 0.15, "fid": 95.18, "akd": 2.38, "apd": 22.86, "cross_fid": 160.74, "cross_clip": 0.75},
}


def _run(out: Path, method: str = "avp", lpips: object = NO_LPIPS) -> RunReport:
    report = RunReport(out, method=method, protocol=PROTOCOL, config={"points": "generated", "seed": 0})
    report.add_sample("s01/seq1", {"psnr": torch.tensor(24.5), "lpips": lpips}, subject="s01", frames=[0, 8])
    report.add_sample("s02/seq3", {"psnr": float("inf"), "lpips": lpips,
                                   "face": {"identity_cosine": torch.tensor(0.93), "face_detection_rate": 1.0}},
                      subject="s02", frames=[4])
    return report


def test_a_run_writes_every_report_file_and_reads_back(tmp_path: Path) -> None:
    report = _run(tmp_path / "run")
    files = report.finish({"psnr": torch.tensor(26.25), "lpips": NO_LPIPS, "ssim": 0.9, "apd": float("nan"),
                           "id": {"identity_cosine": torch.tensor(0.91), "face_detection_rate": torch.tensor(0.75)}})
    for path in (files.samples, files.metrics_json, files.metrics_csv, files.table):
        assert path.is_file() and path.parent == tmp_path / "run"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.csv", "metrics.json", "samples.jsonl",
                                                                    "table.md"]  # no temporary files left
    lines = [json.loads(line) for line in files.samples.read_text().splitlines()]
    assert [r["sample"] for r in lines] == ["s01/seq1", "s02/seq3"] and lines[0]["frames"] == [0, 8]
    assert lines[1]["metrics"] == {"psnr": "inf", "lpips": {"unavailable": NO_LPIPS.reason},
                                   "identity_cosine": pytest.approx(0.93), "face_detection_rate": 1.0}
    record = json.loads(files.metrics_json.read_text())
    assert record["protocol"] == PROTOCOL and record["config"]["points"] == "generated"
    assert "git_sha" in record and record["n_samples"] == 2 and record["environment"]["torch"] == torch.__version__
    run = read_metrics(tmp_path / "run")
    assert run.method == "avp" and run.protocol["version"] == "1.0"
    assert run.metrics["psnr"] == pytest.approx(26.25) and run.metrics["lpips"] == NO_LPIPS
    assert math.isnan(run.metrics["apd"]) and run.metrics["identity_cosine"] == pytest.approx(0.91)
    rows = list(csv.DictReader(files.metrics_csv.open()))
    assert len(rows) == 1
    row = rows[0]
    assert row["protocol"] == "self-reenactment" and row["protocol_version"] == "1.0"
    assert row["git_sha"] == (record["git_sha"] or "")
    assert row["lpips"] == f"unavailable ({NO_LPIPS.reason})" and float(row["psnr"]) == 26.25
    assert json.loads(row["config"]) == {"points": "generated", "seed": 0}
    assert "unavailable [1]" in files.table.read_text()


def test_the_paper_table_layout_with_best_values_bold() -> None:
    table = markdown_table(PAPER)
    lines = table.splitlines()
    assert lines[0] == "| Method | LPIPS↓ | FID↓ | AKD↓ | APD↓ | Cross-FID↓ | Cross-CLIP↑ |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert [line.split(" | ")[0].strip("| ") for line in lines[2:]] == list(PAPER)
    ours = lines[-1]
    assert ours == "| Ours | **0.150** | **95.18** | **2.38** | **22.86** | **160.74** | **0.750** |"
    assert "**" not in "".join(lines[2:-1])


def test_unavailable_values_are_never_printed_as_numbers() -> None:
    rows = {"A": {"lpips": NO_LPIPS, "fid": 120.0}, "B": {"lpips": 0.2, "fid": Unavailable("no Inception weights")}}
    table = markdown_table(rows, columns=["lpips", "fid", "akd"])
    assert "| A | unavailable [1] | **120.00** | unavailable [2] |" in table
    assert "| B | **0.200** | unavailable [3] | unavailable [2] |" in table
    assert f"[1] unavailable ({NO_LPIPS.reason})" in table
    assert "[2] unavailable (not measured in this run)" in table
    assert "[3] unavailable (no Inception weights)" in table


def test_a_table_across_runs(tmp_path: Path) -> None:
    _run(tmp_path / "a", method="avp").finish({"lpips": 0.17, "akd": 2.9})
    _run(tmp_path / "b", method="template points").finish({"lpips": 0.22, "akd": NO_LPIPS})
    table = table_from_runs([tmp_path / "a", tmp_path / "b"], columns=["lpips", "akd"])
    assert "| avp | **0.170** | **2.90** |" in table and "| template points | 0.220 | unavailable [1] |" in table
    path = write_markdown_table(tmp_path / "tables" / "main.md", {"avp": {"lpips": 0.17}}, columns=PAPER_COLUMNS)
    assert path.read_text().startswith("| Method | LPIPS↓")
    _run(tmp_path / "c", method="avp").finish({"lpips": 0.3})
    with pytest.raises(ValueError, match="share a method name"):
        table_from_runs([tmp_path / "a", tmp_path / "c"])


def test_bad_records_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'version'"):
        RunReport(tmp_path, method="avp", protocol={"name": "self-reenactment"})
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'method' field"):
        read_metrics(tmp_path / "metrics.json")


def test_logging_scalars_skip_what_is_not_a_number() -> None:
    outputs = {"psnr": torch.tensor(25.0), "lpips": NO_LPIPS, "fid": float("inf"),
               "face": {"identity_cosine": torch.tensor(0.9)}}
    assert scalars_for_logging(outputs) == {"test/psnr": 25.0, "test/identity_cosine": pytest.approx(0.9)}
    assert flatten_metrics(outputs)["lpips"] == NO_LPIPS
    with pytest.raises(ValueError, match="must be a scalar"):
        flatten_metrics({"psnr": torch.ones(3)})

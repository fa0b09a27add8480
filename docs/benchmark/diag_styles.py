"""Held-out PSNR per hair style: where a row loses (EXPERIMENTS.md, exp18).

Usage: python docs/benchmark/diag_styles.py DATA_ROOT NAME=EVAL_DIR[,EVAL_DIR...] [NAME=...]
Each EVAL_DIR is an `avp eval` output folder (its samples.jsonl); a name given several folders (seeds) averages them,
and a folder holding several methods (e.g. `--points generated resampled`) gives one column per method. Prints one
row per hair style (`avp data synth`'s meta.extra.hair): subjects, then the mean PSNR of every column.
"""

import collections
import json
import sys
from pathlib import Path

import numpy as np

from avp.benchmark_points import held_out_subjects


def main(root: str, specs: list[str]) -> None:
    style = {s.meta["subject"]: s.meta["extra"]["hair"] for s in held_out_subjects(root, "test")}
    columns: dict[str, dict[str, list[float]]] = {}
    for spec in specs:
        name, _, dirs = spec.partition("=")
        for folder in dirs.split(","):
            for line in (Path(folder) / "samples.jsonl").read_text().splitlines():
                r = json.loads(line)
                columns.setdefault(f"{name}:{r['method']}", collections.defaultdict(list))[r["subject"]].append(
                    r["metrics"]["psnr"])
    names = list(columns)
    print("style n " + " ".join(names))
    for hair in sorted(set(style.values())):
        subjects = [s for s, h in style.items() if h == hair]
        means = [np.mean([np.mean(columns[c][s]) for s in subjects if s in columns[c]]) for c in names]
        print(hair, len(subjects), " ".join(f"{m:.2f}" for m in means))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""Tokens/s of the sampler of whichever avp is on PYTHONPATH, so that commits can be compared (BENCHMARKS.md, #19).

Usage, for each commit C to compare (the same machine state, one after the other):
    git worktree add /tmp/avp-C C && cd /tmp/avp-C
    OMP_NUM_THREADS=1 PYTHONPATH=. python /path/to/avp/docs/speed/sampler_commits.py LABEL THREADS \
        [--heads role] [--batches 1,8] [--modes "eager;compiled, bf16 cache"]
One JSON line per (head, batch, mode): the bench model of ``avp bench generator`` (4 x 256, 11,171-token vocabulary,
128 condition tokens), 1,025 tokens per cloud (no window slide), the best of two samples after a warm-up; ``compiled``
only where the commit has ``SamplingConfig.compile``, the bf16 cache where it has ``kv_cache_dtype``.
"""

import argparse
import dataclasses
import json
import time

import torch

from avp.models.generator import GeneratorConfig, PointGenerator
from avp.models.tokenizer import PointTokenizer

try:
    from avp.models.sampling import SamplingConfig, sample
except ImportError:  # before the sampler moved to avp.models
    from avp.sampling import SamplingConfig, sample

POINTS = 256
TOKENS = 4 * POINTS + 1


def seconds(model: PointGenerator, condition: torch.Tensor, tok: PointTokenizer, config: SamplingConfig) -> float:
    start = time.perf_counter()
    sample(model, condition, tok, config, torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main(label: str, threads: int, heads: list[str], batches: list[int], only_modes: list[str] | None) -> None:
    torch.set_num_threads(threads)
    tok = PointTokenizer(torch.tensor([[-0.2, -0.3, -0.2], [0.2, 0.3, 0.25]]), n_faces=10144)
    fields = {f.name for f in dataclasses.fields(SamplingConfig)}
    modes = {"eager": {}} | ({"compiled": {"compile": True}} if "compile" in fields else {})
    if "kv_cache_dtype" in fields:
        modes |= {"eager, bf16 cache": {"kv_cache_dtype": "bfloat16"},
                  "compiled, bf16 cache": {"compile": True, "kv_cache_dtype": "bfloat16"}}
    if only_modes:
        modes = {m: e for m, e in modes.items() if m in only_modes}
    for head in heads:
        torch.manual_seed(0)
        model = PointGenerator(GeneratorConfig(n_layers=4, width=256, n_heads=4, head=head), tok.vocab_size).eval()
        for batch in batches:
            condition = torch.randn(batch, 128, 256)
            for mode, extra in modes.items():
                config = SamplingConfig(max_points=POINTS, min_points=POINTS, enforce_order=False,
                                        window=TOKENS + 8, **extra)
                warm = dataclasses.replace(config, max_points=8, min_points=8)
                seconds(model, condition, tok, warm)  # compiles the step for this batch size
                best = min(seconds(model, condition, tok, config) for _ in range(2))
                print(json.dumps({"version": label, "head": head, "batch": batch, "mode": mode,
                                  "tokens_per_s": round(batch * TOKENS / best, 1)}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("label")
    parser.add_argument("threads", type=int, nargs="?", default=2)
    parser.add_argument("--heads", default="full,role", help="comma-separated: full, role")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--modes", default="", help="semicolon-separated modes to run (default: every mode the commit "
                        "has): eager; compiled; eager, bf16 cache; compiled, bf16 cache")
    a = parser.parse_args()
    main(a.label, a.threads, a.heads.split(","), [int(b) for b in a.batches.split(",")],
         [m.strip() for m in a.modes.split(";") if m.strip()] or None)

"""``avp bench generator`` runs end to end and reports every decode mode with its bytes and ratios measured in the same
run (tiny sizes, the compiled steps left out; timings are not asserted)."""

from __future__ import annotations

import json

from avp.bench import main


def test_bench_generator_small(capsys, tmp_path) -> None:
    out = tmp_path / "generator.json"
    argv = ["generator", "--device", "cpu", "--tokens", "33", "--layers", "1", "--width", "32", "--heads", "2",
            "--condition-tokens", "4", "--train-window", "16", "--decode-tokens", "16", "--skip-compile",
            "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["sampling"]["tokens"] == 33 and result["sampling"]["speedup_at_n"] > 0
    decode = result["decode_steps"]
    modes = {(r["head"], r["batch"], r["mode"]) for r in decode["runs"]}
    assert modes == {(h, b, m) for h in ("full", "role") for b in (1, 8)
                     for m in ("eager", "static", "eager, bf16 cache")}
    by = {(r["head"], r["batch"], r["mode"]): r for r in decode["runs"]}
    for head in ("full", "role"):
        # a bf16 cache streams half the fp32 cache's bytes, the weights are the same
        fp32, bf16 = by[(head, 8, "eager")], by[(head, 8, "eager, bf16 cache")]
        assert bf16["kv_bytes_per_token"] * 2 == fp32["kv_bytes_per_token"]
        assert bf16["weight_bytes_per_token"] == fp32["weight_bytes_per_token"]
        assert set(decode["ratios"]) >= {f"{head}_best_vs_eager_batch1", f"{head}_batch8_vs_batch1"}
    # the role head evaluates fewer output rows than the full head
    assert by[("role", 1, "eager")]["weight_bytes_per_token"] < by[("full", 1, "eager")]["weight_bytes_per_token"]
    assert result["avatar_10k_points"].startswith("unavailable")

"""``avp bench render`` runs and reports ratios measured in the same run (tiny sizes; timings are not asserted)."""

from __future__ import annotations

import json

from avp.bench import main


def test_bench_render_small(capsys, tmp_path) -> None:
    out = tmp_path / "render.json"
    argv = ["render", "--device", "cpu", "--sizes", "200,400", "--resolutions", "32", "--dense-fb", "200x32",
            "--dense-fwd", "400x32", "--repeat", "1", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    runs = result["cpu"]["runs"]
    assert [(r["n"], r["resolution"]) for r in runs] == [(200, 32), (400, 32)]
    assert runs[0]["dense_forward_backward"] == "measured" and runs[1]["dense_forward"] == "measured"
    assert runs[1]["dense_forward_backward"].startswith("extrapolated from N=200")
    assert runs[0]["dense_forward"].startswith("extrapolated from N=400")
    for r in runs:
        assert r["forward_s"] > 0 and r["speedup_forward"] > 0 and r["speedup_forward_backward"] > 0
        assert 0 < r["coverage"] < 1 and r["visible_splats"] > 0
    assert "gpu" not in result

"""Smoke test of benchmarks/bench_tt.py: tiny sizes, both works, JSON output.

The script runs in a subprocess, like the other benchmark smoke tests: it imports TensorLy and
sets backends, which must not leak into the rest of the test session.
"""

import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_tt.py"


def test_bench_tt_smoke(tmp_path):
    path = tmp_path / "bench_tt.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--repeats", "1", "--inner", "1",
         "--shape", "8,9,10", "--rank", "3", "--row-shape", "2,3", "--col-shape", "3,2",
         "--tt-rank", "2", "--batch", "4", "--data", "lowrank", "--no-torch", "--quiet",
         "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(path.read_text())
    rows = {(r["work"], r["backend"]): r for r in out["results"]}
    svd = rows[("tt-svd", "tensorfact")]
    anchor = rows[("tt-svd", "tensorly-numpy")]
    for row in (svd, anchor):
        assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    # planted TT of ranks (1, 3, 3, 1) plus 10% noise: both fit about 0.9, ours no worse
    assert 0.85 < anchor["fit"] < 0.95
    assert svd["fit"] >= anchor["fit"] - 1e-5
    product = [r for r in out["results"] if r["work"].startswith("x @ W")]
    assert {r["backend"] for r in product} == {"tensorfact", "dense jnp.matmul (jitted)"}
    for row in product:
        assert row["extra"]["rel_err_vs_f64"] < 1e-5
        assert row["extra"]["flops"] > 0
    assert "| tt-svd" in run.stdout and "tensorly-numpy" in run.stdout

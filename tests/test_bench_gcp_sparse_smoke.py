"""Smoke test of benchmarks/bench_gcp_sparse.py: its --small preset, JSON output."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gcp_sparse.py"


@pytest.mark.slow  # ~20 s: three worker processes
def test_bench_gcp_sparse_smoke(tmp_path):
    path = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--steps", "100",
                          "--json", str(path)], cwd=ROOT / "benchmarks", capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(path.read_text())
    rows = {r["side"]: r for r in out["results"]}
    assert set(rows) == {"tensorfact", "pyttb", "tensorfact-full"}
    for r in rows.values():
        assert math.isfinite(r["loss"]) and math.isfinite(r["median_s"]) and r["median_s"] > 0
        assert 0 < r["fms"] <= 1 + 1e-9
        assert r["steps"] > 0
    assert math.isfinite(rows["tensorfact"]["estimate"])

"""Smoke test of benchmarks/bench_gcp.py: the ``--small`` preset in a subprocess (it imports
pyttb and TensorLy), JSON output with every side's time, loss and factor match score."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gcp.py"


@pytest.mark.slow
def test_bench_gcp_smoke(tmp_path):
    path = tmp_path / "bench_gcp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--repeats", "1", "--quiet",
                          "--json", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(path.read_text())["results"]
    poisson = [r for r in rows if r["case"] == "poisson"]
    il2 = [r for r in rows if r["case"] == "il2"]
    assert len(poisson) == 6 and len(il2) == 3
    for row in rows:
        assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0
    for row in poisson:
        assert math.isfinite(row["loss"]) and 0 <= row["fms"] <= 1 + 1e-9
    for row in il2:
        assert 0 < row["rel_error_observed"] < 1
    assert "| tfa.gcp(loss='poisson')" in run.stdout and "pyttb.cp_apr" in run.stdout

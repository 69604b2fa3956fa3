"""Smoke test of benchmarks/bench_constrained.py: its ``--small`` preset (TensorLy's COVID-19
serology tensor and a crop of Indian Pines, loaded at run time, plus planted coupled data), in a
subprocess (TensorLy sets process-wide backends), with JSON output."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_constrained.py"


@pytest.mark.slow  # ~15 s: the whole --small preset
def test_bench_constrained_smoke(tmp_path):
    path = tmp_path / "bench_constrained.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--repeats", "1", "--json",
                          str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(path.read_text())["results"]
    by = {(r["work"], r["backend"]): r for r in rows}
    for work in ("covid-nonneg", "covid-simplex", "pines-nonneg", "cmtf"):
        ours, theirs = by[(work, "tensorfact")], by[(work, "tensorly-numpy")]
        for r in (ours, theirs):
            assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
            assert 0 <= r["rel_error"] < 1, r
        # the same algorithm, the same iterations: our fit no worse (float32 vs float64)
        assert ours["rel_error"] <= theirs["rel_error"] * 1.01 + 1e-4, work
    assert "| covid-nonneg" in run.stdout and "tensorly-numpy" in run.stdout

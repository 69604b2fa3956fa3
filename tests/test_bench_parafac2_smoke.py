"""Smoke test of benchmarks/bench_parafac2.py: the --small preset in a subprocess (it imports
TensorLy and sets its backend, which must not leak into the test session)."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_parafac2.py"


@pytest.mark.slow
def test_bench_parafac2_smoke(tmp_path):
    path = tmp_path / "bench_parafac2.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--repeats", "1", "--quiet",
                          "--json", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(path.read_text())["results"]
    works = {r["work"] for r in rows}
    assert len(works) == 2 and any(w.startswith("kinetic") for w in works)
    for work in works:
        ours, = [r for r in rows if r["work"] == work and r["backend"] == "tensorfact"]
        theirs, = [r for r in rows if r["work"] == work and r["backend"] == "tensorly-numpy"]
        assert math.isfinite(ours["median_ms"]) and ours["median_ms"] > 0
        assert math.isfinite(theirs["ratio"]) and theirs["ratio"] > 0
        # same start, same iterations: the same fit up to float32 rounding
        assert ours["fit"] >= theirs["fit"] - 1e-3
        assert 0.5 < ours["fit"] <= 1
    assert "| kinetic" in run.stdout

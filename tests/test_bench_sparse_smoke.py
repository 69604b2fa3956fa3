"""Smoke test of benchmarks/bench_sparse.py: the ``--small`` preset, both sides (each in its own
subprocess, which the script starts), JSON output."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_sparse.py"


@pytest.mark.slow  # ~10 s: three processes import JAX or pyttb
def test_bench_sparse_smoke(tmp_path):
    path = tmp_path / "sparse.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--json", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["side"]: r for r in json.loads(path.read_text())["results"]}
    assert set(rows) == {"tensorfact", "pyttb"}
    for r in rows.values():
        assert math.isfinite(r["median_s"]) and r["median_s"] > 0, r
        assert r["peak_rss_mib"] > 0 and 0.9 < r["fit"] <= 1, r
    # the same start and sweeps: the same fit
    assert abs(rows["tensorfact"]["fit"] - rows["pyttb"]["fit"]) < 1e-4, rows
    assert "| tensorfact |" in run.stdout and "| pyttb |" in run.stdout

"""Smoke test of benchmarks/bench_tensor_ring.py: tiny sizes, every row, JSON output."""

import importlib.util
import json
import math
import pathlib

import pytest

FOLDER = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_tensor_ring_smoke(monkeypatch, tmp_path):
    pytest.importorskip("tensorly")
    monkeypatch.syspath_prepend(str(FOLDER))  # for _harness
    spec = importlib.util.spec_from_file_location("bench_tensor_ring",
                                                  FOLDER / "bench_tensor_ring.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    path = tmp_path / "tr.json"
    rows = bench.main(["--small", "--size", "6", "--ndim", "3", "--rank", "2", "--n-iter", "3",
                       "--repeats", "1", "--no-torch", "--json", str(path)])
    by_work = {}
    for r in rows:
        by_work.setdefault(r["work"], []).append(r)
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        assert 0 < r["fit"] <= 1, r
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
    assert [r["backend"] for r in by_work["tr-svd"]] == ["tensorfact", "tensorly-numpy"]
    assert [r["notes"] for r in by_work["tr-als"] if r["backend"] == "tensorfact"] == [
        "init=svd", "init=random"]
    # the same TR-SVD (same sign convention for the singular vectors): the same fit
    svd_fits = [r["fit"] for r in by_work["tr-svd"]]
    assert svd_fits[0] == pytest.approx(svd_fits[1], abs=1e-5)

    out = json.loads(path.read_text())
    assert out["config"]["shape"] == [6, 6, 6] and out["config"]["ranks"] == [2, 2, 2]
    assert len(out["results"]) == len(rows)

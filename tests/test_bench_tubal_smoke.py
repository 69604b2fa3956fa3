"""Smoke test of benchmarks/bench_tubal.py: ``--small`` sizes, every NumPy row, JSON output."""

import importlib.util
import json
import math
import pathlib

FOLDER = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(FOLDER))  # for _harness
    spec = importlib.util.spec_from_file_location("bench_tubal", FOLDER / "bench_tubal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_tubal_smoke(monkeypatch, tmp_path, capsys):
    path = tmp_path / "tubal.json"
    rows = _load(monkeypatch).main(["--small", "--repeats", "1", "--no-torch", "--quiet",
                                    "--json", str(path)])
    by = {(r["work"], r["backend"]): r for r in rows}
    for work, numpy_row in (("tsvd", "numpy rfft + batched svd"),
                            ("tprod", "numpy rfft + matmul")):
        assert by[(work, "tensorfact")]["ratio"] == 1.0
        assert (work, numpy_row) in by
    for (work, backend), r in by.items():
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, (work, backend)
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, (work, backend)
        # every contender computes the same thing: float32-accurate t-SVD and t-product
        assert r["rel_error"] < 1e-5, (work, backend, r["rel_error"])
    assert len(rows) == 6
    out = json.loads(path.read_text())
    assert out["environment"]["shape"] == [48, 40, 16] and len(out["results"]) == 6
    table = capsys.readouterr().out
    assert "| tsvd | tensorfact |" in table and "| tprod | numpy rfft + matmul |" in table

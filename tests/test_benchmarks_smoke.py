"""Smoke test of benchmarks/bench_decompositions.py: tiny sizes, every work, JSON output.

The script runs in a subprocess: TensorLy's JAX backend changes process-wide JAX settings on
import, which must not leak into the rest of the test session.
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_decompositions.py"


@pytest.mark.slow  # ~8 s: the script's whole --small preset
def test_bench_decompositions_smoke(tmp_path):
    path = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--repeats", "1", "--inner", "1",
         "--shape", "12,12,12", "--rank", "3", "--n-iter", "3", "--data", "lowrank",
         "--tensorly-jax", "--quiet", "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(path.read_text())
    assert out["environment"]["jax_enable_x64_after_run"] is False  # float32 contenders stayed so

    rows = {(r["work"], r["backend"]): r for r in out["results"]}
    for work in ("cp-als", "tucker", "mttkrp[0]", "mttkrp[1]", "mttkrp[2]"):
        row = rows[(work, "tensorfact")]
        assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0
        assert math.isfinite(row["compile_s"]) and row["compile_s"] > 0
        assert row["ratio"] == 1.0
    for work in ("cp-als", "tucker"):
        assert (work, "tensorly-numpy") in rows and (work, "tensorly-jax (unjitted)") in rows
    for (work, backend), row in rows.items():
        if work in ("cp-als", "tucker"):
            assert 0 < row["fit"] <= 1, (work, backend, row["fit"])
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        if work.startswith("mttkrp"):
            assert row["extra"]["rel_err_vs_f64"] < 1e-5
    table = run.stdout
    assert "| cp-als" in table and "| tensorfact" in table and "tensorly-numpy" in table


def _load_script(name, monkeypatch):
    """Imports benchmarks/<name>.py as a module (its folder on the path, for _harness)."""
    import importlib.util
    import pathlib

    folder = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_svd_smoke(monkeypatch):
    """The SVD benchmark runs on the CPU and its randomized rows are near the optimal error."""
    rows = _load_script("bench_svd", monkeypatch).main(["--small", "--repeats", "1"])
    by_name = {name: (ms, err) for name, ms, _, err in rows}
    assert by_name["tensorfact exact"][0] > 0
    exact_err = by_name["tensorfact exact"][1]
    assert by_name["tensorfact randomized q=4"][1] <= 1.01 * exact_err


def test_bench_nmf_smoke(monkeypatch):
    """The NMF benchmark runs against scikit-learn; both tensorfact methods give sane rows."""
    import math

    rows = _load_script("bench_nmf", monkeypatch).main(["--small", "--repeats", "1"])
    assert {r["backend"] for r in rows} == {"tensorfact", "sklearn"}
    tfa_rows = [r for r in rows if r["backend"] == "tensorfact"]
    assert {r["method"] for r in tfa_rows} == {"hals", "mu"}
    for r in tfa_rows:
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        assert math.isfinite(r["first_s"]) and r["first_s"] > 0, r
        assert math.isfinite(r["rel_error"]) and 0 <= r["rel_error"] <= 1, r
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r


def test_bench_batched_cp_smoke(monkeypatch):
    """The batched-CP benchmark runs one vmap call and a TensorLy loop on the same data."""
    rows = _load_script("bench_batched_cp", monkeypatch).main(["--small", "--repeats", "1"])
    assert rows[0]["backend"].startswith("tensorfact") and rows[0]["ratio"] == 1.0
    assert any(r["backend"].startswith("tensorly-numpy") for r in rows)
    for r in rows:
        assert r["median_ms"] > 0 and 0.5 < r["fit"] <= 1, r


def test_every_script_uses_the_harness_and_no_other_script():
    """One harness, one ``--small`` flag: every script builds its command line with
    ``_harness.parser`` (which owns ``--small``) and imports no helper from another script."""
    import ast

    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    assert len(scripts) >= 10
    for path in scripts:
        tree = ast.parse(path.read_text())
        harness = [node for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module == "_harness"]
        assert any("parser" in {a.name for a in node.names} for node in harness), path.name
        imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for a in node.names}
        imported |= {node.module for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in imported if m.startswith("bench_")}, path.name
        assert "--quick" not in path.read_text(), path.name


@pytest.mark.slow  # ~10 s: the script's whole --small preset
def test_bench_kernels_smoke(monkeypatch, tmp_path):
    """The kernel benchmark runs on the CPU (interpret mode): every MTTKRP contender agrees with
    NumPy, both CP-ALS paths fit alike, and the TT layer's paths agree."""
    path = tmp_path / "kernels.json"
    rows = _load_script("bench_kernels", monkeypatch).main(
        ["--small", "--sizes", "8", "--repeats", "1", "--json", str(path)])
    mttkrp = [r for r in rows if r["bench"] == "mttkrp" and r["mode"] == 0]
    assert {r["impl"] for r in mttkrp} == {"pallas", "xla-library", "xla-einsum"}
    assert all(r["rel_err"] < 1e-5 and r["ms"] > 0 for r in mttkrp), mttkrp
    cp = {r["impl"]: r for r in rows if r["bench"] == "cp_als"}
    assert 0.5 < cp["tensorfact-xla"]["fit"] <= 1
    assert abs(cp["tensorfact-pallas"]["fit"] - cp["tensorfact-xla"]["fit"]) < 1e-4
    forward = [r for r in rows if r["bench"] == "tt_layer" and r["pass_"] == "forward"]
    assert len(forward) == 3 and all(r["rel_to_pallas"] < 1e-5 for r in forward)
    assert len(json.loads(path.read_text())["rows"]) == len(rows)


@pytest.mark.slow  # ~10 s: TPU interpret mode at 12³ and a (2, 4) × (4, 2) TT layer
def test_bench_kernels_tpu_smoke(monkeypatch):
    """``--tpu --small`` runs the TPU MTTKRP and TT-layer rows in TPU interpret mode; the
    kernels agree with XLA in float32 and bfloat16, and every row has a time (and the MTTKRP
    rows a bandwidth)."""
    all_rows = _load_script("bench_kernels", monkeypatch).main(["--tpu", "--small"])
    rows = [r for r in all_rows if r["bench"] == "mttkrp-tpu"]
    assert {(r["impl"], r["dtype"]) for r in rows} == {
        (i, d) for i in ("copy", "pallas-tpu", "xla-einsum") for d in ("float32", "bfloat16")}
    for r in rows:
        assert r["ms"] > 0 and r["read_tbs"] > 0, r
        if r["impl"] == "xla-einsum":
            assert r["rel_to_pallas"] < (2e-2 if r["dtype"] == "bfloat16" else 1e-5), r
    tt = [r for r in all_rows if r["bench"] == "tt-tpu"]
    assert len(tt) + len(rows) == len(all_rows)
    assert {(r["impl"], r["dtype"], r["pass_"]) for r in tt} == {
        (i, d, p) for i in ("xla-chain", "pallas-tpu") for d in ("float32", "bfloat16")
        for p in ("forward", "fwd+bwd")}
    for r in tt:  # forward: the outputs; fwd+bwd: the gradients in x and the cores
        assert r["ms"] > 0, r
        assert r["rel_to_xla"] < (3e-2 if r["dtype"] == "bfloat16" else 1e-5), r


@pytest.mark.slow  # ~16 s: the script's whole --small preset
def test_bench_nn_smoke(tmp_path):
    """The layer benchmark's ``--small`` preset runs (in a subprocess: it pins JAX to the CPU),
    every layer's forward matches its own dense kernel, and PiSSA is near the optimum."""
    path = tmp_path / "nn.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_nn.py"), "--small", "--sizes", "64",
         "--pissa-size", "64", "--repeats", "1", "--inner", "1", "--no-torch", "--quiet",
         "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(path.read_text())["results"]
    forward = [r for r in rows if r["work"] == "layer" and r["pass_"] == "fwd"]
    assert {r["kind"] for r in forward} == {"dense", "lowrank", "cp", "tucker", "tt"}
    assert all(r["err"] < 1e-5 and r["ms"] > 0 for r in forward), forward
    pissa = [r for r in rows if r["work"] == "pissa"]
    assert pissa and all(0.999 < r["quality"] < 1.05 for r in pissa), pissa
    assert "| 64 | tucker | fwd | tfa factorized |" in run.stdout


@pytest.mark.slow  # ~9 s: the script's whole --small preset
def test_bench_adapter_init_smoke(tmp_path):
    """The PiSSA-init benchmark runs (in a subprocess: it pins JAX to the CPU); every
    tensorfact row is near the optimum and the batched split equals the one-by-one LoRA's."""
    path = tmp_path / "init.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_adapter_init.py"), "--small",
         "--size", "48", "--stack-size", "48", "--rank", "4", "--repeats", "1", "--one-repeats", "1", "--no-peft",
         "--quiet", "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(path.read_text())["results"]
    assert {r["work"] for r in rows} == {"one layer", "stack"} and len(rows) == 6
    assert all(1 <= r["quality"] < 1.05 and r["energy"] <= r["optimal_energy"] for r in rows)
    quality = {r["contender"]: r["quality"] for r in rows if r["work"] == "stack"}
    # apply_adapters builds through LoRA.from_layers: the same keys, the same split
    assert abs(quality["tfa apply_adapters(model, AdapterRule(init='pissa'))"]
               - quality["tfa LoRA.from_layers(bases, init='pissa')"]) < 1e-6, quality
    assert "| stack | 2 × 48² | 4 | tfa LoRA.from_layers(bases, init='pissa') |" in run.stdout


@pytest.mark.slow  # ~10 s: the script's whole --small preset
def test_bench_attention_smoke(monkeypatch, tmp_path):
    """The attention/MoE benchmark runs: the cache bytes are the arrays' (the script asserts
    it), the cache grows linearly with the length, every cached decode equals the forward and
    every feed-forward block matches its float64 reference."""
    path = tmp_path / "attention.json"
    out = _load_script("bench_attention", monkeypatch).main(
        ["--small", "--repeats", "1", "--quiet", "--json", str(path)])
    rows = out["results"]
    decode = [r for r in rows if r["work"] == "decode"]
    assert {r["contender"] for r in decode} == {"MHA", "TPA", "MFA", "MFA-KR"}
    assert all(r["err"] < 1e-5 and r["ms"] > 0 for r in decode), decode
    per = {r["contender"]: r["cache_bytes_per_token"] for r in decode}
    assert per["MFA-KR"] < per["MFA"] < per["MHA"] and per["TPA"] < per["MHA"], per
    for name in per:
        mib = [r["cache_mib"] for r in decode if r["contender"] == name]
        assert mib[1] == pytest.approx(2 * mib[0]), name              # lengths 16 and 32
    moe = [r for r in rows if r["work"] == "moe"]
    assert len(moe) == 6 and all(r["err"] < 1e-5 for r in moe), moe
    dense = next(r["params"] for r in moe if r["contender"].startswith("dense"))
    assert all(abs(r["params"] - dense) <= 0.1 * dense for r in moe), moe
    assert len(json.loads(path.read_text())["results"]) == len(rows)

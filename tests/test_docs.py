"""The README's example and the CLI demo run as documented."""

import pathlib
import re

import jax

import tensorfact as tfa
from tensorfact import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["cp"], tfa.CPTensor)
    assert isinstance(namespace["tk2"], tfa.TuckerTensor) and namespace["tk2"].modes == (0, 2)
    assert float(tfa.fit(namespace["x"], namespace["tk"].to_dense())) > 0.9
    assert namespace["grad"].shape == namespace["x"].shape
    assert isinstance(namespace["t"], tfa.TTTensor) and namespace["t"].rank == (1, 5, 5, 1)
    assert isinstance(namespace["tr"], tfa.TRTensor) and isinstance(namespace["ts"], tfa.TSVDTensor)
    grid, idx = namespace["grid"], jax.numpy.array([[0] * 10, [9] * 10, list(range(10))])
    assert abs(grid.gather(idx) - 1.0 / (1.0 + idx.sum(-1))).max() < 1e-3


def test_readme_nnx_example_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Flax NNX layers and adapters", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    from flax import nnx

    lora, merged = namespace["lora"], namespace["merged"]
    x = jax.numpy.ones((2, 768))
    assert isinstance(merged, nnx.Linear)
    assert abs(merged(x) - lora(x)).max() < 1e-4
    assert namespace["layer"].n_params <= 0.1 * 1024 * 1024 + 1024


def test_readme_catalogue_example_runs(capsys):
    """The catalogue block: PARAFAC2, CMTF, constrained CP, GCP, CP-APR, sparse CP, rank scan."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The rest of the catalogue", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    ns = namespace
    assert isinstance(ns["p2"], tfa.Parafac2Tensor) and ns["p2"].row_counts == tuple(range(15, 21))
    assert [s.shape for s in ns["p2"].to_slices()] == [(15 + k, 10) for k in range(6)]
    assert float(ns["info"].rel_error_x) < 1e-3 and float(ns["info"].rel_error_y) < 1e-3
    simplex = ns["c"].factors[1]
    assert float(simplex.min()) >= 0 and abs(simplex.sum(0) - 1).max() < 1e-5
    for model in (ns["rates"], ns["rates_mu"], ns["sparse_fit"], ns["sparse_gcp"]):
        assert isinstance(model, tfa.CPTensor) and model.shape == ns["x"].shape
    # the sparse ALS fit equals the dense one on the same counts
    dense_fit = tfa.cp(ns["counts"], 3, n_iter=50)
    assert abs(float(tfa.fit(ns["counts"], ns["sparse_fit"].to_dense()))
               - float(tfa.fit(ns["counts"], dense_fit.to_dense()))) < 1e-3
    assert list(ns["scan"].ranks) == [2, 3, 4] and ns["scan"].core_consistency[1] > 99
    assert ns["fms"] > 0.99
    assert "| rank |" in capsys.readouterr().out


def test_readme_compression_with_data_example_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Compression can use data.", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {"jax": jax}
    from flax import nnx
    import tensorfact.nn as tnn
    namespace.update(nnx=nnx, tnn=tnn)
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    report = namespace["report"]
    assert abs(report.ratio - 0.3) <= 0.01
    assert all(0 <= r.rel_output_error < 1 for r in report)


def test_readme_whole_model_adapters_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Adapters for whole models", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    report, model, adapted = namespace["report"], namespace["model"], namespace["adapted"]
    x = namespace["x"]
    assert [r.path for r in report.layers] == ["attn/query", "attn/value", "mlp/0", "mlp/1"]
    assert "attn/query" in capsys.readouterr().out
    assert abs(namespace["base_out"] - model(x)).max() == 0
    adapted.eval()                       # dropout off (nnx modules start in training mode)
    namespace["reloaded"].eval()
    assert abs(namespace["merged"](x) - adapted(x)).max() < 1e-4
    assert abs(namespace["reloaded"](x) - adapted(x)).max() < 1e-4


def test_readme_optimizer_example_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Factorized optimizer state", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    sizes = namespace["sizes"]
    assert sizes["smmf"] <= sizes["adamw"] / 10
    assert sizes["galore"] <= sizes["adamw"] / 4


def test_readme_quick_start_has_exactly_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quick, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert "python -m tensorfact demo" in commands[0] and "pytest" in commands[1]


def test_cli_demo_prints_a_table(capsys):
    assert cli.main(["demo", "--shape", "12,13,14", "--rank", "2", "--n-iter", "10",
                     "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for method in ("CP-ALS", "Tucker HOOI", "Tucker HOSVD", "Tucker ST-HOSVD"):
        assert method in out
    fits = [float(line.split()[-6]) for line in out.splitlines() if "rank" in line and "(" in line
            and line[0] in "CT"]
    assert len(fits) == 4 and all(0.9 < f <= 1.0 for f in fits)
    # the model side: adapters on an NNX MLP, trained, merged and compressed
    data_side, model_side = out.split("\nmodel side: ", 1)
    assert "apply_adapters" not in data_side
    # LoRA trains r (in + out) on the 16 → 64 and 64 → 64 layers, DoRA r (in + out) + out on
    # the 64 → 8 head
    assert re.search(r"^layers/0 +Linear +LoRA +4 +320$", model_side, flags=re.M)
    assert re.search(r"^layers/1 +Linear +LoRA +4 +512$", model_side, flags=re.M)
    assert re.search(r"^layers/2 +Linear +DoRA +4 +296$", model_side, flags=re.M)
    assert "1,128 trainable parameters = 19.6% of 5,768" in model_side
    before, after = map(float, re.search(r"on the shifted task: loss ([0-9.]+) \(accuracy "
                                         r"[0-9.]+%\) → loss ([0-9.]+)", model_side).groups())
    assert after < 0.5 * before  # the shift is learnt
    diff = float(re.search(r"max \|merged − adapted\| logits = (\S+)", model_side).group(1))
    assert diff < 1e-4
    ratio = float(re.search(r"^total .* ratio ([0-9.]+)$", model_side, flags=re.M).group(1))
    assert 0.4 < ratio < 0.6  # compress(rank=0.5) of the hidden layers, not the head
    assert re.search(r"^layers/1 +Linear +lowrank", model_side, flags=re.M)
    assert not re.search(r"^layers/2 +Linear +lowrank", model_side, flags=re.M)
    compressed = float(re.search(r"compressed model on the shifted task: loss ([0-9.]+)",
                                 model_side).group(1))
    assert compressed < before


def test_cli_demo_without_the_model_side(capsys):
    assert cli.main(["demo", "--shape", "6,7,8", "--rank", "2", "--n-iter", "5",
                     "--repeats", "1", "--no-model"]) == 0
    out = capsys.readouterr().out
    assert "CP-ALS" in out and "model side" not in out


def test_readme_factorized_architectures_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Factorized architectures", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    ns = namespace
    assert abs(ns["y0"] - ns["y"][:, 0]).max() < 1e-5          # decode == causal forward
    tpa, mfa = ns["tpa"], ns["mfa"]
    printed = capsys.readouterr().out.split()
    # TPA: 2 · R_kv · (h + d_h) floats; MFA-KR: one key of d_h floats
    assert printed == [str(2 * 2 * (4 + 16) * 4), str(16 * 4)]
    assert tpa.cache_bytes_per_token < 2 * 4 * 16 * 4 and mfa.cache_bytes_per_token == 16 * 4
    assert ns["z"].shape == (2, 16, 64) and bool(jax.numpy.isfinite(ns["z"]).all())
    table = ns["emb"].dense_weight()
    assert abs(ns["rows"][0] - table[jax.numpy.array([1, 2, 49_999])]).max() < 1e-5

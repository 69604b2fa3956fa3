"""The ``tensorfact.nn`` examples in their quick modes: the three on scikit-learn's digits and the
transformer fine-tune on the standard library's text. They run, write their figures, and the
numbers they return mean what the examples say (accuracy well above chance, parameter counts
equal to the closed forms, compression shrinks models and fine-tuning recovers accuracy, both
adapters' losses fall and PiSSA's falls faster; every adapter of the transformer starts at the
pre-trained model, trains a part of it and merges into a plain model computing the same)."""

import importlib.util
import math
import pathlib

import numpy as np
import pytest
from flax import nnx

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_png(path):
    assert path.exists() and path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- digits_factorized ----------------------------------------------------------------------


def dense_layer_params(n_in, n_out):
    return n_in * n_out + n_out


def factorized_params(layer):
    """The closed form of a FactorizedDense's parameters from its kind, shapes and rank."""
    n_in, n_out, r = layer.in_features, layer.out_features, layer.rank
    if layer.kind == "lowrank":
        factors = r * (n_in + n_out)
    elif layer.kind == "cp":
        factors = r * (sum(layer.in_shape) + sum(layer.out_shape))
    elif layer.kind == "tucker":
        dims = layer.in_shape + layer.out_shape
        factors = math.prod(r) + sum(d * k for d, k in zip(dims, r))
    else:  # tt: cores (r_{k-1}, I_k, J_k, r_k)
        factors = sum(r[k] * i * j * r[k + 1]
                      for k, (i, j) in enumerate(zip(layer.in_shape, layer.out_shape)))
    return factors + n_out


def test_digits_parameter_counts_are_the_closed_forms():
    ex = load_example("digits_factorized")
    hidden, fraction = ex.HIDDEN, 0.1
    head = dense_layer_params(hidden, 10)

    def build(name):  # shapes only: nothing is drawn or compiled
        return nnx.eval_shape(lambda: ex.build(name, fraction))

    dense = build("dense")
    assert ex.n_params(dense) == (dense_layer_params(64, hidden)
                                  + dense_layer_params(hidden, hidden) + head) == 85002
    for kind in ("lowrank", "cp", "tucker", "tt"):
        model = build(kind)
        layers = (model.fc1, model.fc2)
        assert ex.n_params(model) == sum(factorized_params(layer) for layer in layers) + head
        for layer in layers:  # the rank fraction bounds the factors by 10% of the kernel
            factors = factorized_params(layer) - layer.out_features
            assert factors <= fraction * layer.in_features * layer.out_features, (kind, layer)
    # CNN: conv1 (3·3·1·16 + 16) and head (512·10 + 10) are dense in all three
    fixed = 9 * 16 + 16 + 512 * 10 + 10
    assert ex.n_params(build("cnn-dense")) == fixed + 9 * 16 * 32 + 32
    tucker = build("cnn-tucker")
    r_in, r_out = tucker.conv2.rank
    assert ex.n_params(tucker) == fixed + 16 * r_in + 9 * r_in * r_out + r_out * 32 + 32
    cp = build("cnn-cp")
    assert ex.n_params(cp) == fixed + cp.conv2.rank * (3 + 3 + 16 + 32) + 32
    with pytest.raises(ValueError, match="model must be one of"):
        ex.build("resnet", fraction)


def test_digits_factorized_quick(tmp_path, capsys):
    ex = load_example("digits_factorized")
    models = ["dense", "lowrank", "cnn-tucker"]
    results = ex.main(["--quick", "--models", *models, "--no-progress", "--out", str(tmp_path)])
    check_png(tmp_path / "digits_factorized.png")
    printed = capsys.readouterr().out
    assert all(name in printed for name in models) and "test acc." in printed
    assert list(results) == models
    for name, r in results.items():
        assert r["accuracy"] > 0.8, (name, r["accuracy"])  # chance is 0.1
        assert len(r["losses"]) == 200 and np.all(np.isfinite(r["losses"]))
        assert r["losses"][-20:].mean() < 0.25 * r["losses"][:5].mean(), name
        assert r["compile_s"] > 0 and r["train_s"] > 0
    assert results["dense"]["params"] == 85002
    # about a tenth of the hidden layers' parameters
    assert results["lowrank"]["params"] < 0.15 * results["dense"]["params"]
    assert results["lowrank"]["rank"] == 5  # ⌊0.1 · 64 · 256 / (64 + 256)⌋


# -- compress_finetune ----------------------------------------------------------------------


def test_compress_finetune_quick(tmp_path):
    ex = load_example("compress_finetune")
    fractions = [0.25, 0.05, 0.02]
    dense, rows = ex.main(["--quick", "--no-progress", "--out", str(tmp_path)])
    check_png(tmp_path / "compress_finetune.png")
    assert dense["params"] == 85002 and dense["accuracy"] > 0.9
    assert [r["fraction"] for r in rows] == fractions and {r["kind"] for r in rows} == {"lowrank"}
    for r in rows:
        report = r["report"]
        assert [layer.path for layer in report] == [("fc1",), ("fc2",)]  # the head stays dense
        # the model's count is the dense one with the two hidden layers swapped
        assert r["params"] == dense["params"] - report.params_before + report.params_after
        assert report.params_before == 64 * 256 + 256 + 256 * 256 + 256
        r1, r2 = r["ranks"]
        assert report.params_after == r1 * (64 + 256) + 256 + r2 * 512 + 256
        assert r["ratio"] == pytest.approx(r["params"] / dense["params"]) and r["ratio"] < 1
        assert 0 < r["weight_error"] < 1
        # fine-tuning never loses more than a test image or two, and at a strong compression
        # it wins back a lot
        assert r["acc_finetuned"] >= r["acc_compressed"] - 0.01, r
    ratios = [r["ratio"] for r in rows]
    assert ratios == sorted(ratios, reverse=True)
    errors = [r["weight_error"] for r in rows]
    assert errors == sorted(errors)  # lower ranks of the same truncated SVDs
    strongest = rows[-1]
    assert strongest["acc_compressed"] < dense["accuracy"] - 0.2
    assert strongest["acc_finetuned"] > strongest["acc_compressed"] + 0.1


# -- pissa_vs_lora --------------------------------------------------------------------------


def test_pissa_vs_lora_quick(tmp_path, capsys):
    ex = load_example("pissa_vs_lora")
    base, runs = ex.main(["--quick", "--no-progress", "--out", str(tmp_path)])
    check_png(tmp_path / "pissa_vs_lora.png")
    assert "PiSSA / LoRA loss after 100 steps" in capsys.readouterr().out
    assert base["original"] > 0.9 and base["rotated"] < 0.4  # the shift breaks the model
    lora, pissa = runs["gaussian"][0], runs["pissa"][0]
    for r in (lora, pissa):
        np.testing.assert_array_equal(r["steps"], np.arange(0, 101, 10))
        assert np.all(np.isfinite(r["loss"])) and len(r["batch_loss"]) == 100
        assert r["loss"][-1] < 0.5 * r["loss"][0]  # both adapters learn the shifted task
        assert r["accuracy"] > base["rotated"] + 0.1
    # both adapters start at the pre-trained model's output, so at the same loss
    assert pissa["loss"][0] == pytest.approx(lora["loss"][0], rel=1e-3)
    # PiSSA converges faster: over 8 seeds of the quick mode its loss after 20 and 100 steps
    # was at most 0.56× LoRA's, so 0.8× leaves a wide margin
    assert ex.loss_at(pissa, 20) < 0.8 * ex.loss_at(lora, 20)
    assert pissa["loss"][-1] < 0.8 * lora["loss"][-1]
    assert ex.loss_at(pissa, 55) == pissa["loss"][5]


# -- finetune_transformer -------------------------------------------------------------------


@pytest.mark.slow  # ~20 s; its pieces (apply_adapters, merge, PEFT format) are unit-tested
def test_finetune_transformer_small(tmp_path, capsys):
    ex = load_example("finetune_transformer")
    base, rows = ex.main(["--small", "--no-progress", "--out", str(tmp_path)])
    check_png(tmp_path / "finetune_transformer.png")
    assert (tmp_path / "finetune_transformer.json").exists()
    printed = capsys.readouterr().out
    assert [r["name"] for r in rows] == list(ex.METHODS)
    assert all(r["name"] in printed for r in rows) and "merge diff" in printed
    full = base["params"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["no fine-tune"]["trainable"] == 0
    assert by_name["full fine-tune"]["trainable"] == full
    for r in rows:
        losses = [r["before"], r["after"], r["base_after"], *r["curve"][:, 1]]
        assert np.all(np.isfinite(losses)), r["name"]
        # every method starts from the pre-trained model's output
        assert r["before"] == pytest.approx(base["val_shifted"], abs=1e-4), r["name"]
        if r["report"] is None:
            continue
        assert 0 < r["trainable"] < full, r["name"]
        assert r["trainable"] == r["report"].trainable
        # one adapter per attention projection and MLP layer of each block
        assert len(r["report"].layers) == 6 * base["config"].layers
        assert r["merged_is_plain"] and r["merge_diff"] < 1e-4, r["name"]
        assert r["step_ms"] > 0 and r["after"] != r["before"], r["name"]
    # the ranks: LoRA's for the kinds that take it, counts matched to LoRA's for the others
    lora = by_name["LoRA"]["trainable"]
    for name in ("LoRA-XS", "VeRA"):
        assert abs(by_name[name]["trainable"] - lora) <= 0.1 * lora, name


@pytest.mark.slow  # ~15 s; each layer's math, decode and training are unit-tested
def test_attention_variants_small(tmp_path, capsys):
    ex = load_example("attention_variants")
    rows = ex.main(["--small", "--no-progress", "--out", str(tmp_path)])
    check_png(tmp_path / "attention_variants.png")
    printed = capsys.readouterr().out
    assert [r["name"] for r in rows] == ["MHA", "TPA", "MFA", "MFA-KR", "μMoE"]
    assert all(r["name"] in printed for r in rows) and "KV B/token" in printed
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        assert np.isfinite(r["val"]) and r["step_ms"] > 0 and r["tokens_per_s"] > 0, r["name"]
        assert r["decode_diff"] < 1e-4, r["name"]            # the cache gives the forward
        # comparable sizes: within a quarter of the baseline's parameters
        assert abs(r["params"] - by_name["MHA"]["params"]) <= 0.25 * by_name["MHA"]["params"]
    kv = {r["name"]: r["cache_bytes"] for r in rows}
    assert kv["MFA-KR"] < kv["MFA"] < kv["MHA"] == kv["μMoE"], kv

"""Tests of model-wide adapters (``tensorfact.nn.apply_adapters`` and its management functions).

A small transformer-like model holds every layer type an adapter takes (the ``nnx.LinearGeneral``
projections of ``nnx.MultiHeadAttention``, an ``nnx.Einsum``, ``nnx.Linear``, ``nnx.Conv`` and a
tied ``nnx.Embed``), an ``nnx.List`` of blocks and a layer shared by two paths. The adapted model
must start at the base output, train only the adapter's parameters, merge into a plain model that
computes what it computes, switch, disable and reload its adapters, and refuse bad rules clearly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tensorfact import nn as tnn

D, V, HEADS = 8, 11, 2


class Block(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(HEADS, D, decode=False, rngs=rngs)
        self.mix = nnx.Einsum("btd,dnh->btnh", (D, HEADS, D // HEADS), rngs=rngs)
        self.proj = nnx.LinearGeneral((HEADS, D // HEADS), D, axis=(-2, -1), rngs=rngs)
        self.mlp = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(x)
        x = x + self.proj(self.mix(x))
        return x + nnx.relu(self.mlp(x))


class Model(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(V, D, rngs=rngs)
        self.blocks = nnx.List([Block(rngs) for _ in range(2)])
        self.shared = self.blocks[0].mlp          # one layer at two paths
        self.conv = nnx.Conv(D, D, (3,), rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        h = self.conv(h) + self.shared(h)
        return self.embed.attend(h)               # tied output layer


@pytest.fixture(scope="module")
def model():
    return Model(nnx.Rngs(0))


@pytest.fixture(scope="module")
def ids():
    return jax.random.randint(jax.random.key(1), (3, 5), 0, V)


def perturb(model, scale=0.1):
    """Moves every adapter parameter, so that the adapters change the output."""
    for k, (_, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))):
        var[...] = var[...] + scale * jax.random.normal(jax.random.key(k), var.shape)


def plain_nodes(model):
    return [n for _, n in nnx.iter_graph(model)
            if isinstance(n, (tnn.AdaptedLayer, tnn.LoRA, tnn.DoRA))]


def test_wraps_every_layer_type_and_starts_at_the_base(model, ids):
    rules = [tnn.AdapterRule(".*attn/(query|value)", "lora", rank=2),
             tnn.AdapterRule(".*(mix|proj)", "dora", rank=2),
             tnn.AdapterRule("embed|conv", "lora", rank=2),
             tnn.AdapterRule(".*mlp", "loha", rank=2)]
    adapted, report = tnn.apply_adapters(model, rules, rngs=nnx.Rngs(2))
    paths = [r.path for r in report.layers]
    assert paths == ["blocks/0/attn/query", "blocks/0/attn/value", "blocks/0/mix",
                     "blocks/0/mlp", "blocks/0/proj", "blocks/1/attn/query",
                     "blocks/1/attn/value", "blocks/1/mix", "blocks/1/mlp", "blocks/1/proj",
                     "conv", "embed"]
    by_path = {r.path: r for r in report.layers}
    assert by_path["blocks/0/attn/query"].layer_type == "LinearGeneral"
    assert by_path["blocks/0/mix"].adapter == "DoRA"
    assert by_path["blocks/0/mlp"].shared_with == ("shared",)
    assert by_path["embed"].trainable == 2 * (V + D)
    # the shared layer is wrapped once and stays shared
    assert adapted.shared is adapted.blocks[0].mlp
    assert isinstance(adapted.shared, tnn.AdaptedLayer)
    n_model = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model,
                                                                                  nnx.Param)))
    assert report.model_params == n_model
    assert report.trainable == sum(r.trainable for r in report.layers)
    assert report.share == pytest.approx(report.trainable / n_model)
    assert "blocks/0/attn/query" in str(report)
    # attributes of the wrapped layer stay readable through the wrapper
    assert adapted.blocks[0].mlp.in_features == D
    assert adapted.embed.embedding is adapted.embed.base.embedding
    # exact start, and the model passed in is untouched
    assert bool((adapted(ids) == model(ids)).all())
    assert not plain_nodes(model)


def test_trains_only_adapters_and_merges(model, ids):
    adapted, _ = tnn.apply_adapters(model, [tnn.AdapterRule(".*(query|mix|proj|mlp)|embed",
                                                            rank=2)], rngs=nnx.Rngs(3))
    base_params = nnx.state(adapted, nnx.Not(nnx.LoRAParam))
    before = jax.tree.map(lambda v: np.asarray(v), base_params)
    optimizer = nnx.Optimizer(adapted, optax.adam(1e-2), wrt=tnn.adapter_filter())
    target = jax.random.normal(jax.random.key(4), (3, 5, V))

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(m):
            return jnp.mean((m(ids) - target) ** 2)
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(adapted, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    after = jax.tree.map(lambda v: np.asarray(v), nnx.state(adapted, nnx.Not(nnx.LoRAParam)))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    merged = tnn.merge_adapters(adapted)
    assert not plain_nodes(merged)
    assert type(merged.blocks[1].attn.query) is nnx.LinearGeneral
    assert merged.shared is merged.blocks[0].mlp
    np.testing.assert_allclose(merged(ids), adapted(ids), rtol=2e-5, atol=2e-5)
    assert float(jnp.max(jnp.abs(adapted(ids) - model(ids)))) > 1e-3


def test_named_adapters_switch_and_disable(model, ids):
    first, _ = tnn.apply_adapters(model, tnn.AdapterRule(".*mlp", rank=2), name="one",
                                  rngs=nnx.Rngs(5))
    both, report = tnn.apply_adapters(first, tnn.AdapterRule(".*query", "lokr", rank=1),
                                      name="two", rngs=nnx.Rngs(6))
    assert report.name == "two" and len(report.layers) == 2
    perturb(both)
    out_two = both(ids)
    tnn.set_active(both, "one")
    out_one = both(ids)
    assert float(jnp.max(jnp.abs(out_one - out_two))) > 1e-4
    # adapter_filter(name) selects that adapter's parameters alone
    one = nnx.state(both, tnn.adapter_filter("one"))
    assert {p[-1] for p, _ in nnx.to_flat_state(one)} == {"lora_a", "lora_b"}
    with tnn.disabled(both):
        assert bool((both(ids) == model(ids)).all())
    np.testing.assert_array_equal(both(ids), out_one)
    tnn.disable_adapters(both)
    assert bool((both(ids) == model(ids)).all())
    tnn.enable_adapters(both)
    np.testing.assert_array_equal(both(ids), out_one)
    with pytest.raises(ValueError, match="no adapter named 'three'.*'one', 'two'"):
        tnn.set_active(both, "three")
    with pytest.raises(ValueError, match="an adapter named 'one' is already there"):
        tnn.apply_adapters(both, tnn.AdapterRule(".*mlp", rank=2), name="one",
                           rngs=nnx.Rngs(0))


@pytest.mark.parametrize("fmt", ["safetensors", "orbax"])
def test_save_and_load_into_a_fresh_model(model, ids, tmp_path, fmt):
    rules = [tnn.AdapterRule(".*mlp", "lora", rank=2, init="pissa"),
             tnn.AdapterRule(".*mix", "vera", rank=2),
             tnn.AdapterRule("embed", rank=2)]
    adapted, _ = tnn.apply_adapters(model, rules, name="task", rngs=nnx.Rngs(7))
    perturb(adapted)
    tnn.save_adapter(tmp_path / "ad", adapted, rules, format=fmt)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tnn.save_adapter(tmp_path / "ad", adapted, rules, format=fmt)
    # a fresh base model, other keys: the randomized PiSSA draws other starting factors
    loaded = tnn.load_adapter(Model(nnx.Rngs(0)), tmp_path / "ad", rngs=nnx.Rngs(99))
    np.testing.assert_allclose(loaded(ids), adapted(ids), rtol=1e-5, atol=1e-5)
    assert tnn.adapter_state(loaded, "task") is not None
    # an nnx.State round trip into a model holding the adapter
    other, _ = tnn.apply_adapters(model, rules, name="task", rngs=nnx.Rngs(8))
    tnn.load_adapter(other, tnn.adapter_state(adapted))
    np.testing.assert_allclose(other(ids), adapted(ids), rtol=1e-5, atol=1e-5)
    wrong, _ = tnn.apply_adapters(model, tnn.AdapterRule(".*mlp", rank=3), name="task",
                                  rngs=nnx.Rngs(8))
    with pytest.raises(ValueError, match="does not fit|shape"):
        tnn.load_adapter(wrong, tnn.adapter_state(adapted))


def test_dropout_follows_train_and_eval(model, ids):
    adapted, _ = tnn.apply_adapters(model, tnn.AdapterRule(".*mlp", "dora", rank=2,
                                                           dropout=0.5), rngs=nnx.Rngs(9))
    perturb(adapted)
    adapted.eval()
    reference = adapted(ids)
    np.testing.assert_array_equal(adapted(ids), reference)
    adapted.train()
    assert float(jnp.max(jnp.abs(adapted(ids) - reference))) > 1e-4


@pytest.mark.parametrize("kind,rank", [("lora", 2), ("dora", 2), ("lokr", 1), ("loha", 2),
                                       ("tt", 2), ("lora_xs", 2), ("kron", 1), ("vera", 2),
                                       ("nola", 2)])
def test_every_kind_on_attention_projections(model, ids, kind, rank):
    adapted, report = tnn.apply_adapters(
        model, tnn.AdapterRule(".*(attn/(query|out)|mix|proj)", kind, rank=rank),
        rngs=nnx.Rngs(10))
    assert len(report.layers) == 8
    np.testing.assert_allclose(adapted(ids), model(ids), rtol=1e-5, atol=1e-5)
    perturb(adapted)
    np.testing.assert_allclose(tnn.merge_adapters(adapted)(ids), adapted(ids), rtol=2e-5,
                               atol=2e-5)


def test_bad_rules(model):
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"rule 1, AdapterRule\('nothing', 'lora', rank=8\), "
                                         "matches no layer"):
        tnn.apply_adapters(model, [tnn.AdapterRule(".*mlp"), tnn.AdapterRule("nothing")],
                           rngs=rngs)
    with pytest.raises(ValueError, match="rule 1.*takes no layer.*more specific rules first"):
        tnn.apply_adapters(model, [tnn.AdapterRule(".*"), tnn.AdapterRule(".*mlp")], rngs=rngs)
    with pytest.raises(TypeError, match=r"conv \(rule 0.*base must be an nnx.Linear, "
                                        "nnx.LinearGeneral or nnx.Einsum for TTAdapter, got Conv"):
        tnn.apply_adapters(model, tnn.AdapterRule("conv", "tt", layers=[nnx.Conv]), rngs=rngs)
    with pytest.raises(ValueError, match="kind must be one of"):
        tnn.AdapterRule(".*", "lorax")
    with pytest.raises(ValueError, match="is not a regular expression"):
        tnn.AdapterRule("(")
    with pytest.raises(ValueError, match="LoKr takes no argument 'init'"):
        tnn.AdapterRule(".*", "lokr", init="pissa")
    with pytest.raises(ValueError, match="layers must name"):
        tnn.AdapterRule(".*", layers=["Dense"])
    with pytest.raises(ValueError, match=r"dropout must be a rate in \[0, 1\)"):
        tnn.AdapterRule(".*", dropout=1.5)
    with pytest.raises(TypeError, match="rules must be an AdapterRule"):
        tnn.apply_adapters(model, [], rngs=rngs)
    grouped = nnx.Sequential(nnx.Conv(4, 4, (3,), feature_group_count=2, rngs=rngs))
    with pytest.raises(ValueError, match="layers/0 .*feature_group_count = 2"):
        tnn.apply_adapters(grouped, tnn.AdapterRule(".*"), rngs=rngs)
    with pytest.raises(ValueError, match="batch_axis"):
        tnn.LoRA(nnx.LinearGeneral(4, 3, axis=-1, batch_axis={0: 2}, rngs=rngs), 2, rngs=rngs)
    with pytest.raises(ValueError, match="shared by the input and the output"):
        tnn.LoRA(nnx.Einsum("bnd,ndh->bnh", (2, 4, 3), rngs=rngs), 2, rngs=rngs)
    with pytest.raises(ValueError, match="no adapted layer"):
        tnn.disable_adapters(model)


def test_embedding_lora_matches_the_peft_formula():
    """PEFT's embedding LoRA: ``base(ids) + A[ids] B · s`` (A, B stored transposed in PEFT), and
    the tied output ``attend`` adds ``q ΔWᵀ``."""
    emb = nnx.Embed(V, D, rngs=nnx.Rngs(0))
    lora = tnn.LoRA(emb, 3, alpha=6, rngs=nnx.Rngs(1))
    assert float(jnp.abs(lora.lora_a[...]).max()) == 0.0          # A = 0, B ~ N(0, 1) as PEFT
    perturb(lora)
    ids = jnp.array([[0, 3, 10], [4, 4, 1]])
    a, b = (np.asarray(v[...], np.float64) for v in (lora.lora_a, lora.lora_b))
    table = np.asarray(emb.embedding[...], np.float64)
    np.testing.assert_allclose(lora(ids), table[ids] + 2.0 * a[ids] @ b, rtol=1e-5, atol=1e-6)
    q = np.asarray(jax.random.normal(jax.random.key(2), (2, D)), np.float64)
    np.testing.assert_allclose(lora.attend(q), q @ (table + 2.0 * a @ b).T, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(lora.merge().embedding[...], table + 2.0 * a @ b, rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("kind,settings", [("lora", {"init": "pissa"}), ("lora_xs", {}),
                                           ("kron", {})])
def test_svd_started_adapters_build_under_eval_shape(kind, settings):
    """The finiteness check of a kernel must not call int() on a traced count (eval_shape
    traces the construction even though the weights are concrete)."""
    model = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0)))
    rank = 1 if kind == "kron" else 2
    abstract = nnx.eval_shape(lambda: tnn.apply_adapters(
        model, tnn.AdapterRule(".*", kind, rank=rank, **settings), rngs=nnx.Rngs(0))[0])
    assert isinstance(abstract.layers[0], tnn.AdaptedLayer)
    # eagerly, a NaN in the kernel is still an error naming it
    bad = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0)))
    bad.layers[0].kernel[...] = bad.layers[0].kernel[...].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="kernel contains 1 NaN or Inf"):
        tnn.apply_adapters(bad, tnn.AdapterRule(".*", kind, rank=rank, **settings),
                           rngs=nnx.Rngs(0))

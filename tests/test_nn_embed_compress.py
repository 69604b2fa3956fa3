"""Tests of ``tensorfact.nn.TTEmbed`` (lookup against a float64 NumPy table, no table formed in
the lookup's program, exact ``from_layer``, initialisation variance, gradients) and of
``tensorfact.nn.compress`` (report numbers against NumPy, outputs, ``select``, the input model
left untouched, argument checks). Shapes are small: compilation dominates on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from _helpers import rel, x64
from tensorfact.nn import FactorizedDense, TTEmbed, compress

N, F = 60, 12          # table (60, 12): in_shape (5, 4, 3), out_shape (3, 2, 2)


def numpy_table(layer):
    """The ``(num_embeddings, features)`` table from the cores, in float64 NumPy."""
    out = np.ones((1, 1, 1))
    for g in layer.cores:
        g = np.asarray(g[...], np.float64)
        out = np.einsum("ija,amnb->imjnb", out, g)
        out = out.reshape(out.shape[0] * out.shape[1], out.shape[2] * out.shape[3], -1)
    return out[..., 0]


@pytest.fixture(scope="module")
def emb():
    return TTEmbed(N, F, rank=3, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# TTEmbed


def test_embed_shapes_and_lookup(emb):
    assert (emb.in_shape, emb.out_shape, emb.rank) == ((5, 4, 3), (3, 2, 2), (1, 3, 3, 1))
    assert emb.n_params == 1 * 5 * 3 * 3 + 3 * 4 * 2 * 3 + 3 * 3 * 2 * 1
    table = numpy_table(emb)
    ids = np.array([[0, 1, 59], [17, 42, 30]])
    out = emb(jnp.asarray(ids))
    assert out.shape == (2, 3, F)
    np.testing.assert_allclose(out, table[ids], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, i: m(i))(emb, jnp.arange(N)), table,
                               rtol=1e-5, atol=1e-6)
    assert emb(jnp.zeros((0,), jnp.int32)).shape == (0, F)
    # out-of-range ids give NaN rows, like nnx.Embed
    bad = emb(jnp.array([-1, N, 3]))
    assert np.isnan(bad[:2]).all() and np.isfinite(bad[2]).all()


def test_embed_lookup_never_forms_the_table():
    layer = TTEmbed(4096, 64, rank=4, rngs=nnx.Rngs(1))      # table of 262144 entries
    graphdef, state = nnx.split(layer)

    def f(state, ids):
        return nnx.merge(graphdef, state)(ids)

    jaxpr = jax.make_jaxpr(f)(state, jnp.arange(8))

    def sizes(jpr):
        for eqn in jpr.eqns:
            for v in eqn.outvars:
                yield int(np.prod(v.aval.shape))
            for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
                yield from sizes(sub)

    assert max(sizes(jaxpr.jaxpr)) < 4096          # the largest intermediate is tiny
    np.testing.assert_allclose(layer(jnp.array([4095, 7])), numpy_table(layer)[[4095, 7]],
                               rtol=1e-5, atol=1e-6)


def test_embed_from_layer_exact_and_truncated():
    with x64():
        table = np.random.default_rng(0).standard_normal((N, F))
        full = TTEmbed.from_layer(jnp.asarray(table), rank="full")
        assert full.cores[0][...].dtype == jnp.float64
        np.testing.assert_allclose(full(jnp.arange(N)), table, atol=1e-10)
        small = TTEmbed.from_layer(jnp.asarray(table), rank=2)
        assert small.rank == (1, 2, 2, 1)
        # truncated TT-SVD: never better than the best rank-2 approximation of the first
        # unfolding (5 × 48), which is its first step
        unf = table.reshape(5, 4, 3, 3, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(15, -1)
        s = np.linalg.svd(unf, compute_uv=False)
        best = np.sqrt(np.sum(s[2:] ** 2)) / np.linalg.norm(table)
        assert best - 1e-12 <= rel(table, small(jnp.arange(N))) < 1.0
    dense = nnx.Embed(N, F, rngs=nnx.Rngs(3))
    tt = TTEmbed.from_layer(dense, rank="full")
    np.testing.assert_allclose(tt(jnp.arange(N)), dense(jnp.arange(N)), atol=1e-5)
    np.testing.assert_allclose(tt.to_layer().embedding[...], dense.embedding[...], atol=1e-5)


def test_embed_init_variance():
    """Table entries have variance 1/features, that of nnx.Embed's default init."""
    def table(key):
        layer = TTEmbed(N, F, rank=3, rngs=nnx.Rngs(key))
        return layer.weight.to_dense()

    keys = jax.random.split(jax.random.key(0), 200)
    tables = np.asarray(jax.jit(jax.vmap(table))(keys), np.float64)
    var = tables.var()
    ref = np.asarray(nnx.Embed(N, F, rngs=nnx.Rngs(0)).embedding[...]).var()
    assert abs(var * F - 1) < 0.1                  # 144 000 samples, correlated within a table
    assert abs(ref * F - 1) < 0.2


def test_embed_grads():
    with x64():
        layer = TTEmbed(N, F, rank=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        ids = jnp.array([3, 59, 3, 20])
        graphdef, state = nnx.split(layer)

        def loss(state):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(ids)))

        check_grads(loss, (state,), order=1, modes=("rev",))


def test_embed_errors():
    with pytest.raises(ValueError, match="in_shape"):
        TTEmbed(N, F, rank=2, in_shape=(7, 8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank"):
        TTEmbed(N, F, rank=0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="integer"):
        TTEmbed(N, F, rank=2, rngs=nnx.Rngs(0))(jnp.array([1.0]))
    with pytest.raises(TypeError, match="nnx.Embed"):
        TTEmbed.from_layer(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), rank=2)


# ---------------------------------------------------------------------------------------------
# compress


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(16, 12, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(12, 12, rngs=rngs)]) if hasattr(nnx, "List") else [
            nnx.Linear(12, 12, rngs=rngs)]
        self.out = nnx.Linear(12, 4, use_bias=False, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.fc1(x))
        x = jax.nn.relu(self.blocks[0](x))
        return self.out(x)


@pytest.fixture(scope="module")
def mlp():
    return MLP(nnx.Rngs(0))


def kernels(model):
    return {p: np.asarray(n.kernel[...]).copy() for p, n in nnx.iter_graph(model)
            if isinstance(n, nnx.Linear)}


def test_compress_report_against_numpy(mlp):
    before = kernels(mlp)
    small, report = compress(mlp, rank=3)
    assert sorted(r.path for r in report) == [("blocks", 0), ("fc1",), ("out",)]
    for r in report:
        w = before[r.path].astype(np.float64)
        m, n = w.shape
        bias = 0 if r.path == ("out",) else n
        assert (r.kind, r.rank) == ("lowrank", 3)
        assert r.params_before == m * n + bias
        assert r.params_after == 3 * (m + n) + bias
        s = np.linalg.svd(w, compute_uv=False)
        assert r.rel_weight_error == pytest.approx(np.sqrt(np.sum(s[3:] ** 2) / np.sum(s ** 2)),
                                                   rel=1e-3)
    assert report.params_before == sum(r.params_before for r in report)
    assert report.ratio == pytest.approx(report.params_after / report.params_before)
    text = str(report)
    assert "blocks/0" in text and "total" in text and str(report.params_after) in text
    # the input model is untouched; the output has FactorizedDense layers
    after = kernels(mlp)
    assert set(after) == set(before) and all(np.array_equal(before[p], after[p]) for p in before)
    assert isinstance(small.fc1, FactorizedDense) and isinstance(small.blocks[0], FactorizedDense)
    assert not kernels(small)


def test_compress_outputs_select_and_energy(mlp):
    x = jax.random.normal(jax.random.key(1), (5, 16))
    full, report = compress(mlp, rank="full")
    assert max(r.rel_weight_error for r in report) < 1e-5
    assert rel(mlp(x), full(x)) < 1e-4
    sel, report = compress(mlp, rank=2, select=lambda path, layer: path[0] != "fc1")
    assert sorted(r.path for r in report) == [("blocks", 0), ("out",)]
    assert isinstance(sel.fc1, nnx.Linear) and isinstance(sel.out, FactorizedDense)
    np.testing.assert_array_equal(sel.fc1.kernel[...], mlp.fc1.kernel[...])
    _, report = compress(mlp, rank=("energy", 0.9))
    for r in report:
        s = np.linalg.svd(np.asarray(kernels(mlp)[r.path], np.float64), compute_uv=False)
        e = np.cumsum(s ** 2) / np.sum(s ** 2)
        assert r.rank == int(np.searchsorted(e, 0.9 * (1 - 1e-6)) + 1)
        assert r.rel_weight_error <= np.sqrt(0.1) + 1e-4
    _, report = compress(mlp, rank=lambda path, layer: 1 if path == ("out",) else 0.5)
    ranks = {r.path: r.rank for r in report}
    assert ranks[("out",)] == 1 and ranks[("fc1",)] == int(0.5 * 16 * 12 / 28)
    root, report = compress(nnx.Linear(8, 6, rngs=nnx.Rngs(0)), kind="tucker", rank="full")
    assert isinstance(root, FactorizedDense) and report[0].path == ()
    assert report[0].rel_weight_error < 1e-5


def test_compress_errors(mlp):
    with pytest.raises(ValueError, match="kind"):
        compress(mlp, kind="svd", rank=2)
    with pytest.raises(ValueError, match="energy"):
        compress(mlp, kind="tucker", rank=("energy", 0.9))
    with pytest.raises(ValueError, match="rank"):
        compress(mlp, rank=1.5)
    with pytest.raises(ValueError, match="rank"):
        compress(mlp, rank=[2])
    with pytest.raises(ValueError, match="rank"):
        compress(mlp, rank=0)
    with pytest.raises(TypeError, match="select"):
        compress(mlp, rank=2, select="fc1")
    with pytest.raises(TypeError, match="model"):
        compress(jnp.ones((2, 2)), rank=2)

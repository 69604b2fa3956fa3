"""ACIP: singular values scored by one masked training run; any ratio cut from the scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tensorfact.nn as tnn


class Teacher(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(16, 24, rngs=rngs)
        self.b = nnx.Linear(24, 6, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def problem(seed=0):
    model = Teacher(nnx.Rngs(seed))
    # a decaying spectrum, so that some singular values matter much more than others
    for layer in (model.a, model.b):
        u, s, vt = np.linalg.svd(np.asarray(layer.kernel[...]), full_matrices=False)
        layer.kernel[...] = jnp.asarray((u * (s * 0.6 ** np.arange(len(s)))) @ vt)
    xs = [jax.random.normal(jax.random.key(i), (64, 16)) for i in range(3)]
    batches = [(x, model(x)) for x in xs]
    return model, batches


def loss_fn(m, batch):
    x, y = batch
    return jnp.mean((m(x) - y) ** 2)


def test_without_penalty_every_value_is_kept():
    model, batches = problem()
    scores = tnn.acip(model, batches, loss_fn, penalty=0.0, n_iter=40, progress=False)
    for path, s in scores.scores.items():
        assert np.all(np.asarray(s) >= 40), path  # no mask reached zero (pruned: a step < 40)
        # Adam's steps are of the learning rate's size even for the tiny gradients of a loss
        # already at its minimum, so the masks wander a little, but none goes far
        assert np.all(np.asarray(scores.masks[path]) > 0.9), path


def test_penalty_prunes_the_small_singular_values_first():
    model, batches = problem()
    scores = tnn.acip(model, batches, loss_fn, penalty=0.05, n_iter=300, progress=False)
    assert scores.losses.shape == (300,) and np.all(np.isfinite(scores.losses))
    s = np.asarray(scores.scores[("a",)])
    assert np.any(s < 300)  # the penalty pruned something
    half = len(s) // 2  # σ in descending order: the leading half outlives the trailing half
    assert s[:half].mean() > s[half:].mean()


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_any_ratio_is_cut_from_the_same_scores(fraction):
    model, batches = problem()
    scores = tnn.acip(model, batches, loss_fn, n_iter=150, progress=False)
    small, report = tnn.compress(model, method="acip", scores=scores, params=fraction)
    assert report.ratio <= fraction + 0.01 and report.ratio >= fraction - 0.1
    x, y = batches[0]
    out = small(x)
    assert out.shape == y.shape and bool(jnp.all(jnp.isfinite(out)))
    # the kept kernel is exactly U[:, S] diag(σ[S]) V[S]ᵀ: its rank is the number kept
    for r in report:
        w = np.asarray(tnn.compress(model, method="acip", scores=scores, params=fraction)[0]
                       .a.dense_weight() if r.path == ("a",) else small.b.dense_weight())
        assert np.linalg.matrix_rank(w, tol=1e-5 * np.abs(w).max()) == r.rank


def test_more_parameters_kept_means_a_lower_loss():
    model, batches = problem()
    scores = tnn.acip(model, batches, loss_fn, n_iter=150, progress=False)
    losses = [float(loss_fn(tnn.compress(model, method="acip", scores=scores, params=p)[0],
                            batches[0])) for p in (0.15, 0.4, 0.8)]
    assert losses[0] >= losses[1] >= losses[2]
    full, _ = tnn.compress(model, method="acip", scores=scores, rank="full")
    assert float(loss_fn(full, batches[0])) < 1e-8  # every value kept: the model itself


def test_per_layer_rank_keeps_the_best_scored():
    model, batches = problem()
    scores = tnn.acip(model, batches, loss_fn, n_iter=100, progress=False)
    _, report = tnn.compress(model, method="acip", scores=scores, rank=3)
    assert [r.rank for r in report] == [3, 3]


def test_errors():
    model, batches = problem()
    scores = tnn.acip(model, batches, loss_fn, n_iter=5, progress=False,
                      select=lambda path, layer: path == ("a",))
    with pytest.raises(ValueError, match="no ACIP scores for layer b"):
        tnn.compress(model, method="acip", scores=scores, params=0.5)
    with pytest.raises(TypeError, match='method "acip" needs scores'):
        tnn.compress(model, method="acip", params=0.5)
    with pytest.raises(ValueError, match='scores are for method "acip"'):
        tnn.compress(model, scores=scores, rank=2)
    with pytest.raises(ValueError, match="no nnx.Linear layer to score"):
        tnn.acip(nnx.Sequential(jax.nn.relu), batches, loss_fn, progress=False)
    with pytest.raises(ValueError, match="calibration holds no batch"):
        tnn.acip(model, [], loss_fn, progress=False)
    with pytest.raises(ValueError, match="penalty must be"):
        tnn.acip(model, batches, loss_fn, penalty=-1.0, progress=False)

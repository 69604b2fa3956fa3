"""Random factorized tensors, for tests, demos and benchmarks (planted low-rank data)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tensorfact._checks import check_positive_int, check_ranks
from tensorfact._numerics import safe_norm
from tensorfact.tensors import CPTensor, TuckerTensor

__all__ = ["random_cp", "random_tucker", "noisy"]


def _check_shape(shape):
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError(f"shape must have at least one mode, got {shape}.")
    return tuple(check_positive_int(s, f"shape[{i}]") for i, s in enumerate(shape))


def random_cp(key, shape, rank: int, *, nonneg: bool = False, dtype=jnp.float32) -> CPTensor:
    """A CP tensor with i.i.d. standard normal factors (uniform on [0, 1) if ``nonneg``) and
    weights ``1/sqrt(rank)``, so that entries of the dense tensor are of order one.

    Example:
      >>> import jax, tensorfact as tfa
      >>> t = tfa.random_cp(jax.random.key(0), (4, 5, 6), rank=3)
      >>> t.shape, t.rank
      ((4, 5, 6), 3)
    """
    shape = _check_shape(shape)
    rank = check_positive_int(rank, "rank")
    draw = jax.random.uniform if nonneg else jax.random.normal
    keys = jax.random.split(key, len(shape))
    factors = [draw(k, (n, rank), dtype) for k, n in zip(keys, shape)]
    scale = jnp.asarray(rank, dtype) ** (-0.5)
    return CPTensor(jnp.full((rank,), scale, dtype), factors)


def random_tucker(key, shape, ranks, *, orthonormal: bool = True, nonneg: bool = False,
                  dtype=jnp.float32) -> TuckerTensor:
    """A Tucker tensor with a standard normal core and orthonormal factors (Gaussian factors
    with ``orthonormal=False``; uniform nonnegative core and factors with ``nonneg=True``).

    Example:
      >>> import jax, tensorfact as tfa
      >>> t = tfa.random_tucker(jax.random.key(0), (4, 5, 6), ranks=(2, 3, 2))
      >>> t.shape, t.rank
      ((4, 5, 6), (2, 3, 2))
    """
    shape = _check_shape(shape)
    ranks = check_ranks(ranks, shape)
    keys = jax.random.split(key, len(shape) + 1)
    if nonneg:
        core = jax.random.uniform(keys[0], ranks, dtype)
        factors = [jax.random.uniform(k, (n, r), dtype) for k, n, r in zip(keys[1:], shape, ranks)]
    else:
        core = jax.random.normal(keys[0], ranks, dtype)
        factors = [jax.random.normal(k, (n, r), dtype) for k, n, r in zip(keys[1:], shape, ranks)]
        if orthonormal:
            factors = [jnp.linalg.qr(u)[0] for u in factors]
    return TuckerTensor(core, factors)


def noisy(key, x, noise_level: float):
    """``x + e`` with Gaussian ``e`` scaled so that ``‖e‖ = noise_level · ‖x‖`` (the norms do
    not overflow for data of any representable magnitude).

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> x = jnp.full((4, 5), 1e30)
      >>> y = tfa.noisy(jax.random.key(0), x, 0.1)
      >>> round(float(tfa.relative_error(x, y)), 4)
      0.1
    """
    e = jax.random.normal(key, x.shape, x.dtype)
    return x + (noise_level * safe_norm(x) / safe_norm(e)) * e

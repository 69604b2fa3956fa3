"""A dense layer held as a CUR decomposition of its kernel: actual columns and rows of it.

``W ≈ C U R`` with ``C = W[:, J]`` (``in × k``, ``k`` actual columns of the kernel),
``R = W[I, :]`` (``k × out``, actual rows) and ``U = C⁺ W R⁺`` (``k × k``) (Mahoney & Drineas,
"CUR matrix decompositions for improved data analysis", PNAS 2009; the rows and columns by DEIM
by default, Sorensen & Embree, SIAM J. Sci. Comput. 2016: :func:`tensorfact.cur`). The layer
computes ``y = ((x C) U) R + b``: ``2·B·k·(in + k + out)`` FLOPs for ``B`` rows, against
``2·B·in·out``. Unlike a truncated SVD, the factors keep the kernel's own entries, which keeps
sparsity and interpretability of the columns (the input features kept); after fine-tuning
``C`` and ``R`` are no longer exact copies, while ``col_index`` and ``row_index`` say where they
came from.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact._checks import Precision, check_choice, check_positive_int
from tensorfact._numerics import resolve_precision
from tensorfact.decomposition import cur
from tensorfact.nn._common import check_input, dense_source, draw, params_key

__all__ = ["CURDense", "cur_rank_for_params"]


def cur_rank_for_params(in_features: int, out_features: int, fraction: float) -> int:
    """The largest ``k ≤ min(in, out)`` with ``k(in + out) + k² ≤ fraction · in · out`` (at
    least 1): the CUR rank within a parameter fraction."""
    budget = fraction * in_features * out_features
    s = in_features + out_features
    k = int((-s + math.sqrt(s * s + 4 * budget)) / 2)
    return max(1, min(k, in_features, out_features))


class CURDense(nnx.Module):
    """A dense layer ``y = x C U R + b`` with ``C``, ``U``, ``R`` as ``nnx.Param`` s (see the
    module docstring); built from a plain layer by :meth:`from_layer`.

    Args:
      in_features, out_features: the kernel's shape.
      rank: ``k``, the number of columns and rows kept (an int ``≤ min(in, out)``).
      use_bias: whether the layer adds a bias.
      dtype, param_dtype, precision: as in ``nnx.Linear`` (``precision=None`` is JAX's default).
      rngs: ``nnx.Rngs`` to draw ``C`` and ``R`` (variance ``1/in`` and ``1/k``) with
        ``U = I``, so that the product has about Flax's default variance ``1/in``.

    Attributes:
      cur_c, cur_u, cur_r: the factors; ``col_index``, ``row_index``: the kernel's columns and
      rows they were taken from (None for a drawn layer).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import CURDense
      >>> dense = nnx.Linear(32, 24, rngs=nnx.Rngs(0))
      >>> layer = CURDense.from_layer(dense, rank=24)       # k = min(in, out): exact
      >>> x = jax.random.normal(jax.random.key(1), (4, 32))
      >>> bool(jnp.allclose(layer(x), dense(x), atol=1e-4))
      True
      >>> bool((layer.cur_c[...] == dense.kernel[...][:, layer.col_index]).all())
      True
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int, use_bias: bool = True,
                 dtype=None, param_dtype=jnp.float32, precision: Precision = None,
                 rngs: nnx.Rngs):
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        rank = check_positive_int(rank, "rank")
        if rank > min(in_features, out_features):
            raise ValueError(f"rank = {rank} is larger than min(in_features, out_features) = "
                             f"{min(in_features, out_features)}.")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)
        c, r = draw(params_key(rngs, "to draw CURDense's factors"),
                    ((in_features, rank), (rank, out_features)), (1.0 / in_features, 1.0 / rank),
                    jnp.dtype(param_dtype))
        self._set(c, jnp.eye(rank, dtype=param_dtype), r,
                  jnp.zeros((out_features,), param_dtype) if use_bias else None, None, None)

    def _set(self, c, u, r, bias, col_index, row_index):
        self.cur_c = nnx.Param(jnp.asarray(c, self.param_dtype))
        self.cur_u = nnx.Param(jnp.asarray(u, self.param_dtype))
        self.cur_r = nnx.Param(jnp.asarray(r, self.param_dtype))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, self.param_dtype))
        self.col_index = None if col_index is None else tuple(int(i) for i in col_index)
        self.row_index = None if row_index is None else tuple(int(i) for i in row_index)

    @property
    def n_params(self) -> int:
        """Trainable scalars: the three factors and the bias."""
        k = self.rank
        bias = 0 if self.bias is None else self.out_features
        return k * (self.in_features + self.out_features) + k * k + bias

    def flops(self, batch_size: int) -> dict:
        """Forward FLOPs (2 × multiply-adds) for ``batch_size`` rows: ``{"factorized": ...,
        "plain": 2·B·in·out}`` (the bias is left out)."""
        b, k = check_positive_int(batch_size, "batch_size"), self.rank
        return {"factorized": 2 * b * k * (self.in_features + k + self.out_features),
                "plain": 2 * b * self.in_features * self.out_features}

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The ``in × out`` kernel ``C U R``, at ``precision`` (default ``"highest"``)."""
        hi = resolve_precision(precision)
        return jnp.matmul(jnp.matmul(self.cur_c[...], self.cur_u[...], precision=hi),
                          self.cur_r[...], precision=hi)

    def to_layer(self) -> nnx.Linear:
        """An ``nnx.Linear`` computing the same function (kernel :meth:`dense_weight`)."""
        layer = nnx.Linear(self.in_features, self.out_features, use_bias=self.bias is not None,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           precision=self.precision, rngs=nnx.Rngs(0))
        layer.kernel[...] = self.dense_weight().astype(layer.kernel[...].dtype)
        if self.bias is not None:
            layer.bias[...] = self.bias[...]
        return layer

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x C U R + b`` over the last axis of ``x``."""
        x = check_input(x, self.in_features)
        bias = None if self.bias is None else self.bias[...]
        x, c, u, r, bias = promote_dtype((x, self.cur_c[...], self.cur_u[...], self.cur_r[...],
                                          bias), dtype=self.dtype)
        y = jnp.matmul(jnp.matmul(jnp.matmul(x, c, precision=self.precision), u,
                                  precision=self.precision), r, precision=self.precision)
        return y if bias is None else y + bias

    @classmethod
    def from_layer(cls, layer, *, rank: int, method="pivoted", key=None, bias=None, dtype=None,
                   param_dtype=None, precision: Precision = None):
        """A CUR layer of a plain layer's kernel (:func:`tensorfact.cur`): ``C`` and ``R``
        are actual columns and rows of it, ``U = C⁺ W R⁺``; exact when ``rank`` reaches the
        kernel's rank.

        Args:
          layer: an ``nnx.Linear`` (its kernel, bias, dtype and precision are used) or an
            ``in × out`` array.
          rank: ``k``, the columns and rows kept (``≤ min(in, out)``).
          method: ``"pivoted"`` (DEIM, deterministic) or ``"leverage"`` (sampling by leverage
            scores; needs ``key``; it keeps ``2k`` columns and rows, as :func:`tensorfact.cur`
            oversamples, so the layer's rank is then ``2k`` capped at ``min(in, out)``).
          key: a ``jax.random`` key for ``method="leverage"``.
          bias: a bias for an array ``layer`` (an ``nnx.Linear`` brings its own).
          dtype, param_dtype, precision: as in the constructor (by default the layer's).
        """
        kernel, bias, dtype, precision = dense_source(layer, bias, dtype, precision)
        check_choice(method, ("pivoted", "leverage"), "method")
        n_in, n_out = kernel.shape
        rank = check_positive_int(rank, "rank")
        if rank > min(n_in, n_out):
            raise ValueError(f"rank = {rank} is larger than min(in_features, out_features) = "
                             f"{min(n_in, n_out)}.")
        cm = cur(kernel, rank, method=method, key=key)
        k = cm.c.shape[1]
        if cm.r.shape[0] != k:  # a square U is what the layer holds
            raise ValueError(f"cur returned {k} columns and {cm.r.shape[0]} rows; CURDense "
                             "needs as many of each.")
        param_dtype = kernel.dtype if param_dtype is None else param_dtype
        out = nnx.eval_shape(lambda: cls(n_in, n_out, rank=min(k, n_in, n_out),
                                         use_bias=bias is not None, dtype=dtype,
                                         param_dtype=param_dtype, precision=precision,
                                         rngs=nnx.Rngs(0)))
        out.rank = k
        out._set(cm.c, cm.u, cm.r, bias, cm.col_index, cm.row_index)
        return out

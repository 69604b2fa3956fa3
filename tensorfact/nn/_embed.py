"""A TT-matrix embedding table for Flax NNX whose lookup never forms the table.

:class:`TTEmbed` holds the ``(num_embeddings, features)`` table ``E`` as a
:class:`~tensorfact.tensors.TTMatrix` with ``num_embeddings = ∏ m_k`` (``in_shape``) and
``features = ∏ n_k`` (``out_shape``), cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``:

    E[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ⋯ G_d[:, i_d, j_d, :].

The row of id ``i`` is found from the mixed-radix digits ``(i_1, ..., i_d)`` of ``i`` (C order,
``i_1`` slowest): slice each core at its digit, ``G_k[:, i_k] ∈ R^{r_{k-1} × n_k × r_k}``, and
chain the slices left to right, ``(n_1⋯n_{k-1}, r_{k-1}) → (n_1⋯n_k, r_k)``. That costs
``Σ_k 2 (n_1⋯n_k) r_{k-1} r_k`` FLOPs per id (at most ``2 d r² · features``; the output row
alone has ``features`` entries) and memory for the slices, never ``num_embeddings · features``
(Hrinchuk, Khrulkov, Mirvakhabova, Orlova & Oseledets, "Tensorized Embedding Layers", Findings
of EMNLP 2020; Novikov, Podoprikhin, Osokin & Vetrov, "Tensorizing Neural Networks", NeurIPS
2015).

**Initialisation.** Core ``k`` is drawn from ``N(0, 1 / (r_{k-1} n_k))``. An entry of ``E`` is a
sum of ``r_1 ⋯ r_{d-1}`` products of independent zero-mean core entries, so its variance is
``∏ r_k · ∏ 1/(r_{k-1} n_k) = 1 / features``: that of Flax's default ``nnx.Embed`` table
(``variance_scaling(1.0, "fan_in", "normal", out_axis=0)`` on ``(num_embeddings, features)``
has fan-in ``features``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact._checks import Precision, check_positive_int
from tensorfact._numerics import resolve_precision
from tensorfact.decomposition import tt_matrix
from tensorfact.nn._common import (draw, params_key, resolve_rank, tensorize, tt_core_shapes,
                                   tt_rows, valid_ids, weight_of, embed_holding)
from tensorfact.nn._partitioning import param, partition_specs
from tensorfact.tensors import TTMatrix

__all__ = ["TTEmbed"]


class TTEmbed(nnx.Module):
    """An embedding table held as a TT-matrix; ``layer(ids)`` returns ``(..., features)``.

    See the module docstring for the format, the lookup and its cost, and the initialisation.

    Args:
      num_embeddings, features: the table's shape ``(num_embeddings, features)``.
      rank: the maximal TT rank (an int, capped bond by bond at the lossless ranks), the full
        rank tuple ``(1, r_1, ..., r_{d-1}, 1)``, a float in ``(0, 1]`` (the largest rank whose
        cores hold at most that fraction of the ``num_embeddings · features`` table entries) or
        ``"full"`` (lossless).
      in_shape, out_shape: the factorisations ``(m_1..m_d)`` of ``num_embeddings`` and
        ``(n_1..n_d)`` of ``features`` (exact products; of different lengths, the shorter is
        padded with trailing 1s). By default :func:`~tensorfact.nn.balanced_factors` with
        ``d = 3`` (or the given one's length).
        A prime ``num_embeddings`` gives ``(p, 1, 1)``: pick a padded vocabulary size instead.
      dtype: the dtype of the lookup (None: the parameters' and the promotion of JAX).
      param_dtype: the cores' dtype.
      precision: of the core contractions (None: JAX's default, as in ``nnx.Embed``'s
        neighbours; pass ``"highest"`` for full float32).
      rngs: ``nnx.Rngs`` with a ``params`` (or ``default``) stream.
      partitioning: optional sharding annotations ``{"cores": spec}``: a
        :class:`jax.sharding.PartitionSpec` (or tuple of mesh axis names) for every core
        ``(r_{k-1}, m_k, n_k, r_k)``, or a ``list`` with one per core; e.g.
        ``{"cores": (None, None, "model", None)}`` splits each core's output digit ``n_k``
        over the ``"model"`` axis. It becomes Flax's ``out_sharding`` metadata, as in
        :class:`~tensorfact.nn.FactorizedDense` (placed at once under ``jax.set_mesh``; read
        back with ``nnx.get_partition_spec``).

    Ids of any integer dtype are taken (``int8`` … ``uint64``, as far as JAX enables them); ids
    outside ``[0, num_embeddings)`` give rows of NaN, as ``nnx.Embed`` (``jnp.take``'s fill
    mode) does; the check is on the values, so it works under ``jit``.

    Attributes:
      cores: the ``nnx.Param`` cores ``(r_{k-1}, m_k, n_k, r_k)``; ``weight`` is the
      :class:`~tensorfact.tensors.TTMatrix`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import TTEmbed
      >>> emb = TTEmbed(1000, 64, rank=8, rngs=nnx.Rngs(0))
      >>> emb.in_shape, emb.out_shape, emb.rank
      ((10, 10, 10), (4, 4, 4), (1, 8, 8, 1))
      >>> emb(jnp.array([[1, 2, 3], [4, 5, 999]])).shape
      (2, 3, 64)
      >>> emb.n_params, 1000 * 64
      (3200, 64000)
    """

    def __init__(self, num_embeddings: int, features: int, *, rank, in_shape=None,
                 out_shape=None, dtype=None, param_dtype=jnp.float32,
                 precision: Precision = None, rngs: nnx.Rngs, partitioning=None):
        num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        features = check_positive_int(features, "features")
        in_shape, out_shape = tensorize("tt", num_embeddings, features, in_shape, out_shape,
                                        names=("num_embeddings", "features"))
        rank = resolve_rank("tt", rank, in_shape, out_shape)
        self.num_embeddings, self.features = num_embeddings, features
        self.in_shape, self.out_shape, self.rank = in_shape, out_shape, rank
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)
        shapes = tt_core_shapes(in_shape, out_shape, rank)
        self._specs = tuple(partition_specs(partitioning, [("cores", shapes)])["cores"])
        variances = tuple(1.0 / (rank[k] * s[2]) for k, s in enumerate(shapes))
        cores = draw(params_key(rngs, "to draw TTEmbed's cores"), shapes, variances,
                     jnp.dtype(param_dtype), truncated=False)
        self._set_cores(cores)

    def _set_cores(self, cores):
        """Holds ``cores`` as the parameters, with their sharding annotations."""
        shapes = tt_core_shapes(self.in_shape, self.out_shape, self.rank)
        self.cores = nnx.List([param(jnp.asarray(g, self.param_dtype).reshape(s), spec)
                               for g, s, spec in zip(cores, shapes, self._specs)])

    @property
    def weight(self) -> TTMatrix:
        """The table as a :class:`~tensorfact.tensors.TTMatrix` of shape
        ``(num_embeddings, features)``."""
        return TTMatrix([g[...] for g in self.cores])

    @property
    def n_params(self) -> int:
        """Number of trainable scalars (the cores)."""
        return sum(int(g[...].size) for g in self.cores)

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The ``(num_embeddings, features)`` table, formed (for export or inspection), at
        ``precision`` (default ``"highest"``: true float32)."""
        return self.weight.to_dense(precision=resolve_precision(precision))

    def to_layer(self) -> nnx.Embed:
        """An ``nnx.Embed`` holding the formed table (:meth:`dense_weight`)."""
        return embed_holding(self.dense_weight(), self)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """The rows of the table at the integer ``ids`` (any shape and integer dtype):
        ``ids.shape + (features,)``."""
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}.")
        cores = [g[...] for g in self.cores]
        cores = promote_dtype(tuple(cores), dtype=self.dtype)
        flat = ids.reshape(-1)
        if flat.shape[0] == 0:
            out = jnp.zeros((0, self.features), cores[0].dtype)
        else:
            valid, flat = valid_ids(flat, self.num_embeddings)
            out = tt_rows(flat, cores, self.in_shape, self.precision)
            out = jnp.where(valid[:, None], out, jnp.nan)
        return out.reshape(ids.shape + (self.features,))

    @classmethod
    def from_layer(cls, layer, *, rank, in_shape=None, out_shape=None, dtype=None,
                   param_dtype=None, precision: Precision = None, partitioning=None):
        """A TT embedding fitted to a table by TT-SVD (:func:`tensorfact.tt_matrix`); exact up to
        rounding at ``rank="full"``.

        Args:
          layer: an ``nnx.Embed`` (its table and dtype are used) or a
            ``(num_embeddings, features)`` array, finite.
          rank, in_shape, out_shape, dtype, precision, partitioning: as in the constructor.
          param_dtype: the cores' dtype; by default the table's.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from tensorfact.nn import TTEmbed
          >>> dense = nnx.Embed(60, 12, rngs=nnx.Rngs(0))
          >>> tt = TTEmbed.from_layer(dense, rank="full")
          >>> ids = jnp.array([0, 7, 59])
          >>> bool(jnp.allclose(tt(ids), dense(ids), atol=1e-5))
          True
        """
        table, embed = weight_of(layer, nnx.Embed, "embedding")
        if embed is not None and dtype is None:
            dtype = embed.dtype
        num_embeddings, features = table.shape
        in_shape, out_shape = tensorize("tt", num_embeddings, features, in_shape, out_shape,
                                        names=("num_embeddings", "features"))
        resolved = resolve_rank("tt", rank, in_shape, out_shape)
        cores = tt_matrix(table, in_shape, out_shape, resolved).cores
        param_dtype = table.dtype if param_dtype is None else param_dtype
        # the layer's structure without drawing (nnx.eval_shape), then the fitted cores
        out = nnx.eval_shape(lambda: cls(
            num_embeddings, features, rank=resolved, in_shape=in_shape, out_shape=out_shape,
            dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=nnx.Rngs(0),
            partitioning=partitioning))
        out._set_cores(cores)
        return out

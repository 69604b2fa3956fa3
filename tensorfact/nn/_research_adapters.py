"""Adapters from the research that PEFT lacks or holds differently: LoRA-XS, the Kronecker-SVD
adapter (SoKA), VeRA and NOLA, around a frozen ``nnx.Linear`` or ``nnx.Conv``.

Flax stores a dense kernel as ``W`` of shape ``(in, out)`` and computes ``y = x W + b``; each
adapter learns a change ``ΔW`` of that kernel from far fewer trainable scalars than LoRA, by
freezing most of its factors:

* **LoRA-XS** (Bałazy, Banaei, Aberer & Tabor, "LoRA-XS: Low-Rank Adaptation with Extremely
  Small Number of Parameters", 2024): from the truncated SVD ``W ≈ U_r S_r V_rᵀ`` of the base
  kernel, the frozen ``A = U_r S_r`` (``in × r``) and ``B = V_rᵀ`` (``r × out``) and a trainable
  ``R`` (``r × r``): ``ΔW = s · A R B``, ``r²`` parameters whatever the layer's size. The kernel
  ``W`` stays as it is (``A R B`` adds to it, unlike PiSSA's residual).
* **KronAdapter** (SoKA: Chong & Qu, "Singular Value Decomposition on Kronecker Adaptation for
  Large Language Model", 2025; its Kronecker-product SVD is Van Loan & Pitsianis,
  "Approximation with Kronecker products", 1993; Kronecker adapters: KronA, Edalati et al.
  2022): with ``in = i_1 i_2`` and ``out = o_1 o_2``, ``ΔW = Σ_k C_k ⊗ D_k`` with trainable
  ``C_k`` of shape ``(i_1, o_1)`` and ``D_k`` of ``(i_2, o_2)``, ``rank (i_1 o_1 + i_2 o_2)``
  parameters, for an update of rank up to ``rank · min(i_1, o_1) · min(i_2, o_2)``. The
  factors start at the nearest such sum to ``W``: the rearrangement
  ``R(W)[(a, c), (b, d)] = W[(a, b), (c, d)]`` (row-major multi-indices) turns
  ``Σ_k C_k ⊗ D_k`` into the rank-``rank`` matrix ``Σ_k vec(C_k) vec(D_k)ᵀ``, so the truncated
  SVD ``R(W) ≈ Σ_k σ_k u_k v_kᵀ`` gives the best one in the Frobenius norm,
  ``C_k = √σ_k u_k`` and ``D_k = √σ_k v_k`` reshaped. As in PiSSA the frozen kernel becomes the
  residual ``W − Σ_k C_k ⊗ D_k``: the principal Kronecker part trains, the rest stays. SoKA's
  spectrum-aware choice of the rank (energy threshold, elbow) is not done here: pass ``rank``.
* **VeRA** (Kopiczko, Blankevoort & Asano, "VeRA: Vector-based Random Matrix Adaptation",
  ICLR 2024): frozen random ``A`` (``in × r``) and ``B`` (``r × out``), shared by every layer,
  and trainable vectors ``d`` (``r``) and ``b`` (``out``):
  ``ΔW = s · A diag(d) B diag(b)``, ``r + out`` parameters per layer.
* **NOLA** (Koohpayegani, Navaneet, Nooralinejad, Kolouri & Pirsiavash, "NOLA: Compressing
  LoRA using Linear Combination of Random Basis", ICLR 2024): LoRA's factors as linear
  combinations of frozen random bases, ``A = Σ_k α_k A_k`` and ``B = Σ_k β_k B_k``, with only the
  coefficients trained: ``ΔW = s · A B``, ``2 · num_basis`` parameters whatever the rank and
  the layer's size.

**Frozen arrays.** The SVD factors of LoRA-XS and the random matrices of VeRA and NOLA are
held as :class:`AdapterBuffer`, a variable type that is neither ``nnx.Param`` nor
``nnx.LoRAParam``: ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` trains only the adapters'
``nnx.LoRAParam``s, while the buffers are saved with the model (``nnx.state``,
:mod:`tensorfact.nn.checkpoint`) like any variable. The random ones are drawn from an integer
``seed`` (never from a hidden global state), so a checkpoint could hold the seed alone; they are
kept as arrays here so that the forward does not regenerate them at every call.

**The start.** LoRA-XS (``R = 0``), VeRA (``b = 0``) and NOLA (``β = 0``) start with an update
that is exactly zero, so a fresh adapter returns the base layer's output bit for bit. The
Kronecker adapter moves its principal part out of the kernel and starts at the base output up
to the rounding of ``(W − Σ C_k ⊗ D_k) + Σ C_k ⊗ D_k`` (as PiSSA in
:class:`~tensorfact.nn.LoRA`); the split runs at ``"highest"`` precision.

**Convolutions.** Every adapter also takes an ``nnx.Conv`` (``feature_group_count == 1``, no
``mask``), whose kernel ``(k_1, ..., k_s, c_in, c_out)`` is seen as the matrix
``(k_1⋯k_s c_in, c_out)`` (``in = k_1⋯k_s c_in`` above). LoRA-XS, VeRA and NOLA run as LoRA does
on a Conv, never forming ``ΔW``: ``A`` is a convolution ``c_in → r`` with the base's geometry,
the rest small matmuls over the channel axis. The Kronecker adapter forms ``ΔK`` (the size of
the kernel) and adds one convolution with it.

``delta_weight()`` is the update ``ΔW``, ``dense_weight()`` the adapted kernel and ``merge()`` a
plain ``nnx.Linear`` / ``nnx.Conv`` holding it (formed at ``"highest"`` precision; the forward
runs at the base layer's ``precision``).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact._checks import check_choice, check_positive_int
from tensorfact.decomposition import svd
from tensorfact.nn._base import (Adapter, AdapterBuffer, LoRAParam, adapter_scale, matricize,
                                 matrix_groups)
from tensorfact.nn._common import (check_finite, check_rank_within, pair_split, params_key,
                                   stack_chunks)

__all__ = ["LoRAXS", "KronAdapter", "VeRA", "NOLA"]

#: The SVD that LoRA-XS starts from.
SVDMethod = Literal["exact", "randomized"]


# ---------------------------------------------------------------------------------------------
# argument checks



def _check_seed(seed) -> int:
    """An int in ``[0, 2**32)``: ``jax.random.key`` would silently fold larger seeds onto
    smaller ones (without x64, ``2**32 + 5`` gives the key of ``5``)."""
    if (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
            or not 0 <= seed < 2 ** 32):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    return int(seed)



# ---------------------------------------------------------------------------------------------
# LoRA-XS


class LoRAXS(Adapter):
    """LoRA-XS: ``y = base(x) + s · ((x A) R) B`` with ``A = U_r S_r`` and ``B = V_rᵀ`` frozen
    from the truncated SVD of the base kernel and only the ``r × r`` matrix ``R`` trained.

    ``R`` starts at zero, so the adapter starts exactly at the base output. The paper draws
    ``R`` from a small Gaussian (``N(0, σ²)`` with a tiny ``σ``); zero gives the same training
    (the gradient ``s Aᵀ Xᵀ G Bᵀ`` of ``R`` does not vanish at zero, ``A`` and ``B`` being fixed
    and nonzero, unlike LoRA's pair of factors) and an exact start.

    On an ``nnx.Conv`` (kernel seen as ``(prod(spatial) c_in, c_out)``) ``x A`` is the
    convolution ``c_in → r`` whose kernel is ``A`` reshaped to ``(spatial..., c_in, r)`` (with
    the base's strides, padding and dilations), then ``R`` and ``B`` are matmuls over the
    channel axis.

    Args:
      base: the ``nnx.Linear`` (kernel ``(in, out)``) or ``nnx.Conv`` to adapt; its kernel must
        be finite (NaN or Inf is an error naming ``base.kernel``, in eager calls).
      rank: ``r``, at most ``min(in, out)`` of the kernel matrix.
      alpha: the scale is ``s = alpha / r``; ``None`` means ``s = 1``.
      svd_method: ``"exact"`` (default) or ``"randomized"`` (Halko et al.; needs ``rngs``), the
        SVD of ``W`` (:func:`tensorfact.svd`, at ``"highest"`` precision).
      param_dtype: dtype of ``R``, ``A`` and ``B`` (default: the base kernel's).
      rngs: ``nnx.Rngs``; needed only for ``svd_method="randomized"``.

    Attributes:
      xs_r: the ``nnx.LoRAParam`` ``R``, ``(r, r)``.
      xs_a, xs_b: the :class:`AdapterBuffer` ``A = U_r S_r`` (``(in, r)``) and ``B = V_rᵀ``
        (``(r, out)``).
      base: the (frozen) base layer, the one passed in.

    ``n_params`` is ``r²``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import LoRAXS
      >>> base = nnx.Linear(32, 16, rngs=nnx.Rngs(0))
      >>> xs = LoRAXS(base, 4)
      >>> xs.xs_r.shape, xs.xs_a.shape, xs.xs_b.shape, xs.n_params
      ((4, 4), (32, 4), (4, 16), 16)
      >>> x = jax.random.normal(jax.random.key(1), (3, 32))
      >>> bool((xs(x) == base(x)).all())
      True
      >>> xs.xs_r[...] = jnp.eye(4)
      >>> bool(jnp.allclose(xs.merge()(x), xs(x), atol=1e-5))
      True
    """

    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, alpha=None,
                 svd_method: SVDMethod = "exact", param_dtype=None,
                 rngs: nnx.Rngs | None = None, factors=None):
        self._set_base(base, param_dtype)
        n_in, n_out = self.matrix_shape
        self.rank = check_rank_within(rank, min(n_in, n_out),
                                      f"min({self._rows_name}, out_features)")
        svd_method = check_choice(svd_method, SVDMethod, "svd_method")
        self.scale = adapter_scale(alpha, self.rank)
        kernel = base.kernel[...]
        check_finite(kernel, "base.kernel")
        if factors is not None:
            a, b = self._check_factors(factors)
        else:
            key = None
            if svd_method == "randomized":
                key = params_key(rngs, 'for svd_method="randomized"')
            w = self._w().astype(jnp.promote_types(kernel.dtype, jnp.float32))
            a, b = _xs_factors(w, key, rank=self.rank, svd_method=svd_method)
        dtype = self.param_dtype
        self.xs_a = AdapterBuffer(a.astype(dtype))
        self.xs_b = AdapterBuffer(b.astype(dtype))
        self.xs_r = LoRAParam(jnp.zeros((self.rank, self.rank), dtype))

    @classmethod
    def from_layers(cls, bases, rank: int, *, svd_method: SVDMethod = "exact",
                    rngs: nnx.Rngs | None = None, **settings) -> list["LoRAXS"]:
        """``[LoRAXS(base, rank, svd_method=..., rngs=rngs, **settings) for base in bases]``,
        with the truncated SVDs of each group of same-shaped kernels computed by one program
        (the one-layer SVD mapped with ``jax.vmap`` over stacks of at most 16 MiB; for
        ``"randomized"``, one key per group drawn from ``rngs`` and split over its layers).
        :func:`~tensorfact.nn.apply_adapters` builds its LoRA-XS adapters with it.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from tensorfact.nn import LoRAXS
          >>> bases = [nnx.Linear(32, 16, rngs=nnx.Rngs(i)) for i in range(3)]
          >>> [xs.xs_a.shape for xs in LoRAXS.from_layers(bases, 4)]
          [(32, 4), (32, 4), (32, 4)]
        """
        bases = list(bases)
        adapters = [None] * len(bases)
        for group in matrix_groups(bases):
            if len(group) == 1:
                adapters[group[0]] = cls(bases[group[0]], rank, svd_method=svd_method,
                                         rngs=rngs, **settings)
                continue
            views = [matricize(bases[i]) for i in group]
            ws = [v.to_matrix(getattr(bases[i], v.weight)[...]) for i, v in zip(group, views)]
            ws = [w.astype(jnp.promote_types(w.dtype, jnp.float32)) for w in ws]
            n_in, n_out = ws[0].shape
            # (rank and svd_method checked here: a bad one must not reach the SVD)
            rank = check_rank_within(rank, min(n_in, n_out), "min(in_features, out_features)")
            svd_method = check_choice(svd_method, SVDMethod, "svd_method")
            keys = None
            if svd_method == "randomized":
                keys = jax.random.split(params_key(rngs, 'for svd_method="randomized"'),
                                        len(group))
            factors = []
            for run in stack_chunks(len(group), ws[0].size * ws[0].dtype.itemsize):
                run_ws = [ws[j] for j in run]
                run_keys = None if keys is None else keys[run.start:run.stop]
                factors.extend(zip(*_xs_factors_listed(run_ws, run_keys, rank=rank,
                                                       svd_method=svd_method)))
            for j, i in enumerate(group):
                adapters[i] = cls(bases[i], rank, svd_method=svd_method, rngs=rngs,
                                  factors=factors[j], **settings)
        return adapters

    def _check_factors(self, factors):
        """``factors`` as ``(A, B)`` arrays of this layer's shapes (a ``ValueError`` naming
        ``factors`` otherwise)."""
        if (isinstance(factors, (str, bytes)) or not hasattr(factors, "__len__")
                or len(factors) != 2):
            raise ValueError("factors must be a pair (A, B) = (U_r S_r, V_r^T), got "
                             f"{type(factors).__name__}.")
        a, b = (jnp.asarray(t) for t in factors)
        n_in, n_out = self.matrix_shape
        for name, array, want in (("A", a, (n_in, self.rank)), ("B", b, (self.rank, n_out))):
            if tuple(array.shape) != want:
                raise ValueError(f"factors' {name} must have shape {want} for this layer "
                                 f"(rank {self.rank}), got {tuple(array.shape)}.")
        return a, b

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: ``r²``."""
        return self.rank * self.rank

    def _params(self):
        return self.xs_r[...], self.xs_a[...], self.xs_b[...]

    def _change(self, x, y):
        x, r, a, b = self._promote(x, *self._params())
        # (x A)(R B): on a Conv, A is a convolution; R B is only r × out
        rb = jnp.matmul(r, b, precision=self.base.precision)
        return self.scale * self._lowrank(x, a, rb)

    def _delta(self, arrays, precision):
        """``s A R B``."""
        r, a, b = arrays
        return self.scale * jnp.matmul(jnp.matmul(a, r, precision=precision), b,
                                       precision=precision)


@functools.partial(jax.jit, static_argnames=("rank", "svd_method"))
def _xs_factors(w, key, *, rank, svd_method):
    """``(U_r S_r, V_rᵀ)`` of ``W``, at ``"highest"`` precision, as one compiled program."""
    lr = svd(w, rank, method=svd_method, key=key, precision="highest")
    return lr.u * lr.s, lr.vt


@functools.partial(jax.jit, static_argnames=("rank", "svd_method"))
def _xs_factors_listed(ws, keys, *, rank, svd_method):
    """:func:`_xs_factors` of each matrix of the list ``ws`` (and key of ``keys``, or None),
    mapped with ``jax.vmap`` over their stack in one program: two lists."""
    a, b = jax.vmap(functools.partial(_xs_factors, rank=rank, svd_method=svd_method),
                    in_axes=(0, None if keys is None else 0))(jnp.stack(ws), keys)
    return [a[j] for j in range(len(ws))], [b[j] for j in range(len(ws))]


# ---------------------------------------------------------------------------------------------
# Kronecker-product SVD


def _rearrange(w, in_shape, out_shape):
    """Van Loan–Pitsianis: ``R(W)[(a, c), (b, d)] = W[(a, b), (c, d)]`` for ``W`` of shape
    ``(i_1 i_2, o_1 o_2)``, so that ``R(C ⊗ D) = vec(C) vec(D)ᵀ`` (row-major ``vec``)."""
    (i1, i2), (o1, o2) = in_shape, out_shape
    return w.reshape(i1, i2, o1, o2).transpose(0, 2, 1, 3).reshape(i1 * o1, i2 * o2)


def _unrearrange(r, in_shape, out_shape):
    """The inverse of :func:`_rearrange`."""
    (i1, i2), (o1, o2) = in_shape, out_shape
    return r.reshape(i1, o1, i2, o2).transpose(0, 2, 1, 3).reshape(i1 * i2, o1 * o2)


def _kron_sum(c, d, precision):
    """``Σ_k C_k ⊗ D_k`` for ``C`` of shape ``(rank, i_1, o_1)`` and ``D`` of
    ``(rank, i_2, o_2)``."""
    (_, i1, o1), (_, i2, o2) = c.shape, d.shape
    t = jnp.einsum("kac,kbd->abcd", c, d, precision=precision)
    return t.reshape(i1 * i2, o1 * o2)


@functools.partial(jax.jit, static_argnames=("rank", "in_shape", "out_shape", "dtype"))
def _kron_split(w, *, rank, in_shape, out_shape, dtype):
    """``(C, D, W − Σ_k C_k ⊗ D_k)``: the nearest sum of ``rank`` Kronecker products to ``W``
    (truncated SVD of ``R(W)``, split evenly as ``√σ_k``) and the residual, at ``"highest"``
    precision, as one compiled program."""
    (i1, i2), (o1, o2) = in_shape, out_shape
    lr = svd(_rearrange(w, in_shape, out_shape), rank, precision="highest")
    root = jnp.sqrt(lr.s)
    c = (lr.u * root).T.reshape(rank, i1, o1).astype(dtype)
    d = (root[:, None] * lr.vt).reshape(rank, i2, o2).astype(dtype)
    # the residual uses the rounded factors, so that residual + Σ C ⊗ D reproduces W
    residual = w - _kron_sum(c.astype(w.dtype), d.astype(w.dtype), "highest")
    return c, d, residual


class KronAdapter(Adapter):
    """Kronecker-SVD adaptation (SoKA): ``ΔW = Σ_k C_k ⊗ D_k`` with trainable factors
    initialised to the nearest sum of ``rank`` Kronecker products to the base kernel, the
    frozen kernel becoming the residual (see the module docstring).

    ``ΔW[(a, b), (c, d)] = Σ_k C_k[a, c] D_k[b, d]`` with row-major multi-indices, ``a < i_1``,
    ``b < i_2``, ``c < o_1``, ``d < o_2``. On an ``nnx.Linear`` the forward reshapes ``x`` to
    ``(…, i_1, i_2)`` and contracts it with ``D`` then ``C``, never forming ``ΔW``
    (``N r i_1 o_2 (i_2 + o_1)`` multiply-adds for ``N`` rows). On an ``nnx.Conv``
    (``in = prod(spatial) c_in``) it forms ``ΔK`` and adds one convolution with it. The
    factorization is unique up to rotations among equal singular values of ``R(W)``; where
    ``R(W)`` has fewer than ``rank`` nonzero ones the extra factors start at zero.

    Args:
      base: the ``nnx.Linear`` or ``nnx.Conv`` to adapt; its kernel must be finite (NaN or Inf
        is an error naming ``base.kernel``, in eager calls). It is never modified: the adapter
        holds a copy with the residual kernel.
      rank: the number of Kronecker products, at most ``min(i_1 o_1, i_2 o_2)`` (the rank of
        ``R(W)``).
      in_shape, out_shape: the splits ``(i_1, i_2)`` of ``in`` and ``(o_1, o_2)`` of ``out``;
        by default the most balanced, smaller factor first.
      param_dtype: dtype of ``C`` and ``D`` (default: the base kernel's).

    Attributes:
      kron_c, kron_d: the ``nnx.LoRAParam`` factors, ``(rank, i_1, o_1)`` and
        ``(rank, i_2, o_2)``.
      base: a copy of the base layer holding the residual ``W − Σ_k C_k ⊗ D_k``.

    ``n_params`` is ``rank (i_1 o_1 + i_2 o_2)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import KronAdapter
      >>> base = nnx.Linear(24, 20, rngs=nnx.Rngs(0))
      >>> kron = KronAdapter(base, 3)
      >>> kron.in_shape, kron.out_shape, kron.kron_c.shape, kron.kron_d.shape, kron.n_params
      ((4, 6), (4, 5), (3, 4, 4), (3, 6, 5), 138)
      >>> x = jax.random.normal(jax.random.key(1), (2, 24))
      >>> bool(jnp.allclose(kron(x), base(x), atol=1e-5))
      True
      >>> bool(jnp.allclose(kron.merge().kernel[...], base.kernel[...], atol=1e-6))
      True
    """

    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, in_shape=None,
                 out_shape=None, param_dtype=None):
        self._set_base(base, param_dtype)
        n_in, n_out = self.matrix_shape
        self.in_shape = pair_split(in_shape, n_in, "in_shape", self._rows_name)
        self.out_shape = pair_split(out_shape, n_out, "out_shape", "out_features")
        (i1, i2), (o1, o2) = self.in_shape, self.out_shape
        self.rank = check_rank_within(rank, min(i1 * o1, i2 * o2),
                                "min(in_shape[0] * out_shape[0], in_shape[1] * out_shape[1])")
        kernel = base.kernel[...]
        check_finite(kernel, "base.kernel")
        w = self._w().astype(jnp.promote_types(kernel.dtype, jnp.float32))
        c, d, residual = _kron_split(w, rank=self.rank, in_shape=self.in_shape,
                                     out_shape=self.out_shape,
                                     dtype=jnp.dtype(self.param_dtype))
        self.base = nnx.clone(base)
        self.base.kernel[...] = self._as_kernel(residual).astype(kernel.dtype)
        self.kron_c = LoRAParam(c)
        self.kron_d = LoRAParam(d)

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: ``rank (i_1 o_1 + i_2 o_2)``."""
        (i1, i2), (o1, o2) = self.in_shape, self.out_shape
        return self.rank * (i1 * o1 + i2 * o2)

    def _params(self):
        return self.kron_c[...], self.kron_d[...]

    def _delta(self, arrays, precision):
        """``Σ_k C_k ⊗ D_k`` (added to the residual kernel)."""
        c, d = arrays
        return _kron_sum(c, d, precision)

    def _linear_change(self, x, arrays):
        c, d = arrays
        prec = self.base.precision
        lead = x.shape[:-1]
        t = x.reshape((-1,) + self.in_shape)                        # (N, i1, i2)
        t = jnp.einsum("nab,kbd->nakd", t, d, precision=prec)        # (N, i1, rank, o2)
        t = jnp.einsum("nakd,kac->ncd", t, c, precision=prec)        # (N, o1, o2)
        return t.reshape(lead + (self.out_features,))


# ---------------------------------------------------------------------------------------------
# random frozen matrices


@functools.partial(jax.jit, static_argnames=("rows", "cols", "dtype"))
def _shared_uniform(key, *, rows, cols, dtype):
    """``M[i, j] ~ U(−1, 1)`` drawn from ``fold_in(fold_in(key, i), j)``: entry by entry, so the
    ``(rows, cols)`` matrix of a key is the top-left block of any larger one of the same key."""
    def entry(i, j):
        k = jax.random.fold_in(jax.random.fold_in(key, i), j)
        return jax.random.uniform(k, (), jnp.float32, -1.0, 1.0)

    i = jnp.arange(rows, dtype=jnp.uint32)
    j = jnp.arange(cols, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.vmap(lambda j: entry(i, j))(j))(i).astype(dtype)


class VeRA(Adapter):
    """Vector-based random matrix adaptation: ``y = base(x) + s · (((x A) ⊙ d) B) ⊙ b``, i.e.
    ``ΔW = s · A diag(d) B diag(b)``, with ``A``, ``B`` frozen and random and only ``d`` and
    ``b`` trained.

    **Shared matrices.** As in the paper (and PEFT's ``vera_A`` / ``vera_B``, sliced to each
    layer's shape), every layer built from the same ``seed`` sees slices of the same two shared
    random matrices: ``A`` is the top-left ``(in, r)`` block of one matrix ``𝒜`` and ``B`` the
    top-left ``(r, out)`` block of one matrix ``ℬ``, whatever the layer's size (and rank). The
    entries are drawn one by one (``𝒜[i, j]`` from ``fold_in(fold_in(k_A, i), j)`` with
    ``k_A, k_B = split(jax.random.key(seed))``; ``ℬ[j, i]`` alike from ``k_B``, ``i`` the output
    feature), uniform on ``[−1, 1]``, so they are regenerated from the seed, layer by layer,
    without forming the largest matrices; each layer holds its slices as
    :class:`AdapterBuffer`. Only ``d`` and ``b`` train: ``r + out`` parameters per layer.

    **Scale.** PEFT draws ``vera_A`` and ``vera_B`` kaiming-uniform, bound ``√(6 / fan_in)``
    with ``fan_in`` the widest adapted layer's ``in`` for ``A`` and ``r`` for ``B``. A layer here
    does not know the whole model, and a bound that depended on its own width would break the
    sharing, so the buffers hold the unit-bound slices and the bounds come as the scalar
    ``s = √(6 / in) · √(6 / r) = 6 / √(in · r)`` (``alpha`` of LoRA has no counterpart: ``d`` is
    the trainable scale). ``s · A diag(d) B`` is then distributed as PEFT's product for a layer
    as wide as its widest one; narrower layers get their own fan-in instead of the widest's.

    On an ``nnx.Conv`` (kernel seen as ``(prod(spatial) c_in, c_out)``) ``x A`` is the
    convolution ``c_in → r`` whose kernel is ``A`` reshaped, as for :class:`~tensorfact.nn.LoRA`.

    Args:
      base: the ``nnx.Linear`` or ``nnx.Conv`` to adapt.
      rank: ``r``, any positive int: the paper uses ``r`` larger than the layer's width
        (``r = 1024`` on 768-wide layers), the cost being the frozen ``A`` and ``B``.
      seed: an int in ``[0, 2**32)``, the key of the shared matrices; use one seed for a whole
        model.
      d_init: the initial value of every entry of ``d`` (default 0.1, as in the paper and PEFT);
        finite and nonzero (with ``b = 0`` at the start, ``d = 0`` would leave both with a zero
        gradient).
      param_dtype: dtype of ``d``, ``b`` and the buffers (default: the base kernel's).

    Attributes:
      lambda_d, lambda_b: the ``nnx.LoRAParam`` vectors ``d`` (``(r,)``, ``d_init``) and ``b``
        (``(out,)``, zero).
      vera_a, vera_b: the :class:`AdapterBuffer` slices ``A`` (``(in, r)``) and ``B``
        (``(r, out)``).
      scale: ``s``.

    ``n_params`` is ``r + out``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import VeRA
      >>> wide = VeRA(nnx.Linear(24, 20, rngs=nnx.Rngs(0)), 8, seed=3)
      >>> narrow = VeRA(nnx.Linear(16, 12, rngs=nnx.Rngs(1)), 4, seed=3)
      >>> bool((narrow.vera_a[...] == wide.vera_a[...][:16, :4]).all())
      True
      >>> bool((narrow.vera_b[...] == wide.vera_b[...][:4, :12]).all()), narrow.n_params
      (True, 16)
      >>> x = jnp.ones((2, 24))
      >>> bool((wide(x) == wide.base(x)).all())
      True
    """

    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, seed: int = 0,
                 d_init: float = 0.1, param_dtype=None):
        self._set_base(base, param_dtype)
        n_in, n_out = self.matrix_shape
        self.rank = check_positive_int(rank, "rank")
        self.seed = _check_seed(seed)
        if (isinstance(d_init, (bool, np.bool_)) or not isinstance(d_init, numbers.Real)
                or not math.isfinite(d_init) or d_init == 0):
            raise ValueError(f"d_init must be a finite nonzero number, got {d_init!r} (with "
                             "b = 0 at the start, d = 0 would give both a zero gradient).")
        self.scale = 6.0 / math.sqrt(n_in * self.rank)
        dtype = jnp.dtype(self.param_dtype)
        key_a, key_b = jax.random.split(jax.random.key(self.seed))
        self.vera_a = AdapterBuffer(_shared_uniform(key_a, rows=n_in, cols=self.rank,
                                                    dtype=dtype))
        self.vera_b = AdapterBuffer(_shared_uniform(key_b, rows=n_out, cols=self.rank,
                                                    dtype=dtype).T)
        self.lambda_d = LoRAParam(jnp.full((self.rank,), d_init, dtype))
        self.lambda_b = LoRAParam(jnp.zeros((n_out,), dtype))

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: ``r + out``."""
        return self.rank + self.matrix_shape[1]

    def _params(self):
        return self.lambda_d[...], self.lambda_b[...], self.vera_a[...], self.vera_b[...]

    def _change(self, x, y):
        x, d, lam_b, a, b = self._promote(x, *self._params())
        # ((x A) diag(d)) (B diag(b)): the scalings folded into the factors
        return self.scale * self._lowrank(x, a * d, b * lam_b)

    def _delta(self, arrays, precision):
        """``s · A diag(d) B diag(b)``."""
        d, lam_b, a, b = arrays
        return self.scale * jnp.matmul(a * d, b * lam_b, precision=precision)


class NOLA(Adapter):
    """NOLA: LoRA with ``A = Σ_k α_k A_k`` and ``B = Σ_k β_k B_k``, fixed random bases and
    trainable coefficients: ``y = base(x) + s · (x A) B``.

    The bases are drawn from ``jax.random.key(seed)``: ``A_k`` (``in × r``) with entries
    ``N(0, 1 / in)`` and ``B_k`` (``r × out``) with entries ``N(0, 1 / r)`` (the paper draws
    uniform ones; only their being fixed by the seed matters), held as :class:`AdapterBuffer`.
    ``β = 0`` at the start (so ``B = 0`` and the adapter starts exactly at the base output) and
    ``α_k ~ U(−√(3 / K), √(3 / K))`` with ``K = num_basis``, also from the seed, which gives
    ``A`` entries of variance ``1 / in``, as LoRA's lecun-normal ``A``. Only ``α`` and ``β``
    train: ``2 K`` parameters whatever ``r`` and the layer's size. Layers of the same shape built
    from the same seed share their bases (their coefficients train apart); pass one seed per
    layer for independent ones.

    The forward forms ``A`` and ``B`` (``K r (in + out)`` multiply-adds, the size of the bases)
    and runs as LoRA: on an ``nnx.Conv`` (kernel seen as ``(prod(spatial) c_in, c_out)``)
    ``x A`` is the convolution ``c_in → r`` whose kernel is ``A`` reshaped. The bases take
    ``K r (in + out)`` scalars of memory per layer.

    Args:
      base: the ``nnx.Linear`` or ``nnx.Conv`` to adapt.
      rank: ``r`` of ``A B``, at most ``min(in, out)`` of the kernel matrix.
      num_basis: ``K``, the number of bases for each of ``A`` and ``B`` (default 64).
      seed: an int in ``[0, 2**32)`` from which the bases and ``α`` are drawn.
      alpha: the scale is ``s = alpha / r``; ``None`` means ``s = 1``.
      param_dtype: dtype of ``α``, ``β`` and the bases (default: the base kernel's).

    Attributes:
      nola_alpha, nola_beta: the ``nnx.LoRAParam`` coefficients, ``(K,)`` each.
      nola_basis_a, nola_basis_b: the :class:`AdapterBuffer` bases, ``(K, in, r)`` and
        ``(K, r, out)``.

    ``n_params`` is ``2 K``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import NOLA
      >>> base = nnx.Linear(32, 16, rngs=nnx.Rngs(0))
      >>> nola = NOLA(base, 4, num_basis=10)
      >>> nola.nola_basis_a.shape, nola.nola_basis_b.shape, nola.n_params
      ((10, 32, 4), (10, 4, 16), 20)
      >>> x = jnp.ones((2, 32))
      >>> bool((nola(x) == base(x)).all())
      True
    """

    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, num_basis: int = 64,
                 seed: int = 0, alpha=None, param_dtype=None):
        self._set_base(base, param_dtype)
        n_in, n_out = self.matrix_shape
        self.rank = check_rank_within(rank, min(n_in, n_out),
                                      f"min({self._rows_name}, out_features)")
        self.num_basis = check_positive_int(num_basis, "num_basis")
        self.seed = _check_seed(seed)
        self.scale = adapter_scale(alpha, self.rank)
        k, r, dtype = self.num_basis, self.rank, jnp.dtype(self.param_dtype)
        key_a, key_b, key_alpha = jax.random.split(jax.random.key(self.seed), 3)
        self.nola_basis_a = AdapterBuffer(
            (jax.random.normal(key_a, (k, n_in, r)) / math.sqrt(n_in)).astype(dtype))
        self.nola_basis_b = AdapterBuffer(
            (jax.random.normal(key_b, (k, r, n_out)) / math.sqrt(r)).astype(dtype))
        bound = math.sqrt(3.0 / k)
        self.nola_alpha = LoRAParam(
            jax.random.uniform(key_alpha, (k,), jnp.float32, -bound, bound).astype(dtype))
        self.nola_beta = LoRAParam(jnp.zeros((k,), dtype))

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: ``2 num_basis``."""
        return 2 * self.num_basis

    def _params(self):
        return (self.nola_alpha[...], self.nola_beta[...], self.nola_basis_a[...],
                self.nola_basis_b[...])

    def _factors(self, arrays, precision):
        """``(A, B) = (Σ_k α_k A_k, Σ_k β_k B_k)``."""
        alpha, beta, basis_a, basis_b = arrays
        a = jnp.einsum("k,kir->ir", alpha, basis_a, precision=precision)
        b = jnp.einsum("k,kro->ro", beta, basis_b, precision=precision)
        return a, b

    def _change(self, x, y):
        x, *arrays = self._promote(x, *self._params())
        a, b = self._factors(arrays, self.base.precision)
        return self.scale * self._lowrank(x, a, b)

    def _delta(self, arrays, precision):
        """``s A B``."""
        a, b = self._factors(arrays, precision)
        return self.scale * jnp.matmul(a, b, precision=precision)

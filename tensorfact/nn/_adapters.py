"""LoRA-family adapters around a frozen ``nnx.Linear`` or ``nnx.Conv``: LoRA (Gaussian, PiSSA,
OLoRA), DoRA, LoKr and LoHa.

Flax stores a dense kernel as ``W`` of shape ``(in, out)`` and computes ``y = x W + b``; every
adapter here learns a change of that kernel, ``W' = W + ΔW`` (DoRA: a rescaled ``W + ΔW``), with
a small number of parameters:

* **LoRA** (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022):
  ``ΔW = s · A B`` with ``A`` of shape ``(in, r)``, ``B`` of ``(r, out)`` and
  ``s = alpha / r`` (``alpha / √r`` with ``use_rslora``: Kalajdzievski, "A Rank Stabilization
  Scaling Factor for Fine-Tuning with LoRA", 2023). ``init="gaussian"``: ``A`` lecun-normal,
  ``B = 0``. ``init="pissa"`` (Meng, Wang & Zhang, "PiSSA: Principal Singular Values and
  Singular Vectors Adaptation of Large Language Models", NeurIPS 2024): from the truncated SVD
  ``W ≈ U_r S_r V_rᵀ`` (randomized by default, :func:`tensorfact.svd`), ``A = U_r S_r^{1/2}/√s``,
  ``B = S_r^{1/2} V_rᵀ/√s``, and the frozen kernel becomes the residual ``W − s A B``: the
  principal part trains, the rest stays. ``init="olora"`` (Büyükakyüz, "OLoRA: Orthonormal
  Low-Rank Adaptation of Large Language Models", 2024): from the QR factorization of the
  ``(out, in)`` weight ``Wᵀ = Q R``, ``A = R_{:r}ᵀ``, ``B = Q_{:, :r}ᵀ`` (orthonormal rows) and
  the residual ``W − s A B``.
* **DoRA** (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024):
  ``W' = m ⊙ (W + s A B) / ‖W + s A B‖_c`` with ``‖·‖_c`` the norm of each column of the
  ``(in, out)`` kernel (one per output feature, as in the reference implementation) and a
  trainable magnitude ``m`` initialised to ``‖W‖_c``. As in the paper (§4.3) the norm is
  treated as a constant in the backward pass by default (``detach_norm=True``), which saves
  the memory of its gradient at a negligible cost in accuracy.
* **LoKr** (LyCORIS: Yeh et al., "Navigating Text-To-Image Customization: From LyCORIS
  Fine-Tuning to Model Evaluation", ICLR 2024; KronA, Edalati et al. 2022): with
  ``in = i_1 i_2`` and ``out = o_1 o_2``, ``ΔW = s · C ⊗ (A B)`` for a small dense ``C`` of shape
  ``(i_1, o_1)`` and a low-rank ``A B`` of shape ``(i_2, o_2)``; ``C = 0`` at the start.
* **LoHa** (FedPara: Hyeon-Woo, Ye-Bin & Oh, "FedPara: Low-Rank Hadamard Product for
  Communication-Efficient Federated Learning", ICLR 2022; LyCORIS):
  ``ΔW = s · (A_1 B_1) ⊙ (A_2 B_2)``, a matrix of rank up to ``r²`` from ``2 r (in + out)``
  parameters; ``B_2 = 0`` at the start.

**Convolutions.** Every adapter also takes an ``nnx.Conv`` (1-D, 2-D or 3-D, with
``feature_group_count == 1`` and no ``mask``). Its kernel ``K`` of shape
``(k_1, ..., k_s, c_in, c_out)`` is treated as the matrix ``W = reshape(K, (k_1⋯k_s c_in,
c_out))`` (``in = k_1⋯k_s c_in`` above), ``ΔW`` is reshaped back to the kernel's shape, and
convolution being linear in the kernel, ``conv(x, K + ΔK) = base(x) + conv(x, ΔK)``:

* LoRA runs as in PEFT, never forming ``ΔW``: ``A`` (stored as the ``(k⋯ c_in, r)`` matrix) is
  a convolution ``c_in → r`` with the base's kernel size, strides, padding and dilations, and
  ``B`` a 1×1 convolution ``r → c_out`` (a matmul over the channel axis). DoRA reuses it.
* LoKr and LoHa form ``ΔK`` (the size of the kernel, cheap next to the convolution) and add
  ``conv(x, ΔK)``: one extra convolution in the forward, chosen over a single convolution with
  ``K + ΔK`` because it leaves ``base(x)`` untouched (the start is exact bit for bit) and shares
  the Linear path's structure. For serving, :meth:`merge` folds ``ΔK`` into one convolution.
* DoRA's magnitude is per output channel, the norm over ``(k_1, ..., k_s, c_in)`` (the columns
  of ``W``); PiSSA and OLoRA take the SVD / QR of ``W``.

Every adapter computes ``base(x) + (the change)``, and the change is exactly zero at the start
(one factor is zero; DoRA's ``m / ‖W‖_c`` is exactly one), so a fresh adapter returns the base
layer's output bit for bit. PiSSA and OLoRA move the principal part out of the kernel, so they
start at the base output up to the rounding of ``(W − s A B) + s A B``.

The adapter's parameters are ``nnx.LoRAParam`` (a subclass of ``nnx.Param``); the base layer's
are left as ``nnx.Param`` and are frozen by training with a filter::

    model = ...                                      # holds LoRA(...) / DoRA(...) layers
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.LoRAParam)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        grad_fn = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))
        optimizer.update(model, grad_fn(model, x, y))

``merge()`` returns a plain ``nnx.Linear`` / ``nnx.Conv`` (a copy of the base with the adapted
kernel and the base's bias), for serving without the adapter's overhead; ``delta_weight()`` is
the update ``ΔW`` alone and ``dense_weight()`` the adapted kernel.

**Precision.** The forward runs at the base layer's ``precision``. The PiSSA/OLoRA split and
the kernels that leave the adapter (``delta_weight``, ``dense_weight``, ``merge``) run at
``"highest"``: the split defines the frozen residual ``W − s A B``, which must give back ``W``
to float32 rounding when added to ``s A B`` at the start, whatever precision the forward uses
(with TF32 passes it would be off by ~1e-3 relative), and an exported kernel should hold the
adapter's exact product. The adapters own their
base: PiSSA and OLoRA keep a copy of it with the residual kernel and never modify the layer
passed in.

**Many layers.** :func:`principal_split` computes the PiSSA / OLoRA split of a stack (or a
list) of same-shaped kernels as one compiled program (the one-layer split mapped with
``jax.vmap``), and ``LoRA(base, r, init=..., split=(A, B, residual))`` builds each adapter from
its layer of the result without computing anything; :meth:`LoRA.from_layers` does both for a
list of layers (what :func:`~tensorfact.nn.apply_adapters` uses).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact._checks import (Precision, check_choice, check_key, check_nonneg_int,
                                count_nonfinite, is_traced)
from tensorfact._numerics import resolve_precision, safe_divide, safe_norm
from tensorfact.decomposition import svd
from tensorfact.nn._base import (Adapter, AdapterBuffer, LoRAParam, adapter_scale, convolve,
                                 matricize, matrix_groups, set_dropout)
from tensorfact.nn._common import (check_finite, check_rank_within, pair_split, params_key,
                                   stack_chunks)

__all__ = ["LoRA", "principal_split", "DoRA", "LoKr", "LoHa", "LoRAParam"]

#: LoRA's initialisations.
LoRAInit = Literal["gaussian", "pissa", "olora"]
#: The initialisations that split the kernel (:func:`principal_split`).
SplitInit = Literal["pissa", "olora"]
#: The SVD that PiSSA starts from.
SVDMethod = Literal["randomized", "exact"]



def _lecun(key, shape, dtype):
    """Flax's dense default (truncated normal with variance ``1 / shape[0]``)."""
    return nnx.initializers.lecun_normal()(key, shape, dtype)


def _normal(key, shape, variance, dtype):
    return math.sqrt(variance) * jax.random.normal(key, shape, dtype)


class LoRA(Adapter):
    """Low-rank adaptation of an ``nnx.Linear`` or ``nnx.Conv``: ``y = base(x) + s · (x A) B``.

    On a Conv, ``x A`` is the convolution ``c_in → r`` whose kernel is ``A`` reshaped to
    ``(spatial..., c_in, r)`` (with the base's strides, padding and dilations) and ``· B`` the
    1×1 convolution ``r → c_out``, as in PEFT; see the module docstring.

    Args:
      base: the ``nnx.Linear`` (kernel ``(in, out)``) or ``nnx.Conv`` (kernel
        ``(spatial..., c_in, c_out)``, seen as the matrix ``(prod(spatial) c_in, c_out)``) to
        adapt.
      rank: ``r``, at most ``min(in, out)`` of the kernel matrix.
      init: ``"gaussian"`` (``A`` lecun-normal, ``B = 0``; Hu et al. 2022), ``"pissa"``
        (principal singular part trainable, residual frozen; Meng et al. 2024) or ``"olora"``
        (QR; Büyükakyüz 2024). See the module docstring.
      alpha: the scale is ``s = alpha / r`` (``alpha / √r`` with ``use_rslora``); ``None``
        means ``s = 1``.
      use_rslora: rank-stabilized scaling ``alpha / √r``.
      dropout: dropout rate on the input of the change (PEFT's ``lora_dropout``; needs
        ``rngs``); ``base(x)`` sees the whole input. Not applied to an ``nnx.Embed``'s ids.
      svd_method: ``"randomized"`` (default: Halko et al., a fraction of the cost of an exact
        SVD on large kernels, as in the PiSSA paper's fast initialisation) or ``"exact"``, for
        ``init="pissa"``.
      oversample, n_power_iter: the randomized SVD's extra sketch columns and power iterations
        (:func:`tensorfact.svd`'s arguments, ints ``>= 0``; used by ``init="pissa"`` with
        ``svd_method="randomized"`` only). PEFT's ``init_lora_weights="pissa_niter_4"``
        (``torch.svd_lowrank(W, q=r, niter=4)``) is ``oversample=0, n_power_iter=4``. The
        default ``8, 2`` multiplies by the kernel 6 times instead of PEFT's 10 and is closer
        to the exact split (on a 1024² weight with singular values ``(1 + i)^{-1/2}`` at rank
        16, a residual 1.0019× the optimum on average against 1.0029×); ``r + 8`` columns
        keep the usual ranks' sketch a multiple of 8 wide, which XLA:CPU multiplies faster
        than ``r + 10`` (the whole split of a 4096² kernel at rank 16: 1.3×; see
        ``benchmarks/RESULTS.md``).
      param_dtype: dtype of ``A`` and ``B`` (default: the base kernel's).
      rngs: ``nnx.Rngs``; needed for ``"gaussian"`` and for the randomized SVD (not with
        ``split``).
      split: ``(A, B, residual)`` computed beforehand by :func:`principal_split` for this
        layer (one layer of its result, with the same ``rank``, ``init``, ``alpha`` and
        ``use_rslora``): the adapter is built from them without computing anything. ``A`` is
        ``(in, r)``, ``B`` ``(r, out)`` and the residual the kernel matrix ``(in, out)`` or the
        kernel's own shape; only for ``init="pissa"`` or ``"olora"``.

    With ``init="pissa"`` or ``"olora"`` the base kernel must be finite (NaN or Inf in it is an
    error naming ``base.kernel``, in eager calls); the split runs at ``"highest"`` precision.

    Attributes:
      lora_a, lora_b: the ``nnx.LoRAParam`` factors, ``(in, r)`` and ``(r, out)`` (on a Conv
        ``in = prod(spatial) c_in``).
      base: the (frozen) base layer, a copy with the residual kernel for PiSSA and OLoRA.
      lora_a0, lora_b0: for PiSSA and OLoRA, the starting factors
        (:class:`~tensorfact.nn.AdapterBuffer`), which define the residual (:meth:`rebase`).
      dropout: an ``nnx.Dropout`` on the input of the change, or None.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import LoRA
      >>> base = nnx.Linear(32, 16, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (4, 32))
      >>> lora = LoRA(base, 4, init="pissa", rngs=nnx.Rngs(2))
      >>> bool(jnp.allclose(lora(x), base(x), atol=1e-5))
      True
      >>> lora.lora_a.shape, lora.lora_b.shape
      ((32, 4), (4, 16))
      >>> bool(jnp.allclose(lora.merge()(x), lora(x), atol=1e-5))
      True
      >>> conv = nnx.Conv(8, 16, (3, 3), rngs=nnx.Rngs(0))
      >>> lora = LoRA(conv, 4, rngs=nnx.Rngs(1))
      >>> lora.lora_a.shape, lora.lora_b.shape
      ((72, 4), (4, 16))
      >>> xc = jnp.ones((2, 6, 6, 8))
      >>> bool((lora(xc) == conv(xc)).all()), type(lora.merge()).__name__
      (True, 'Conv')
    """

    # The randomized SVD's settings are two explicit keywords with tensorfact.svd's names, not
    # an options dict: each is validated where the layer is built (an error naming it), shows
    # in the signature and the docs, and keeps the glossary's one vocabulary.
    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, init: LoRAInit = "gaussian",
                 alpha=None, use_rslora: bool = False, svd_method: SVDMethod = "randomized",
                 oversample: int = 8, n_power_iter: int = 2, dropout: float = 0.0,
                 param_dtype=None, rngs: nnx.Rngs | None = None, split=None):
        self._set_base(base, param_dtype, embed=True)
        n_in, n_out = self.matrix_shape
        self.rank = check_rank_within(rank, min(n_in, n_out),
                                      f"min({self._rows_name}, out_features)")
        self.init = check_choice(init, LoRAInit, "init")
        svd_method = check_choice(svd_method, SVDMethod, "svd_method")
        oversample = check_nonneg_int(oversample, "oversample")
        n_power_iter = check_nonneg_int(n_power_iter, "n_power_iter")
        self.scale = adapter_scale(alpha, self.rank, bool(use_rslora))
        dtype = self.param_dtype
        if split is not None:
            a, b, residual = self._check_split(split)
        elif init == "gaussian" and self.view.kind == "embed":
            # PEFT's embedding LoRA: A = 0 and B standard normal (lecun-normal A would draw
            # from variance 1 / num_embeddings, a vanishing start for large vocabularies)
            a = jnp.zeros((n_in, self.rank), dtype)
            b = jax.random.normal(params_key(rngs, 'for init="gaussian"'), (self.rank, n_out),
                                  dtype)
        elif init == "gaussian":
            a = _lecun(params_key(rngs, 'for init="gaussian"'), (n_in, self.rank), dtype)
            b = jnp.zeros((self.rank, n_out), dtype)
        else:
            key = None
            if init == "pissa" and svd_method == "randomized":
                key = params_key(rngs, 'for init="pissa" with the randomized SVD')
            # the kernel as the view's matrix (a permutation for some nnx.Einsum layouts)
            a, b, residual, n_bad = _split_one(
                self._w(), key, matrix_shape=self.matrix_shape, rank=self.rank,
                scale=self.scale, init=init, svd_method=svd_method, oversample=oversample,
                n_power_iter=n_power_iter, dtype=jnp.dtype(dtype))
            if not is_traced(n_bad) and int(n_bad):
                check_finite(self._kernel(base)[...], f"base.{self.view.weight}")  # raises
        if init != "gaussian":   # (split with init="gaussian" was refused above)
            kernel = self._kernel(base)[...]
            self.base = nnx.clone(base)
            self._kernel()[...] = self._as_kernel(residual).astype(kernel.dtype)
            # the starting factors define the residual: kept so that loading trained factors
            # into a fresh base model rebuilds the same residual (rebase), whatever key drew them
            self.lora_a0, self.lora_b0 = AdapterBuffer(a), AdapterBuffer(b)
        self.lora_a = LoRAParam(a)
        self.lora_b = LoRAParam(b)
        set_dropout(self, dropout, rngs)

    @classmethod
    def from_layers(cls, bases, rank: int, *, init: LoRAInit = "gaussian",
                    rngs: nnx.Rngs | None = None, **settings) -> list["LoRA"]:
        """``[LoRA(base, rank, init=init, rngs=rngs, **settings) for base in bases]``, with the
        PiSSA / OLoRA split of each group of same-shaped kernels computed by one
        :func:`principal_split` call on the list of them (one randomized-SVD key per group,
        drawn from ``rngs``, split over its layers), the layers of a group alone and any
        other ``init`` built one by one. :func:`~tensorfact.nn.apply_adapters` builds its
        LoRA adapters with it.

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from tensorfact.nn import LoRA
          >>> bases = [nnx.Linear(32, 16, rngs=nnx.Rngs(i)) for i in range(3)]
          >>> loras = LoRA.from_layers(bases, 4, init="pissa", rngs=nnx.Rngs(0))
          >>> x = jnp.ones((2, 32))
          >>> [bool(jnp.allclose(l(x), b(x), atol=1e-5)) for l, b in zip(loras, bases)]
          [True, True, True]
        """
        bases = list(bases)
        if init not in ("pissa", "olora"):
            return [cls(base, rank, init=init, rngs=rngs, **settings) for base in bases]
        adapters = [None] * len(bases)
        for group in matrix_groups(bases):
            if len(group) == 1:
                adapters[group[0]] = cls(bases[group[0]], rank, init=init, rngs=rngs, **settings)
                continue
            # the settings the split needs, at LoRA's defaults where not given
            defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
            split_settings = {k: settings.get(k, defaults[k]) for k in (
                "alpha", "use_rslora", "svd_method", "oversample", "n_power_iter",
                "param_dtype")}
            key = None
            if init == "pissa" and split_settings["svd_method"] == "randomized":
                key = params_key(rngs, 'for init="pissa" with the randomized SVD')
            views = [matricize(bases[i]) for i in group]
            matrices = [v.to_matrix(getattr(bases[i], v.weight)[...])
                        for i, v in zip(group, views)]
            a, b, residual = principal_split(matrices, rank, key=key, init=init,
                                             **split_settings)
            for j, i in enumerate(group):
                adapters[i] = cls(bases[i], rank, init=init, rngs=rngs,
                                  split=(a[j], b[j], residual[j]), **settings)
        return adapters

    def _check_split(self, split):
        """``split`` as ``(A, B, residual)`` arrays of this layer's shapes (a ``ValueError``
        naming ``split`` otherwise); ``A`` and ``B`` in ``param_dtype``."""
        if self.init == "gaussian":
            raise ValueError('split is only for init="pissa" or "olora" (the split of the '
                             'kernel it holds), got init="gaussian".')
        if isinstance(split, (str, bytes)) or not hasattr(split, "__len__") or len(split) != 3:
            raise ValueError("split must be a triple (A, B, residual) from principal_split, "
                             f"got {type(split).__name__}.")
        a, b, residual = (jnp.asarray(t) for t in split)
        n_in, n_out = self.matrix_shape
        for name, array, shapes in (("A", a, [(n_in, self.rank)]), ("B", b, [(self.rank, n_out)]),
                                    ("residual", residual, [self.matrix_shape,
                                                            self.kernel_shape])):
            if tuple(array.shape) not in shapes:
                want = " or ".join(str(t) for t in dict.fromkeys(shapes))
                raise ValueError(f"split's {name} must have shape {want} for this layer (rank "
                                 f"{self.rank}), got {tuple(array.shape)}.")
        return a.astype(self.param_dtype), b.astype(self.param_dtype), residual

    def _params(self):
        return self.lora_a[...], self.lora_b[...]

    def _change(self, x, y):
        x, a, b = self._promote(x, *self._params())
        return self.scale * self._lowrank(x, a, b)

    def _delta(self, arrays, precision):
        """``s A B`` (added to ``W``, the residual for PiSSA and OLoRA)."""
        a, b = arrays
        return self.scale * jnp.matmul(a, b, precision=precision)

    def rebase(self, original) -> None:
        """For PiSSA and OLoRA: sets the frozen kernel to the residual ``W − s A₀ B₀`` of the
        ``original`` layer's kernel ``W`` and the starting factors ``A₀ = lora_a0``,
        ``B₀ = lora_b0`` (what :func:`~tensorfact.nn.load_adapter` does after loading them);
        nothing for a Gaussian start, whose base is the original layer."""
        if self.init == "gaussian":
            return
        kernel = self._kernel(original)[...]
        w = self.view.to_matrix(kernel).astype(jnp.promote_types(kernel.dtype, jnp.float32))
        residual = _residual(w, self.lora_a0[...], self.lora_b0[...], self.scale)
        self._kernel()[...] = self._as_kernel(residual).astype(kernel.dtype)


def _split_kernel(kernel, key, *, matrix_shape, rank, scale, init, svd_method, oversample,
                  n_power_iter, dtype):
    """``(A, B, W − s A B, n)`` for one kernel (any shape, seen as the ``matrix_shape``
    matrix ``W``): PiSSA (``A B`` the top-``rank`` SVD part of ``W / s``) or OLoRA (from the
    QR of ``Wᵀ``), and ``n`` = 1 where ``W`` holds NaN or Inf (the arrays are then NaN).
    Runs at ``"highest"`` precision (see the module docstring). Traceable: :class:`LoRA`
    compiles it for one layer, :func:`principal_split` maps it over a stack."""
    w = kernel.reshape(matrix_shape).astype(jnp.promote_types(kernel.dtype, jnp.float32))
    n_bad = jnp.isnan(jnp.sum(w * 0)).astype(jnp.int32)  # one reduction finds NaN and Inf
    if init == "pissa":
        lr = svd(w, rank, method=svd_method, key=key, oversample=oversample,
                 n_power_iter=n_power_iter, precision="highest")
        root = jnp.sqrt(lr.s / scale)
        a, b = lr.u * root, root[:, None] * lr.vt
    else:
        # (the full QR costs far more than this pass; LAPACK never sees a NaN or an Inf)
        q, r = jnp.linalg.qr(jnp.where(n_bad > 0, 0, w).T)
        a, b = r[:rank].T, q[:, :rank].T
        a, b = (jnp.where(n_bad > 0, jnp.nan, t) for t in (a, b))
    a, b = a.astype(dtype), b.astype(dtype)
    return a, b, _residual_of(w, a, b, scale), n_bad


def _residual_of(w, a, b, scale):
    """``W − s A B`` at ``"highest"`` precision, from the rounded ``A`` and ``B`` (so that
    ``base + s A B`` reproduces ``W``)."""
    return w - scale * jnp.matmul(a.astype(w.dtype), b.astype(w.dtype), precision="highest")


_residual = jax.jit(_residual_of, static_argnames=("scale",))


_SPLIT_STATIC = ("matrix_shape", "rank", "scale", "init", "svd_method", "oversample",
                 "n_power_iter", "dtype")
#: one layer as one compiled program: initialising a large model calls it once per layer
#: shape, and eager dispatch of its dozen steps cost as much as the SVD itself
_split_one = jax.jit(_split_kernel, static_argnames=_SPLIT_STATIC)


@functools.partial(jax.jit, static_argnames=_SPLIT_STATIC)
def _split_many(kernels, keys, **static):
    """:func:`_split_kernel` mapped over a stack of kernels (and of keys, where there are keys)."""
    def one(kernel, key):
        return _split_kernel(kernel, key, **static)
    return jax.vmap(one, in_axes=(0, None if keys is None else 0))(kernels, keys)


@functools.partial(jax.jit, static_argnames=_SPLIT_STATIC)
def _split_listed(kernels, keys, **static):
    """:func:`_split_many` of separate kernels, stacked and unstacked inside one program."""
    out = _split_many(jnp.stack(kernels), keys, **static)
    return tuple([t[l] for l in range(len(kernels))] for t in out)


def _split_list(kernels, keys, **static):
    """``(A, B, residual, n_bad)`` lists for a list of same-shaped kernel matrices: one
    program per run of :func:`stack_chunks` (one layer alone where stacking would copy more
    than :data:`STACK_BYTES`)."""
    out = ([], [], [], [])
    for run in stack_chunks(len(kernels), kernels[0].size * kernels[0].dtype.itemsize):
        run_keys = None if keys is None else keys[run.start:run.stop]
        if len(run) == 1:
            parts = [[t] for t in _split_one(kernels[run.start], None if keys is None
                                             else keys[run.start], **static)]
        else:
            parts = _split_listed([kernels[l] for l in run], run_keys, **static)
        for acc, part in zip(out, parts):
            acc.extend(part)
    return out


def principal_split(kernels, rank: int, *, key=None, init: SplitInit = "pissa", alpha=None,
                    use_rslora: bool = False, svd_method: SVDMethod = "randomized",
                    oversample: int = 8, n_power_iter: int = 2, param_dtype=None):
    """PiSSA or OLoRA initialisation of a stack of same-shaped kernels, as one compiled program.

    What :class:`LoRA` computes for one layer with ``init="pissa"`` or ``"olora"``, mapped
    with ``jax.vmap`` over ``L`` kernel matrices and compiled once (``jax.jit``): a model with
    many layers of one shape (the query projections of every block, ...) is initialised by one
    program instead of ``L`` dispatches. Build the adapters from the result without
    recomputing anything::

        a, b, residual = principal_split(kernels, r, key=key)
        adapters = [LoRA(base, r, init="pissa", split=(a[l], b[l], residual[l]))
                    for l, base in enumerate(bases)]

    Layer ``l`` draws its randomized SVD from ``jax.random.split(key, L)[l]`` and equals
    ``LoRA(bases[l], r, init=init, ...)`` when that layer's key is that one.

    Separate layers are better passed as a list than stacked: ``principal_split([W_1, ...,
    W_L], r, ...)`` returns lists, and stacks the kernels inside the program only in runs of
    at most 16 MiB (each large kernel alone). JAX has no views, so stacking copies every kernel
    and each layer's residual sliced out of a stacked result is another copy; on the CPU a
    fresh 64 MiB buffer costs ~20 ms of page faults, and eight 4096² layers took 0.96 s as one
    vmapped program over their stack against 0.49 s one by one (2-core CPU; at 256² the one
    program was 3× faster than a call per layer). :meth:`LoRA.from_layers` and
    :func:`~tensorfact.nn.apply_adapters` use this.

    Args:
      kernels: the ``(L, in, out)`` stack of kernel matrices (a Conv's kernel reshaped to
        ``(prod(kernel_size) * in_features, out_features)``), float32, float64 or bfloat16, or
        a list of ``L`` such ``(in, out)`` matrices of one shape and dtype.
      rank: ``r``, at most ``min(in, out)``.
      key: a ``jax.random`` key, required for ``init="pissa"`` with the randomized SVD (split
        into one key per layer); nothing is drawn otherwise.
      init: ``"pissa"`` (the top-``r`` SVD part trains, the rest stays frozen) or ``"olora"``
        (from the QR of ``Wᵀ``), as in :class:`LoRA`.
      alpha, use_rslora: the adapter's scale ``s`` (``alpha / r``, ``alpha / √r``, or 1 for
        ``alpha=None``), as in :class:`LoRA`: ``A B`` is the split of ``W / s``.
      svd_method, oversample, n_power_iter: PiSSA's SVD, as in :class:`LoRA`.
      param_dtype: dtype of ``A`` and ``B`` (default: the kernels').

    Returns:
      ``(A, B, residual)``: ``A`` of shape ``(L, in, r)``, ``B`` ``(L, r, out)`` (both
      ``param_dtype``) and the residual ``W − s A B`` ``(L, in, out)`` in the kernels' dtype,
      the split running in at least float32 at ``"highest"`` precision; for a list of
      kernels, three lists of the ``L`` per-layer arrays.

    Raises:
      ValueError: if ``kernels`` is not a non-empty 3-D stack, or (eager calls) holds NaN or
        Inf (naming the layer); for a bad ``rank``, ``init``, ``svd_method``, ``oversample``,
        ``n_power_iter`` or ``alpha``; if ``key`` is missing where it is required.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import LoRA, principal_split
      >>> bases = [nnx.Linear(32, 16, rngs=nnx.Rngs(i)) for i in range(3)]
      >>> kernels = jnp.stack([b.kernel[...] for b in bases])
      >>> a, b, residual = principal_split(kernels, 4, key=jax.random.key(0))
      >>> a.shape, b.shape, residual.shape
      ((3, 32, 4), (3, 4, 16), (3, 32, 16))
      >>> loras = [LoRA(base, 4, init="pissa", split=(a[i], b[i], residual[i]))
      ...          for i, base in enumerate(bases)]
      >>> x = jnp.ones((2, 32))
      >>> bool(jnp.allclose(loras[1](x), bases[1](x), atol=1e-5))
      True
    """
    listed = isinstance(kernels, (list, tuple))
    if listed:
        kernels = [jnp.asarray(k) for k in kernels]
        kinds = {(tuple(k.shape), k.dtype) for k in kernels}
        if len(kinds) != 1 or kernels[0].ndim != 2 or 0 in kernels[0].shape:
            raise ValueError("kernels must be a non-empty list of same-shaped, same-dtype 2-D "
                             "kernel matrices, got shapes and dtypes "
                             f"{sorted((s, str(d)) for s, d in kinds)}.")
        if not jnp.issubdtype(kernels[0].dtype, jnp.floating):
            kernels = [k.astype(jnp.float32) for k in kernels]
        kernel_dtype = kernels[0].dtype
        n_layers, (n_in, n_out) = len(kernels), (int(d) for d in kernels[0].shape)
    else:
        kernels = jnp.asarray(kernels)
        if kernels.ndim != 3 or 0 in kernels.shape:
            raise ValueError("kernels must be a non-empty (L, in, out) stack of kernel "
                             f"matrices or a list of them, got shape {tuple(kernels.shape)}.")
        if not jnp.issubdtype(kernels.dtype, jnp.floating):
            kernels = kernels.astype(jnp.float32)
        kernel_dtype = kernels.dtype
        n_layers, n_in, n_out = (int(d) for d in kernels.shape)
    rank = check_rank_within(rank, min(n_in, n_out), "min(in, out)")
    init = check_choice(init, SplitInit, "init")
    svd_method = check_choice(svd_method, SVDMethod, "svd_method")
    oversample = check_nonneg_int(oversample, "oversample")
    n_power_iter = check_nonneg_int(n_power_iter, "n_power_iter")
    scale = adapter_scale(alpha, rank, bool(use_rslora))
    keys = None
    if init == "pissa" and svd_method == "randomized":
        keys = jax.random.split(check_key(key, 'for init="pissa" with the randomized SVD'),
                                n_layers)
    elif key is not None:
        check_key(key, 'only for init="pissa" with the randomized SVD')
    dtype = jnp.dtype(kernel_dtype if param_dtype is None else param_dtype)
    static = dict(matrix_shape=(n_in, n_out), rank=rank, scale=scale, init=init,
                  svd_method=svd_method, oversample=oversample, n_power_iter=n_power_iter,
                  dtype=dtype)
    if listed:
        a, b, residual, n_bad = _split_list(kernels, keys, **static)
        n_bad = jnp.stack(n_bad)
        residual = [t.astype(kernel_dtype) for t in residual]
    else:
        a, b, residual, n_bad = _split_many(kernels, keys, **static)
        residual = residual.astype(kernel_dtype)
    if not is_traced(n_bad) and np.any(n_bad):
        layer = int(np.argmax(n_bad))
        raise ValueError(f"kernels[{layer}] contains {int(count_nonfinite(kernels[layer]))} "
                         "NaN or Inf value(s).")
    return a, b, residual


class DoRA(Adapter):
    """Weight-decomposed low-rank adaptation: ``W' = m ⊙ (W + s A B) / ‖W + s A B‖_c``.

    The forward never forms ``x W'`` from scratch: with ``ρ = m / ‖W + s A B‖_c`` (one factor
    per output feature) it returns ``base(x) + (ρ − 1) ⊙ (x W) + ρ ⊙ s (x A) B``, where
    ``x W = base(x) − b`` is reused from the base's output. The column norms do need
    ``W + s A B`` (an ``in × out`` matrix) at every call, as in the paper.

    On an ``nnx.Conv`` the kernel is the matrix ``(prod(spatial) c_in, c_out)``: the magnitude
    is one per output channel, the norm over ``(spatial..., c_in)``, and ``(x A) B`` runs as in
    :class:`LoRA` (a convolution to ``r`` channels, then a 1×1 one).

    Args:
      base: the ``nnx.Linear`` or ``nnx.Conv`` to adapt.
      rank: ``r``, at most ``min(in, out)`` of the kernel matrix.
      alpha, use_rslora: the scale ``s`` of ``A B``, as in :class:`LoRA`.
      dropout: dropout rate on the input of the change, as in :class:`LoRA` (with it active,
        ``x W`` is recomputed from the dropped input, as PEFT does).
      detach_norm: treat ``‖W + s A B‖_c`` as a constant in the backward pass (default, as
        recommended in the paper, §4.3); ``False`` differentiates through it. The norm is a
        safe one: a zero column gets a zero (not NaN) gradient and the ratio ``m / ‖·‖_c`` is
        taken as 0 there (the column of ``W'`` is zero either way).
      param_dtype: dtype of ``A``, ``B`` and ``m`` (default: the base kernel's).
      rngs: ``nnx.Rngs`` for ``A`` (lecun-normal; ``B = 0``).

    Attributes:
      lora_a, lora_b, magnitude: the ``nnx.LoRAParam``s (``magnitude`` has shape ``(out,)``).

    :meth:`delta_weight` is ``W' − W``, the whole change of the kernel (magnitude included).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import DoRA
      >>> base = nnx.Linear(32, 16, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (4, 32))
      >>> dora = DoRA(base, 4, rngs=nnx.Rngs(2))
      >>> bool((dora(x) == base(x)).all())
      True
      >>> dora.magnitude.shape
      (16,)
    """

    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, alpha=None,
                 use_rslora: bool = False, detach_norm: bool = True, dropout: float = 0.0,
                 param_dtype=None, rngs: nnx.Rngs):
        self._set_base(base, param_dtype)
        n_in, n_out = self.matrix_shape
        self.rank = check_rank_within(rank, min(n_in, n_out),
                                      f"min({self._rows_name}, out_features)")
        self.scale = adapter_scale(alpha, self.rank, bool(use_rslora))
        self.detach_norm = bool(detach_norm)
        dtype = self.param_dtype
        key = params_key(rngs, "for DoRA's random A")
        self.lora_a = LoRAParam(_lecun(key, (n_in, self.rank), dtype))
        self.lora_b = LoRAParam(jnp.zeros((self.rank, n_out), dtype))
        # computed exactly as in the forward (same function, same input W + s·A·0 = W), so the
        # ratio m / ‖W‖_c is exactly one at the start
        w = self._w()
        self.magnitude = LoRAParam(_column_norms(self._direction(
            w, self.lora_a[...], self.lora_b[...], self.base.precision)).astype(dtype))
        set_dropout(self, dropout, rngs)

    def _params(self):
        return self.lora_a[...], self.lora_b[...], self.magnitude[...]

    def _direction(self, w, a, b, precision):
        """``V = W + s A B``, the unnormalised direction."""
        return w + self.scale * jnp.matmul(a, b, precision=precision).astype(w.dtype)

    def _ratio(self, direction, m):
        """``m / ‖V‖_c`` (0 for a zero column), the norm detached if ``detach_norm``."""
        norms = _column_norms(direction)
        if self.detach_norm:
            norms = jax.lax.stop_gradient(norms)
        return safe_divide(m, norms)

    def _change(self, x, y):
        # the ratio in the parameters' own dtypes, exactly as m was computed at the start
        a, b, m = self._params()
        w = self._w()
        prec = self.base.precision
        ratio = self._ratio(self._direction(w, a, b, prec), m)
        x, a, b, ratio, w = self._promote(x, a, b, ratio, w)
        if self.view.kind == "conv":
            # x W is the base's output less its bias, or (dropout) the convolution of x
            xw = (convolve(self.base, x, self._as_kernel(w)) if y is None else
                  y if self.base.bias is None else y - self.base.bias[...].astype(y.dtype))
            lora = self.scale * self._lowrank(x, a, b)
            return (ratio - 1).astype(xw.dtype) * xw + ratio * lora
        rows = self.view.rows(x)
        if y is not None and self.view.layer == "Linear":
            xw = y if self.base.bias is None else y - self.base.bias[...].astype(y.dtype)
        else:
            xw = jnp.matmul(rows, w, precision=prec)
        lora = self.scale * jnp.matmul(jnp.matmul(rows, a, precision=prec), b, precision=prec)
        return self.view.outputs((ratio - 1).astype(xw.dtype) * xw + ratio * lora)

    def dense_weight(self, *, precision: Precision = "highest"):
        """``m ⊙ (W + s A B) / ‖W + s A B‖_c``, in the base kernel's shape."""
        w = self._w()
        a, b, m = (p.astype(w.dtype) for p in self._params())
        direction = self._direction(w, a, b, resolve_precision(precision))
        return self._as_kernel(direction * self._ratio(direction, m))

    def delta_weight(self, *, precision: Precision = "highest"):
        """``W' − W``: the adapted kernel :meth:`dense_weight` less the base's."""
        return self.dense_weight(precision=precision) - self._kernel()[...]


@jax.jit
def _column_norms(v):
    """Euclidean norm of each column of an ``(in, out)`` kernel (one per output feature), with
    a zero gradient at a zero column (:func:`tensorfact._numerics.safe_norm`)."""
    return safe_norm(v, axis=0)


class LoKr(Adapter):
    """Kronecker-product adaptation: ``ΔW = s · C ⊗ (A B)`` (LyCORIS's LoKr).

    With ``in_shape = (i_1, i_2)`` and ``out_shape = (o_1, o_2)``, ``C`` is a dense
    ``(i_1, o_1)`` matrix (zero at the start) and ``A B`` a rank-``r`` ``(i_2, o_2)`` matrix,
    ``r (i_2 + o_2) + i_1 o_1`` parameters in all; ``ΔW[(a, b), (c, d)] = s C[a, c] (AB)[b, d]``
    with row-major multi-indices. The forward reshapes ``x`` to ``(…, i_1, i_2)`` and contracts
    it with ``A``, ``C`` and ``B`` in turn, never forming ``ΔW``. On an ``nnx.Conv``,
    ``in = prod(spatial) c_in`` (the rows of the kernel matrix) and the forward forms ``ΔW``
    (the kernel's size) and adds one convolution with it (see the module docstring).

    Args:
      base: the ``nnx.Linear`` or ``nnx.Conv`` to adapt.
      rank: ``r``, at most ``min(i_2, o_2)``.
      in_shape, out_shape: the splits ``(i_1, i_2)`` of ``in`` and ``(o_1, o_2)`` of ``out``;
        by default the most balanced, smaller factor first (``C`` is the smaller matrix).
      alpha, use_rslora: the scale ``s = alpha / r`` (``None``: 1), as in :class:`LoRA`.
      param_dtype: dtype of the factors (default: the base kernel's).
      rngs: ``nnx.Rngs`` for ``A`` (lecun-normal) and ``B`` (variance ``1/r``).

    Attributes:
      lokr_c, lokr_a, lokr_b: the ``nnx.LoRAParam`` factors.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import LoKr
      >>> base = nnx.Linear(64, 48, rngs=nnx.Rngs(0))
      >>> lokr = LoKr(base, 2, rngs=nnx.Rngs(1))
      >>> lokr.in_shape, lokr.out_shape, lokr.lokr_c.shape
      ((8, 8), (6, 8), (8, 6))
      >>> x = jnp.ones((3, 64))
      >>> bool((lokr(x) == base(x)).all())
      True
    """

    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, in_shape=None,
                 out_shape=None, alpha=None, use_rslora: bool = False, param_dtype=None,
                 rngs: nnx.Rngs):
        self._set_base(base, param_dtype)
        n_in, n_out = self.matrix_shape
        self.in_shape = pair_split(in_shape, n_in, "in_shape", self._rows_name)
        self.out_shape = pair_split(out_shape, n_out, "out_shape", "out_features")
        (i1, i2), (o1, o2) = self.in_shape, self.out_shape
        self.rank = check_rank_within(rank, min(i2, o2), "min(in_shape[1], out_shape[1])")
        self.scale = adapter_scale(alpha, self.rank, bool(use_rslora))
        why = "for LoKr's random A and B"
        dtype = self.param_dtype
        self.lokr_c = LoRAParam(jnp.zeros((i1, o1), dtype))
        self.lokr_a = LoRAParam(_lecun(params_key(rngs, why), (i2, self.rank), dtype))
        self.lokr_b = LoRAParam(_normal(params_key(rngs, why), (self.rank, o2), 1.0 / self.rank,
                                        dtype))

    def _params(self):
        return self.lokr_c[...], self.lokr_a[...], self.lokr_b[...]

    def _delta(self, arrays, precision):
        """``s · C ⊗ (A B)``."""
        c, a, b = arrays
        return self.scale * jnp.kron(c, jnp.matmul(a, b, precision=precision))

    def _linear_change(self, x, arrays):
        c, a, b = arrays
        prec = self.base.precision
        lead = x.shape[:-1]
        t = x.reshape((-1,) + self.in_shape)                       # (N, i1, i2)
        t = jnp.einsum("npq,qr->npr", t, a, precision=prec)         # (N, i1, r)
        t = jnp.einsum("npr,pj->njr", t, c, precision=prec)         # (N, o1, r)
        t = jnp.einsum("njr,rk->njk", t, b, precision=prec)         # (N, o1, o2)
        return self.scale * t.reshape(lead + (self.out_features,))



class LoHa(Adapter):
    """Low-rank Hadamard-product adaptation: ``ΔW = s · (A_1 B_1) ⊙ (A_2 B_2)`` (FedPara,
    LyCORIS's LoHa).

    Two rank-``r`` pairs give an update of rank up to ``r²``. The forward takes whichever of
    two exact forms costs fewer FLOPs for the batch at hand: forming ``ΔW`` (``4 r·in·out``
    plus ``2 N in·out`` to apply), or the rank-``r²`` factorization
    ``ΔW = P Q`` with ``P[i, (a, b)] = A_1[i, a] A_2[i, b]`` and
    ``Q[(a, b), j] = B_1[a, j] B_2[b, j]`` (``2 N r² (in + out)``). On an ``nnx.Conv``
    (``in = prod(spatial) c_in``) it forms ``ΔW`` and adds one convolution with it.

    Args:
      base: the ``nnx.Linear`` or ``nnx.Conv`` to adapt.
      rank: ``r`` of each pair, at most ``min(in, out)`` of the kernel matrix.
      alpha, use_rslora: the scale ``s = alpha / r`` (``None``: 1), as in :class:`LoRA`.
      param_dtype: dtype of the factors (default: the base kernel's).
      rngs: ``nnx.Rngs`` for ``A_1``, ``A_2`` (lecun-normal) and ``B_1`` (variance ``1/r``);
        ``B_2 = 0``.

    Attributes:
      hada_a1, hada_b1, hada_a2, hada_b2: the ``nnx.LoRAParam`` factors.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import LoHa
      >>> base = nnx.Linear(32, 16, rngs=nnx.Rngs(0))
      >>> loha = LoHa(base, 4, rngs=nnx.Rngs(1))
      >>> x = jnp.ones((3, 32))
      >>> bool((loha(x) == base(x)).all()), loha.hada_a1.shape
      (True, (32, 4))
    """

    def __init__(self, base: nnx.Linear | nnx.Conv, rank: int, *, alpha=None,
                 use_rslora: bool = False, param_dtype=None, rngs: nnx.Rngs):
        self._set_base(base, param_dtype)
        n_in, n_out = self.matrix_shape
        self.rank = check_rank_within(rank, min(n_in, n_out),
                                      f"min({self._rows_name}, out_features)")
        self.scale = adapter_scale(alpha, self.rank, bool(use_rslora))
        why = "for LoHa's random factors"
        dtype, r = self.param_dtype, self.rank
        self.hada_a1 = LoRAParam(_lecun(params_key(rngs, why), (n_in, r), dtype))
        self.hada_b1 = LoRAParam(_normal(params_key(rngs, why), (r, n_out), 1.0 / r, dtype))
        self.hada_a2 = LoRAParam(_lecun(params_key(rngs, why), (n_in, r), dtype))
        self.hada_b2 = LoRAParam(jnp.zeros((r, n_out), dtype))

    def _params(self):
        return self.hada_a1[...], self.hada_b1[...], self.hada_a2[...], self.hada_b2[...]

    def _delta(self, arrays, precision):
        """``s (A_1 B_1) ⊙ (A_2 B_2)``."""
        a1, b1, a2, b2 = arrays
        return self.scale * (jnp.matmul(a1, b1, precision=precision)
                             * jnp.matmul(a2, b2, precision=precision))

    def _linear_change(self, x, arrays):
        a1, b1, a2, b2 = arrays
        prec = self.base.precision
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n, r, n_in, n_out = x2.shape[0], self.rank, self.in_features, self.out_features
        if 2 * n * r * r * (n_in + n_out) <= 4 * r * n_in * n_out + 2 * n * n_in * n_out:
            p = (a1[:, :, None] * a2[:, None, :]).reshape(n_in, r * r)
            q = (b1[:, None, :] * b2[None, :, :]).reshape(r * r, n_out)
            out = self.scale * jnp.matmul(jnp.matmul(x2, p, precision=prec), q, precision=prec)
        else:
            out = jnp.matmul(x2, self._delta(arrays, prec), precision=prec)
        return out.reshape(lead + (n_out,))

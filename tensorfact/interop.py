"""Conversions between tensorfact's factorized tensors and TensorLy's.

TensorLy (Kossaifi, Panagakis, Anandkumar & Pantic, "TensorLy: Tensor Learning in Python",
JMLR 20(26), 2019) holds the same four formats with the same factor layouts, so a conversion
copies the arrays and changes nothing else:

* :class:`~tensorfact.CPTensor` and ``tensorly.cp_tensor.CPTensor``: ``(weights, factors)``,
  ``factors[k]`` of shape ``(I_k, R)``;
* :class:`~tensorfact.TuckerTensor` and ``tensorly.tucker_tensor.TuckerTensor``:
  ``(core, factors)``, ``factors[k]`` of shape ``(I_k, r_k)``;
* :class:`~tensorfact.TTTensor` and ``tensorly.tt_tensor.TTTensor``: cores
  ``(r_{k-1}, I_k, r_k)``;
* :class:`~tensorfact.TTMatrix` and ``tensorly.tt_matrix.TTMatrix``: cores
  ``(r_{k-1}, m_k, n_k, r_k)``;
* :class:`~tensorfact.TRTensor` and ``tensorly.tr_tensor.TRTensor``: cores
  ``(r_k, I_k, r_{k+1})``.

One difference in meaning: a TensorLy ``TTMatrix`` densifies (``tt_matrix_to_tensor``) to the
``2d``-way tensor ``(m_1, ..., m_d, n_1, ..., n_d)``, tensorfact's ``TTMatrix.to_dense()`` to the
``(∏ m_k, ∏ n_k)`` matrix (TensorLy's ``tt_matrix_to_matrix``); the cores are the same.

TensorLy is optional (it is a test dependency): it is imported when a function is called.
"""

from __future__ import annotations

import numpy as np

from tensorfact.tensors import CPTensor, TRTensor, TTMatrix, TTTensor, TuckerTensor

__all__ = ["to_tensorly", "from_tensorly"]


def _tensorly():
    try:
        import tensorly
        import tensorly.cp_tensor
        import tensorly.tr_tensor
        import tensorly.tt_matrix
        import tensorly.tt_tensor
        import tensorly.tucker_tensor
    except ImportError as e:  # pragma: no cover - exercised only without TensorLy
        raise ImportError("tensorfact.interop needs TensorLy: pip install tensorly") from e
    return tensorly


def to_tensorly(t):
    """Converts a tensorfact CP, Tucker, TT, TT-matrix or TR tensor to TensorLy's type.

    The arrays are copied to the current TensorLy backend (``tensorly.tensor`` of a NumPy
    copy), in their dtype; nothing is recomputed.

    Args:
      t: a :class:`~tensorfact.CPTensor`, :class:`~tensorfact.TuckerTensor` (over all modes),
        :class:`~tensorfact.TTTensor`, :class:`~tensorfact.TTMatrix` or
        :class:`~tensorfact.TRTensor`.

    Returns:
      The TensorLy ``CPTensor``, ``TuckerTensor``, ``TTTensor``, ``TTMatrix`` or ``TRTensor``
      holding the same factors.

    Raises:
      TypeError: ``t`` is not one of these types.
      ValueError: ``t`` is a partial Tucker tensor (``modes`` not all the modes), which
        TensorLy's ``TuckerTensor`` cannot hold.
      ImportError: TensorLy is not installed.

    Example:
      >>> import jax, numpy as np, tensorly as tl, tensorfact as tfa
      >>> cp = tfa.random_cp(jax.random.key(0), (3, 4, 5), rank=2)
      >>> tl_cp = tfa.to_tensorly(cp)
      >>> type(tl_cp).__name__, tl_cp.rank
      ('CPTensor', 2)
      >>> bool(np.allclose(tl.cp_to_tensor(tl_cp), cp.to_dense(), atol=1e-5))
      True
    """
    tl = _tensorly()

    def arr(a):
        return tl.tensor(np.array(a))

    if isinstance(t, CPTensor):
        return tl.cp_tensor.CPTensor((arr(t.weights), [arr(a) for a in t.factors]))
    if isinstance(t, TuckerTensor):
        if tuple(t.modes) != tuple(range(t.core.ndim)):
            raise ValueError(f"t must be a Tucker tensor over all its modes for TensorLy's "
                             f"TuckerTensor, got a partial one over modes {tuple(t.modes)} of "
                             f"{t.core.ndim}.")
        return tl.tucker_tensor.TuckerTensor((arr(t.core), [arr(u) for u in t.factors]))
    if isinstance(t, TTMatrix):
        return tl.tt_matrix.TTMatrix([arr(g) for g in t.cores])
    if isinstance(t, TTTensor):
        return tl.tt_tensor.TTTensor([arr(g) for g in t.cores])
    if isinstance(t, TRTensor):
        return tl.tr_tensor.TRTensor([arr(g) for g in t.cores])
    raise TypeError(f"t must be a tensorfact CPTensor, TuckerTensor, TTTensor, TTMatrix or "
                    f"TRTensor, got {type(t).__name__}.")


def from_tensorly(t):
    """Converts a TensorLy CP, Tucker, TT, TT-matrix or TR tensor to tensorfact's type.

    The arrays become JAX arrays in their dtype (float64 stays float64 only with
    ``jax_enable_x64``, as for any array given to JAX).

    Args:
      t: a TensorLy ``CPTensor`` (what ``parafac`` returns), ``TuckerTensor`` (``tucker``),
        ``TTTensor`` (``tensor_train``), ``TTMatrix`` (``tensor_train_matrix``) or
        ``TRTensor`` (``tensor_ring``).

    Returns:
      The :class:`~tensorfact.CPTensor`, :class:`~tensorfact.TuckerTensor`,
      :class:`~tensorfact.TTTensor`, :class:`~tensorfact.TTMatrix` or
      :class:`~tensorfact.TRTensor` holding the same factors.

    Raises:
      TypeError: ``t`` is not one of these TensorLy types.
      ImportError: TensorLy is not installed.

    Example:
      >>> import numpy as np, tensorly as tl, tensorfact as tfa
      >>> x = tl.tensor(np.random.default_rng(0).standard_normal((2, 3, 4)))
      >>> tl_tt = tl.decomposition.tensor_train(x, rank=(1, 2, 3, 1))
      >>> tt = tfa.from_tensorly(tl_tt)
      >>> type(tt).__name__, tt.rank
      ('TTTensor', (1, 2, 3, 1))
      >>> bool(np.allclose(tt.to_dense(), tl.tt_to_tensor(tl_tt), atol=1e-5))
      True
    """
    tl = _tensorly()

    def arr(a):
        import jax.numpy as jnp

        return jnp.asarray(tl.to_numpy(a))

    if isinstance(t, tl.cp_tensor.CPTensor):
        weights, factors = t
        return CPTensor(arr(weights), [arr(a) for a in factors])
    if isinstance(t, tl.tucker_tensor.TuckerTensor):
        core, factors = t
        return TuckerTensor(arr(core), [arr(u) for u in factors])
    if isinstance(t, tl.tt_matrix.TTMatrix):
        return TTMatrix([arr(g) for g in t])
    if isinstance(t, tl.tt_tensor.TTTensor):
        return TTTensor([arr(g) for g in t])
    if isinstance(t, tl.tr_tensor.TRTensor):
        return TRTensor([arr(g) for g in t])
    raise TypeError(f"t must be a TensorLy CPTensor, TuckerTensor, TTTensor, TTMatrix or "
                    f"TRTensor, got {type(t).__name__}.")

"""Coupled matrix–tensor factorization (CMTF) by alternating least squares.

An N-way tensor ``x`` and a matrix ``y`` share one mode: ``x ≈ [[A_0, …, A_{N-1}]]`` and
``y ≈ A_c Vᵀ`` with the same factor ``A_c`` for mode ``c`` of ``x`` and the rows of ``y``
(Acar, Kolda & Dunlavy 2011). ALS minimises ``½‖x − [[A]]‖² + (β/2)‖y − A_c Vᵀ‖²``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact import algebra
from tensorfact._checks import (Init, Precision, as_float_array, check_nonneg_number,
                                check_positive_int, count_nonfinite, report_nonfinite)
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import (check_finite_init, check_iteration_args,
                                              concrete_or_traced, normalize_columns,
                                              resolve_init, resolve_tol, solve_normal_equations)
from tensorfact.decomposition._loop import (DEFAULT_TOL, error_from_norms, iterate,
                                            refine_error, relative_from_squares)
from tensorfact.decomposition._sweeps import cp_initial_factors
from tensorfact.tensors import CPTensor

__all__ = ["cmtf", "CMTFInfo"]


class CMTFInfo(NamedTuple):
    """Diagnostics of :func:`cmtf`: the four fields of ``FitInfo``, then each data set's error.

    Attributes:
      n_iter, errors, converged: as in ``FitInfo``; ``errors`` and ``rel_error`` are the joint
        relative error ``sqrt((‖x − x̂‖² + β‖y − ŷ‖²) / (‖x‖² + β‖y‖²))`` (``β`` the
        ``matrix_weight``), the objective the fit lowers.
      rel_error: the joint error of the returned fit, from the dense reconstructions.
      rel_error_x: ``‖x − x̂‖ / ‖x‖``.
      rel_error_y: ``‖y − ŷ‖ / ‖y‖``.
    """

    n_iter: jax.Array
    errors: jax.Array
    rel_error: jax.Array
    converged: jax.Array
    rel_error_x: jax.Array
    rel_error_y: jax.Array


def cmtf(x, y, rank: int, *, coupled_mode: int = 0, matrix_weight: float = 1.0, key=None,
         init: Union[Init, tuple] = "svd", n_iter: int = 100, tol: float = DEFAULT_TOL,
         precision: Precision = "highest", return_info: bool = False):
    """Coupled matrix–tensor factorization by ALS.

    Fits ``x ≈ [[λ; A_0, …, A_{N-1}]]`` and ``y ≈ [[σ; A_c, V]] = A_c diag(σ) Vᵀ`` with the
    factor ``A_c`` of mode ``c = coupled_mode`` shared by the rows of ``y`` (Acar, Kolda &
    Dunlavy, "All-at-once optimization for coupled matrix and tensor factorizations", MLG 2011;
    the ALS baseline of that paper, as TensorLy's ``coupled_matrix_tensor_3d_factorization``,
    here for any order and any coupled mode). It minimises

        ½‖x − [[A_0, …, A_{N-1}]]‖² + (β/2)‖y − A_c Vᵀ‖²

    by ALS: ``V ← yᵀA_c (A_cᵀA_c)⁺``; ``A_n ← MTTKRP_n(x) G_n⁺`` for ``n ≠ c``; and the coupled
    factor solves both least-squares problems stacked,
    ``A_c ← (MTTKRP_c(x) + β y V)(G_c + β VᵀV)⁺`` (``G_n = ⊛_{k≠n} A_kᵀA_k``), updated last
    in each sweep as in TensorLy. The start: the SVD start of :func:`~tensorfact.cp` for
    ``x``'s modes, and for ``A_c`` the leading left singular vectors of ``[unfold(x, c), y]``.
    One ``jax.jit`` program.

    ``matrix_weight`` (``β``) and not ``weights``: in this library ``weights`` are a CP
    tensor's component scales (``CPTensor.weights``), which a fit returns, never a knob. ``β``
    balances the two data sets (Acar et al. weight them equally; scale ``y`` or set ``β`` when
    their norms differ a lot: ``β = ‖x‖²/‖y‖²`` gives them equal say).

    Scale: both data sets are divided by one power of two (near the larger ``max |·|``) and the
    weights scaled back, so ``cmtf(c·x, c·y) = c·cmtf(x, y)`` (scaling one data set alone
    changes the balance, i.e. the problem).

    Args:
      x: N-way array (``N ≥ 2``), no mode of size zero.
      y: matrix whose rows match mode ``coupled_mode`` of ``x`` (``x.shape[c]`` rows).
      rank: number of components ``R`` (shared).
      coupled_mode: the mode of ``x`` shared with the rows of ``y`` (negative counts from the
        end).
      matrix_weight: ``β ≥ 0``, the weight of the matrix term (``0``: plain CP of ``x``, then
        ``V`` fitted to ``y`` from ``A_c``).
      key: ``jax.random`` key; needed for ``init="random"`` only.
      init: ``"svd"``, ``"random"`` (needs ``key``), or a pair ``(x_cp, y_cp)`` as returned.
      n_iter: maximum number of ALS sweeps (static).
      tol: stop when the joint relative error changes by less than ``tol``; a concrete ``0``
        runs exactly ``n_iter`` sweeps (differentiable ``lax.scan``).
      precision: XLA precision of the contractions (default ``"highest"``).
      return_info: also return a :class:`CMTFInfo` (joint error, then each data set's).

    Returns:
      ``(x_cp, y_cp)``: two :class:`CPTensor` with unit-norm columns, ``x_cp.factors[c]`` and
      ``y_cp.factors[0]`` equal (the shared factor); or ``((x_cp, y_cp), info)`` with
      ``return_info=True``.

    Raises:
      ValueError: for bad ``x``, a ``y`` that is not a matrix or whose row count differs from
        ``x.shape[coupled_mode]``, a ``coupled_mode`` out of range, a negative
        ``matrix_weight``, bad ``rank``/``n_iter``/``tol``/``init``, or NaN/Inf in ``x`` or
        ``y`` (eager calls).

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> x_true = tfa.random_cp(k1, (6, 7, 8), rank=2)
      >>> y = x_true.factors[0] @ jax.random.normal(k2, (2, 5))
      >>> (xc, yc), info = tfa.cmtf(x_true.to_dense(), y, 2, return_info=True)
      >>> bool(info.rel_error_x < 1e-4) and bool(info.rel_error_y < 1e-4)
      True
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    y = as_float_array(y, "y", min_ndim=2, nonempty=True)
    if y.ndim != 2:
        raise ValueError(f"y must be a matrix (2-D), got shape {tuple(y.shape)}.")
    if isinstance(coupled_mode, bool) or not isinstance(coupled_mode, int) \
            or not -x.ndim <= coupled_mode < x.ndim:
        raise ValueError(f"coupled_mode must be an int in [-{x.ndim}, {x.ndim}) for a "
                         f"{x.ndim}-way x, got {coupled_mode!r}.")
    c = coupled_mode % x.ndim
    if y.shape[0] != x.shape[c]:
        raise ValueError(f"y must have x.shape[{c}] = {x.shape[c]} rows (coupled_mode={c}), got "
                         f"y of shape {tuple(y.shape)}.")
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(matrix_weight, "matrix_weight")
    init_pair, init_kind = _resolve_init(init, key, x.shape, y.shape, c, rank)
    fixed, tol = resolve_tol(tol)
    result, bad_x, bad_y = _fit(x, y, key, init_pair, concrete_or_traced(matrix_weight), tol,
                                rank=rank, coupled=c, n_iter=n_iter, fixed=fixed,
                                init=init_kind, precision=precision,
                                return_info=bool(return_info))
    report_nonfinite(bad_x, "x")
    report_nonfinite(bad_y, "y")
    return result


def _resolve_init(init, key, x_shape, y_shape, c, rank):
    if isinstance(init, tuple) and len(init) == 2 and all(isinstance(t, CPTensor) for t in init):
        tx, ty = init
        if tx.shape != tuple(x_shape) or tx.rank != rank or ty.shape != tuple(y_shape) \
                or ty.rank != rank:
            raise ValueError(f"init must be a pair of CPTensors of shapes {tuple(x_shape)} and "
                             f"{tuple(y_shape)} and rank {rank}, got {tx.shape}, {ty.shape} "
                             f"and ranks {tx.rank}, {ty.rank}.")
        check_finite_init(tx)
        check_finite_init(ty)
        return init, "given"
    return resolve_init(init, CPTensor, key, _one_cp_tensor)


def _one_cp_tensor(_):
    raise ValueError("init must be 'svd', 'random' or a pair (x_cp, y_cp) of CPTensors, got one "
                     "CPTensor.")


@functools.partial(jax.jit, static_argnames=("rank", "coupled", "n_iter", "fixed", "init",
                                             "precision", "return_info"))
def _fit(x, y, key, init_pair, beta, tol, *, rank, coupled, n_iter, fixed, init, precision,
         return_info):
    dtype = x.dtype
    prec = algebra.resolve_precision(precision)
    bad_x, bad_y = count_nonfinite(x), count_nonfinite(y)
    scale = lax.stop_gradient(jnp.maximum(pow2_scale(x), pow2_scale(y)))
    x, y = x / scale, y / scale
    ndim, c = x.ndim, coupled
    beta = jnp.asarray(beta, dtype)
    norm_x_sq = jnp.vdot(x, x, precision=prec)
    norm_y_sq = jnp.vdot(y, y, precision=prec)
    norm_sq = norm_x_sq + beta * norm_y_sq

    if init == "given":
        tx, _ = init_pair
        factors = [a.astype(dtype) for a in tx.factors]
        factors[c] = factors[c] * (tx.weights.astype(dtype) / scale)
    else:
        _, factors = cp_initial_factors(x, rank, key, init, False, precision)
        if init == "svd":  # the coupled factor from both data sets (as TensorLy)
            joint = jnp.concatenate([algebra.unfold(x, c), y], axis=1)
            _, (a_c, _) = cp_initial_factors(joint, rank, key, init, False, precision)
            factors[c] = a_c

    def mm(a, b):
        return jnp.matmul(a, b, precision=prec)

    def step(factors):
        factors = list(factors)
        v = solve_normal_equations(mm(y.T, factors[c]), mm(factors[c].T, factors[c]), 0.0,
                                   precision)
        vtv = mm(v.T, v)
        yv = mm(y, v)
        grams = [mm(a.T, a) for a in factors]
        for n in [m for m in range(ndim) if m != c] + [c]:
            gram = functools.reduce(lambda p, q: p * q,
                                    [grams[k] for k in range(ndim) if k != n],
                                    jnp.ones((rank, rank), dtype))
            m_n = algebra.mttkrp(x, factors, n, impl="xla", precision=precision)
            if n == c:
                m_n, gram = m_n + beta * yv, gram + beta * vtv
            factors[n] = solve_normal_equations(m_n, gram, 0.0, precision)
            grams[n] = mm(factors[n].T, factors[n])
        a_c = factors[c]
        # m_n = M_c + β yV from the last (coupled) update: ⟨x, x̂⟩ + β⟨y, ŷ⟩ in one sum
        inner = jnp.sum(a_c * m_n)
        approx_sq = (jnp.sum(functools.reduce(lambda p, q: p * q, grams))
                     + beta * jnp.sum(grams[c] * vtv))
        err = refine_error(error_from_norms(norm_sq, inner, approx_sq), lambda: _joint_error(
            x, y, factors, factors[c], v, beta, norm_sq, precision)[0])
        return tuple(factors), err

    state, n_done, errors, converged = iterate(step, tuple(factors), n_iter=n_iter,
                                               tol=0 if fixed else tol)
    factors = list(state)
    v = solve_normal_equations(mm(y.T, factors[c]), mm(factors[c].T, factors[c]), 0.0, precision)
    norms = [normalize_columns(a) for a in factors]
    weights_x = functools.reduce(lambda p, q: p * q, [nrm for nrm, _ in norms]) * scale
    unit = [u for _, u in norms]
    v_norm, v_unit = normalize_columns(v)
    weights_y = norms[c][0] * v_norm * scale
    result = (CPTensor(weights_x, tuple(unit)), CPTensor(weights_y, (unit[c], v_unit)))
    if not return_info:
        return result, bad_x, bad_y
    joint, ex, ey = _joint_error(x, y, factors, factors[c], v, beta, norm_sq, precision)
    info = CMTFInfo(n_done, errors, joint, converged,
                    relative_from_squares(ex, norm_x_sq), relative_from_squares(ey, norm_y_sq))
    return (result, info), bad_x, bad_y


def _joint_error(x, y, factors, a_c, v, beta, norm_sq, precision):
    """Joint relative error and the squared errors of ``x`` and ``y``, from the dense fits."""
    rank = v.shape[1]
    dx = x - CPTensor(jnp.ones((rank,), x.dtype), tuple(factors)).to_dense(precision=precision)
    dy = y - jnp.matmul(a_c, v.T, precision=algebra.resolve_precision(precision))
    ex, ey = jnp.sum(dx * dx), jnp.sum(dy * dy)
    return relative_from_squares(ex + beta * ey, norm_sq), ex, ey

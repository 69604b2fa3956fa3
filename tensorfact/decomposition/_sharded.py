"""Sharded CP-ALS, HOOI and TT-SVD: the fits of :func:`tensorfact.cp`, :func:`tensorfact.tucker`
and :func:`tensorfact.tt` for a tensor split over a device mesh.

The input is a :class:`jax.Array` whose :class:`~jax.sharding.NamedSharding` splits one or more
modes over mesh axes (see :mod:`tensorfact.sharding`). Each fit is one ``jax.shard_map`` program
in which every device works on its own block of the tensor and the devices exchange only small
arrays through JAX's collectives:

* **factor rows.** Factors (``I_n × R``) and cores are replicated. A device contracts its block
  with the rows of each factor that belong to its block (a slice at ``axis_index · I_n/s_n``).
* **MTTKRPs and mode products** run on local blocks; a ``psum`` over the mesh axes of the
  contracted modes completes them. CP's MTTKRPs go through the dimension tree, or with
  ``impl="pallas"`` through the MTTKRP kernel once per mode on each device's block. A CP
  factor update is row-local (the normal equations and HALS act row by row), so each device
  solves for the rows of its block and an ``all_gather`` of those ``I_n/s_n × R`` rows
  rebuilds the replicated factor.
* **Gram matrices of unfoldings** (the SVD initialisations and every TT-SVD step): when the mode
  is not split, ``X_(n) X_(n)ᵀ`` is a ``psum`` of local Grams. When it is, an ``all_to_all``
  trades column blocks for row blocks first, so each device holds complete rows of a subset of
  the columns (a re-layout of its block: the same amount of data, no gather), and the Gram is
  again a ``psum`` of local Grams, exact. The small symmetric eigenproblem is solved replicated.

Like the single-device fits, each runs on ``x / 2^k`` with ``2^k`` near ``max |x|`` (a ``pmax``
of the blocks' maxima) and scales its result back, so data of any magnitude are fitted alike.

Nothing gathers the input tensor. What is gathered: factor rows (``I_n × R``), HOOI's projected
tensor ``x ×_{k≠n} U_kᵀ`` (``I_n × ∏_{k≠n} r_k``), and in TT-SVD the remainder once it is
taller than wide (fewer than ``(r_{k-1} n_k)²`` entries). Results equal the single-device fits
up to rounding (same initialisation, same iterations); the output is replicated on every device
of the mesh.

The algorithms are those of the single-device modules (CP-ALS: Kolda & Bader, SIAM Review 2009;
HOOI: De Lathauwer, De Moor & Vandewalle, SIMAX 2000; TT-SVD: Oseledets, SISC 2011). The
distribution follows the dense-tensor schemes of W. Austin, G. Ballard and T. G. Kolda,
"Parallel Tensor Compression for Large-Scale Scientific Data", IPDPS 2016 (Gram matrices of
split unfoldings after a redistribution; Tucker) and G. Ballard, K. Hayashi and R. Kannan,
"Parallel Nonnegative CP Decomposition of Dense Tensors", HiPC 2018 (local MTTKRPs reduced
over the other modes, factor rows owned by the devices of their block).
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from tensorfact import algebra, kernels, sharding
from tensorfact._checks import count_nonfinite, report_nonfinite
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import leading_eigenvectors, random_orthonormal
from tensorfact.decomposition._loop import (FitInfo, cp_info, error_from_norms, iterate,
                                            refine_error, relative_from_squares)
from tensorfact.decomposition._sweeps import (SweepLayout, cp_initial_factors, cp_penalties,
                                              scaled_to_data,
                                              cp_scale_back, cp_sweep, hoqri_update,
                                              tucker_sweep_modes)
from tensorfact.kernels import _pallas, _varying
from tensorfact.tensors import CPTensor, TuckerTensor, TTTensor

__all__ = ["cp", "tucker", "tt", "resolve_cp_impl", "cp_program", "tucker_program",
           "tt_program"]

_REPLICATED = PartitionSpec()


# ---------------------------------------------------------------------------------------------
# layout and collectives (inside shard_map)


def _layout(x):
    """Static description of a sharded input (a jit cache key): ``(mesh, spec, axes, shape)``
    with ``axes[m]`` the mesh axes that split mode ``m``."""
    entries = tuple(x.sharding.spec)[:x.ndim]
    entries = entries + (None,) * (x.ndim - len(entries))
    # every named axis, size-1 ones included: shard_map tracks values as varying over them
    axes = tuple(sharding._entry_axes(e) for e in entries)
    return x.sharding.mesh, PartitionSpec(*entries), axes, tuple(int(s) for s in x.shape)


def _parts(mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _psum(value, axes):
    return lax.psum(value, tuple(axes)) if axes else value


def _block_index(mesh, axes):
    """Linear index of this device's block along a mode split over ``axes`` (first = major)."""
    index = 0
    for a in axes:
        index = index * mesh.shape[a] + lax.axis_index(a)
    return index


def _local_rows(a, mesh, axes, axis: int = 0):
    """The slice of a replicated ``a`` along ``axis`` that matches this device's block."""
    if not axes:
        return a
    size = a.shape[axis] // _parts(mesh, axes)
    return lax.dynamic_slice_in_dim(a, _block_index(mesh, axes) * size, size, axis=axis)


def _gather(a, axes, axis: int = 0):
    """Concatenates the blocks of ``a`` along ``axis`` over ``axes`` (minor axis first, so the
    blocks land in global order)."""
    for name in reversed(axes):  # the result is the same on every device of the axis
        a = lax.all_gather(a, name, axis=axis, tiled=True, **_INVARYING)
    return a


# ``to="invarying"`` marks the gathered value as equal on every device of the axis (shard_map's
# varying-manual-axes check); JAX versions without the argument did not track it.
_INVARYING = ({"to": "invarying"}
              if "to" in inspect.signature(lax.all_gather).parameters else {})


def _row_gram(c, mesh, row_axes, live_axes, precision):
    """``C Cᵀ`` of the matrix whose rows are axes 0-1 of ``c`` (``a × n_loc × p_loc``, the ``n``
    axis split over ``row_axes``) and whose columns are axis 2 (split over the other live axes).

    With the rows split, an ``all_to_all`` first moves column blocks for row blocks, so each
    device holds all rows of some columns (the same amount of data; zero columns pad the local
    width to a multiple of the split); the Gram is then a ``psum`` of local Grams.
    """
    prec = algebra.resolve_precision(precision)
    if row_axes:
        parts = _parts(mesh, row_axes)
        pad = (-c.shape[2]) % parts
        if pad:
            c = jnp.pad(c, ((0, 0), (0, 0), (0, pad)))
        for name in reversed(row_axes):
            c = lax.all_to_all(c, name, 2, 1, tiled=True)
    c = c.reshape(c.shape[0] * c.shape[1], -1)
    return _psum(jnp.matmul(c, c.T, precision=prec), live_axes)


def _unfolding_subspace(x, n, mesh, axes, live_axes, r, precision):
    """Leading ``r``-dimensional left subspace of ``unfold(x, n)`` for a sharded ``x``."""
    block = jnp.moveaxis(x, n, 0)
    block = block.reshape(1, block.shape[0], -1)
    return leading_eigenvectors(_row_gram(block, mesh, axes[n], live_axes, precision), r)


def _global_scale(x, every):
    """:func:`tensorfact._numerics.pow2_scale` of the whole sharded tensor: the power of two
    near the largest ``|x|`` over every block (a ``pmax`` of the local maxima)."""
    peak = jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)
    if every:
        peak = lax.pmax(peak, every)
    return lax.stop_gradient(pow2_scale(peak))


def _flat_axes(axes):
    return tuple(a for group in axes for a in group)


def _exact_error(x, local_dense, norm_x_sq, every):
    """``‖x − x̂‖ / ‖x‖`` from local blocks (one pass over the data)."""
    diff = x - local_dense
    sq = _psum(jnp.vdot(diff, diff, precision=lax.Precision.HIGHEST), every)
    return relative_from_squares(sq, norm_x_sq)


def _shard_mapped(body, mesh, spec, n_replicated, check_vma=True):
    """``body`` as a shard_map over ``mesh``: ``x`` split by ``spec``, every other argument
    and every output replicated."""
    return jax.shard_map(body, mesh=mesh, in_specs=(spec,) + (_REPLICATED,) * n_replicated,
                         out_specs=_REPLICATED, check_vma=check_vma)


def _unsupported(what, family):
    raise NotImplementedError(f"{what} is not supported for a tensor sharded over a mesh "
                              f"({family}); gather it with jax.device_put(x, device) or drop "
                              f"{what.split('=')[0]}.")


# ---------------------------------------------------------------------------------------------
# CP-ALS


def cp(x, mask, key, init_tensor, l2, tol, *, rank, n_iter, fixed, init, nonneg, normalize,
       precision, return_info, impl="auto"):
    """Sharded CP-ALS / HALS (called by :func:`tensorfact.cp` on a mode-sharded input).

    Layouts: any ``NamedSharding`` whose spec splits modes over mesh axes (one or more modes,
    each over one or more axes). Output: weights and factors replicated on every device.
    Per sweep and mode ``n`` the devices exchange the partial MTTKRP rows (``psum`` of
    ``I_n/s_n × R`` over the other modes' axes) and the new factor rows (``all_gather`` to
    ``I_n × R``), plus a few scalars for the error; the tensor blocks never move. The SVD
    initialisation moves each block once per split mode (``all_to_all``) and reduces
    ``I_n × I_n`` Gram matrices.

    ``impl`` (``"auto" | "pallas" | "xla"``, as :func:`tensorfact.cp`) picks how each device
    forms its partial MTTKRPs: ``"xla"`` the dimension tree on its block (two reads of it per
    sweep), ``"pallas"`` the kernel of :func:`tensorfact.kernels.mttkrp` once per mode on its
    block and factor rows (``N`` reads), then the same ``psum``; ``"auto"`` is decided once,
    before tracing, for one device's block (:func:`tensorfact.kernels.resolve_mttkrp_impl`:
    XLA on a CPU, and until the kernel is measured to pay on the hardware).
    """
    if mask is not None:
        _unsupported("mask", "tensorfact.cp")
    impl = resolve_cp_impl(x, rank, impl)
    fn, args, static = cp_program(x, key, init_tensor, l2, tol, rank=rank, n_iter=n_iter,
                                  fixed=fixed, init=init, nonneg=nonneg, normalize=normalize,
                                  precision=precision, return_info=return_info, impl=impl)
    result, n_bad = fn(*args, **static)
    report_nonfinite(n_bad, "x")
    return result


def resolve_cp_impl(x, rank: int, impl) -> str:
    """``"pallas"`` or ``"xla"`` for a sharded CP fit of ``x``: ``impl`` checked and ``"auto"``
    resolved by :func:`tensorfact.kernels.resolve_mttkrp_impl` for one device's block, the
    tensor each kernel launch reads (outside any trace: the choice is a static argument)."""
    block = jax.ShapeDtypeStruct(x.sharding.shard_shape(x.shape), x.dtype)
    return kernels.resolve_mttkrp_impl(block, rank, impl)


def cp_program(x, key, init_tensor, l2, tol, *, impl="xla", **static):
    """The jitted sharded CP program, its arguments and static arguments: ``fn(*args,
    **static)`` runs it, ``fn.lower(*args, **static)`` shows what it compiles to. ``impl`` is
    ``"xla"`` or ``"pallas"`` (already resolved: :func:`cp` resolves ``"auto"``)."""
    if impl not in ("xla", "pallas"):
        raise ValueError(f"impl must be 'xla' or 'pallas' for the sharded CP program, got "
                         f"{impl!r}.")
    return _cp_jit, (x, key, init_tensor, l2, tol), dict(static, impl=impl, layout=_layout(x))


@functools.partial(jax.jit, static_argnames=(
    "layout", "rank", "n_iter", "fixed", "init", "nonneg", "normalize", "precision",
    "return_info", "impl"))
def _cp_jit(x, key, init_tensor, l2, tol, *, layout, impl, **static):
    mesh, spec, axes, shape = layout
    body = functools.partial(_cp_body, mesh=mesh, axes=axes, shape=shape, impl=impl, **static)
    # the kernels type their outputs' varying mesh axes (kernels/_varying.py), except in
    # Pallas's generic interpret mode (the "gpu" kernel off a GPU: JAX 0.10 drops the axes in
    # its replay), which shard_map's varying-axes check then rejects: off only there
    check_vma = impl != "pallas" or _varying.checks_varying(_pallas.resolve_launch())
    return _shard_mapped(body, mesh, spec, 4, check_vma)(x, key, init_tensor, l2, tol)


def _cp_body(x, key, init_tensor, l2, tol, *, mesh, axes, shape, rank, n_iter, fixed, init,
             nonneg, normalize, precision, return_info, impl):
    dtype = x.dtype
    every = _flat_axes(axes)
    prec = algebra.resolve_precision(precision)
    n_bad = _psum(count_nonfinite(x), every)
    scale = _global_scale(x, every)
    x = x / scale
    if init == "given":
        weights = init_tensor.weights.astype(dtype) / scale
        factors = [a.astype(dtype) for a in init_tensor.factors]
    else:
        weights, factors = cp_initial_factors(
            x, rank, key, init, nonneg, precision, shape=shape,
            subspace=lambda n, r: _unfolding_subspace(x, n, mesh, axes, every, r, precision))
    norm_x_sq = _psum(jnp.vdot(x, x, precision=prec), every)
    if nonneg and init != "given":  # as in the single-device fit: HALS starts at the data's norm
        weights, factors = scaled_to_data(weights, factors, norm_x_sq, precision)
    if not normalize:
        factors = [factors[0] * weights] + factors[1:]
        weights = jnp.ones_like(weights)
    l2 = cp_penalties(l2, scale, x.ndim, normalize)

    def local_dense(weights, factors):
        rows = [_local_rows(a, mesh, axes[m]) for m, a in enumerate(factors)]
        return CPTensor(weights, rows).to_dense(precision=precision)

    def step(state):
        weights, factors = state
        weights, factors, (inner, approx_sq) = _cp_sweep(
            x, weights, factors, l2=l2, nonneg=nonneg, normalize=normalize, precision=precision,
            mesh=mesh, axes=axes, impl=impl)
        err = refine_error(error_from_norms(norm_x_sq, inner, approx_sq), lambda: _exact_error(
            x, local_dense(weights, factors), norm_x_sq, every))
        return (weights, factors), err

    state, n_done, errors, converged = iterate(step, (weights, tuple(factors)), n_iter=n_iter,
                                               tol=0 if fixed else tol)
    weights, factors = cp_scale_back(*state, scale, normalize)
    result = CPTensor(weights, factors)
    if not return_info:
        return result, n_bad
    rel = _exact_error(x, local_dense(*state), norm_x_sq, every)
    return (result, cp_info(FitInfo(n_done, errors, rel, converged), weights, factors)), n_bad


def _cp_sweep(x, weights, factors, *, l2, nonneg, normalize, precision, mesh, axes, impl):
    """One ALS (HALS) sweep on local blocks: the single-device sweep (same dimension tree, or
    with ``impl="pallas"`` one MTTKRP kernel per mode on the block and the local factor rows)
    with partial MTTKRPs summed over the contracted modes' axes, and factor rows solved where
    their block lives, then gathered."""
    layout = SweepLayout(
        rows=lambda a, n: _local_rows(a, mesh, axes[n]),
        reduce=lambda m, n: _psum(m, _flat_axes(axes[:n] + axes[n + 1:])),
        gather=lambda a, n: _gather(a, axes[n]),
        total=lambda v: _psum(v, axes[-1]))
    return cp_sweep(x, weights, factors, l2=l2, nonneg=nonneg, normalize=normalize,
                    precision=precision, impl=impl, layout=layout)


# ---------------------------------------------------------------------------------------------
# Tucker (HOOI, HOSVD)


def tucker(x, mask, key, init_tensor, tol, *, ranks, modes, method, n_iter, fixed, init,
           nonneg, subspace_iter, precision, return_info):
    """Sharded Tucker: HOOI (by orthogonal iteration, as the single-device fit) or HOSVD.

    Layouts: any mode-splitting ``NamedSharding``; every mode decomposed (``modes=None``).
    Output: core and factors replicated on every device. Per sweep and mode ``n`` the devices
    reduce the projected tensor ``Y_n = x ×_{k≠n} U_kᵀ`` (``psum`` over the other modes' axes)
    and, when mode ``n`` is split, gather it (``I_n × ∏_{k≠n} r_k``, small); the orthogonal
    iteration and QR then run replicated. The SVD (HOSVD) initialisation reduces one
    ``I_n × I_n`` Gram matrix per mode (``all_to_all`` of the block first when mode ``n`` is
    split). Not supported: ``mask``, ``nonneg``, partial ``modes``, ``method="st_hosvd"``.
    """
    if mask is not None:
        _unsupported("mask", "tensorfact.tucker")
    if nonneg:
        _unsupported("nonneg=True", "tensorfact.tucker")
    if tuple(modes) != tuple(range(x.ndim)):
        _unsupported("modes", "tensorfact.tucker")
    if method == "st_hosvd":
        _unsupported("method='st_hosvd'", "tensorfact.tucker")
    fn, args, static = tucker_program(x, key, init_tensor, tol, ranks=tuple(ranks),
                                      method=method, n_iter=n_iter, fixed=fixed, init=init,
                                      subspace_iter=subspace_iter, precision=precision,
                                      return_info=return_info)
    result, n_bad = fn(*args, **static)
    report_nonfinite(n_bad, "x")
    return result


def tucker_program(x, key, init_tensor, tol, **static):
    """The jitted sharded Tucker program, its arguments and static arguments."""
    return _tucker_jit, (x, key, init_tensor, tol), dict(static, layout=_layout(x))


@functools.partial(jax.jit, static_argnames=(
    "layout", "ranks", "method", "n_iter", "fixed", "init", "subspace_iter", "precision",
    "return_info"))
def _tucker_jit(x, key, init_tensor, tol, *, layout, **static):
    mesh, spec, axes, shape = layout
    body = functools.partial(_tucker_body, mesh=mesh, axes=axes, shape=shape, **static)
    return _shard_mapped(body, mesh, spec, 3)(x, key, init_tensor, tol)


def _tucker_body(x, key, init_tensor, tol, *, mesh, axes, shape, ranks, method, n_iter, fixed,
                 init, subspace_iter, precision, return_info):
    ndim, dtype = x.ndim, x.dtype
    modes = tuple(range(ndim))
    every = _flat_axes(axes)
    prec = algebra.resolve_precision(precision)
    n_bad = _psum(count_nonfinite(x), every)
    scale = _global_scale(x, every)
    x = x / scale
    norm_x_sq = _psum(jnp.vdot(x, x, precision=prec), every)

    def rows(factors):
        return [_local_rows(u, mesh, axes[m]) for m, u in enumerate(factors)]

    def project(factors):  # G = x ×_k U_kᵀ: local blocks against local rows, summed
        core = algebra.multi_mode_dot(x, rows(factors), modes, transpose=True,
                                      precision=precision)
        return _psum(core, every)

    def exact(core, factors):
        dense = TuckerTensor(core, rows(factors), modes).to_dense(precision=precision)
        return _exact_error(x, dense, norm_x_sq, every)

    if init == "given" and method == "hooi":
        factors = tuple(u.astype(dtype) for u in init_tensor.factors)
    elif init == "random" and method == "hooi":
        keys = jax.random.split(key, ndim)
        factors = tuple(random_orthonormal(k, shape[m], r, dtype)
                        for k, m, r in zip(keys, modes, ranks))
    else:
        factors = tuple(_unfolding_subspace(x, m, mesh, axes, every, r, precision)
                        for m, r in zip(modes, ranks))

    if method == "hosvd":
        core = project(factors)
        result = TuckerTensor(core * scale, factors, modes)
        if not return_info:
            return result, n_bad
        info = FitInfo(jnp.asarray(0, jnp.int32), jnp.zeros((0,), dtype),
                       exact(core, factors), jnp.ones((), bool))
        return (result, info), n_bad

    def step(state):
        factors, _ = state
        factors, core = _hooi_sweep(x, factors, subspace_iter=subspace_iter,
                                    precision=precision, mesh=mesh, axes=axes)
        err_sq = norm_x_sq - jnp.vdot(core, core, precision=prec)
        err = refine_error(relative_from_squares(err_sq, norm_x_sq),
                           lambda: exact(core, factors))
        return (factors, core), err

    # HOOI's update reads the factors alone: the first sweep overwrites this core
    state = (factors, jnp.zeros(tuple(ranks), dtype))
    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter,
                                               tol=0 if fixed else tol)
    factors, core = state
    result = TuckerTensor(core * scale, factors, modes)
    if not return_info:
        return result, n_bad
    return (result, FitInfo(n_done, errors, exact(core, factors), converged)), n_bad


def _hooi_sweep(x, factors, *, subspace_iter, precision, mesh, axes):
    """One HOQRI sweep on local blocks: the single-device sweep (same dimension tree) with the
    projected tensor ``Y_n`` summed over the contracted modes' axes and gathered along mode
    ``n`` (``I_n × ∏ r_k``: small); returns the new factors and the core (replicated)."""
    def reduce(y, n):
        return _gather(_psum(y, _flat_axes(axes[:n] + axes[n + 1:])), axes[n], axis=n)

    modes = tuple(range(x.ndim))
    current, n, y = tucker_sweep_modes(x, factors, modes, hoqri_update(subspace_iter, precision),
                                 precision, rows=lambda u, m: _local_rows(u, mesh, axes[m]),
                                 reduce=reduce)
    core = algebra.mode_dot(y, current[n], n, transpose=True, precision=precision)
    return tuple(current[m] for m in modes), core


# ---------------------------------------------------------------------------------------------
# TT-SVD


def tt(x, caps, *, eps, precision):
    """Sharded TT-SVD with fixed ranks (called by :func:`tensorfact.tt` on a mode-sharded input).

    Layouts: any mode-splitting ``NamedSharding``. Output: cores replicated on every device.
    Step ``k`` works on the remainder ``C_k`` (``r_{k-1} × n_k × ⋯ × n_d``), split as the
    input along modes ``k..d``: while ``C_k`` is at least as wide as tall, the Gram matrix of
    its ``(r_{k-1} n_k) × (n_{k+1}⋯n_d)`` unfolding is a ``psum`` of local Grams (after an
    ``all_to_all`` of the block when mode ``k`` is split), its eigenvectors give core ``k``
    (replicated), and ``U_kᵀ C_k`` is formed locally and summed over mode ``k``'s axes. Once
    ``C_k`` is taller than wide it has fewer than ``(r_{k-1} n_k)²`` entries: it is gathered
    and the remaining steps run replicated, as on one device. ``eps`` (rank by accuracy) is
    not supported for sharded input.
    """
    if eps is not None:
        _unsupported("eps", "tensorfact.tt")
    fn, args, static = tt_program(x, caps=tuple(caps), precision=precision)
    cores, n_bad = fn(*args, **static)
    report_nonfinite(n_bad, "x")
    return TTTensor(cores)


def tt_program(x, **static):
    """The jitted sharded TT-SVD program, its arguments and static arguments."""
    return _tt_jit, (x,), dict(static, layout=_layout(x))


@functools.partial(jax.jit, static_argnames=("layout", "caps", "precision"))
def _tt_jit(x, *, layout, caps, precision):
    mesh, spec, axes, shape = layout
    body = functools.partial(_tt_body, mesh=mesh, axes=axes, shape=shape, caps=caps,
                             precision=precision)
    return _shard_mapped(body, mesh, spec, 0)(x)


def _tt_body(x, *, mesh, axes, shape, caps, precision):
    prec = algebra.resolve_precision(precision)
    d = len(shape)
    n_bad = _psum(count_nonfinite(x), _flat_axes(axes))
    scale = _global_scale(x, _flat_axes(axes))  # as on one device: fit x / 2^k, exact
    c = (x / scale)[None]  # (r_0 = 1, n_1, ..., n_d), split like x
    cores, k, distributed = [], 0, True
    for k, cap in enumerate(caps):
        r, n, s = c.shape[0], shape[k], math.prod(shape[k + 1:])
        cap = min(cap, r * n, s)
        if distributed and r * n > s:
            # taller than wide: the remainder is smaller than (r n)², gather it and go on
            for m in range(k, d):
                c = _gather(c, axes[m], axis=1 + m - k)
            distributed = False
        if distributed:
            live = _flat_axes(axes[k:])
            block = c.reshape(r, c.shape[1], -1)
            u = leading_eigenvectors(_row_gram(block, mesh, axes[k], live, precision), cap)
            u_rows = _local_rows(u.reshape(r, n, cap), mesh, axes[k], axis=1)
            b = jnp.tensordot(u_rows, c, axes=((0, 1), (0, 1)), precision=prec)
            c = _psum(b, axes[k])  # (cap, n_{k+1}, ..., n_d), split like modes k+1..
        else:
            mat = c.reshape(r * n, s)
            if r * n > s:  # right subspace from matᵀmat, mapped back (as on one device)
                v = leading_eigenvectors(jnp.matmul(mat.T, mat, precision=prec), cap)
                u, _ = jnp.linalg.qr(jnp.matmul(mat, v, precision=prec))
            else:
                u = leading_eigenvectors(jnp.matmul(mat, mat.T, precision=prec), cap)
            c = jnp.matmul(u.T, mat, precision=prec).reshape((cap,) + shape[k + 1:])
        cores.append(u.reshape(r, n, cap))
    if distributed:
        c = _gather(c, axes[d - 1], axis=1)
    cores.append(c.reshape(c.shape[0], shape[d - 1], 1) * scale)  # the scale back, exact
    return cores, n_bad

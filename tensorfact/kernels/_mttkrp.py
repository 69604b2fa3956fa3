"""MTTKRP as one Pallas kernel that reads the tensor once and never forms the Khatri–Rao
product in HBM.

For a 3-way tensor ``X`` (``I × J × K``) and factors ``A, B, C`` (rank ``R``)

    mode 0:  M[i, r] = Σ_jk X[i, j, k] B[j, r] C[k, r] = Σ_j B[j, r] (X[i, j, :] · C)[r]
    mode 1:  M[j, r] = Σ_ik X[i, j, k] A[i, r] C[k, r] = Σ_i A[i, r] (X[i, j, :] · C)[r]
    mode 2:  M[k, r] = Σ_ij X[i, j, k] A[i, r] B[j, r] = Σ_i A[i, r] (X[i, :, k]ᵀ · B)[r]

(Kolda & Bader, "Tensor Decompositions and Applications", SIAM Review 51(3), 2009, §3.4).
Each line is one *dot* with a factor over one axis (the "dot axis"), a *scaling* by the rows
of another factor along a second axis (the "loop axis"), summed over that loop, and the third
axis is the output. The kernel sees ``X`` as a 3-D array ``(P, Q, S)`` with the output on axis
0, 1 or 2:

* program ``(o, s)`` of the grid owns a block of ``bo`` output rows and a contiguous share of
  the loop axis (the loop is split over ``n_split`` programs so that a 256³ tensor still fills
  an H100's 132 SMs; the ``n_split`` partial results, ``n_split × I_n × R`` floats, are summed by
  XLA afterwards);
* for each loop index ``l`` it streams the ``bo × S`` slab of ``X`` in ``bs``-wide chunks, each
  one ``dot`` with the matching ``bs × R`` rows of the dot-axis factor (float32 accumulate),
  then scales the ``bo × R`` result by row ``l`` of the loop-axis factor and accumulates.

Every element of ``X`` is loaded by exactly one program, once; factor tiles are re-read from
L2. Ragged edges (sizes that are not multiples of the blocks, ranks that are not powers of
two) are handled by masked loads and stores, so nothing is padded or copied in HBM.
Accumulators are float32; bfloat16/float16 tensors are multiplied in their own dtype on the
tensor cores (the factor tile is cast to it) with float32 accumulation.

N-way tensors are matricised as (modes before ``n``, ``n``, modes after ``n``): the loop axis
carries the Khatri–Rao product of the factors before ``n`` and the dot axis that of the
factors after ``n``; for ``n = 0`` the view is ``(I_0, I_1, ∏ rest)`` and for ``n = N − 1``
it is ``(∏ first, I_{N−2}, I_{N−1})``. Those partial Khatri–Rao products (of the modes grouped
into one axis, ``∏ I_k × R``) are formed in HBM by XLA; the tensor itself is only reshaped
(free). For 3-way tensors nothing is formed: the groups are single modes.

The above is the ``"gpu"`` (Triton) kernel. ``target="tpu"`` launches the Mosaic kernel of
``tensorfact/kernels/_mttkrp_tpu.py`` on the same view (``BlockSpec`` tiles in VMEM, a float32
VMEM accumulator, unaligned shapes padded in XLA; float64 raises ``ValueError``); the custom
JVP below and the reference are shared by both.

:func:`mttkrp_xla` is the reference (one einsum, float32 accumulation). :func:`mttkrp`
dispatches: ``impl="auto"`` takes the kernel on a GPU for float32/bfloat16/float16 tensors of
at least ``MIN_ELEMENTS`` entries and ranks up to ``MAX_RANK``, once the kernel is listed in
``_pallas.MEASURED_ON_GPU`` (not yet: no GPU timing so far), and XLA elsewhere (set
``TENSORFACT_DEBUG_DISPATCH=1`` to log why).
"""

from __future__ import annotations

import functools
import math
import string

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from tensorfact._arrays import as_tensor, check_factors, check_mode
from tensorfact._checks import Impl, Precision, check_positive_int
from tensorfact._numerics import resolve_precision
from tensorfact.kernels import _pallas
from tensorfact.kernels._mttkrp_tpu import mttkrp_view_tpu
from tensorfact.kernels._varying import varying_out_shape

__all__ = ["mttkrp", "mttkrp_pallas", "mttkrp_xla", "resolve_mttkrp_impl", "MAX_RANK",
           "MIN_ELEMENTS"]

MAX_RANK = 128  # the bo × R accumulator lives in registers
MIN_ELEMENTS = 1 << 15  # below this the launch, not the read, dominates: XLA is as good
_KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
_TARGET_PROGRAMS = 1024  # enough programs to fill a GPU several times over


def mttkrp(x, factors, mode: int, *, impl: Impl = "auto",
           precision: Precision = "highest") -> jax.Array:
    """Matricised tensor times Khatri–Rao product, ``unfold(x, n) · khatri_rao(A_k, k ≠ n)``.

    ``M[i_n, r] = Σ_{i_k, k≠n} x[i_0, ..., i_{N−1}] ∏_{k≠n} A_k[i_k, r]``, shape ``(I_n, R)``;
    ``factors[mode]`` is not read (it may be anything, ``None`` included).

    Args:
      x: array with at least 2 dimensions (float32, float64, bfloat16, float16; lists, NumPy
        and integer arrays are taken as float32).
      factors: one ``(I_k, R)`` matrix per mode.
      mode: the mode ``n`` (negative counts from the end).
      impl: ``"pallas"`` (the kernel; interpret mode off GPUs), ``"xla"`` (the einsum
        reference), or ``"auto"`` (the kernel on a GPU where the dtype, size and rank suit it,
        XLA elsewhere; ``TENSORFACT_DEBUG_DISPATCH=1`` logs why it fell back).
      precision: of the float32 contractions: ``"highest"`` (the default) is full float32
        (IEEE float32 dots in the GPU kernel rather than TF32), ``None`` JAX's default.

    Returns:
      ``(I_n, R)`` array of dtype ``result_type(x, A_k for k ≠ n)``, accumulated in float32 (or
      float64 under x64). A tensor with a mode of size zero gives an empty (``I_n = 0``) or
      all-zero (another mode: an empty sum) result without launching the kernel.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from tensorfact.kernels import mttkrp
      >>> ks = jax.random.split(jax.random.key(0), 4)
      >>> x = jax.random.normal(ks[0], (6, 7, 8))
      >>> fs = [jax.random.normal(k, (n, 3)) for k, n in zip(ks[1:], x.shape)]
      >>> bool(jnp.allclose(mttkrp(x, fs, 1, impl="pallas"), mttkrp(x, fs, 1, impl="xla"),
      ...                   rtol=1e-4, atol=1e-4))
      True
    """
    x, factors, mode = _check_args(x, factors, mode)
    if resolve_mttkrp_impl(x, _rank(factors, mode), impl) == "xla":
        return mttkrp_xla(x, factors, mode, precision=precision)
    return mttkrp_pallas(x, factors, mode, precision=precision)


def _check_args(x, factors, mode):
    x = as_tensor(x, "x", min_ndim=2)
    mode = check_mode(mode, x.ndim, shape=x.shape)
    return x, check_factors(factors, x.shape, skip=mode), mode


def _rank(factors, mode):
    return factors[1 if mode == 0 else 0].shape[1]


def _others(factors, mode):
    return [a for k, a in enumerate(factors) if k != mode]


def resolve_mttkrp_impl(x, rank: int, impl: Impl) -> str:
    """``"pallas"`` or ``"xla"``: ``impl`` checked, and ``"auto"`` resolved for the tensor ``x``
    and ``rank`` (logging why it chose XLA under ``TENSORFACT_DEBUG_DISPATCH=1``). Every caller
    that dispatches MTTKRPs (``tensorfact.mttkrp``, CP-ALS) decides through it.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.kernels import resolve_mttkrp_impl
      >>> x = jnp.ones((64, 64, 64))
      >>> resolve_mttkrp_impl(x, 8, "pallas"), resolve_mttkrp_impl(x, 8, "auto")  # on a CPU
      ('pallas', 'xla')
    """
    return _pallas.resolve_impl("mttkrp", impl, lambda target: _shape_reason(x, rank))


def _shape_reason(x, rank):
    if x.dtype not in _KERNEL_DTYPES:
        return f"x has dtype {x.dtype}; the kernel takes float32, bfloat16 and float16"
    if x.size < MIN_ELEMENTS:
        return f"x has {x.size} < {MIN_ELEMENTS} entries (launch-bound: XLA is as fast)"
    if rank > MAX_RANK:
        return f"rank {rank} > {MAX_RANK} (the accumulator would spill registers)"
    return None


# -- XLA reference ---------------------------------------------------------------------------

def mttkrp_xla(x, factors, mode: int, *, precision: Precision = "highest") -> jax.Array:
    """The reference: one einsum over all modes but ``mode``, accumulated in float32 (float64
    under x64) and returned in ``result_type(x, A_k for k ≠ n)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.kernels import mttkrp_xla
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)
      >>> mttkrp_xla(x, [None, jnp.ones((3, 1)), jnp.ones((4, 1))], 0)   # slice sums
      Array([[ 66.],
             [210.]], dtype=float32)
    """
    x, factors, mode = _check_args(x, factors, mode)
    out_dtype = jnp.result_type(x, *_others(factors, mode))
    acc = jnp.promote_types(out_dtype, jnp.float32)
    letters = string.ascii_letters[:x.ndim]
    others = [k for k in range(x.ndim) if k != mode]
    spec = f"{letters}," + ",".join(f"{letters[k]}Z" for k in others) + f"->{letters[mode]}Z"
    out = jnp.einsum(spec, x.astype(acc), *[factors[k].astype(acc) for k in others],
                     precision=resolve_precision(precision))
    return out.astype(out_dtype)


# -- Pallas kernel ---------------------------------------------------------------------------

def _khatri_rao(mats, rank, dtype):
    """Khatri–Rao product (last matrix fastest) of the grouped modes; ``(1, R)`` ones if none."""
    out = jnp.ones((1, rank), dtype)
    for a in mats:
        out = (out[:, None, :] * a[None, :, :].astype(dtype)).reshape(-1, rank)
    return out


def _view(x, factors, mode):
    """The 3-D view ``(P, Q, S)`` of ``x``, the output axis, the loop- and dot-axis factors."""
    n, shape, rank = x.ndim, x.shape, _rank(factors, mode)
    dtype = jnp.result_type(*_others(factors, mode))
    if mode == 0:  # (I_0, I_1, ∏ rest): loop over mode 1, dot over the rest
        view = (shape[0], shape[1], math.prod(shape[2:]))
        return x.reshape(view), 0, factors[1], _khatri_rao(factors[2:], rank, dtype)
    if mode == n - 1:  # (∏ first, I_{N−2}, I_{N−1}): loop over the first, dot over mode N−2
        view = (math.prod(shape[:-2]), shape[-2], shape[-1])
        return x.reshape(view), 2, _khatri_rao(factors[:-2], rank, dtype), factors[-2]
    view = (math.prod(shape[:mode]), shape[mode], math.prod(shape[mode + 1:]))
    return (x.reshape(view), 1, _khatri_rao(factors[:mode], rank, dtype),
            _khatri_rao(factors[mode + 1:], rank, dtype))


def mttkrp_pallas(x, factors, mode: int, *, precision: Precision = "highest", block_out=None,
                  block_dot=None, n_split=None, target=None, interpret=None) -> jax.Array:
    """The kernel (see the module docstring for the tiling). ``block_out``/``block_dot`` (powers
    of two ≥ 16) and ``n_split`` override the block sizes and the split of the loop axis;
    ``target`` (``"gpu"``: the Triton kernel, ``"tpu"``: the Mosaic kernel; default the
    backend's) and ``interpret`` (default: compile on the target's hardware, interpret
    elsewhere) choose the launch (``_pallas.resolve_launch``). A tensor with a mode of size zero,
    or a rank of zero, has nothing to launch: its (empty or zero) result comes from
    :func:`mttkrp_xla`.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.kernels import mttkrp_pallas
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)
      >>> mttkrp_pallas(x, [jnp.ones((2, 1)), None, jnp.ones((4, 1))], 1, block_out=16)
      Array([[ 60.],
             [ 92.],
             [124.]], dtype=float32)
    """
    x, factors, mode = _check_args(x, factors, mode)
    if x.dtype not in _KERNEL_DTYPES and x.dtype != jnp.float64:
        raise ValueError(f"x must be float32, float64, bfloat16 or float16 for impl='pallas', "
                         f"got dtype {x.dtype}.")
    launch = _pallas.resolve_launch(target, interpret)
    if launch.target == "tpu" and x.dtype == jnp.float64:
        raise ValueError(f"x has dtype {x.dtype}: float64 is not a TPU dtype; target='tpu' "
                         f"takes float32, bfloat16 and float16.")
    for name, b in (("block_out", block_out), ("block_dot", block_dot)):
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 16
                              or b & (b - 1)):
            raise ValueError(f"{name} must be a power of two >= 16, got {b!r}.")
    if n_split is not None:
        n_split = check_positive_int(n_split, "n_split")
    if x.size == 0 or _rank(factors, mode) == 0:
        return mttkrp_xla(x, factors, mode, precision=precision)
    view, out_axis, loop_f, dot_f = _view(x, factors, mode)
    out_dtype = jnp.result_type(x, *_others(factors, mode))
    acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
    return _mttkrp_view(view, loop_f.astype(acc_dtype), dot_f.astype(acc_dtype), out_axis,
                        resolve_precision(precision), block_out, block_dot, n_split, launch,
                        jnp.dtype(out_dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=tuple(range(3, 10)))
def _mttkrp_view(x, loop_f, dot_f, out_axis, precision, block_out, block_dot, n_split, launch,
                 out_dtype):
    return _mttkrp_call(x, loop_f, dot_f, out_axis=out_axis, precision=precision,
                        block_out=block_out, block_dot=block_dot, n_split=n_split, launch=launch,
                        out_dtype=out_dtype)


@_mttkrp_view.defjvp
def _mttkrp_view_jvp(out_axis, precision, block_out, block_dot, n_split, launch, out_dtype,
                     primals, tangents):
    # MTTKRP is multilinear: the tangent is the XLA einsum's (whose primal XLA then drops), and
    # being linear it transposes, so reverse mode works too
    out = _mttkrp_view(*primals, out_axis, precision, block_out, block_dot, n_split, launch,
                       out_dtype)
    spec = {0: "pqs,qr,sr->pr", 1: "pqs,pr,sr->qr", 2: "pqs,pr,qr->sr"}[out_axis]
    acc = primals[1].dtype

    def reference(x, loop_f, dot_f):
        return jnp.einsum(spec, x.astype(acc), loop_f, dot_f,
                          precision=precision).astype(out_dtype)

    _, tangent = jax.jvp(reference, primals, tangents)
    return out, tangent


def _pow2(n, lo, hi):
    return max(lo, min(hi, pl.next_power_of_2(max(int(n), 1))))


@functools.partial(jax.jit, static_argnames=(
    "out_axis", "precision", "block_out", "block_dot", "n_split", "launch", "out_dtype"))
def _mttkrp_call(x, loop_f, dot_f, *, out_axis, precision, block_out, block_dot, n_split,
                 launch, out_dtype):
    if launch.target == "tpu":  # the Mosaic kernel (tensorfact/kernels/_mttkrp_tpu.py)
        return mttkrp_view_tpu(x, loop_f, dot_f, out_axis=out_axis, precision=precision,
                               block_out=block_out, block_dot=block_dot, launch=launch,
                               out_dtype=out_dtype)
    rank = loop_f.shape[1]
    dot_axis = 1 if out_axis == 2 else 2
    loop_axis = 0 if out_axis != 0 else 1
    n_out, n_dot, n_loop = x.shape[out_axis], x.shape[dot_axis], x.shape[loop_axis]
    bo = block_out or _pow2(n_out, 16, 64)
    bs = block_dot or _pow2(n_dot, 16, 64)
    rp = _pow2(rank, 16, 1 << 30)
    out_blocks = pl.cdiv(n_out, bo)
    if n_split is None:  # fill the GPU, but keep the partial sums' traffic ≤ ~1/16 of x's
        n_split = max(1, min(n_loop, pl.cdiv(_TARGET_PROGRAMS, out_blocks),
                             x.size // max(1, 32 * n_out * rank)))
    chunk = pl.cdiv(n_loop, n_split)
    n_split = pl.cdiv(n_loop, chunk)
    n_chunks = pl.cdiv(n_dot, bs)
    acc_dtype = loop_f.dtype
    # the dot runs in the tensor's dtype (bf16/f16 on tensor cores), accumulating in acc_dtype
    dot_dtype = x.dtype if x.dtype in (jnp.bfloat16, jnp.float16) else acc_dtype

    i32 = functools.partial(lax.convert_element_type, new_dtype=jnp.int32)  # also under x64

    def kernel(x_ref, u_ref, w_ref, o_ref):
        zero = i32(0)
        o0 = i32(pl.program_id(0) * bo)
        l0 = i32(pl.program_id(1) * chunk)
        o_idx = o0 + lax.broadcasted_iota(jnp.int32, (bo,), 0)
        r_idx = lax.broadcasted_iota(jnp.int32, (rp,), 0)
        o_ok, r_ok = o_idx < n_out, r_idx < rank

        def per_loop(t, acc):
            l = l0 + i32(t)
            l_ok = l < n_loop
            l_safe = jnp.minimum(l, n_loop - 1)  # keeps the address in bounds when masked

            def per_chunk(c, part):
                s0 = i32(c * bs)
                s_ok = (s0 + lax.broadcasted_iota(jnp.int32, (bs,), 0)) < n_dot
                if out_axis == 2:  # (bs, bo) slab, contracted over its rows
                    idx = (l_safe, pl.ds(s0, bs), pl.ds(o0, bo))
                    mask = l_ok & s_ok[:, None] & o_ok[None, :]
                else:
                    idx = ((pl.ds(o0, bo), l_safe, pl.ds(s0, bs)) if out_axis == 0
                           else (l_safe, pl.ds(o0, bo), pl.ds(s0, bs)))
                    mask = l_ok & o_ok[:, None] & s_ok[None, :]
                slab = pltriton.load(x_ref.at[idx], mask=mask, other=0)
                w = pltriton.load(w_ref.at[pl.ds(s0, bs), pl.ds(zero, rp)],
                                  mask=s_ok[:, None] & r_ok[None, :], other=0)
                contract = 0 if out_axis == 2 else 1
                return part + lax.dot_general(
                    slab.astype(dot_dtype), w.astype(dot_dtype),
                    (((contract,), (0,)), ((), ())), precision=precision,
                    preferred_element_type=acc_dtype)

            part = lax.fori_loop(0, n_chunks, per_chunk, jnp.zeros((bo, rp), acc_dtype))
            u = pltriton.load(u_ref.at[l_safe, pl.ds(zero, rp)], mask=l_ok & r_ok, other=0)
            return acc + part * u[None, :]

        acc = lax.fori_loop(0, chunk, per_loop, jnp.zeros((bo, rp), acc_dtype))
        pltriton.store(o_ref.at[i32(pl.program_id(1)), pl.ds(o0, bo), pl.ds(zero, rp)], acc,
                       mask=o_ok[:, None] & r_ok[None, :])

    # inside shard_map the output varies over its inputs' mesh axes (kernels/_varying.py)
    out_shape, args = varying_out_shape((n_split, n_out, rank), acc_dtype, x, loop_f, dot_f)
    partial = _pallas.call(
        kernel, launch=launch, num_warps=4, num_stages=2, grid=(out_blocks, n_split),
        out_shape=out_shape,
    )(*args)
    return jnp.sum(partial, axis=0).astype(out_dtype)

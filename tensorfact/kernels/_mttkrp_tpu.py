"""The TPU (Mosaic) MTTKRP kernel over the 3-D view ``(P, Q, S)`` of ``_mttkrp``.

Math (Kolda & Bader, "Tensor Decompositions and Applications", SIAM Review 51(3), 2009, §3.4),
with ``U`` the loop-axis and ``W`` the dot-axis factor (``R`` columns):

    out axis 0:  M[p, r] = Σ_q U[q, r] Σ_s X[p, q, s] W[s, r]
    out axis 1:  M[q, r] = Σ_p U[p, r] Σ_s X[p, q, s] W[s, r]
    out axis 2:  M[s, r] = Σ_p U[p, r] Σ_q X[p, q, s] W[q, r]

Tiling: ``grid`` over ``(output blocks, the two reduction axes)``; the ``BlockSpec`` index maps
let Pallas pipeline the ``(bp, bq, bs)`` blocks of ``X`` (default ``8 × 128 × 512``, the last
two dims on the (8, 128) float32 / (16, 128) bfloat16 tiling) and the factor blocks
``(b, Rp)`` from HBM into VMEM. Every block of ``X`` is read once. For each of the ``bp``
slices the block is contracted by one MXU matmul (``(bq × bs) · (bs × Rp)``, or the
transposed-lhs ``(bq × bs)ᵀ · (bq × Rp)`` for out axis 2) with float32 accumulation
(``preferred_element_type``; bfloat16 tensors are multiplied in bfloat16), scaled by the loop
factor's rows and added to a float32 ``(b_out, Rp)`` accumulator in VMEM scratch, zeroed at the
first reduction step (``pl.when``) and written out at the last. Output-block axis
``"parallel"``, reduction axes ``"arbitrary"``.

Padding (in XLA): the rank to ``Rp``, a multiple of 128 lanes, and the factors with zero rows
to the padded sides (tiny); the tensor with zeros to multiples of its blocks: **an unaligned
shape costs one padded copy of the tensor** (aligned ones, e.g. 256³, none).

VMEM at the default blocks, float32, rank ≤ 128: tensor block 8·128·512·4 B = 2 MiB, double
buffered 4 MiB; factor blocks ≤ 512·128·4 B = 256 KiB each, double buffered ≤ 1 MiB;
accumulator and output block ≤ 512·128·4 B = 256 KiB each: about 5.5 MiB, well under v5e's
16 MiB default scoped VMEM (bfloat16: the tensor half of that). Float64 is not a TPU dtype:
the kernel raises ``ValueError`` for it.

Example (TPU interpret mode on a CPU):
  >>> import jax.numpy as jnp
  >>> from tensorfact.kernels import mttkrp_pallas
  >>> x = jnp.arange(24.0).reshape(2, 3, 4)
  >>> mttkrp_pallas(x, [jnp.ones((2, 1)), None, jnp.ones((4, 1))], 1, target="tpu")
  Array([[ 60.],
         [ 92.],
         [124.]], dtype=float32)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tensorfact.kernels import _pallas
from tensorfact.kernels._varying import varying_out_shape

__all__ = ["mttkrp_view_tpu", "BLOCKS"]

BLOCKS = (8, 128, 512)  # (bp, bq, bs): the tensor block, 2 MiB in float32
LANES = 128


def _round_up(n, m):
    return -(-int(n) // m) * m


def _blocks(shape, dtype, block_out, block_dot):
    """Block sizes ``(bp, bq, bs)`` for the view ``shape``, each clipped to the padded side."""
    sub = 16 if jnp.dtype(dtype).itemsize == 2 else 8
    bp, bq, bs = BLOCKS
    bq = min(block_out or bq, _round_up(shape[1], sub))
    bq = _round_up(bq, sub)
    bs = min(block_dot or bs, _round_up(shape[2], LANES))
    bs = _round_up(bs, LANES)
    return min(bp, shape[0]), bq, bs


def mttkrp_view_tpu(x, loop_f, dot_f, *, out_axis, precision, block_out, block_dot, launch,
                    out_dtype):
    """``M`` of the view ``x`` ``(P, Q, S)`` along ``out_axis`` (see the module docstring)."""
    if x.dtype == jnp.float64 or loop_f.dtype == jnp.float64:
        raise ValueError(f"x has dtype {x.dtype} (factors {loop_f.dtype}): float64 is not a "
                         f"TPU dtype; target='tpu' takes float32, bfloat16 and float16.")
    return _call(x, loop_f, dot_f, out_axis=out_axis, precision=precision,
                 block_out=block_out, block_dot=block_dot, launch=launch,
                 out_dtype=jnp.dtype(out_dtype))


@functools.partial(jax.jit, static_argnames=(
    "out_axis", "precision", "block_out", "block_dot", "launch", "out_dtype"))
def _call(x, loop_f, dot_f, *, out_axis, precision, block_out, block_dot, launch, out_dtype):
    if x.dtype == jnp.float16:  # the MXU multiplies bf16/f32: float16 goes through float32
        x = x.astype(jnp.float32)
    rank, n_true = loop_f.shape[1], x.shape[out_axis]
    rp = _round_up(rank, LANES)
    bp, bq, bs = _blocks(x.shape, x.dtype, block_out, block_dot)
    P, Q, S = (_round_up(x.shape[0], bp), _round_up(x.shape[1], bq), _round_up(x.shape[2], bs))
    if (P, Q, S) != x.shape:
        x = jnp.pad(x, [(0, P - x.shape[0]), (0, Q - x.shape[1]), (0, S - x.shape[2])])
    loop_side = Q if out_axis == 0 else P
    dot_side = Q if out_axis == 2 else S
    u = jnp.pad(loop_f.astype(jnp.float32),
                [(0, loop_side - loop_f.shape[0]), (0, rp - rank)])
    w = jnp.pad(dot_f, [(0, dot_side - dot_f.shape[0]), (0, rp - rank)])
    dot_dtype = jnp.bfloat16 if x.dtype == jnp.bfloat16 else jnp.float32
    w = w.astype(dot_dtype)
    prec = precision if dot_dtype == jnp.float32 else None
    f32 = jnp.float32

    if out_axis == 0:   # grid (p, q, s)
        grid, n_out, b_out = (P // bp, Q // bq, S // bs), P, bp
        x_map = lambda i, j, k: (i, j, k)  # noqa: E731
        u_spec = pl.BlockSpec((bq, rp), lambda i, j, k: (j, 0))
        w_spec = pl.BlockSpec((bs, rp), lambda i, j, k: (k, 0))
    elif out_axis == 1:  # grid (q, p, s)
        grid, n_out, b_out = (Q // bq, P // bp, S // bs), Q, bq
        x_map = lambda j, i, k: (i, j, k)  # noqa: E731
        u_spec = pl.BlockSpec((bp, rp), lambda j, i, k: (i, 0))
        w_spec = pl.BlockSpec((bs, rp), lambda j, i, k: (k, 0))
    else:                # grid (s, p, q)
        grid, n_out, b_out = (S // bs, P // bp, Q // bq), S, bs
        x_map = lambda k, i, j: (i, j, k)  # noqa: E731
        u_spec = pl.BlockSpec((bp, rp), lambda k, i, j: (i, 0))
        w_spec = pl.BlockSpec((bq, rp), lambda k, i, j: (j, 0))

    def kernel(x_ref, u_ref, w_ref, o_ref, acc_ref):
        first = (pl.program_id(1) == 0) & (pl.program_id(2) == 0)
        last = ((pl.program_id(1) == pl.num_programs(1) - 1)
                & (pl.program_id(2) == pl.num_programs(2) - 1))

        @pl.when(first)
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        wt = w_ref[...]
        for p in range(bp):  # bp MXU matmuls per block
            slab = x_ref[p].astype(dot_dtype)  # (bq, bs)
            if out_axis == 0:
                y = jnp.dot(slab, wt, precision=prec, preferred_element_type=f32)  # (bq, Rp)
                acc_ref[p:p + 1, :] += jnp.sum(y * u_ref[...], axis=0, keepdims=True)
            elif out_axis == 1:
                y = jnp.dot(slab, wt, precision=prec, preferred_element_type=f32)  # (bq, Rp)
                acc_ref[...] += y * u_ref[p:p + 1, :]
            else:
                y = lax.dot_general(slab, wt, (((0,), (0,)), ((), ())), precision=prec,
                                    preferred_element_type=f32)                 # (bs, Rp)
                acc_ref[...] += y * u_ref[p:p + 1, :]

        @pl.when(last)
        def _():
            o_ref[...] = acc_ref[...]

    # inside shard_map the output varies over its inputs' mesh axes (kernels/_varying.py)
    out_shape, args = varying_out_shape((n_out, rp), f32, x, u, w)
    out = _pallas.call(
        kernel, launch=launch, dimension_semantics=("parallel", "arbitrary", "arbitrary"),
        grid=grid,
        in_specs=[pl.BlockSpec((bp, bq, bs), x_map), u_spec, w_spec],
        out_specs=pl.BlockSpec((b_out, rp), lambda a, b, c: (a, 0)),
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((b_out, rp), f32)],
    )(*args)
    return out[:n_true, :rank].astype(out_dtype)

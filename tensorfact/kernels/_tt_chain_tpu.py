"""The TPU (Mosaic) kernel of the TT-matrix × batch chain ``y = x W`` of ``_tt_chain``.

Math: ``W`` has cores ``G_k`` of shape ``(r_{k−1}, m_k, n_k, r_k)``, ``r_0 = r_d = 1``
(Oseledets, SIAM J. Sci. Comput. 33(5), 2011), and ``x W`` is the chain of Novikov et al.
("Tensorizing Neural Networks", NeurIPS 2015). Here the chain runs from the **last** core to
the first, on a state ``V_k`` that holds the batch on the 128 lanes and every other index on the
rows (sublanes): before core ``k`` the rows of ``V_k`` are ``(n_{k+1}..n_d, m_1..m_{k−1}, m_k,
r_k)`` (C order), i.e. ``T_k`` *tiles* of ``K_k = m_k r_k`` consecutive rows, and

    Y_t = A_k · V_k[tile t],   A_k[(n, a), (j, c)] = G_k[a, j, n, c]     (n_k r_{k−1} × K_k)

is one 2-D MXU matmul per tile (float32 accumulation; bfloat16 inputs multiplied in bfloat16).
Row block ``n`` of ``Y_t`` (``r_{k−1}`` rows) is stored at tile ``n T_k + t`` of ``V_{k−1}``,
whose rows are then ``(n_k..n_d, m_1..m_{k−1}, r_{k−1})``: ``m_{k−1}`` is innermost, ready for
the next core. ``V_d`` is ``xᵀ`` (rows ``m_1..m_d``) and ``V_0`` is ``yᵀ`` (rows ``n_1..n_d``).
So the kernel does, per block of ``bB`` rows of ``x``: one 2-D transpose of the ``(bB, M)`` slab
(XLU), ``d`` loops (``lax.fori_loop``) of 2-D dots whose operands are read and written at
dynamic row offsets that are multiples of 8 (the float32 sublane tile) in two float32 VMEM
scratch buffers, and one transpose back; no reshape, no lane-dim slicing, no masked access.

Alignment: every row offset into the float32 scratch is a multiple of 8, and every matmul
operand has a multiple of ``s`` rows, ``s = 8`` for float32 and 16 for bfloat16 (Mosaic's
packed-type matmul rule). The interior ranks are zero-padded to multiples of ``s`` in the cores
(by XLA, they are tiny), and each ``A`` gets zero rows up to a multiple of ``s``. The first step
(core ``d``, ``K_d = m_d``) reads ``h = s / gcd(m_d, s)`` tiles at once with
``kron(I_h, A_d)`` (``h``× its flops); if ``h`` does not divide ``M / m_d`` the columns of
``x`` are zero-padded so that ``m_d`` becomes a multiple of ``s`` (a copy of ``x``, odd shapes
only). The last step (core 1, ``r_0 = 1``) computes 8 tiles
at once with the interleaved ``A_1 ⊗ I_8`` (8× the flops of that step) so that its output rows
come in aligned groups of 8; ``N / n_1`` is rounded up to a multiple of 8 (and ``n_1`` times
that to a multiple of 128 lanes), with the extra output columns sliced off by XLA (a copy of
``y``, odd shapes only). The batch is padded to the block ``bB`` (a multiple of 128) and ``M``
to a multiple of 128 by XLA (no copy when aligned). A single core (``d = 1``) is one plain dot.

VMEM per block (float32 state): two scratch buffers of ``bB × R`` float32 (``R`` the largest
padded intermediate per row: ``max_k n_k T_k r_{k−1}``, plus ``xᵀ``), the double-buffered
``x``/``y`` blocks ``2 bB (M_p + N_p) × itemsize``, the cores, and the transposed slabs. For
a 1024 × 1024 weight as cores ``(4, 8, 8, 4) × (4, 8, 8, 4)``, rank 8, float32: ``R = 8192``,
so at ``bB = 128`` the scratch is 2 × 4 MiB, the blocks 2 MiB, the slabs 1 MiB: ≈ 11 MiB;
rank 16 (or rank 8 in bfloat16, padded to 16) doubles the scratch (≈ 19 MiB). The batch block
``bB`` is the largest multiple of 128 up to 512 whose estimate stays under 12 MiB (v5e's
default scoped VMEM is 16 MiB), else 128, for which Mosaic is asked for a 32 MiB scoped-VMEM
limit. When even ``bB = 128`` needs more than ``VMEM_BUDGET`` (24 MiB), the kernel does not
apply (``ValueError``; ``impl="auto"`` on a TPU falls back to XLA with that reason). Float64 is
not a TPU dtype: the kernel raises ``ValueError`` for it; float16 runs through float32.

Example (TPU interpret mode on a CPU):
  >>> import jax, jax.numpy as jnp
  >>> from tensorfact.kernels import tt_chain_pallas, tt_chain_xla
  >>> ks = jax.random.split(jax.random.key(0), 3)
  >>> cores = [jax.random.normal(ks[0], (1, 4, 2, 3)), jax.random.normal(ks[1], (3, 2, 5, 1))]
  >>> x = jax.random.normal(ks[2], (6, 8))
  >>> y = tt_chain_pallas(x, cores, target="tpu")
  >>> bool(jnp.allclose(y, tt_chain_xla(x, cores), atol=1e-4))
  True
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tensorfact.kernels import _pallas
from tensorfact.kernels._varying import varying_out_shape

__all__ = ["tt_chain_tpu", "tpu_plan", "tpu_shape_reason", "VMEM_BUDGET"]

LANES, SUBLANES = 128, 8
MAX_BLOCK = 512                 # batch rows per program at most
VMEM_BUDGET = 24 << 20          # bytes a block may use (estimate); above: not applicable
DEFAULT_SCOPED = 12 << 20       # above this estimate, ask for RAISED_LIMIT of scoped VMEM
RAISED_LIMIT = 32 << 20


def _round_up(n, m):
    return -(-int(n) // m) * m


class Plan(NamedTuple):
    """Static layout of the kernel for one set of core shapes and dtypes."""
    ms: tuple      # m_k (m_d possibly padded to a multiple of ``sub``: ``m_pad``)
    ns: tuple
    ranks: tuple   # padded r_0..r_d (r_0 = r_d = 1, interior multiples of ``sub``)
    sub: int       # row alignment of the matmul operands: 8 (float32), 16 (bfloat16)
    m_pad: int     # m_d as laid out in the padded x (== ms[-1])
    group: int     # h: tiles of the first step per dot
    tiles_out: int  # T_1 rounded up to 8: the output columns are (n_1, tiles_out)
    m_cols: int    # columns of the padded x block (multiple of 128)
    n_cols: int    # columns of the padded y block (multiple of 128)
    rows: int      # rows of each scratch buffer
    bytes_per_row: int  # VMEM bytes per batch row (the estimate of the docstring)


def tpu_plan(shapes, itemsize_in, itemsize_out) -> Plan:
    """The :class:`Plan` for core ``shapes`` ``(r, m, n, r')`` and the in/out item sizes
    (an input item size of 2 means bfloat16 matmuls, whose operands' rows come in 16s)."""
    d = len(shapes)
    sub = 2 * SUBLANES if itemsize_in == 2 else SUBLANES
    ms = [s[1] for s in shapes]
    ns = [s[2] for s in shapes]
    ranks = [1] + [_round_up(s[3], sub) for s in shapes[:-1]] + [1]
    if d == 1:
        m_cols, n_cols = _round_up(ms[0], LANES), _round_up(ns[0], LANES)
        per_row = 2 * (m_cols * itemsize_in + n_cols * itemsize_out) + 4 * (m_cols + n_cols)
        return Plan(tuple(ms), tuple(ns), tuple(ranks), sub, ms[0], 1, 1, m_cols, n_cols, 0,
                    per_row)
    group = sub // math.gcd(ms[-1], sub)
    if (math.prod(ms) // ms[-1]) % group:   # pad m_d to a multiple of sub (copy of x)
        ms[-1], group = _round_up(ms[-1], sub), 1
    m_cols = _round_up(math.prod(ms), LANES)
    tiles_out = _round_up(math.prod(ns[1:]), SUBLANES)
    n_cols = _round_up(ns[0] * tiles_out, LANES)
    # rows of each state V_k, k = d..0 (V_d = xᵀ, V_1 rounded up to whole groups of 8 tiles)
    sizes = [m_cols]
    for k in range(d - 1, 0, -1):  # V_k after the core k+1 (0-based index k)
        tiles = math.prod(ns[k + 1:]) * math.prod(ms[:k + 1]) // ms[k]
        sizes.append(ns[k] * tiles * ranks[k])
    k1_rows = tiles_out * ms[0] * ranks[1]
    sizes.append(k1_rows)
    sizes.append(n_cols)
    rows = max(sizes)
    per_row = (2 * 4 * rows + 2 * (m_cols * itemsize_in + n_cols * itemsize_out)
               + 4 * (m_cols + n_cols))
    return Plan(tuple(ms), tuple(ns), tuple(ranks), sub, ms[-1], group, tiles_out, m_cols,
                n_cols, rows, per_row)


def tpu_shape_reason(shapes, dtype):
    """Why the TPU kernel does not apply to these core shapes and input dtype (None when it
    does): float64, or a 128-row block over :data:`VMEM_BUDGET`."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return (f"x has dtype {dtype}: float64 is not a TPU dtype; target='tpu' takes float32, "
                f"bfloat16 and float16")
    size = 2 if dtype == jnp.bfloat16 else 4
    plan = tpu_plan(tuple(tuple(s) for s in shapes), size, size)
    need = LANES * plan.bytes_per_row
    if need > VMEM_BUDGET:
        return (f"a {LANES}-row block needs about {need / 2**20:.1f} MiB of VMEM (the largest "
                f"padded intermediate has {plan.rows} values per row) > the "
                f"{VMEM_BUDGET / 2**20:.0f} MiB budget")
    return None


def tt_chain_tpu(x, cores, *, precision, block_rows, launch):
    """``x @ W`` by the Mosaic kernel (see the module docstring); ``block_rows`` (a multiple of
    128) overrides the batch block. Raises ``ValueError`` for float64 or when a block does not
    fit in VMEM."""
    for a in (x, *cores):
        if a.dtype == jnp.float64:
            raise ValueError(f"x has dtype {x.dtype} (cores {cores[0].dtype}): float64 is not a "
                             f"TPU dtype; target='tpu' takes float32, bfloat16 and float16.")
    if block_rows is not None and block_rows % LANES:
        raise ValueError(f"block_rows must be a multiple of {LANES} for target='tpu', got "
                         f"{block_rows!r}.")
    reason = tpu_shape_reason([g.shape for g in cores], x.dtype)
    if reason is not None:
        raise ValueError(f"the TPU TT-chain kernel does not apply: {reason}.")
    if block_rows is not None:
        size = 2 if x.dtype == jnp.bfloat16 else 4
        need = block_rows * tpu_plan(tuple(g.shape for g in cores), size,
                                     jnp.dtype(jnp.result_type(x, *cores)).itemsize).bytes_per_row
        if need > VMEM_BUDGET:
            raise ValueError(f"block_rows={block_rows} needs about {need / 2**20:.1f} MiB of "
                             f"VMEM > the {VMEM_BUDGET / 2**20:.0f} MiB budget; use fewer rows.")
    return _call(x, tuple(cores), precision=precision, block_rows=block_rows, launch=launch)


@functools.partial(jax.jit, static_argnames=("precision", "block_rows", "launch"))
def _call(x, cores, *, precision, block_rows, launch):
    out_dtype = jnp.result_type(x, *cores)
    dot_dtype = jnp.bfloat16 if x.dtype == jnp.bfloat16 else jnp.float32
    if x.dtype not in (jnp.float32, jnp.bfloat16):  # float16: the MXU takes bf16/f32
        x = x.astype(jnp.float32)
    shapes = tuple(g.shape for g in cores)
    plan = tpu_plan(shapes, x.dtype.itemsize, jnp.dtype(out_dtype).itemsize)
    prec = precision if dot_dtype == jnp.float32 else None
    batch, d = x.shape[0], len(cores)
    bb = block_rows or max(LANES, min(MAX_BLOCK, _round_up(batch, LANES),
                                      DEFAULT_SCOPED // plan.bytes_per_row // LANES * LANES))
    bp = _round_up(batch, bb)

    # x, padded: rows to the block, m_d to plan.m_pad, columns to plan.m_cols (zeros)
    m_true = shapes[-1][1]
    if plan.m_pad != m_true:
        x = x.reshape(batch, -1, m_true)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, plan.m_pad - m_true))).reshape(batch, -1)
    x = jnp.pad(x, ((0, bp - batch), (0, plan.m_cols - x.shape[1])))

    mats = _matrices(cores, plan, dot_dtype)
    if d == 1:
        kernel = functools.partial(_single_kernel, prec=prec, dot_dtype=dot_dtype)
        scratch = []
    else:
        kernel = functools.partial(_chain_kernel, plan=plan, prec=prec, dot_dtype=dot_dtype)
        scratch = [pltpu.VMEM((plan.rows, bb), jnp.float32)] * 2
    need = bb * plan.bytes_per_row
    params = {} if need <= DEFAULT_SCOPED else {"vmem_limit_bytes": RAISED_LIMIT}
    # inside shard_map the output varies over its inputs' mesh axes (kernels/_varying.py)
    out_shape, args = varying_out_shape((bp, plan.n_cols), out_dtype, x, *mats)
    out = _pallas.call(
        kernel, launch=launch, dimension_semantics=("parallel",), grid=(bp // bb,),
        in_specs=[pl.BlockSpec((bb, plan.m_cols), lambda i: (i, 0))]
        + [pl.BlockSpec(a.shape, lambda i: (0, 0)) for a in mats],
        out_specs=pl.BlockSpec((bb, plan.n_cols), lambda i: (i, 0)),
        out_shape=out_shape, scratch_shapes=scratch, **params,
    )(*args)
    n_true = math.prod(s[2] for s in shapes)
    out = out[:batch]
    if d > 1 and plan.tiles_out * plan.ns[0] != n_true:  # odd shapes: drop the padded tiles
        tiles = n_true // plan.ns[0]
        out = out[:, :plan.ns[0] * plan.tiles_out].reshape(batch, plan.ns[0], plan.tiles_out)
        return out[:, :, :tiles].reshape(batch, n_true)
    return out[:, :n_true]


def _matrices(cores, plan, dot_dtype):
    """The cores as the kernel's 2-D matrices (zero-padded; built by XLA, tiny)."""
    d, rs, ms = len(cores), plan.ranks, plan.ms
    padded = []
    for k, g in enumerate(cores):
        r0, m, n, r1 = g.shape
        padded.append(jnp.pad(g.astype(jnp.float32),
                              ((0, rs[k] - r0), (0, ms[k] - m), (0, 0), (0, rs[k + 1] - r1))))
    if d == 1:  # y = x A, A: (m_cols, n_cols)
        a = padded[0][0, :, :, 0]
        return [jnp.pad(a, ((0, plan.m_cols - a.shape[0]),
                            (0, plan.n_cols - a.shape[1]))).astype(dot_dtype)]

    def a_mat(g):  # A[(n, a), (j, c)] = G[a, j, n, c]
        r0, m, n, r1 = g.shape
        return jnp.transpose(g, (2, 0, 1, 3)).reshape(n * r0, m * r1)

    mats = []
    for k in range(d - 1, -1, -1):  # in the kernel's order: core d first
        a = a_mat(padded[k])
        if k == d - 1 and plan.group > 1:   # kron(I_h, A_d)
            a = jnp.kron(jnp.eye(plan.group, dtype=a.dtype), a)
        if k == 0:                          # A_1 ⊗ I_8: rows (n, i), cols (i, c)
            n1, k1 = a.shape
            a = jnp.einsum("nc,ij->nijc", a, jnp.eye(SUBLANES, dtype=a.dtype))
            a = a.reshape(n1 * SUBLANES, SUBLANES * k1)
        # zero rows up to a multiple of sub (bf16 matmul operands; the rows are not stored)
        a = jnp.pad(a, ((0, _round_up(a.shape[0], plan.sub) - a.shape[0]), (0, 0)))
        mats.append(a.astype(dot_dtype))
    return mats


def _dot(a, b, prec):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=prec,
                           preferred_element_type=jnp.float32)


def _single_kernel(x_ref, a_ref, o_ref, *, prec, dot_dtype):
    o_ref[...] = _dot(x_ref[...].astype(dot_dtype), a_ref[...], prec).astype(o_ref.dtype)


def _chain_kernel(x_ref, *refs, plan, prec, dot_dtype):
    d = len(plan.ns)
    mat_refs, o_ref, bufs = refs[:d], refs[d], refs[d + 1:]
    ms, ns, rs = plan.ms, plan.ns, plan.ranks
    i32 = jnp.int32

    # V_d = xᵀ: rows (m_1..m_d), the batch on the lanes
    bufs[0][0:plan.m_cols, :] = x_ref[...].astype(jnp.float32).T
    src = 0
    for step, k in enumerate(range(d - 1, 0, -1)):  # cores d..2 (0-based k = d-1..1)
        a_ref, dst = mat_refs[step], 1 - src
        k_rows, r_out = ms[k] * rs[k + 1], rs[k]
        tiles = math.prod(ns[k + 1:]) * math.prod(ms[:k + 1]) // ms[k]
        group = plan.group if k == d - 1 else 1

        def body(g, carry, a_ref=a_ref, src=src, dst=dst, k_rows=k_rows, r_out=r_out,
                 tiles=tiles, group=group, n_k=ns[k]):
            start = pl.multiple_of(g * (group * k_rows), SUBLANES)
            tile = bufs[src][pl.ds(start, group * k_rows), :].astype(dot_dtype)
            y = _dot(a_ref[...], tile, prec)                     # (group n_k r_out, bB)
            for i in range(group):
                for n in range(n_k):
                    row = pl.multiple_of((n * tiles + g * group + i) * r_out, SUBLANES)
                    blk = (i * n_k + n) * r_out
                    bufs[dst][pl.ds(row, r_out), :] = y[blk:blk + r_out, :]
            return carry

        lax.fori_loop(i32(0), i32(tiles // group), body, i32(0))
        src = dst

    # core 1: 8 tiles per dot, output rows (n_1, tiles_out)
    k_rows = ms[0] * rs[1]
    tiles = math.prod(ns[1:])
    if plan.tiles_out > tiles:  # zero the tiles past the end (they meet zeros in the kron)
        bufs[src][tiles * k_rows:plan.tiles_out * k_rows, :] = jnp.zeros(
            ((plan.tiles_out - tiles) * k_rows, bufs[src].shape[1]), jnp.float32)
    dst, a_ref, n_1 = 1 - src, mat_refs[d - 1], ns[0]

    def last(g, carry):
        start = pl.multiple_of(g * (SUBLANES * k_rows), SUBLANES)
        tile = bufs[src][pl.ds(start, SUBLANES * k_rows), :].astype(dot_dtype)
        y = _dot(a_ref[...], tile, prec)                         # (n_1 · 8, bB)
        for n in range(n_1):
            row = pl.multiple_of(n * plan.tiles_out + g * SUBLANES, SUBLANES)
            bufs[dst][pl.ds(row, SUBLANES), :] = y[n * SUBLANES:(n + 1) * SUBLANES, :]
        return carry

    lax.fori_loop(i32(0), i32(plan.tiles_out // SUBLANES), last, i32(0))
    used = n_1 * plan.tiles_out
    if plan.n_cols > used:
        bufs[dst][used:plan.n_cols, :] = jnp.zeros((plan.n_cols - used, bufs[dst].shape[1]),
                                                  jnp.float32)
    o_ref[...] = bufs[dst][0:plan.n_cols, :].T.astype(o_ref.dtype)

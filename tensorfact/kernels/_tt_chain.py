"""The forward pass of a TT layer, ``y = x W`` for a TT-matrix ``W``, fused into one Pallas
kernel that keeps the chain's intermediates on chip.

``W`` (``M × N`` with ``M = ∏ m_k``, ``N = ∏ n_k``) has cores ``G_k`` of shape
``(r_{k−1}, m_k, n_k, r_k)``, ``r_0 = r_d = 1`` (Oseledets, "Tensor-Train Decomposition", SIAM
J. Sci. Comput. 33(5), 2011). The product is the chain of Novikov et al. ("Tensorizing Neural
Networks", NeurIPS 2015): with ``x`` reshaped to ``T_0 = (B, m_1, [m_2..m_d], 1)``,

    T_k[b, q, n_k, r_k] = Σ_{m_k, r_{k−1}} T_{k−1}[b, m_k, q, r_{k−1}] G_k[r_{k−1}, m_k, n_k, r_k],

where ``q`` runs over ``(m_{k+1}..m_d, n_1..n_{k−1})``, and ``T_d`` read as ``(B, n_1..n_d)`` is
``y``. XLA runs this as ``d`` einsums, each writing its intermediate to HBM and launching
separately; for the small cores of a layer the launches and round trips dominate.

Kernel: one program per block of ``bB`` rows of ``x``. It loads its ``bB × M`` slab once, then
for each core moves ``m_k`` next to ``r_{k−1}`` (an on-chip transpose), runs one 2-D ``dot``
``(bB·q, m_k r_{k−1}) × (m_k r_{k−1}, n_k r_k)`` (float32 accumulate) and reshapes; only ``y``
is written back. Triton needs power-of-two block dimensions and dots of at least 16 along
each side, so every ``m_k, n_k, r_k`` is padded to a power of two (and raised until each dot is
≥ 16 wide): the cores are zero-padded by XLA in HBM (they are tiny), ``x`` and ``y`` are read
and written through masked loads and stores, never padded. The chain's largest padded
intermediate, ``bB × max_k ∏_{j>k} m_j ∏_{j≤k} n_j r_k`` values, must fit on chip:
``impl="auto"`` takes the kernel on a GPU only when a ``16``-row block of it holds at most
``MAX_ONCHIP`` values and the kernel has been measured to pay on a GPU (listed in
``_pallas.MEASURED_ON_GPU``: not yet), and XLA otherwise (``TENSORFACT_DEBUG_DISPATCH=1`` logs
why).

The above is the ``"gpu"`` (Triton) kernel. ``target="tpu"`` launches the Mosaic kernel of
``tensorfact/kernels/_tt_chain_tpu.py`` instead (the batch on the 128 lanes, the chain as 2-D
MXU matmuls at 8-aligned row offsets in VMEM scratch, the last core first; ranks padded to
multiples of 8 (16 in bfloat16), the batch to blocks of 128 rows; float64 raises
``ValueError``). ``impl="auto"``
on a TPU would ask its own VMEM rule (``_tt_chain_tpu.tpu_shape_reason``), once the kernel is
listed in ``_pallas.MEASURED_ON_TPU`` (not yet).

Gradients (both targets): a ``jax.custom_vjp`` whose backward pass is the XLA chain's own
(``jax.vjp`` of :func:`tt_chain_xla`, recomputing its forward), so training through the kernel
is exact to float tolerance; only the forward is fused.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from tensorfact._checks import Impl, Precision
from tensorfact._numerics import resolve_precision
from tensorfact.kernels import _pallas
from tensorfact.kernels._varying import varying_out_shape
from tensorfact.kernels._tt_chain_tpu import tpu_shape_reason, tt_chain_tpu

__all__ = ["tt_chain_matmul", "tt_chain_pallas", "tt_chain_xla", "resolve_tt_chain_impl",
           "MAX_ONCHIP"]

MAX_ONCHIP = 1 << 15  # values of the largest intermediate of a 16-row block kept in registers
_MIN_ROWS = 16
_KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def tt_chain_matmul(x, cores, *, impl: Impl = "auto",
                    precision: Precision = "highest") -> jax.Array:
    """``x @ W`` for ``x`` of shape ``(B, ∏ m_k)`` and the TT-matrix cores ``(r, m_k, n_k, r')``
    of ``W``; returns ``(B, ∏ n_k)``.

    Args:
      x: 2-D array (float32, float64, bfloat16, float16).
      cores: sequence of 4-D cores with chained ranks, ``r_0 = r_d = 1``.
      impl: ``"pallas"`` (the fused kernel: Triton on a GPU, Mosaic on a TPU, the Triton
        kernel in interpret mode elsewhere), ``"xla"`` (the einsum chain, the reference) or
        ``"auto"`` (the kernel on a GPU when the dtype suits and the padded intermediates fit
        on chip, XLA elsewhere).
      precision: of the float32 contractions; ``"highest"`` (the default) is full float32, ``None``
        JAX's default.

    Differentiable in ``x`` and the cores (the backward pass is the XLA chain's).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from tensorfact.kernels import tt_chain_matmul
      >>> ks = jax.random.split(jax.random.key(0), 3)
      >>> cores = [jax.random.normal(ks[0], (1, 4, 2, 3)), jax.random.normal(ks[1], (3, 2, 5, 1))]
      >>> x = jax.random.normal(ks[2], (6, 8))
      >>> w = jnp.einsum("aijb,bklc->ikjl", *cores).reshape(8, 10)   # the dense W
      >>> bool(jnp.allclose(tt_chain_matmul(x, cores, impl="pallas"), x @ w, atol=1e-4))
      True
    """
    x, cores = _check_args(x, cores)
    if resolve_tt_chain_impl(x, cores, impl) == "xla":
        return tt_chain_xla(x, cores, precision=precision)
    return tt_chain_pallas(x, cores, precision=precision)


def _check_args(x, cores):
    if not hasattr(x, "shape"):
        x = jnp.asarray(x)
    cores = tuple(jnp.asarray(g) for g in cores)
    if not cores or any(g.ndim != 4 for g in cores):
        raise ValueError(f"cores must be a non-empty sequence of 4-D (r, m, n, r') arrays, got "
                         f"shapes {[tuple(g.shape) for g in cores]}.")
    ranks_ok = all(a.shape[3] == b.shape[0] for a, b in zip(cores, cores[1:]))
    if not ranks_ok or cores[0].shape[0] != 1 or cores[-1].shape[3] != 1:
        raise ValueError(f"cores must have chained ranks starting and ending with 1, got shapes "
                         f"{[tuple(g.shape) for g in cores]}.")
    rows = math.prod(g.shape[1] for g in cores)
    if x.ndim != 2 or x.shape[1] != rows:
        raise ValueError(f"x must have shape (B, {rows}) for these cores, got {tuple(x.shape)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a real floating array, got dtype {x.dtype}.")
    return x, cores


def resolve_tt_chain_impl(x, cores, impl: str) -> str:
    """``"pallas"`` or ``"xla"``: ``impl`` checked and ``"auto"`` resolved for ``x`` (anything
    with ``shape``/``dtype``) and the cores (logging why it chose XLA under
    ``TENSORFACT_DEBUG_DISPATCH=1``). ``tensorfact.tt_matmul`` decides through it."""
    return _pallas.resolve_impl("tt_chain", impl,
                                lambda target: _shape_reason(x, cores, target),
                                label="tt_chain_matmul")


def _auto_reason(x, cores):
    """Why ``impl="auto"`` should not take the kernel (None when it should)."""
    return _pallas.auto_reason("tt_chain", lambda target: _shape_reason(x, cores, target))


def _shape_reason(x, cores, target="gpu"):
    """Why the ``target`` kernel does not suit ``x`` and the cores (None when it does)."""
    if x.dtype not in _KERNEL_DTYPES:
        return f"x has dtype {x.dtype}; the kernel takes float32, bfloat16 and float16"
    if target == "tpu":
        return tpu_shape_reason([g.shape for g in cores], x.dtype)
    per_row = _plan(tuple(g.shape for g in cores))[-1]
    if _MIN_ROWS * per_row > MAX_ONCHIP:
        return (f"a {_MIN_ROWS}-row block's largest padded intermediate holds "
                f"{_MIN_ROWS * per_row} > {MAX_ONCHIP} values (it would not stay on chip)")
    return None


# -- XLA reference ---------------------------------------------------------------------------

def tt_chain_xla(x, cores, *, precision: Precision = "highest") -> jax.Array:
    """The reference chain: one einsum ``'bmqa,amnc->bqnc'`` per core (Novikov et al. 2015);
    what :func:`tensorfact.tt_matmul` runs for ``x @ W`` on XLA (and ``W @ v`` as
    ``vᵀ Wᵀ``). A batch of zero rows gives a ``(0, ∏ n_k)`` result."""
    x, cores = _check_args(x, cores)
    return _chain_xla(x, cores, resolve_precision(precision))


@functools.partial(jax.jit, static_argnums=2)
def _chain_xla(x, cores, precision):
    """The state after step ``k`` is ``(B, m_{k+1}..m_d, n_1..n_k, r_k)``: each step contracts
    the leading ``m_k`` and the trailing rank with one core and appends ``n_k``, so the output
    comes out as ``(B, n_1..n_d)`` in C order with no final transpose. Sizes are explicit (no
    ``-1``), so a batch of zero rows reshapes too."""
    batch, width = x.shape
    t = x.reshape(batch, cores[0].shape[1], width // cores[0].shape[1], 1)
    for k, g in enumerate(cores):
        t = jnp.einsum("bmqa,amnc->bqnc", t, g, precision=precision)
        nxt = cores[k + 1].shape[1] if k + 1 < len(cores) else 1
        t = t.reshape(batch, nxt, t.shape[1] * t.shape[2] // nxt, g.shape[-1])
    return t.reshape(batch, t.shape[1] * t.shape[2])


# -- Pallas kernel ---------------------------------------------------------------------------

def _p2(n):
    return pl.next_power_of_2(max(int(n), 1))


def _plan(shapes):
    """Padded ``(m_k)``, ``(n_k)``, ``(r_0..r_d)`` (powers of two, every dot ≥ 16 wide) and the
    largest per-row intermediate of the padded chain."""
    ranks = [1] + [_p2(s[3]) for s in shapes[:-1]] + [1]
    ms, ns = [], []
    for k, (_, m, n, _) in enumerate(shapes):
        ms.append(max(_p2(m), 16 // ranks[k] if ranks[k] < 16 else 1))
        ns.append(max(_p2(n), 16 // ranks[k + 1] if ranks[k + 1] < 16 else 1))
    sizes = [math.prod(ms)]
    for k in range(len(shapes)):
        sizes.append(math.prod(ms[k + 1:]) * math.prod(ns[:k + 1]) * ranks[k + 1])
    return tuple(ms), tuple(ns), tuple(ranks), max(sizes)


def tt_chain_pallas(x, cores, *, precision: Precision = "highest", block_rows=None,
                    target=None, interpret=None) -> jax.Array:
    """The fused kernel (module docstring), differentiable through :func:`tt_chain_xla`'s VJP.
    ``block_rows`` (a power of two ≥ 16; for ``target="tpu"`` a multiple of 128) overrides the
    rows per program; ``target`` (``"gpu"``: Triton, ``"tpu"``: Mosaic; default the backend's)
    and ``interpret`` (default: compile on the target's hardware, interpret elsewhere) choose the
    launch (``_pallas.resolve_launch``).

    Raises:
      ValueError: for a bad ``block_rows``; with ``target="tpu"``, for float64 ``x`` or cores,
        or cores whose padded intermediates do not fit in VMEM (``_tt_chain_tpu``).
    """
    x, cores = _check_args(x, cores)
    launch = _pallas.resolve_launch(target, interpret)
    if block_rows is not None and (block_rows < _MIN_ROWS or block_rows & (block_rows - 1)):
        raise ValueError(f"block_rows must be a power of two >= 16, got {block_rows!r}.")
    if launch.target == "tpu":
        bad = [a.dtype for a in (x, *cores) if a.dtype == jnp.float64]
        reason = tpu_shape_reason([g.shape for g in cores], bad[0] if bad else x.dtype)
        if reason is not None:
            raise ValueError(f"target='tpu': {reason}.")
        if block_rows is not None and block_rows % 128:
            raise ValueError(f"block_rows must be a multiple of 128 for target='tpu', got "
                             f"{block_rows!r}.")
    precision = resolve_precision(precision)
    if x.shape[0] == 0:  # no rows: no program to launch (an empty grid); the empty result
        return _chain_xla(x, cores, precision)
    return _fused(x, cores, precision, block_rows, launch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fused(x, cores, precision, block_rows, launch):
    return _chain_call(x, cores, precision=precision, block_rows=block_rows, launch=launch)


def _fused_fwd(x, cores, precision, block_rows, launch):
    return _fused(x, cores, precision, block_rows, launch), (x, cores)


def _fused_bwd(precision, block_rows, launch, residuals, cotangent):
    x, cores = residuals
    _, vjp = jax.vjp(lambda x, cores: _chain_xla(x, cores, precision), x, cores)
    return vjp(cotangent.astype(jnp.result_type(x, *cores)))


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.jit, static_argnames=("precision", "block_rows", "launch"))
def _chain_call(x, cores, *, precision, block_rows, launch):
    if launch.target == "tpu":  # the Mosaic kernel (tensorfact/kernels/_tt_chain_tpu.py)
        return tt_chain_tpu(x, cores, precision=precision, block_rows=block_rows, launch=launch)
    shapes = tuple(g.shape for g in cores)
    ms, ns, rs, per_row = _plan(shapes)
    m_true, n_true = [s[1] for s in shapes], [s[2] for s in shapes]
    batch, d = x.shape[0], len(cores)
    out_dtype = jnp.result_type(x, *cores)
    acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
    dot_dtype = x.dtype if x.dtype in (jnp.bfloat16, jnp.float16) else acc_dtype
    bb = block_rows or max(_MIN_ROWS, min(128, _p2(batch), max(1, MAX_ONCHIP // per_row)))
    bb = 1 << (bb.bit_length() - 1)  # a power of two
    # cores as (m_k r_{k-1}, n_k r_k) matrices, zero-padded: the padded rows/cols contribute 0
    mats = []
    for k, g in enumerate(cores):
        r0, m, n, r1 = g.shape
        g = jnp.pad(g.astype(dot_dtype),
                    ((0, rs[k] - r0), (0, ms[k] - m), (0, ns[k] - n), (0, rs[k + 1] - r1)))
        mats.append(jnp.transpose(g, (1, 0, 2, 3)).reshape(ms[k] * rs[k], ns[k] * rs[k + 1]))

    i32 = functools.partial(lax.convert_element_type, new_dtype=jnp.int32)  # also under x64

    def kernel(x_ref, *refs):
        core_refs, o_ref = refs[:-1], refs[-1]
        b0 = i32(pl.program_id(0) * bb)

        def block_mask(shape, true_sizes):
            ok = lax.broadcasted_iota(jnp.int32, shape, 0) + b0 < batch
            for axis, size in enumerate(true_sizes, start=1):
                if shape[axis] != size:
                    ok = ok & (lax.broadcasted_iota(jnp.int32, shape, axis) < size)
            return ok

        in_block = (bb,) + ms
        t = pltriton.load(x_ref.at[(pl.ds(b0, bb),) + tuple(pl.ds(i32(0), m) for m in ms)],
                          mask=block_mask(in_block, m_true), other=0).astype(dot_dtype)
        t = t.reshape(bb, ms[0], -1, 1)
        for k in range(d):
            q = t.shape[2]
            lhs = jnp.transpose(t, (0, 2, 1, 3)).reshape(bb * q, ms[k] * rs[k])
            g = core_refs[k][...]
            out = lax.dot_general(lhs, g, (((1,), (0,)), ((), ())), precision=precision,
                                  preferred_element_type=acc_dtype)
            nxt = ms[k + 1] if k + 1 < d else 1
            t = out.reshape(bb, nxt, -1, rs[k + 1])
            if k + 1 < d:
                t = t.astype(dot_dtype)
        out_block = (bb,) + ns
        y = t.reshape(out_block)
        pltriton.store(o_ref.at[(pl.ds(b0, bb),) + tuple(pl.ds(i32(0), n) for n in ns)],
                       y.astype(out_dtype), mask=block_mask(out_block, n_true))

    # inside shard_map the output varies over its inputs' mesh axes (kernels/_varying.py)
    out_shape, args = varying_out_shape((batch,) + tuple(n_true), out_dtype,
                                        x.reshape((batch,) + tuple(m_true)), *mats)
    out = _pallas.call(
        kernel, launch=launch, num_warps=4, num_stages=1, grid=(pl.cdiv(batch, bb),),
        out_shape=out_shape,
    )(*args)
    return out.reshape(batch, -1)

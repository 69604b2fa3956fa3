"""Times tensorfact's PARAFAC2 (ALS) against TensorLy's, on planted ragged slices and real data.

Protocol (the project's BENCHMARKS.md): one process, the same float32 data, rank and number of
iterations on both sides, the tolerance disabled on both (``tol=0``). Both start from the SVD
start (``C`` the leading singular vectors of the stacked slices, ``A`` ones, ``B = I``) and
make the same iteration: a Procrustes SVD per slice, then ``cp_sweeps`` CP-ALS sweeps on the
projected tensor (TensorLy's ``n_iter_parafac``, 5 on both sides); TensorLy's line search is
off (``linesearch=False``), since tensorfact has none.

* ``tfa.parafac2(slices, rank, n_iter=it, tol=0)`` (jitted; a list of ragged slices is padded
  to one array inside) against ``tensorly.decomposition.parafac2(slices, rank,
  n_iter_max=it, init="svd", tol=0, linesearch=False)`` on TensorLy's NumPy backend.
* Data: (1) planted PARAFAC2 slices ``P_k B diag(a_k) Cᵀ`` with ``I_k`` drawn in
  ``[I_min, I_max]`` plus Gaussian noise of relative norm ``--noise``; (2) TensorLy's kinetic
  fluorescence data set (``tensorly.datasets.load_kinetic()``, Nikolajsen et al. 2003, loaded
  at run time): 64 measurements × 12 emission × 10 excitation × 60 times, read as 64 slices
  (one per measurement) of 60 times × 120 emission-excitation pairs. The spectra are shared
  across measurements while each measurement follows its own kinetics, so the time profiles
  ``P_k B`` evolve from slice to slice: the setting PARAFAC2 was made for.
* Timing: the first call (compilation for tensorfact) apart, then the median of
  ``--repeats`` calls, each waited for. Every row carries the fit ``1 − ‖X − X̂‖/‖X‖`` over
  all true entries, rebuilt in float64 on the host. anchor/tfa: TensorLy median / tensorfact
  median (> 1: tensorfact is faster).

    python benchmarks/bench_parafac2.py --small     # CPU smoke: 8 slices of 10..20 × 12, 20 it
    python benchmarks/bench_parafac2.py             # 40 slices of 50..100 × 60, rank 4, 100 it
    python benchmarks/bench_parafac2.py --json out/parafac2.json
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

from _harness import (Entry, apply_preset, check_positive, median_ms, parser, run_entries,
                      set_ratios, sync_jax, sync_nothing)

import tensorfact as tfa

PRESETS = {"small": dict(slices=8, rows_min=10, rows_max=20, cols=12, rank=3, n_iter=20,
                         real_n_iter=5),
           "cpu": dict(slices=40, rows_min=50, rows_max=100, cols=60, rank=4, n_iter=100,
                       real_n_iter=100)}


def planted_slices(n_slices, rows_min, rows_max, cols, rank, noise, seed):
    """Ragged float32 slices ``P_k B diag(a_k) Cᵀ`` plus noise of relative norm ``noise``."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 1.5, (n_slices, rank))
    b = rng.standard_normal((rank, rank))
    c = rng.standard_normal((cols, rank))
    rows = rng.integers(rows_min, rows_max + 1, n_slices)
    clean = [np.linalg.qr(rng.standard_normal((n, rank)))[0] @ b @ np.diag(a[k]) @ c.T
             for k, n in enumerate(rows)]
    noise_parts = [rng.standard_normal(x.shape) for x in clean]
    ratio = noise * np.sqrt(sum(np.sum(x ** 2) for x in clean)
                            / sum(np.sum(e ** 2) for e in noise_parts))
    return [(x + ratio * e).astype(np.float32) for x, e in zip(clean, noise_parts)]


def kinetic_slices():
    """TensorLy's kinetic data set as 64 slices of 60 times × (12 · 10) spectra, float32."""
    from tensorly.datasets import load_kinetic

    t = np.asarray(load_kinetic().tensor)               # (64, 12, 10, 60)
    x = np.moveaxis(t, 3, 1).reshape(t.shape[0], t.shape[3], -1)
    return [s.astype(np.float32) for s in x]


def fit_of_slices(slices, approx):
    """``1 − ‖X − X̂‖/‖X‖`` over all true entries, float64."""
    num = sum(np.sum((np.asarray(x, np.float64) - np.asarray(s, np.float64)) ** 2)
              for x, s in zip(slices, approx))
    den = sum(np.sum(np.asarray(x, np.float64) ** 2) for x in slices)
    return float(1 - np.sqrt(num / den))


def compare(work, slices, rank, n_iter, repeats, log):
    """The two rows (tensorfact, TensorLy-NumPy) of one work."""
    import tensorly as tl
    from tensorly.decomposition import parafac2 as tl_parafac2
    from tensorly.parafac2_tensor import parafac2_to_slices

    tl.set_backend("numpy")
    fn = jax.jit(lambda xs: tfa.parafac2(list(xs), rank, n_iter=n_iter, tol=0))
    data = [jax.device_put(x) for x in slices]
    log(f"{work}: tensorfact")
    out, t_ms, t_first = median_ms(lambda: fn(data), sync_jax, repeats)
    t_fit = fit_of_slices(slices, out.to_slices())

    def run_tensorly():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tl_parafac2(slices, rank, n_iter_max=n_iter, init="svd", tol=0,
                               linesearch=False)

    log(f"{work}: tensorly")
    ref, s_ms, s_first = median_ms(run_tensorly, sync_nothing, repeats)
    s_fit = fit_of_slices(slices, parafac2_to_slices(ref))
    note = f"rank {rank}, {n_iter} it"
    return [Entry(work, "tensorfact", t_ms, t_first, t_fit, notes=note),
            Entry(work, "tensorly-numpy", s_ms, s_first, s_fit, notes=note + ", no line search")]


def main(argv=None):
    p = parser(__doc__.splitlines()[0],
               small="8 slices of 10..20 rows × 12, rank 3, 20 iterations; kinetic 5 iterations")
    for name in ("slices", "rows_min", "rows_max", "cols", "rank", "n_iter", "real_n_iter"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-real", action="store_true", help="skip the kinetic data set")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    apply_preset(args, PRESETS)
    check_positive(p, args, ("slices", "rows_min", "rows_max", "cols", "rank", "n_iter",
                             "real_n_iter", "repeats"))
    if args.rows_min > args.rows_max:
        p.error("--rows-min must not exceed --rows-max")

    import sys

    def log(message):
        if not args.quiet:
            print(f"# {message}", file=sys.stderr, flush=True)

    config = dict(preset=args.preset, slices=args.slices,
                  rows=f"{args.rows_min}..{args.rows_max}", cols=args.cols, rank=args.rank,
                  n_iter=args.n_iter, real_n_iter=args.real_n_iter, noise=args.noise,
                  repeats=args.repeats, tol=0, init="svd", cp_sweeps=5)

    def run():
        slices = planted_slices(args.slices, args.rows_min, args.rows_max, args.cols,
                                args.rank, args.noise, 0)
        entries = compare(f"planted {args.slices}×({args.rows_min}..{args.rows_max})×"
                          f"{args.cols}", slices, args.rank, args.n_iter, args.repeats, log)
        if not args.no_real:
            entries += compare("kinetic 64×60×120", kinetic_slices(), args.rank,
                               args.real_n_iter, args.repeats, log)
        set_ratios(entries)
        return entries

    return run_entries(__file__, argv, args, config, run)


if __name__ == "__main__":
    main()

"""Over-parameterization slows down gradient descent in matrix sensing
===================================================================

Over-parameterization slows down gradient descent in matrix sensing.

Reproduces the main finding of N. Xiong, L. Ding, S. S. Du, "How Over-Parameterization Slows
Down Gradient Descent in Matrix Sensing: The Curses of Symmetry and Initialization" (ICLR 2024):

* symmetric ``X = F Fᵀ``, exact rank ``k = r``: linear (geometric) convergence;
* symmetric, over-parameterized ``k > r``: *sublinear* convergence (the error decays like a
  power of the step count, whatever the initialisation scale);
* asymmetric ``X = F Gᵀ``, over-parameterized ``k > r``: linear convergence again, with a rate
  that improves with the initialisation scale ``α``.

The ground truth is ``X* = U Uᵀ`` (PSD, rank 2, ``‖X*‖_F = 1``), observed through Gaussian
measurements (symmetric ones for the symmetric fits, general ones for the asymmetric fits).

Usage::

    python examples/matrix_sensing_overparameterization.py [--quick] [--out matrix_sensing.png]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import tensorfact as tfa

try:  # optional progress bar
    from tqdm import tqdm as _progress
except ImportError:  # pragma: no cover - depends on the environment
    def _progress(it, **_):
        return it


def run_experiments(n=20, true_rank=2, over_rank=5, n_measurements=500, n_iter=5000,
                    alphas=(0.03, 0.1, 0.3), seed=0):
    """Runs every configuration; returns ``[(label, errors per step), ...]``."""
    k_u, k_sym, k_asym, k_init = jax.random.split(jax.random.key(seed), 4)
    u = jax.random.normal(k_u, (n, true_rank))
    x_true = u @ u.T
    x_true = x_true / jnp.linalg.norm(x_true)
    a_sym = tfa.gaussian_measurements((n, n), n_measurements, key=k_sym, symmetric=True)
    a_asym = tfa.gaussian_measurements((n, n), n_measurements, key=k_asym)
    y_sym, y_asym = tfa.measure(a_sym, x_true), tfa.measure(a_asym, x_true)

    configs = [(f"symmetric, k = r = {true_rank}, α = 1e-3", True, true_rank, 1e-3),
               (f"symmetric, k = {over_rank}, α = 1e-3", True, over_rank, 1e-3),
               (f"symmetric, k = {over_rank}, α = 1e-1", True, over_rank, 1e-1)]
    configs += [(f"asymmetric, k = {over_rank}, α = {alpha:g}", False, over_rank, alpha)
                for alpha in alphas]
    results = []
    for label, symmetric, rank, alpha in _progress(configs, desc="fits"):
        y, a = (y_sym, a_sym) if symmetric else (y_asym, a_asym)
        _, info = tfa.factorize_gd(y, a, rank, key=k_init, symmetric=symmetric,
                                   init_scale=alpha, n_iter=n_iter, x_true=x_true,
                                   return_info=True)
        results.append((label, np.asarray(info.true_errors)))
    return results


def plot(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for label, errors in results:
        style = "-" if label.startswith("asym") else "--"
        ax.semilogy(np.arange(len(errors)), errors, style, label=label, lw=1.6)
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel(r"$\|FG^\top - X^*\|_F \,/\, \|X^*\|_F$")
    ax.set_title("Matrix sensing: over-parameterization (k > r) and initialisation scale α")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", "--small", action="store_true",
                        help="a fast smoke run (few steps)")
    parser.add_argument("--out", default="matrix_sensing.png", help="output PNG path")
    parser.add_argument("--steps", type=int, default=None, help="gradient steps per run")
    args = parser.parse_args(argv)
    n_iter = args.steps or (200 if args.quick else 5000)
    start = time.perf_counter()
    results = run_experiments(n=12 if args.quick else 20,
                              n_measurements=300 if args.quick else 500, n_iter=n_iter)
    marks = sorted({n_iter // 10, n_iter // 2, n_iter - 1})
    print(f"relative error ‖FGᵀ − X*‖_F / ‖X*‖_F at step ({time.perf_counter() - start:.1f} s)")
    print(f"{'run':36s}" + "".join(f"{m:>11d}" for m in marks))
    for label, errors in results:
        print(f"{label:36s}" + "".join(f"{errors[m]:11.2e}" for m in marks))
    plot(results, args.out)
    print(f"figure written to {args.out}")
    return results


if __name__ == "__main__":
    main()

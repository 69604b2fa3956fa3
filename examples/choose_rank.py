"""How many CP components? A rank scan
===================================

How many CP components? A rank scan of TensorLy's COVID-19 systems-serology tensor
(samples × antigens × receptors; Tan et al. 2021), the data set of TensorLy's own rank-choice
example, loaded from TensorLy at run time.

    python examples/choose_rank.py            # ranks 1..6, 5 random starts + the SVD start
    python examples/choose_rank.py --small    # ranks 1..3, 2 random starts (a quick check)

Reading the table (Bro & Kiers 2003): the fit rises and levels off; take the largest rank whose
core consistency is still high (above about 80–90) and whose best fit several starts reach.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import tensorfact as tfa


def load():
    from tensorly.datasets import load_covid19_serology
    t = np.asarray(load_covid19_serology().tensor, np.float64)
    t = (t - np.nanmean(t, axis=(0, 1))) / np.nanstd(t, axis=(0, 1))  # per receptor
    return jnp.asarray(t, jnp.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--small", action="store_true", help="ranks 1..3, 2 random starts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ranks, restarts = (range(1, 4), 2) if args.small else (range(1, 7), 5)
    x = load()
    start = time.perf_counter()
    scan = tfa.diagnostics.rank_scan(x, ranks, key=jax.random.key(args.seed),
                                     n_restarts=restarts, n_iter=200)
    seconds = time.perf_counter() - start
    print(f"COVID-19 serology {tuple(x.shape)}, {restarts} random starts + SVD per rank")
    print(scan)
    print(f"{seconds:.1f} s (compilation included)")
    return scan


if __name__ == "__main__":
    main()

"""Colour image completion with tubal (t-SVD) models
=================================================

Colour image completion with tubal (t-SVD) models versus matrix completion per channel.

``skimage.data.astronaut()`` is downscaled to 128 × 128 × 3 (values in [0, 1]) and 70 % of its
*pixels* are removed at random (the same mask for the three channels: a pixel is either seen
in colour or not at all). Three completions are compared by their PSNR on the whole image:

* **tubal, TNN**: :func:`tensorfact.tubal.complete` (``method="tnn"``), the tensor-nuclear-norm
  completion of Zhang & Aeron (IEEE TSP 2017) / Lu et al. (TPAMI 2019), which has no parameter;
* **tubal, GD**: :func:`tubal_factorize_gd` on ``X = L * Rᵀ`` with inner size ``min(n1, n2)``
  from a small random initialisation (Karnik, Veselovska, Iwen & Krahmer, ICML 2025), no
  rank constraint: the small initialisation is the only regulariser;
* **matrix, per channel**: :func:`tensorfact.complete` (Soft-Impute, the matrix nuclear norm;
  Mazumder, Hastie & Tibshirani 2010) on each 128 × 128 channel, with rank 32 (a quarter of
  the side) and threshold ``λ = 0.01 σ_max``: the best of a small grid on this very image
  (Soft-Impute at rank 32 or 128 with ``λ/σ_max`` in {0.01, 0.03, 0.1}; ALS at ranks 2–8 with
  ridge 0, 1 or 5 reached at most 16.6 dB), which favours the baseline.

Measured with the defaults (seed 0): TNN 19.75 dB, GD 19.82 dB, matrix 17.61 dB (the zero-
filled observation: 6.84 dB).

Tensor arrangement. The t-product model is applied to the image cut into 2 × 2 blocks:
``X[i, j, :] = img[2i:2i+2, 2j:2j+2, :]`` flattened, a 64 × 64 × 12 tensor whose tubes hold a
block's four pixels in three colours. Why not the plain ``h × w × 3``? With a per-pixel mask
a missing pixel is a whole missing tube, and in the transform domain the problem splits into
independent matrix completions of the three transformed colour channels with the same mask:
no more information than per-channel matrix completion (TNN on 128 × 128 × 3: 17.68 dB, the
same as the matrix baseline). With 2 × 2 blocks a tube is usually partly observed, and the
transform along the tubes couples neighbouring pixels and colours (19.75 dB). 4 × 4 blocks
(32 × 32 × 48) give 19.19 dB: the frontal slices become too small to be of low rank.
``--block`` chooses the block size (1 is the plain ``h × w × 3``).

Usage::

    python examples/tubal_image_completion.py [--quick] [--out tubal_image_completion.png]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import tensorfact as tfa

#: Soft-Impute baseline: rank (a fraction of the image side) and threshold (a fraction of each
#: channel's σ_max).
MATRIX_RANK_FRACTION = 0.25
MATRIX_LAM = 1e-2


def psnr(reference, estimate) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (the estimate is clipped)."""
    mse = np.mean((np.clip(estimate, 0.0, 1.0) - reference) ** 2)
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def to_blocks(img, block):
    """``(h, w, c) → (h/b, w/b, b·b·c)``: every tube holds one ``b × b`` block in all colours."""
    h, w, c = img.shape
    return (img.reshape(h // block, block, w // block, block, c).transpose(0, 2, 1, 3, 4)
            .reshape(h // block, w // block, block * block * c))


def from_blocks(x, block, shape):
    """Inverse of :func:`to_blocks`."""
    h, w, c = shape
    return (x.reshape(h // block, w // block, block, block, c).transpose(0, 2, 1, 3, 4)
            .reshape(h, w, c))


def load_image(size=128):
    """``skimage.data.astronaut()`` resized to ``size × size × 3`` floats in [0, 1]."""
    from skimage import data, transform
    img = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)
    return np.asarray(img, np.float32)


def complete_image(img, *, missing=0.7, block=2, seed=0, gd_steps=1000, tnn_iter=300,
                   matrix_iter=300, matrix_rank=None):
    """Removes a fraction ``missing`` of the pixels of ``img`` (``h × w × 3`` in [0, 1], ``h``
    and ``w`` multiples of ``block``) and completes it three ways. ``matrix_rank`` is the
    Soft-Impute rank (default: a quarter of the shorter side).

    Returns a dict: ``images`` (name → ``h × w × 3`` array, with "original" and "observed"),
    ``psnr`` (name → dB), ``seconds`` (name → wall time) and ``mask`` (``h × w``, True =
    observed).
    """
    img = np.asarray(img, np.float32)
    h, w, c = img.shape
    if h % block or w % block:
        raise ValueError(f"image size {h} × {w} must be a multiple of block = {block}.")
    rng = np.random.default_rng(seed)
    pixel_mask = rng.random((h, w)) >= missing
    mask = np.repeat(pixel_mask[:, :, None], c, axis=2)
    observed = np.where(mask, img, np.nan)
    images = {"original": img, "observed": np.where(mask, img, 1.0)}  # missing shown white
    seconds = {}

    x_obs, x_mask = jnp.asarray(to_blocks(observed, block)), jnp.asarray(to_blocks(mask, block))
    start = time.perf_counter()
    tnn = tfa.tubal.complete(x_obs, x_mask, method="tnn", n_iter=tnn_iter, tol=1e-4)
    images["tubal, TNN"] = from_blocks(np.asarray(tnn.to_dense()), block, img.shape)
    seconds["tubal, TNN"] = time.perf_counter() - start

    start = time.perf_counter()
    factors = tfa.tubal.factorize_gd(x_obs, None, min(x_obs.shape[:2]), key=jax.random.key(seed),
                                     mask=x_mask, init_scale=1e-3, n_iter=gd_steps)
    images["tubal, GD"] = from_blocks(np.asarray(factors.to_dense()), block, img.shape)
    seconds["tubal, GD"] = time.perf_counter() - start

    start = time.perf_counter()
    channels = jnp.moveaxis(jnp.asarray(observed), 2, 0)
    sigma_max = jnp.linalg.norm(jnp.where(jnp.asarray(pixel_mask), channels, 0), ord=2,
                                axis=(1, 2))
    rank = matrix_rank or max(1, int(MATRIX_RANK_FRACTION * min(h, w)))

    def per_channel(m, lam):
        return tfa.complete(m, pixel_mask, rank, method="soft_impute", lam=lam,
                            n_iter=matrix_iter).to_dense()

    matrix = jax.vmap(per_channel)(channels, MATRIX_LAM * sigma_max)
    images["matrix, per channel"] = np.moveaxis(np.asarray(matrix), 0, 2)
    seconds["matrix, per channel"] = time.perf_counter() - start

    scores = {name: psnr(img, im) for name, im in images.items() if name != "original"}
    scores["observed"] = psnr(img, np.where(mask, img, 0.0))  # zero-filled
    return dict(images=images, psnr=scores, seconds=seconds, mask=pixel_mask)


def plot(result, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["images"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6))
    for ax, name in zip(axes, names):
        ax.imshow(np.clip(result["images"][name], 0, 1), interpolation="nearest")
        label = name if name == "original" else f"{name}\n{result['psnr'][name]:.2f} dB"
        if name == "observed":
            label += " (zero-filled)"
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", "--small", action="store_true",
                        help="a 64 × 64 image, fewer steps")
    parser.add_argument("--size", type=int, default=None, help="image side (default 128)")
    parser.add_argument("--missing", type=float, default=0.7, help="fraction of pixels removed")
    parser.add_argument("--block", type=int, default=2, help="block side of a tube (1: h×w×3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="tubal_image_completion.png", help="output PNG path")
    args = parser.parse_args(argv)
    size = args.size or (64 if args.quick else 128)
    img = load_image(size)
    result = complete_image(img, missing=args.missing, block=args.block, seed=args.seed,
                            gd_steps=400 if args.quick else 1000)
    print(f"astronaut {size}×{size}×3, {args.missing:.0%} of the pixels missing, tubes of "
          f"{args.block}×{args.block} blocks × RGB")
    print(f"{'method':22s} {'PSNR (dB)':>10s} {'time (s)':>9s}")
    for name, score in result["psnr"].items():
        secs = result["seconds"].get(name)
        print(f"{name:22s} {score:10.2f} " + (f"{secs:9.1f}" if secs is not None else ""))
    plot(result, args.out, f"astronaut, {args.missing:.0%} of the pixels missing")
    print(f"figure written to {args.out}")
    return result


if __name__ == "__main__":
    main()

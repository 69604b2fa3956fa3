"""Parity of tensorfact's adapters with Hugging Face PEFT, on reference data PEFT computed.

``tests/data/peft_reference.npz`` was written by ``tests/data/make_peft_reference.py`` (PEFT
0.21.2, torch 2.13.0, CPU, float32); neither is needed here. For each case the adapter is built
around an nnx layer holding PEFT's base weights, its parameters are set from PEFT's tensors
(transposed by hand here, independently of ``tensorfact.nn._peft_format``), and its output and
merged kernel must equal PEFT's output and ``merge_and_unload`` weight to float32 rounding.

Layouts: torch Linear ``(out, in)`` vs Flax ``(in, out)``; torch Conv2d ``(c_out, c_in, kh, kw)``
and NCHW inputs vs Flax ``(kh, kw, c_in, c_out)`` and NHWC.

Measured max relative errors (``max |tensorfact − PEFT| / max |PEFT|``, CPU, tolerance 1e-5):
outputs 4e-8 to 1.4e-7 in every case, merged kernels 0 (bit-identical) to 1.3e-7. OLoRA's own
initialisation agrees with PEFT's to 3.5e-7 (factors up to the QR columns' signs, residual
kernel); exact PiSSA's to 1.5e-5, which is the conditioning of the singular vectors of the
random weight, not a convention: see :func:`principal_tolerance`.
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tensorfact.nn import DoRA, LoHa, LoKr, LoRA

REF = np.load(pathlib.Path(__file__).parent / "data" / "peft_reference.npz")
P = "base_model.model.layer"  # PEFT's name of the adapted module in the saved tensors
TOL = 1e-5  # max relative error allowed: float32 rounding, summed in a different order


def case(name):
    start = name + "/"
    return {k[len(start):]: REF[k] for k in REF.files if k.startswith(start)}


def adapter(c, key):
    return c[f"adapter/{P}.{key}"]


def rel_err(ours, theirs):
    theirs = np.asarray(theirs, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / np.max(np.abs(theirs)))


def set_param(var, value):
    assert var[...].shape == value.shape, (var[...].shape, value.shape)
    var[...] = jnp.asarray(value)


# -- layers holding PEFT's base weights, in Flax's layouts ------------------------------------
def linear(c, weight=None):
    w = c["base.weight"] if weight is None else weight          # (out, in)
    base = nnx.Linear(w.shape[1], w.shape[0], precision="highest", rngs=nnx.Rngs(0))
    set_param(base.kernel, w.T)
    set_param(base.bias, c["base.bias"])
    return base


def conv(c):
    w = c["base.weight"]                                         # (c_out, c_in, kh, kw)
    base = nnx.Conv(w.shape[1], w.shape[0], w.shape[2:], padding=((1, 1), (1, 1)),
                    precision="highest", rngs=nnx.Rngs(0))
    set_param(base.kernel, w.transpose(2, 3, 1, 0))
    set_param(base.bias, c["base.bias"])
    return base


def conv_lora_a(a):
    """PEFT's conv ``lora_A`` ``(r, c_in, kh, kw)`` as tensorfact's ``(kh·kw·c_in, r)``."""
    return a.transpose(2, 3, 1, 0).reshape(-1, a.shape[0])


def check(layer, c, *, is_conv=False):
    """``layer``'s output and merged kernel against PEFT's; returns the two errors."""
    x = c["x"]
    if is_conv:
        y = np.asarray(layer(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
        merged = np.asarray(layer.merge().kernel[...]).transpose(3, 2, 0, 1)
        dense = np.asarray(layer.dense_weight()).transpose(3, 2, 0, 1)
    else:
        y = np.asarray(layer(jnp.asarray(x)))
        merged = np.asarray(layer.merge().kernel[...]).T
        dense = np.asarray(layer.dense_weight()).T
    errors = rel_err(y, c["y"]), rel_err(merged, c["merged.weight"])
    assert errors[0] <= TOL, f"output: max relative error {errors[0]:.2e}"
    assert errors[1] <= TOL, f"merged kernel: max relative error {errors[1]:.2e}"
    np.testing.assert_array_equal(merged, dense)
    return errors


# -- LoRA, rsLoRA, DoRA ----------------------------------------------------------------------
@pytest.mark.parametrize("name, use_rslora, expected_scale",
                         [("lora", False, 8 / 4), ("rslora", True, 8 / 2)])
def test_lora_linear_matches_peft(name, use_rslora, expected_scale):
    c = case(name)
    lora = LoRA(linear(c), 4, alpha=8, use_rslora=use_rslora, rngs=nnx.Rngs(1))
    assert lora.scale == expected_scale == pytest.approx(float(c["scaling"]))
    set_param(lora.lora_a, adapter(c, "lora_A.weight").T)
    set_param(lora.lora_b, adapter(c, "lora_B.weight").T)
    check(lora, c)


def test_lora_conv_matches_peft():
    c = case("lora_conv")
    lora = LoRA(conv(c), 4, alpha=8, rngs=nnx.Rngs(1))
    set_param(lora.lora_a, conv_lora_a(adapter(c, "lora_A.weight")))
    set_param(lora.lora_b, adapter(c, "lora_B.weight")[:, :, 0, 0].T)
    check(lora, c, is_conv=True)


def test_dora_linear_matches_peft():
    c = case("dora")
    dora = DoRA(linear(c), 4, alpha=8, rngs=nnx.Rngs(1))
    set_param(dora.lora_a, adapter(c, "lora_A.weight").T)
    set_param(dora.lora_b, adapter(c, "lora_B.weight").T)
    set_param(dora.magnitude, adapter(c, "lora_magnitude_vector"))
    check(dora, c)


def test_dora_conv_matches_peft():
    c = case("dora_conv")
    dora = DoRA(conv(c), 4, alpha=8, rngs=nnx.Rngs(1))
    set_param(dora.lora_a, conv_lora_a(adapter(c, "lora_A.weight")))
    set_param(dora.lora_b, adapter(c, "lora_B.weight")[:, :, 0, 0].T)
    set_param(dora.magnitude, adapter(c, "lora_magnitude_vector").reshape(-1))  # (1, c_out, 1, 1)
    check(dora, c, is_conv=True)


@pytest.mark.parametrize("name, layer", [("dora", linear), ("dora_conv", conv)])
def test_dora_magnitude_starts_at_peft(name, layer):
    """A fresh DoRA's magnitude is PEFT's initial one (the norms of W's output columns)."""
    c = case(name)
    dora = DoRA(layer(c), 4, alpha=8, rngs=nnx.Rngs(1))
    peft = c[f"init/{P}.lora_magnitude_vector"].reshape(-1)
    assert rel_err(dora.magnitude[...], peft) <= TOL


# -- LoKr, LoHa ------------------------------------------------------------------------------
def test_lokr_linear_matches_peft():
    # PEFT (torch layout): ΔW = s · w1 ⊗ (w2_a w2_b), w1 (out_l, in_m), w2_a (out_k, r),
    # w2_b (r, in_n); transposed, s · w1ᵀ ⊗ (w2_bᵀ w2_aᵀ): tensorfact's C ⊗ (A B) with
    # C = w1ᵀ (in_m, out_l), A = w2_bᵀ (in_n, r), B = w2_aᵀ (r, out_k). Held with
    # decompose_both=False (w1 dense) and r < max(out_k, in_n) / 2 (w2 low rank).
    c = case("lokr")
    lokr = LoKr(linear(c), 2, in_shape=(4, 6), out_shape=(4, 5), alpha=4, rngs=nnx.Rngs(1))
    assert lokr.scale == pytest.approx(float(c["scaling"]))
    set_param(lokr.lokr_c, adapter(c, "lokr_w1").T)
    set_param(lokr.lokr_a, adapter(c, "lokr_w2_b").T)
    set_param(lokr.lokr_b, adapter(c, "lokr_w2_a").T)
    check(lokr, c)


def test_loha_linear_matches_peft():
    # PEFT: ΔW = s · (w1_a w1_b) ⊙ (w2_a w2_b) with w*_a (out, r), w*_b (r, in); tensorfact's
    # A_k = w{k}_bᵀ (in, r), B_k = w{k}_aᵀ (r, out)
    c = case("loha")
    loha = LoHa(linear(c), 4, alpha=8, rngs=nnx.Rngs(1))
    assert loha.scale == pytest.approx(float(c["scaling"]))
    for k in (1, 2):
        set_param(getattr(loha, f"hada_a{k}"), adapter(c, f"hada_w{k}_b").T)
        set_param(getattr(loha, f"hada_b{k}"), adapter(c, f"hada_w{k}_a").T)
    check(loha, c)


def test_loha_conv_matches_peft():
    # PEFT (use_effective_conv2d=False): w*_b (r, c_in·kh·kw), columns row-major over
    # (c_in, kh, kw); tensorfact's rows are (kh, kw, c_in). The Hadamard product is entrywise,
    # so permuting the rows of both A's is exact.
    c = case("loha_conv")
    c_out, c_in, kh, kw = c["base.weight"].shape
    loha = LoHa(conv(c), 4, alpha=8, rngs=nnx.Rngs(1))
    for k in (1, 2):
        b = adapter(c, f"hada_w{k}_b")
        set_param(getattr(loha, f"hada_a{k}"), conv_lora_a(b.reshape(-1, c_in, kh, kw)))
        set_param(getattr(loha, f"hada_b{k}"), adapter(c, f"hada_w{k}_a").T)
    check(loha, c, is_conv=True)


# -- OLoRA and PiSSA: tensorfact's own initialisation, then the copied values -----------------
def signs_between(ours, theirs):
    """±1 per column making ``ours`` agree with ``theirs`` (singular vectors and QR columns
    are defined up to sign)."""
    s = np.sign(np.sum(np.asarray(ours) * theirs, axis=0))
    assert np.all(s != 0)
    return s


def principal_tolerance(init, weight):
    """How closely two float32 implementations can agree on OLoRA's / PiSSA's factors.

    QR is backward stable and its factors well conditioned here: float32 rounding, ``TOL``.
    The leading singular vectors of ``W`` are determined only to about
    ``eps · σ_1 / gap``, where ``gap`` is the smallest distance between one of the top
    ``r = 4`` singular values and its neighbours (Wedin's bound), whatever the SVD routine: for
    the random weight here ``σ_4 − σ_5 = 0.022 σ_1``, so ``eps · σ_1 / gap = 5.4e-6``, and
    LAPACK builds differ at that level (measured: tensorfact's factors are 5.6e-6 from a float64
    SVD, PEFT's 1.1e-5, and 1.4e-5 from each other). The tolerance is 8 times the bound."""
    if init == "olora":
        return TOL
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    gap = np.min(np.abs(np.diff(s[:4 + 1])))
    return 8 * np.finfo(np.float32).eps * s[0] / gap


@pytest.mark.parametrize("init", ["olora", "pissa"])
def test_principal_init_matches_peft(init):
    """tensorfact's own OLoRA / exact-PiSSA split of the original weight gives PEFT's factors
    (up to the sign of each QR column / singular pair) and PEFT's residual kernel."""
    c = case(init)
    tol = principal_tolerance(init, c["base.weight"])
    kwargs = {"svd_method": "exact"} if init == "pissa" else {}
    lora = LoRA(linear(c), 4, init=init, alpha=8, rngs=nnx.Rngs(1), **kwargs)
    a_peft = c[f"init/{P}.lora_A.weight"].T          # (in, r)
    b_peft = c[f"init/{P}.lora_B.weight"].T          # (r, out)
    s = signs_between(lora.lora_a[...], a_peft)
    a, b = np.asarray(lora.lora_a[...]) * s, np.asarray(lora.lora_b[...]) * s[:, None]
    assert rel_err(a, a_peft) <= tol
    assert rel_err(b, b_peft) <= tol
    assert rel_err(np.asarray(lora.base.kernel[...]).T, c["residual.weight"]) <= tol


def test_pissa_init_is_the_float64_svd():
    """Both PiSSA splits are within the conditioning bound of the float64 SVD's: their
    difference above is rounding, not a different convention."""
    c = case("pissa")
    w = c["base.weight"].astype(np.float64)                       # (out, in) = V S Uh
    v, sv, uh = np.linalg.svd(w, full_matrices=False)
    root = np.sqrt(sv[:4] / 2.0)                                  # s = alpha / r = 2
    a64, b64 = (root[:, None] * uh[:4]).T, (v[:, :4] * root).T    # tensorfact's layout
    tol = principal_tolerance("pissa", c["base.weight"]) / 2
    lora = LoRA(linear(c), 4, init="pissa", svd_method="exact", alpha=8, rngs=nnx.Rngs(1))
    for a, b in [(lora.lora_a[...], lora.lora_b[...]),
                 (c[f"init/{P}.lora_A.weight"].T, c[f"init/{P}.lora_B.weight"].T)]:
        s = signs_between(a, a64)
        assert rel_err(np.asarray(a) * s, a64) <= tol
        assert rel_err(np.asarray(b) * s[:, None], b64) <= tol


@pytest.mark.parametrize("init", ["olora", "pissa"])
def test_principal_trained_matches_peft(init):
    """PEFT's residual kernel and (perturbed) factors copied in: same output and merge."""
    c = case(init)
    kwargs = {"svd_method": "exact"} if init == "pissa" else {}
    lora = LoRA(linear(c), 4, init=init, alpha=8, rngs=nnx.Rngs(1), **kwargs)
    set_param(lora.base.kernel, c["residual.weight"].T)
    set_param(lora.lora_a, adapter(c, "lora_A.weight").T)
    set_param(lora.lora_b, adapter(c, "lora_B.weight").T)
    check(lora, c)


# -- Embedding: the reference for the coming LoRA on nnx.Embed ---------------------------------
def test_lora_embedding_reference_formula():
    """REFERENCE for the coming ``LoRA`` on ``nnx.Embed`` (tensorfact has no embedding adapter
    yet). Until then this checks the stored data against PEFT's formula, in plain jnp:
    ``y = table[ids] + (Aᵀ[ids] @ Bᵀ) · s`` with PEFT's ``lora_embedding_A`` ``(r, num)`` and
    ``lora_embedding_B`` ``(features, r)``, i.e. tensorfact's ``A = lora_embedding_Aᵀ``
    ``(num, r)``, ``B = lora_embedding_Bᵀ`` ``(r, features)``; and the merged table
    ``table + s · A B``. The adapter, when it comes, must give the same numbers."""
    c = case("lora_embed")
    table = c["base.weight"]                                   # (num, features), as nnx.Embed
    a = adapter(c, "lora_embedding_A").T                       # (num, r)
    b = adapter(c, "lora_embedding_B").T                       # (r, features)
    s = 8 / 4
    assert float(c["scaling"]) == s
    ids = jnp.asarray(c["x"])
    base = nnx.Embed(*table.shape, rngs=nnx.Rngs(0))
    set_param(base.embedding, table)
    y = base(ids) + jnp.matmul(jnp.take(jnp.asarray(a), ids, axis=0), b,
                               precision="highest") * s
    merged = table + s * np.asarray(jnp.matmul(a, b, precision="highest"))
    assert rel_err(y, c["y"]) <= TOL
    assert rel_err(merged, c["merged.weight"]) <= TOL

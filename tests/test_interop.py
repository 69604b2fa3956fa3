"""tensorfact.interop: to_tensorly / from_tensorly round trips of every type, compared in float64
with TensorLy's own densification (tl.cp_to_tensor, tl.tucker_to_tensor, ...)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorly as tl

import tensorfact as tfa


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _rng():
    return np.random.default_rng(0)


def _cp():
    r = _rng()
    return tfa.CPTensor(r.standard_normal(3), [r.standard_normal((n, 3)) for n in (4, 5, 6)])


def _tucker():
    r = _rng()
    return tfa.TuckerTensor(r.standard_normal((2, 3, 2)),
                            [r.standard_normal((n, k)) for n, k in ((4, 2), (5, 3), (6, 2))])


def _tt():
    r = _rng()
    return tfa.TTTensor([r.standard_normal(s) for s in ((1, 4, 2), (2, 5, 3), (3, 6, 1))])


def _tt_matrix():
    r = _rng()
    return tfa.TTMatrix([r.standard_normal(s) for s in ((1, 2, 3, 2), (2, 4, 5, 1))])


def _tr():
    r = _rng()
    return tfa.TRTensor([r.standard_normal(s) for s in ((2, 4, 3), (3, 5, 2), (2, 6, 2))])


# (maker, TensorLy type, TensorLy's densification as tensorfact's to_dense() lays it out)
CASES = {
    "cp": (_cp, tl.cp_tensor.CPTensor, tl.cp_to_tensor),
    "tucker": (_tucker, tl.tucker_tensor.TuckerTensor, tl.tucker_to_tensor),
    "tt": (_tt, tl.tt_tensor.TTTensor, tl.tt_to_tensor),
    "tt_matrix": (_tt_matrix, tl.tt_matrix.TTMatrix, tl.tt_matrix.tt_matrix_to_matrix),
    "tr": (_tr, tl.tr_tensor.TRTensor, tl.tr_to_tensor),
}


def _leaves(t):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(t)]


@pytest.mark.parametrize("name", CASES)
def test_to_tensorly_densifies_to_the_same_tensor_in_float64(name):
    make, tl_type, tl_dense = CASES[name]
    t = make()
    converted = tfa.to_tensorly(t)
    assert type(converted) is tl_type
    dense = tl.to_numpy(tl_dense(converted))
    assert dense.dtype == np.float64
    np.testing.assert_allclose(dense, np.asarray(t.to_dense()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_keeps_every_factor_exactly(name):
    make, _, _ = CASES[name]
    t = make()
    back = tfa.from_tensorly(tfa.to_tensorly(t))
    assert type(back) is type(t)
    assert back.shape == t.shape and back.rank == t.rank
    for a, b in zip(_leaves(t), _leaves(back), strict=True):
        assert b.dtype == np.float64
        np.testing.assert_array_equal(a, b)


def test_from_tensorly_takes_what_tensorly_decompositions_return():
    x = tl.tensor(_rng().standard_normal((4, 5, 6)))
    fits = {
        "parafac": (tl.decomposition.parafac(x, rank=2, n_iter_max=5, init="svd"),
                    tfa.CPTensor, tl.cp_to_tensor),
        "tucker": (tl.decomposition.tucker(x, rank=(2, 3, 2), n_iter_max=5),
                   tfa.TuckerTensor, tl.tucker_to_tensor),
        "tensor_train": (tl.decomposition.tensor_train(x, rank=(1, 2, 3, 1)),
                         tfa.TTTensor, tl.tt_to_tensor),
        "tensor_ring": (tl.decomposition.tensor_ring(x, rank=(2, 2, 3, 2)),
                        tfa.TRTensor, tl.tr_to_tensor),
    }
    for name, (fit, tfa_type, tl_dense) in fits.items():
        t = tfa.from_tensorly(fit)
        assert type(t) is tfa_type, name
        np.testing.assert_allclose(np.asarray(t.to_dense()), tl.to_numpy(tl_dense(fit)),
                                   rtol=1e-12, atol=1e-12, err_msg=name)


def test_a_partial_tucker_or_another_type_is_refused_by_name():
    r = _rng()
    partial = tfa.TuckerTensor(r.standard_normal((4, 2, 3)), [r.standard_normal((5, 2))],
                               modes=(1,))
    with pytest.raises(ValueError, match=r"partial one over modes \(1,\)"):
        tfa.to_tensorly(partial)
    with pytest.raises(TypeError, match="got LowRankMatrix"):
        tfa.to_tensorly(tfa.LowRankMatrix(r.standard_normal((3, 2)), np.ones(2),
                                          r.standard_normal((2, 4))))
    with pytest.raises(TypeError, match="got ndarray"):
        tfa.from_tensorly(r.standard_normal((3, 3)))

"""Rank selection tools."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tensorfact as tfa


def test_stable_rank_closed_forms():
    assert float(tfa.stable_rank(np.eye(6))) == pytest.approx(6.0, rel=1e-6)
    assert float(tfa.stable_rank(np.outer(np.arange(1, 5), np.arange(1, 4)))) == \
        pytest.approx(1.0, rel=1e-5)
    m = np.diag([3.0, 1.0, 1.0])
    assert float(tfa.stable_rank(m)) == pytest.approx(11 / 9, rel=1e-6)


def test_rank_measures_under_jit():
    m = np.diag([3.0, 1.0, 1.0])
    assert float(jax.jit(tfa.stable_rank)(m)) == pytest.approx(11 / 9, rel=1e-6)
    assert float(jax.jit(tfa.effective_rank)(np.eye(4))) == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ValueError, match=r"m must be a 2-D matrix, got shape \(3,\)"):
        tfa.stable_rank(np.ones(3))


def test_effective_rank_closed_forms():
    assert float(tfa.effective_rank(np.eye(5))) == pytest.approx(5.0, rel=1e-5)
    assert float(tfa.effective_rank(np.array([2.0, 0.0, 0.0]))) == pytest.approx(1.0, rel=1e-6)
    s = np.array([3.0, 1.0])
    p = s / s.sum()
    assert float(tfa.effective_rank(s)) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    with pytest.raises(ValueError, match=r"matrix or a vector"):
        tfa.effective_rank(np.ones((2, 2, 2)))


def test_rank_for_energy():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert tfa.rank_for_energy(s, 16 / 22) == 1
    assert tfa.rank_for_energy(s, 0.75) == 2
    assert tfa.rank_for_energy(s, 1.0) == 4
    assert isinstance(tfa.rank_for_energy(s, 0.5), int)
    traced = jax.jit(tfa.rank_for_energy)(jnp.asarray(s), 0.95)
    assert int(traced) == 3
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 1.5"):
        tfa.rank_for_energy(s, 1.5)
    with pytest.raises(ValueError, match=r"s must be a non-empty 1-D array"):
        tfa.rank_for_energy(np.ones((2, 2)), 0.5)


def test_rank_for_params():
    assert tfa.rank_for_params((100, 50), 0.1) == 3      # 3·150 = 450 ≤ 500 < 4·150
    assert tfa.rank_for_params((64, 64), 1.0) == 32
    assert tfa.rank_for_params((10, 10), 0.01) == 1       # at least one component
    assert tfa.rank_for_params((4, 1000), 1.0) == 3       # 3·1004 ≤ 4000 < 4·1004
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        tfa.rank_for_params((10, 10), 0)
    with pytest.raises(ValueError, match=r"shape must be \(m, n\)"):
        tfa.rank_for_params((10, 10, 10), 0.5)

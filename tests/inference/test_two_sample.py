"""The energy-distance two-sample test: exact on small cases, calibrated under the null, powerful off it."""

import numpy as np
import pytest

from inference import EnergyTest, energy_distance, energy_test


def _brute_force(x, y):
    def mean_dist(a, b):
        return np.mean([np.linalg.norm(u - v) for u in a for v in b])

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def test_energy_distance_matches_the_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5
    assert energy_distance(x, y) == pytest.approx(_brute_force(x, y), rel=1e-8)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-10)


def test_one_dimensional_input_and_standardize():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=20), rng.normal(size=30)
    assert energy_distance(x, y) == pytest.approx(energy_distance(x[:, None], y[:, None]))
    # Standardizing makes the statistic unit-free: scaling both samples changes nothing.
    assert energy_distance(x, y, standardize=True) == pytest.approx(energy_distance(100 * x, 100 * y, standardize=True))


def test_same_distribution_p_values_are_calibrated():
    # Under the null the permutation p-value is (super-)uniform: P(p <= 0.05) <= 0.05. With 200
    # replicate tests the share has sd sqrt(0.05 * 0.95 / 200) = 0.015; 0.05 + 4.5 sd = 0.12.
    rng = np.random.default_rng(2)
    p = np.array(
        [energy_test(rng.normal(size=(25, 2)), rng.normal(size=(25, 2)), n_permutations=99, seed=i).p_value
         for i in range(200)]
    )
    assert np.mean(p <= 0.05) < 0.12
    assert np.mean(p) > 0.4  # uniform has mean 0.5 (sd of the mean 0.02)


def test_shifted_distribution_is_detected():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + np.array([0.8, 0.0])
    result = energy_test(x, y, n_permutations=499)
    assert isinstance(result, EnergyTest) and result.n_permutations == 499
    assert result.p_value == pytest.approx(1 / 500)  # no permutation beats a shift of 0.8 sd at n = 100
    assert result.statistic > 0


def test_same_sample_gives_p_one_and_seed_reproduces():
    x = np.random.default_rng(4).normal(size=(30, 2))
    assert energy_test(x, x, n_permutations=50).statistic == pytest.approx(0.0, abs=1e-9)
    y = np.random.default_rng(5).normal(size=(30, 2))
    assert energy_test(x, y, seed=7) == energy_test(x, y, seed=7)


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.zeros((5, 2)), np.zeros((5, 3)), "same d"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "at least 2 draws"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), np.zeros((3, 2)), "non-finite"),
    ],
)
def test_bad_input_is_named(x, y, match):
    with pytest.raises(ValueError, match=match):
        energy_test(x, y)


def test_bad_permutation_count_is_named():
    with pytest.raises(ValueError, match="n_permutations must be a positive integer"):
        energy_test(np.zeros((3, 1)), np.ones((3, 1)), n_permutations=0)

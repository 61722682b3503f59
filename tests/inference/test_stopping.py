"""The plateau rule: it waits while the loss still falls and stops once it is flat."""

import numpy as np
import pytest

from inference import PlateauRule


def test_falling_trend_is_not_a_plateau():
    rng = np.random.default_rng(0)
    n = 2000
    losses = 100 * np.exp(-np.arange(n) / 3000) + rng.normal(0, 1.0, n)
    assert not PlateauRule(min_steps=100).is_plateau(losses)


def test_flat_noise_is_a_plateau():
    rng = np.random.default_rng(1)
    losses = 5.0 + rng.normal(0, 1.0, 2000)
    assert PlateauRule(min_steps=100).is_plateau(losses)


def test_noise_free_flat_loss_is_a_plateau_and_slow_descent_is_not():
    rule = PlateauRule(min_steps=100, atol=0.01)
    assert rule.is_plateau(np.full(1000, 3.0))
    # one nat per window, no noise: clear progress
    assert not rule.is_plateau(10 - np.arange(1000) / 250.0)


def test_min_steps_and_every_restart():
    rng = np.random.default_rng(2)
    flat = rng.normal(0, 1, (2, 1500))
    assert not PlateauRule(min_steps=2000).is_plateau(flat)
    falling = flat.copy()
    falling[1] += -np.arange(1500) / 30.0
    assert PlateauRule(min_steps=100).is_plateau(flat)
    assert not PlateauRule(min_steps=100).is_plateau(falling)


def test_skipped_steps_are_ignored():
    rng = np.random.default_rng(3)
    losses = rng.normal(0, 1, 2000)
    losses[::7] = np.nan
    assert PlateauRule(min_steps=100).is_plateau(losses)


def test_window_grows_with_the_run():
    rule = PlateauRule(window=250, max_window=4000)
    assert rule.window_length(100) == 250
    assert rule.window_length(4000) == 1000
    assert rule.window_length(10**6) == 4000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_steps": 0}, "min_steps"),
        ({"min_steps": 10, "max_steps": 5}, "min_steps"),
        ({"window": 1}, "window"),
        ({"patience": 0}, "patience"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlateauRule(**kwargs)

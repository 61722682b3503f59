"""The verdict's checks: closed-form PSIS cases, the Laplace check, restarts, and the reference problems."""

import json

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference.checks import diagnostics as dg
from inference.engine.stopping import StopReason

N = 16000


def normal_ratio_log_weights(scale: float, n: int = N, seed: int = 0):
    """Draws z ~ q = Normal(0, 1) with target p = Normal(0, scale): log p - log q, and z.

    The weights' tail has Pareto shape k = 1 - 1 / scale**2 (for scale > 1).
    """
    z = np.random.default_rng(seed).normal(size=n)
    log_p = -0.5 * z**2 / scale**2 - np.log(scale)
    log_q = -0.5 * z**2
    return log_p, log_q, z


def test_khat_is_small_when_the_guide_is_wider_in_no_direction_and_large_for_a_narrow_guide():
    k_close = dg.psis(*normal_ratio_log_weights(1.2)[:2]).khat  # exact k = 0.31
    k_far = dg.psis(*normal_ratio_log_weights(3.0)[:2]).khat  # exact k = 0.89
    assert k_close < dg.KHAT_GOOD
    assert k_far > dg.KHAT_OK


def test_equal_weights_give_khat_zero_and_full_ess():
    res = dg.psis(np.full(500, -3.0), np.full(500, -1.0))
    assert res.khat == 0.0
    assert res.ess == pytest.approx(500)
    np.testing.assert_allclose(np.exp(res.log_weights).sum(), 1.0, rtol=1e-12)


def test_zero_density_draws_get_zero_weight():
    log_p, log_q, _ = normal_ratio_log_weights(1.2, n=2000)
    log_p[:50] = -np.inf
    res = dg.psis(log_p, log_q)
    assert res.n_zero == 50
    assert np.all(np.exp(res.log_weights[:50]) == 0)
    np.testing.assert_allclose(np.exp(res.log_weights).sum(), 1.0, rtol=1e-9)


def test_psis_resampling_recovers_the_target_sd():
    log_p, log_q, z = normal_ratio_log_weights(1.2)
    res = dg.psis(log_p, log_q)
    draws = dg.psis_resample({"z": z}, res.log_weights, 20000, seed=1)["z"]
    # Target sd 1.2; with ESS ~ 0.9 N the sd of the resampled sd is about 1.2 / sqrt(2 * 0.9 N) < 0.01.
    assert np.std(draws) == pytest.approx(1.2, abs=0.04)


def test_psis_check_reports_the_shift_of_each_parameter():
    log_p, log_q, z = normal_ratio_log_weights(1.2)
    check, res, shift = dg.check_psis(log_p, log_q, {"z": z})
    assert check.level == dg.RELIABLE or check.level == dg.CARE
    dm, ratio = shift["z"]
    assert abs(dm) < 0.05
    assert ratio == pytest.approx(1.2, abs=0.05)
    assert "z" in check.message


def test_psis_check_is_unreliable_above_khat_07():
    log_p, log_q, z = normal_ratio_log_weights(3.0)
    check, _, _ = dg.check_psis(log_p, log_q, {"z": z}, guide_name="normal")
    assert check.level == dg.UNRELIABLE
    assert "multivariate_normal" in check.advice


def _many_exact_coordinates(m: int, n: int, hidden_scale: float, shift: float = 0.0, seed: int = 0):
    """``m`` coordinates that the guide N(0, 1) gets right (the first one off by ``shift`` sds),
    with weights made uneven by a coordinate that is not judged: target sd ``hidden_scale``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m))
    h = rng.standard_normal(n)
    log_p = -0.5 * (h / hidden_scale) ** 2 - 0.5 * (x[:, 0] - shift) ** 2
    log_q = -0.5 * h**2 - 0.5 * x[:, 0] ** 2
    return log_p, log_q, {"x": x}


def test_shift_noise_is_the_bonferroni_bound_of_the_largest_shift():
    from scipy import stats

    mean_noise, log_sd_noise = dg.shift_noise(400.0, 1000, 1)
    assert mean_noise == pytest.approx(1.959964 * np.sqrt(1 / 400 - 1 / 1000), rel=1e-6)
    high, low = stats.chi2.isf(0.025, 400) / 400, stats.chi2.ppf(0.025, 400) / 400
    assert log_sd_noise == pytest.approx(0.5 * max(np.log(high), -np.log(low)), rel=1e-9)
    # Unequal weights only: no noise with equal ones; a larger bound over more coordinates.
    assert dg.shift_noise(1000.0, 1000, 50)[0] == 0.0
    assert dg.shift_noise(400.0, 1000, 10000)[0] == pytest.approx(4.5648 * np.sqrt(1 / 400 - 1 / 1000), rel=1e-4)


def test_psis_shifts_of_many_exact_coordinates_are_judged_against_their_noise():
    # 2000 coordinates, all exact; uneven weights (hidden sd 1.5: k-hat 0.67, ESS 405 of 1000). By
    # chance the largest of 2000 shifts is 0.14 sd in a mean and a factor 1.14 in an sd.
    log_p, log_q, draws = _many_exact_coordinates(2000, 1000, 1.5)
    plain, res, shift = dg.check_psis(log_p, log_q, draws)
    assert res.khat <= dg.KHAT_OK
    assert max(abs(a) for a, _ in shift.values()) > dg.MEAN_SHIFT
    assert plain.level == dg.CARE  # a false alarm: every coordinate is exact
    judged, _, _ = dg.check_psis(log_p, log_q, draws, allow_noise=True)
    assert judged.level == dg.RELIABLE
    assert "Monte Carlo noise alone moves one mean by up to" in judged.message
    assert "smaller errors are not checked" in judged.message


def test_psis_shift_beyond_the_noise_of_many_coordinates_is_still_caught():
    # Same, with coordinate 0 of the target 0.8 guide sds off: its weighted mean moves by about 0.8 sd.
    log_p, log_q, draws = _many_exact_coordinates(2000, 4000, 1.5, shift=0.8)
    judged, _, shift = dg.check_psis(log_p, log_q, draws, allow_noise=True)
    assert shift["x[0]"][0] > 0.6
    assert judged.level == dg.UNRELIABLE
    assert "x[0]" in judged.message


def test_psis_khat_above_07_is_unreliable_below_1000_coordinates_even_with_a_small_shift():
    # The judged coordinates are exact; the hidden one (target sd 2.2) gives k = 1 - 1 / 2.2**2 = 0.79.
    log_p, log_q, draws = _many_exact_coordinates(3, N, 2.2)
    check, res, shift = dg.check_psis(log_p, log_q, draws)
    assert res.khat > dg.KHAT_OK
    assert max(abs(a) for a, _ in shift.values()) < dg.LARGE_MEAN_SHIFT
    assert check.level == dg.UNRELIABLE
    assert "can be off by more than 25%" in check.message and "guide='auto'" in check.advice
    # Over more than 1000 coordinates the same weights read "use with care": no shift beyond noise.
    log_p, log_q, draws = _many_exact_coordinates(1100, 8000, 3.0)  # k = 0.89
    many, res, _ = dg.check_psis(log_p, log_q, draws, allow_noise=True)
    assert res.khat > dg.KHAT_OK and many.level == dg.CARE
    assert "joint tails are not checked" in many.message


@pytest.mark.parametrize("offset, level", [(0.18, dg.CARE), (0.35, dg.UNRELIABLE)])
def test_psis_shift_beyond_025_sd_is_unreliable(offset, level):
    # Guide N(0, 1), target N(offset, 1): k-hat small, the weighted mean moves by about offset sds.
    z = np.random.default_rng(3).normal(size=N)
    log_p, log_q = -0.5 * (z - offset) ** 2, -0.5 * z**2
    check, res, shift = dg.check_psis(log_p, log_q, {"z": z})
    assert res.khat <= dg.KHAT_OK
    assert shift["z"][0] == pytest.approx(offset, abs=0.03)  # Monte Carlo error about 0.01
    assert check.level == level


def test_flatten_draws_labels_vector_elements():
    labels, x = dg.flatten_draws({"a": np.zeros((4,)), "b": np.arange(12.0).reshape(4, 3)})
    assert labels == ["a", "b[0]", "b[1]", "b[2]"]
    assert x.shape == (4, 4)
    np.testing.assert_array_equal(x[:, 2], [1, 4, 7, 10])


# -- curvature ------------------------------------------------------------------------------------
RHO = 0.95


def correlated():
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), jnp.array([[1.0, RHO], [RHO, 1.0]])))


def test_curvature_names_the_correlation_a_mean_field_guide_misses():
    rng = np.random.default_rng(0)
    # The best mean-field Gaussian for a correlated Gaussian has the conditional sds sqrt(1 - rho^2).
    narrow = rng.normal(size=(4000, 2)) * np.sqrt(1 - RHO**2)
    check = dg.check_curvature(correlated, {"x": narrow}, "normal")
    assert check.level == dg.UNRELIABLE  # sd ratio sqrt(1 - 0.95^2) = 0.31 < 0.5
    assert "x[0]" in check.message and "x[1]" in check.message and "0.95" in check.message
    assert "multivariate_normal" in check.advice


def test_curvature_passes_the_exact_posterior():
    rng = np.random.default_rng(0)
    exact = rng.multivariate_normal([0, 0], [[1.0, RHO], [RHO, 1.0]], size=4000)
    check = dg.check_curvature(correlated, {"x": exact}, "multivariate_normal")
    assert check.level == dg.RELIABLE
    assert "matches" in check.message


# -- restarts, stopping, density ------------------------------------------------------------------
def test_restarts_agree_when_they_reach_the_same_elbo_and_posterior():
    rng = np.random.default_rng(0)
    losses = 100 + rng.normal(size=(3, 2000))
    draws = {"k": rng.normal(size=(3, 1000))}
    check = dg.check_restarts(losses, draws)
    assert check.level == dg.RELIABLE
    assert "3 restarts agree" in check.message


def test_restarts_disagree_on_elbo_gap_and_on_rhat():
    rng = np.random.default_rng(0)
    losses = 100 + rng.normal(size=(3, 2000))
    losses[2] += 10  # one restart ends 10 nats worse
    draws = {"k": rng.normal(size=(3, 1000))}
    draws["k"][1] += 3.0  # and one sits elsewhere
    check = dg.check_restarts(losses, draws)
    assert check.level == dg.CARE
    assert "1 of 3 restarts" in check.message
    assert "R-hat" in check.message and "(k)" in check.message


def test_one_restart_is_not_penalized():
    check = dg.check_restarts(np.ones((1, 100)))
    assert check.level == dg.RELIABLE and "restarts=4" in check.advice


@pytest.mark.parametrize(
    "reason, bad, level",
    [
        (StopReason.CONVERGED, 0, dg.RELIABLE),
        (StopReason.CONVERGED, 50, dg.CARE),  # 50 of 2000 steps: above 1%
        (StopReason.MAX_STEPS, 0, dg.CARE),
        (StopReason.INTERRUPTED, 0, dg.CARE),
        (StopReason.NONFINITE, 500, dg.UNRELIABLE),
    ],
)
def test_stopping_levels(reason, bad, level):
    assert dg.check_stopping(reason, 2000, bad).level == level


@pytest.mark.parametrize("zero, level", [(0, dg.RELIABLE), (5, dg.RELIABLE), (50, dg.CARE), (200, dg.UNRELIABLE)])
def test_density_levels(zero, level):
    log_p = np.zeros(1000)
    log_p[:zero] = -np.inf
    check = dg.check_density(log_p)
    assert check.level == level
    assert f"{zero} of 1000" in check.message or zero == 0


def test_the_worst_check_decides_and_gives_the_reason():
    checks = [
        dg.Check("stopping", dg.RELIABLE, "fine"),
        dg.Check("curvature", dg.UNRELIABLE, "too narrow", "go full-rank"),
        dg.Check("psis", dg.UNRELIABLE, "k-hat high", "more particles"),
        dg.Check("restarts", dg.CARE, "disagree", "more restarts"),
    ]
    v = dg.Verdict.from_checks(checks, khat=0.9)
    assert v.level == dg.UNRELIABLE
    assert v.reason == "too narrow" and v.advice == "go full-rank"
    assert "unreliable" in str(v) and "k-hat high" in str(v)
    assert [c["check"] for c in json.loads(v.checks_json())] == ["stopping", "curvature", "psis", "restarts"]


# -- the reference problems -----------------------------------------------------------------------
def test_full_rank_guide_on_problem_a_is_reliable(fit_a_full_rank):
    v = fit_a_full_rank.verdict()
    assert v.level == dg.RELIABLE, str(v)
    assert v.khat <= dg.KHAT_OK and v.khat_draws == N
    # A named guide's verdict also searches for other optima (the `modes` check).
    assert {c.name for c in v.checks} == {"stopping", "density", "psis", "curvature", "restarts", "modes"}


def test_mean_field_guide_on_problem_c_is_unreliable_and_names_the_correlation(fit_c_mean_field):
    v = fit_c_mean_field.verdict()
    assert v.level == dg.UNRELIABLE, str(v)
    assert "Vmax" in v.reason and "Km" in v.reason and "correlated" in v.reason
    assert "multivariate_normal" in v.advice


def test_summary_shows_the_verdict(fit_c_mean_field):
    text = str(fit_c_mean_field.summary())
    assert "verdict: unreliable" in text and "what to do" in text


def test_psis_corrected_draws(fit_a_full_rank, fit_c_mean_field):
    draws = fit_a_full_rank.sample_psis(2000)
    assert set(draws) == {"k", "sigma"} and draws["k"].shape == (2000,)
    # Reweighting widens the full-rank guide's slightly narrow sd of k towards the posterior's.
    plain = fit_a_full_rank.sample(4000)["k"].std()
    assert draws["k"].std() > plain
    with pytest.raises(ValueError, match="k-hat"):
        fit_c_mean_field.sample_psis()

"""fit() on models with known posteriors: it converges, is accurate, reproducible, and says why it stopped."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference import FitResult, StopReason, fit

Y = jnp.array([1.2, 2.3, 2.9, 2.1, 1.6, 2.4, 3.1, 1.9])
PRIOR_SD, NOISE_SD = 10.0, 0.8


def conjugate(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("obs_plate", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def exact_posterior(y):
    precision = 1 / PRIOR_SD**2 + y.size / NOISE_SD**2
    return float(y.sum() / NOISE_SD**2 / precision), float(precision**-0.5)


@pytest.fixture(scope="module")
def conjugate_fit() -> FitResult:
    return fit(conjugate, Y, guide="multivariate_normal", seed=0, progress=False)


def test_converges_by_itself(conjugate_fit):
    # Default for a Gaussian guide: fixed draws (DADVI), L-BFGS, tens of iterations.
    r = conjugate_fit
    assert r.settings["engine"] == "flat" and r.settings["draws"] == "fixed"
    assert r.stop_reason == StopReason.CONVERGED
    assert 1 <= r.num_steps < 200
    assert r.losses.shape == (1, r.num_steps)
    assert np.all(np.isfinite(r.losses))
    assert r.nonfinite_steps.tolist() == [0]


def test_fresh_draws_converge_by_the_plateau_rule():
    r = fit(conjugate, Y, guide="multivariate_normal", draws="fresh", seed=0, progress=False)
    assert r.settings["draws"] == "fresh"
    assert r.stop_reason == StopReason.CONVERGED
    assert 1000 <= r.num_steps < 20000
    assert r.losses.shape == (1, r.num_steps)
    mean, sd = exact_posterior(np.asarray(Y))
    # Adam's stationary noise after iterate averaging: a few percent of the posterior sd.
    assert abs(float(r.params["auto_loc"][0]) - mean) < 0.05 * sd
    assert abs(float(r.params["auto_scale_tril"][0, 0]) / sd - 1) < 0.05


def test_full_rank_guide_matches_the_exact_posterior(conjugate_fit):
    mean, sd = exact_posterior(np.asarray(Y))
    loc = float(conjugate_fit.params["auto_loc"][0])
    scale = float(np.sqrt(conjugate_fit.params["auto_scale_tril"][0, 0] ** 2))
    # Moment-matched fixed draws make the fixed-draw ELBO exact for a Gaussian posterior.
    assert abs(loc - mean) < 1e-4 * sd
    assert abs(scale / sd - 1) < 1e-4


def test_elbo_is_close_to_the_log_evidence(conjugate_fit):
    # For a Gaussian family containing the exact posterior, the ELBO's optimum is log p(y).
    y = np.asarray(Y)
    n = y.size
    cov = NOISE_SD**2 * np.eye(n) + PRIOR_SD**2 * np.ones((n, n))
    _, logdet = np.linalg.slogdet(cov)
    log_evidence = -0.5 * (y @ np.linalg.solve(cov, y) + logdet + n * np.log(2 * np.pi))
    assert abs(conjugate_fit.elbo - log_evidence) < 0.05


def test_samples_and_summary(conjugate_fit):
    mean, sd = exact_posterior(np.asarray(Y))
    draws = conjugate_fit.sample(4000, seed=3)
    assert draws["mu"].shape == (4000,)
    # Monte Carlo error of the mean of 4000 draws: sd / 63; allow 5 standard errors plus fit error.
    assert abs(draws["mu"].mean() - mean) < 5 * sd / np.sqrt(4000) + 0.05 * sd
    table = conjugate_fit.summary().table
    assert list(table.columns) == ["mean", "sd", "hdi_3%", "hdi_97%"]
    assert table.loc["mu", "hdi_3%"] < mean < table.loc["mu", "hdi_97%"]
    text = str(conjugate_fit.summary())
    assert "converged" in text and "mu" in text


def test_same_seed_same_numbers(conjugate_fit):
    again = fit(conjugate, Y, guide="multivariate_normal", seed=0, progress=False)
    np.testing.assert_array_equal(again.losses, conjugate_fit.losses)
    other = fit(conjugate, Y, guide="multivariate_normal", seed=1, progress=False, max_steps=300, min_steps=100)
    assert not np.array_equal(other.losses[0, :300], conjugate_fit.losses[0, :300])


def test_max_steps_is_reported():
    r = fit(conjugate, Y, guide="normal", progress=False, min_steps=200, max_steps=200, lr=1e-4)
    assert r.stop_reason == StopReason.MAX_STEPS
    assert r.num_steps == 200
    assert any("max_steps" in n for n in r.notes())


def test_restarts_are_kept_and_the_best_is_used():
    r = fit(conjugate, Y, guide="normal", restarts=3, seed=5, progress=False, max_steps=1500)
    assert r.losses.shape[0] == 3
    assert r.restart_params["auto_loc"].shape[0] == 3
    # Fixed draws: each restart's final objective is the last entry of its (padded) trace.
    assert r.best_restart == int(np.argmin(r.losses[:, -1]))
    assert r.sample_restarts(50)["mu"].shape == (3, 50)
    idata = r.to_arviz(num_samples=50)
    assert idata.posterior.sizes["chain"] == 3 and idata.posterior.sizes["draw"] == 50


def walled(y):
    # The likelihood pulls mu towards 5, but mu > 2 is impossible: steps that sample there fail.
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    numpyro.factor("wall", jnp.where(mu > 2.0, -jnp.inf, 0.0))
    numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)


def test_nonfinite_steps_are_skipped_counted_and_named():
    r = fit(walled, jnp.array(5.0), guide="normal", draws="fresh", progress=False, max_steps=3000)
    assert r.nonfinite_steps.sum() > 0
    assert np.isnan(r.losses).sum() == r.nonfinite_steps.sum()
    assert "'wall'" in r.nonfinite_reason
    assert any("skipped" in n for n in r.notes())


def test_nonfinite_limit_stops_the_fit():
    r = fit(walled, jnp.array(5.0), guide="normal", draws="fresh", progress=False, nonfinite_limit=0.0, max_steps=5000)
    assert r.stop_reason == StopReason.NONFINITE
    assert r.num_steps < 5000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"guide": "gaussian"}, "unknown guide 'gaussian'"),
        ({"objective": "kl"}, "unknown objective 'kl'"),
        ({"restarts": 0}, "restarts must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"num_particles": 0}, "num_particles"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(conjugate, Y, progress=False, **kwargs)


def test_posterior_has_plate_dimension_names():
    def hierarchical(y):
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        with numpyro.plate("group", y.shape[0]):
            theta = numpyro.sample("theta", dist.Normal(0.0, tau))
            numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    r = fit(hierarchical, jnp.array([0.5, -0.3, 1.2]), guide="normal", progress=False, max_steps=300, min_steps=100)
    idata = r.to_arviz(num_samples=20, verdict=False)
    assert idata.posterior["theta"].dims == ("chain", "draw", "group")
    assert idata.observed_data["y"].dims == ("group",)
    assert idata.posterior.attrs["guide"] == "normal"


def test_method_nuts_runs_the_reference_sampler():
    from inference import NutsResult

    ref = fit(conjugate, Y, method="nuts", num_warmup=200, num_samples=200, num_chains=2, progress=False)
    assert isinstance(ref, NutsResult) and ref.method == "nuts"
    mean, sd = exact_posterior(Y)
    # 400 draws with ESS of a few hundred: the mean is within 4 se = 4 sd / sqrt(ESS) of the exact one.
    assert abs(ref.samples["mu"].mean() - mean) < 4 * sd / np.sqrt(150)
    with pytest.raises(ValueError, match="method"):
        fit(conjugate, Y, method="laplace")


def noisy_point(y, noise=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, noise), obs=y)


def test_schedules_pass_a_keyword_that_changes_with_the_step():
    from inference.engine.schedules import exponential_anneal, linear_anneal

    anneal = exponential_anneal(1.0, 0.1, 400)
    assert float(anneal(0)) == pytest.approx(1.0) and float(anneal(400)) == pytest.approx(0.1)
    assert float(anneal(10_000)) == pytest.approx(0.1) and float(anneal(200)) == pytest.approx(0.1**0.5)
    assert float(linear_anneal(0.0, 1.0, 100)(50)) == pytest.approx(0.5)
    r = fit(
        noisy_point, jnp.array(0.5), schedules={"noise": anneal}, min_steps=1500, seed=0, progress=False
    )
    assert float(r.model_kwargs["noise"]) == pytest.approx(0.1)
    # The posterior of the final model: precision 1 + 1/0.1^2, so mean 0.5 * 100/101 and sd 1/sqrt(101).
    draws = r.sample(4000)["mu"]
    assert draws.std() == pytest.approx(101**-0.5, rel=0.1)
    assert draws.mean() == pytest.approx(0.5 * 100 / 101, abs=0.02)
    with pytest.raises(ValueError, match="once"):
        fit(noisy_point, jnp.array(0.5), noise=1.0, schedules={"noise": anneal}, progress=False)

"""The flat engine: the target, the guide families, fixed draws, and what one fit compiles."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import potential_energy

from inference import FitSettings, fit, make_family, make_target
from inference.engine.families import FAMILIES
from inference.engine.vi import find_map, fit_family, fit_family_fixed, fixed_noise
from inference.engine.stopping import PlateauRule

Y = jnp.array([0.3, -0.2, 1.1, 0.7, 0.4, 0.9])


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.5))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
    numpyro.deterministic("twice_mu", 2 * mu)


@pytest.fixture(scope="module")
def target():
    return make_target(model, (Y,), batch_size=8)


def test_target_layout_and_log_density(target):
    assert target.layout.names == ("mu", "sigma") and target.dim == 2 and target.batch_size == 8
    u = np.random.default_rng(0).normal(size=(11, 2))  # not a multiple of the batch: padded
    logp, grad = target.log_density(u, grad=True)
    assert logp.shape == (11,) and grad.shape == (11, 2)
    for row, value in zip(u, logp):
        expected = -potential_energy(model, (Y,), {}, {"mu": row[0], "sigma": row[1]})
        np.testing.assert_allclose(value, expected, rtol=1e-12)
    # The gradient against central differences of the log density itself.
    h = 1e-6
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        fd = (target.log_density(u + e) - target.log_density(u - e)) / (2 * h)
        np.testing.assert_allclose(grad[:, j], fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(target.log_density(u), logp, rtol=1e-14)  # the value-only mode agrees


def test_target_starts_prior_draws_and_predictive(target):
    starts = target.starts(5, spread=0.5, seed=1)
    assert starts.shape == (5, 2)
    # Start 0 is the prior median: mu = 0 and log sigma = 0 (the median of 15 prior draws).
    assert abs(starts[0, 0]) < 1.0 and abs(starts[0, 1]) < 0.5
    prior = target.prior_draws(4000, seed=2)
    # Prior sds of (mu, log sigma) are (2, 0.5): within 5 standard errors (sd * sqrt(2 / n)).
    np.testing.assert_allclose(prior.std(0), [2.0, 0.5], rtol=5 * np.sqrt(2 / 4000))
    pred = target.predict(prior[:10], seed=0)
    assert pred.latent["mu"].shape == (10,) and pred.latent["twice_mu"].shape == (10,)
    np.testing.assert_allclose(pred.latent["twice_mu"], 2 * prior[:10, 0])
    np.testing.assert_allclose(pred.latent["sigma"], np.exp(prior[:10, 1]))
    assert pred.log_likelihood["y"].shape == (10, 6) and pred.predictive["y"].shape == (10, 6)
    # Log joint plus the Jacobian term is the flat log density.
    np.testing.assert_allclose(pred.log_joint + pred.log_det_jacobian, target.log_density(prior[:10]), rtol=1e-10)


def test_models_the_flat_engine_cannot_hold_are_refused_in_words():
    def discrete(y):
        numpyro.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        make_target(discrete, (None,), batch_size=4)

    def minibatch(y):
        with numpyro.plate("n", 100, subsample_size=10):
            numpyro.sample("z", dist.Normal(0, 1))

    with pytest.raises(ValueError, match="plate 'n' subsamples its data"):
        make_target(minibatch, (None,), batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be an integer of at least 2"):
        make_target(model, (Y,), batch_size=1)


@pytest.mark.parametrize("name", FAMILIES)
def test_families_start_at_the_gaussian_they_are_given(name):
    d = 3
    loc = np.array([0.5, -1.0, 2.0])
    tril = np.array([[0.5, 0.0, 0.0], [0.2, 0.3, 0.0], [-0.1, 0.05, 0.2]])
    family = make_family(name, d)
    params = jax.jit(family.init)(loc, tril, jax.random.PRNGKey(0))
    eps = jnp.asarray(np.random.default_rng(0).standard_normal((4000, family.noise_dim)))
    u, log_q = jax.jit(family.sample)(params, eps)
    cov = tril @ tril.T
    if name == "normal":
        cov = np.diag(np.diag(cov))
    exact = dist.MultivariateNormal(loc, covariance_matrix=cov).log_prob(u)
    if name in ("multivariate_t", "iaf_t"):
        exact = dist.MultivariateStudentT(5.0, loc, scale_tril=tril).log_prob(u)
        cov = cov * 5 / 3  # the t's covariance, for the mean's tolerance below
    if name == "low_rank":
        # A rank-2 factor plus a diagonal approximates the covariance: check its own density instead.
        mean, c = family.moments(params)
        exact = dist.MultivariateNormal(mean, covariance_matrix=c).log_prob(u)
    np.testing.assert_allclose(log_q, exact, rtol=1e-8, atol=1e-8)
    if name != "low_rank":
        np.testing.assert_allclose(u.mean(0), loc, atol=5 * np.sqrt(np.diag(cov).max() / 4000))


def test_fixed_noise_has_exact_moments():
    eps = fixed_noise(32, 3, seed=4)
    np.testing.assert_allclose(eps.mean(0), 0.0, atol=1e-13)
    np.testing.assert_allclose(eps.T @ eps / 32, np.eye(3), atol=1e-12)


def test_fixed_and_fresh_draws_recover_a_gaussian_posterior():
    def conjugate(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.sample("y", dist.Normal(mu, 1.0).expand([y.shape[0]]).to_event(1), obs=y)

    y = jnp.array([1.0, 2.0, 0.5, 1.5])
    post_var = 1 / (1 / 100 + 4)
    mean, sd = post_var * float(y.sum()), post_var**0.5
    target = make_target(conjugate, (y,), batch_size=16)
    family = make_family("multivariate_normal", 1)
    start = jax.tree.map(lambda v: np.asarray(v)[None], family.init(np.zeros(1), np.eye(1), jax.random.PRNGKey(0)))
    fixed = fit_family_fixed(target, family, start, seed=0)
    m, c = family.moments(jax.tree.map(lambda v: v[0], fixed.params))
    np.testing.assert_allclose([float(m[0]), float(np.sqrt(c[0, 0]))], [mean, sd], rtol=1e-6)
    import optax

    fresh = fit_family(target, family, start, optimizer=optax.adam(0.02), rule=PlateauRule(min_steps=500, max_steps=4000))
    m, c = family.moments(jax.tree.map(lambda v: v[0], fresh.params))
    assert abs(float(m[0]) - mean) < 0.05 * sd and abs(float(np.sqrt(c[0, 0])) / sd - 1) < 0.05
    assert fresh.grad_evals == fresh.num_steps * 16


def test_batched_lbfgs_finds_every_optimum_of_a_two_mode_density():
    def two_modes():
        x = numpyro.sample("x", dist.Normal(0.0, 5.0))
        numpyro.factor("bump", jnp.logaddexp(-0.5 * (x - 3.0) ** 2 / 0.1, -0.5 * (x + 3.0) ** 2 / 0.1))

    target = make_target(two_modes, batch_size=16)
    found = find_map(target, np.array([[2.0], [-2.0], [4.0], [-4.5]]))
    # The prior N(0, 25) pulls each mode in: x = 3 * 10 / (10 + 1/25).
    mode = 3 * 10 / (10 + 1 / 25)
    np.testing.assert_allclose(np.sort(found.locs[:, 0]), [-mode, -mode, mode, mode], atol=1e-5)
    assert np.all(np.isfinite(found.scale_trils))
    assert found.grad_evals > 0


def test_one_fit_compiles_the_model_once():
    """guide='auto' compiles one program that contains the model; the families' programs do not."""
    names = []

    class Collect(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "Finished XLA compilation of" in message:
                names.append(message.split("Finished XLA compilation of ")[1].split(" ")[0])

    handler = Collect()
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:

        def fresh_model(y):  # a new function: nothing of it is compiled yet in this process
            mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
            sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.5))
            numpyro.sample("y", dist.Normal(mu, sigma).expand([y.shape[0]]).to_event(1), obs=y)

        result = fit(fresh_model, Y, progress=False, guide_options={"khat_draws": 2000})
        result.verdict()
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger("jax").removeHandler(handler)
    assert names.count("jit(target_program)") == 1
    assert result.settings["engine"] == "flat" and result.settings["grad_evals"] > 0


def test_settings_are_one_frozen_object_with_named_errors():
    settings = FitSettings(guide="normal", restarts=2)
    with pytest.raises(AttributeError):
        settings.restarts = 3  # frozen
    assert settings.with_(restarts=4).restarts == 4 and settings.restarts == 2
    with pytest.raises(TypeError, match="unknown setting 'max_step'; did you mean 'max_steps'"):
        FitSettings.from_keywords(max_step=300)
    with pytest.raises(ValueError, match="draws must be 'auto', 'fixed' or 'fresh'"):
        FitSettings(draws="some")
    assert FitSettings(min_steps=10, max_steps=50).rule.max_steps == 50
    result = fit(model, Y, settings=FitSettings(guide="multivariate_normal", progress=False))
    assert result.settings["guide"] == "multivariate_normal" and result.settings["draws"] == "fixed"


def test_fixed_draws_span_a_space_larger_than_half_the_batch():
    """A full-rank guide in 20 dimensions with 16 particles: more draws than particles, none NaN."""

    def wide(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([20]).to_event(1))
        numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    y = jnp.linspace(-1.0, 1.0, 20)
    eps = fixed_noise(48, 20, seed=0)
    assert np.all(np.isfinite(eps))
    r = fit(wide, y, guide="multivariate_normal", num_particles=16, progress=False)
    # Conjugate: posterior mean y / 2 and variance 1 / 2 in every coordinate.
    np.testing.assert_allclose(r.params["auto_loc"], np.asarray(y) / 2, atol=1e-6)
    tril = r.params["auto_scale_tril"]
    np.testing.assert_allclose(tril @ tril.T, np.eye(20) / 2, atol=1e-6)

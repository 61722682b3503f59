"""Gradient estimators: closed forms, unbiasedness, and the report on NumPyro guides.

Monte Carlo checks use fixed seeds and a tolerance of 5 standard errors estimated from the
draws themselves: the mean of ``n`` per-draw gradients has standard error ``sd / sqrt(n)``; a
sample variance has standard error ``sd((x - mean)**2) / sqrt(n)``.

Closed forms, with z = mu + sigma * eps, eps ~ Normal(0, 1) and the scores
d/dmu log q = eps / sigma, d/dsigma log q = (eps**2 - 1) / sigma (moments of eps: 1, 3, 15, 105):

f = a z        pathwise d/dmu = a (variance 0); d/dsigma = a eps (variance a**2)
               score d/dmu: a z eps / sigma, variance a**2 (mu**2 + 2 sigma**2) / sigma**2
               score d/dsigma: a z (eps**2 - 1) / sigma, variance a**2 (2 mu**2 + 10 sigma**2) / sigma**2
               baseline d/dmu (leave-one-out mean of n): 2 a**2 + a**2 / (n - 1)
f = z**2       pathwise d/dmu = 2 z, variance 4 sigma**2
               score d/dmu: z**2 eps / sigma, variance mu**4 / sigma**2 + 14 mu**2 + 15 sigma**2
               baseline d/dmu: 8 mu**2 + 10 sigma**2 + (4 mu**2 + 2 sigma**2) / (n - 1)
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from inference.toolkit.gradients import (
    ESTIMATORS,
    GradientReport,
    GuideSite,
    estimator_samples,
    gradient_variance,
)

NUM_SE = 5.0
N = 100_000


def normal_samples(f, mu, sigma, n=N, seed=0):
    """Per-draw gradient samples of E[f(z)], z ~ Normal(mu, sigma), w.r.t. mu and sigma."""
    return estimator_samples(
        f,
        lambda p, key: dist.Normal(p["mu"], p["sigma"]).sample(key),
        lambda p, z: dist.Normal(p["mu"], p["sigma"]).log_prob(z),
        {"mu": jnp.asarray(mu), "sigma": jnp.asarray(sigma)},
        jax.random.PRNGKey(seed),
        n,
    )


def assert_mean(x, expected):
    x = np.asarray(x)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert abs(x.mean() - expected) < NUM_SE * se, (x.mean(), expected, se)


def assert_var(x, expected):
    x = np.asarray(x)
    sq = (x - x.mean()) ** 2
    se = sq.std(ddof=1) / np.sqrt(x.size)
    assert abs(x.var(ddof=1) - expected) < NUM_SE * se, (x.var(ddof=1), expected, se)


# -- estimator_samples: closed forms ----------------------------------------------------------
@pytest.mark.parametrize("a, mu, sigma", [(3.0, 1.0, 1.0), (-2.0, 0.5, 0.3)])
def test_linear_f_pathwise_exact_score_closed_form(a, mu, sigma):
    s = normal_samples(lambda z: a * z, mu, sigma)
    path_mu = np.asarray(s.pathwise["mu"])
    assert path_mu.shape == (N,)
    np.testing.assert_array_equal(path_mu, a)  # exactly a on every draw
    assert path_mu.var() < 1e-20
    assert_var(s.pathwise["sigma"], a**2)
    assert_mean(s.score["mu"], a)
    assert_var(s.score["mu"], a**2 * (mu**2 + 2 * sigma**2) / sigma**2)
    assert_mean(s.score["sigma"], 0.0)
    assert_var(s.score["sigma"], a**2 * (2 * mu**2 + 10 * sigma**2) / sigma**2)


def test_quadratic_f_variances_move_apart_as_sigma_shrinks():
    mu, sigmas = 1.0, (1.0, 0.1, 0.01)
    path_var, score_var = [], []
    for sigma in sigmas:
        s = normal_samples(lambda z: z**2, mu, sigma)
        assert_mean(s.pathwise["mu"], 2 * mu)
        assert_var(s.pathwise["mu"], 4 * sigma**2)
        assert_mean(s.score["mu"], 2 * mu)
        assert_var(s.score["mu"], mu**4 / sigma**2 + 14 * mu**2 + 15 * sigma**2)
        path_var.append(float(np.var(s.pathwise["mu"])))
        score_var.append(float(np.var(s.score["mu"])))
    assert path_var[0] > path_var[1] > path_var[2]
    assert score_var[0] < score_var[1] < score_var[2]
    assert score_var[2] / path_var[2] > 1e7  # closed form: (1/sigma**2 + 14) / (4 sigma**2) = 2.5e7


def test_quadratic_f_sigma_gradient_closed_form():
    mu, sigma = 1.0, 0.5
    s = normal_samples(lambda z: z**2, mu, sigma)
    assert_mean(s.pathwise["sigma"], 2 * sigma)
    assert_var(s.pathwise["sigma"], 4 * mu**2 + 8 * sigma**2)
    assert_mean(s.score["sigma"], 2 * sigma)
    assert_var(s.score["sigma"], 2 * mu**4 / sigma**2 + 60 * mu**2 + 74 * sigma**2)


@pytest.mark.parametrize(
    "f, name, mu, sigma, baseline_var",
    [
        (lambda z: 3.0 * z, "linear", 1.0, 1.0, 2 * 9.0 + 9.0 / (N - 1)),
        (lambda z: z**2, "quadratic", 1.0, 0.5, 8 + 10 * 0.25 + (4 + 2 * 0.25) / (N - 1)),
    ],
)
def test_baseline_reduces_variance_and_stays_unbiased(f, name, mu, sigma, baseline_var):
    s = normal_samples(f, mu, sigma)
    grad_mu = 3.0 if name == "linear" else 2 * mu
    assert_mean(s.baseline["mu"], grad_mu)
    assert_var(s.baseline["mu"], baseline_var)
    assert np.var(s.baseline["mu"]) < 0.8 * np.var(s.score["mu"])
    assert_mean(s.baseline["sigma"], 0.0 if name == "linear" else 2 * sigma)


def test_estimator_samples_any_pytree_and_shapes():
    s = estimator_samples(
        lambda z: jnp.sum(z**2),
        lambda p, key: p[0] + p[1] * jax.random.normal(key, (3,)),
        lambda p, z: jnp.sum(dist.Normal(p[0], p[1]).log_prob(z)),
        (jnp.zeros(3), jnp.ones(3)),
        jax.random.PRNGKey(1),
        50,
    )
    assert s.values.shape == (50,)
    for est in ESTIMATORS:
        leaves = jax.tree.leaves(getattr(s, est))
        assert [leaf.shape for leaf in leaves] == [(50, 3), (50, 3)]
    report = GradientReport.from_samples(s)
    assert list(report.table.index) == ["[0][0]", "[0][1]", "[0][2]", "[1][0]", "[1][1]", "[1][2]"]


# -- gradient_variance on NumPyro models ------------------------------------------------------
Y = jnp.array([0.5, 1.2, 0.8, 1.9, 1.1])
POST_VAR = 1.0 / (1.0 + Y.size)  # mu ~ Normal(0, 1), y_i ~ Normal(mu, 1)
POST_MEAN = float(Y.sum()) * POST_VAR


def conjugate_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(scope="module")
def conjugate_report():
    guide = AutoNormal(conjugate_model)
    params = {"mu_auto_loc": jnp.array(POST_MEAN + 0.5), "mu_auto_scale": jnp.array(0.3)}
    return gradient_variance(conjugate_model, guide, params, Y, num_samples=4000, seed=0), guide, params


def test_gradient_variance_conjugate_closed_form(conjugate_report):
    # Pathwise per draw, z = loc + s eps: d/dloc = -(z - m) / v and d/ds = -(z - m) eps / v + 1 / s.
    report, _, _ = conjugate_report
    t, n = report.table, report.num_samples
    loc, scale, v = 0.5, 0.3, POST_VAR
    assert list(t.columns) == [
        "pathwise_mean",
        "pathwise_var",
        "score_mean",
        "score_var",
        "baseline_mean",
        "baseline_var",
        "score_ratio",
        "baseline_ratio",
    ]
    assert list(t.index) == ["mu_auto_loc", "mu_auto_scale"]
    row = t.loc["mu_auto_loc"]
    # Var of a Gaussian sample variance: 2 var**2 / n.
    assert abs(row.pathwise_var - scale**2 / v**2) < NUM_SE * np.sqrt(2 / n) * scale**2 / v**2
    assert abs(row.pathwise_mean - (-loc / v)) < NUM_SE * np.sqrt(row.pathwise_var / n)
    assert abs(row.score_mean - (-loc / v)) < NUM_SE * np.sqrt(row.score_var / n)
    assert abs(row.baseline_mean - (-loc / v)) < NUM_SE * np.sqrt(row.baseline_var / n)
    row = t.loc["mu_auto_scale"]
    expected = -scale / v + 1 / scale
    assert abs(row.pathwise_mean - expected) < NUM_SE * np.sqrt(row.pathwise_var / n)
    assert abs(row.score_mean - expected) < NUM_SE * np.sqrt(row.score_var / n)
    assert (t.score_ratio > 1).all() and (t.baseline_ratio > 1).all()
    assert report.sites == (GuideSite("mu", "Normal", True, "pathwise"),)
    assert report.notes == ()


def test_report_prints_table_sites_and_summary(conjugate_report):
    report, _, _ = conjugate_report
    text = str(report)
    assert "mu_auto_loc" in text and "score_ratio" in text
    assert "mu: Normal, has_rsample=True, estimator: pathwise" in text
    assert text.splitlines()[-1] == report.summary
    assert "median variance ratio over 2 parameters from 4000 draws" in report.summary
    assert report.median_score_ratio == pytest.approx(float(np.median(report.table.score_ratio)))


@pytest.mark.parametrize(
    "fn, rsample",
    [
        (dist.Normal(0.0, 1.0), True),
        (dist.LogNormal(0.0, 1.0), True),
        (dist.Gamma(2.0, 1.0), True),
        (dist.Beta(2.0, 2.0), True),
        (dist.Dirichlet(jnp.ones(3)), True),
        (dist.Poisson(3.0), False),
        (dist.Bernoulli(probs=0.3), False),
        (dist.Categorical(probs=jnp.ones(3) / 3), False),
    ],
)
def test_has_rsample_of_numpyro_distributions(fn, rsample):
    assert fn.has_rsample is rsample


def poisson_model():
    n = numpyro.sample("n", dist.Poisson(3.0))
    numpyro.sample("y", dist.Normal(n, 1.0), obs=2.0)


def poisson_guide():
    rate = numpyro.param("rate", 2.0, constraint=constraints.positive)
    numpyro.sample("n", dist.Poisson(rate))


@jax.jit
def exact_poisson_elbo(rate):
    """ELBO of poisson_model / poisson_guide by summing over n = 0..79 (the rest is < 1e-60)."""
    n = jnp.arange(80.0)
    log_q = dist.Poisson(rate).log_prob(n)
    log_p = dist.Poisson(3.0).log_prob(n) + dist.Normal(n, 1.0).log_prob(2.0)
    return jnp.sum(jnp.exp(log_q) * (log_p - log_q))


@pytest.fixture(scope="module")
def poisson_report():
    return gradient_variance(poisson_model, poisson_guide, {"rate": jnp.array(1.5)}, num_samples=20_000, seed=0)


def test_non_reparameterized_site_uses_score_function(poisson_report):
    report = poisson_report
    assert report.sites == (GuideSite("n", "Poisson", False, "score function"),)
    assert any("TraceGraph_ELBO" in note and "'n'" in note for note in report.notes)
    exact = float(jax.jit(jax.grad(exact_poisson_elbo))(1.5))
    row = report.table.loc["rate"]
    n = report.num_samples
    for est in ESTIMATORS:
        assert abs(row[f"{est}_mean"] - exact) < NUM_SE * np.sqrt(row[f"{est}_var"] / n), est
    assert row.baseline_var < row.score_var


def test_trace_elbo_is_biased_at_a_non_reparameterized_site():
    # Why the report falls back to TraceGraph_ELBO: Trace_ELBO adds no score-function term.
    exact = float(jax.jit(jax.grad(exact_poisson_elbo))(1.5))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)

    def grad(key):
        return jax.grad(lambda p: -Trace_ELBO().loss(key, p, poisson_model, poisson_guide))({"rate": jnp.array(1.5)})

    g = np.asarray(jax.jit(jax.vmap(grad))(keys)["rate"])
    se = g.std(ddof=1) / np.sqrt(g.size)
    assert abs(g.mean()) < NUM_SE * se  # mean zero: E[-d log q / d rate] = 0
    assert abs(g.mean() - exact) > 10 * se  # exact is log 2 = 0.69


def test_gradient_variance_on_fit_result_problem_a(fit_a_full_rank):
    # Measured (seeds 0-4, 200 draws): score_ratio 1500-2850 everywhere, baseline_ratio 0.02-0.67;
    # at this optimum f = log p - log q is nearly constant, so the baseline all but cancels it.
    report = gradient_variance(fit_a_full_rank, num_samples=200)
    t = report.table
    assert list(t.index) == ["auto_loc[0]", "auto_loc[1]", "auto_scale_tril[0,0]", "auto_scale_tril[1,0]",
                             "auto_scale_tril[1,1]"]  # fmt: skip
    assert np.isfinite(t.to_numpy()).all()
    assert (t.loc[["auto_loc[0]", "auto_loc[1]"], "score_ratio"] > 500).all()
    assert (t.loc[["auto_loc[0]", "auto_loc[1]"], "baseline_ratio"] < 1).all()
    assert report.sites[0] == GuideSite("_auto_latent", "MultivariateNormal", True, "pathwise")
    assert {s.name for s in report.sites} == {"_auto_latent", "k", "sigma"}
    assert all(s.estimator == "pathwise" for s in report.sites)
    assert report.notes == ()


def test_baseline_helps_little_far_from_the_optimum(fit_a_full_rank):
    # The fitted guide moved back to a start like fit's (prior medians, scale 0.1): f = log p - log q
    # now varies from draw to draw (variance ~48 against ~0.07 at the optimum), which a constant
    # baseline cannot remove. Measured (seeds 0-2): baseline_ratio 12-27, score_ratio 60-180 for the locs.
    start = {"auto_loc": np.array([np.log(0.5), np.log(0.1 * 0.6745)]), "auto_scale_tril": 0.1 * np.eye(2)}
    guide, _ = fit_a_full_rank.posterior.numpyro_guide(0)  # the NumPyro twin of the flat full-rank guide
    report = gradient_variance(fit_a_full_rank.model, guide, start, num_samples=200)
    locs = report.table.loc[["auto_loc[0]", "auto_loc[1]"]]
    assert (locs.score_ratio > 10).all()
    assert (locs.baseline_ratio > 3).all()
    assert report.f_var > 10


# -- errors -----------------------------------------------------------------------------------
def test_errors_name_the_argument_and_the_fix(conjugate_report):
    _, guide, params = conjugate_report
    with pytest.raises(ValueError, match="num_samples must be an integer of at least 2"):
        gradient_variance(conjugate_model, guide, params, Y, num_samples=1)
    with pytest.raises(ValueError, match="num_samples"):
        normal_samples(lambda z: z, 0.0, 1.0, n=1)
    with pytest.raises(ValueError, match=r"params lacks the guide parameter\(s\) 'mu_auto_scale'"):
        gradient_variance(conjugate_model, guide, {"mu_auto_loc": params["mu_auto_loc"]}, Y, num_samples=10)
    with pytest.raises(ValueError, match=r"'auto_loc' that are not parameters of the guide"):
        gradient_variance(conjugate_model, guide, {**params, "auto_loc": jnp.zeros(1)}, Y, num_samples=10)
    with pytest.raises(ValueError, match=r"params\['mu_auto_loc'\] has shape \(3,\) but the guide's parameter has "):
        gradient_variance(conjugate_model, guide, {**params, "mu_auto_loc": jnp.zeros(3)}, Y, num_samples=10)
    with pytest.raises(ValueError, match="params must be a dict"):
        gradient_variance(conjugate_model, guide, [1.0, 2.0], Y, num_samples=10)
    with pytest.raises(ValueError, match="needs a guide and its params"):
        gradient_variance(conjugate_model, guide)


def test_fit_result_with_extra_arguments_is_an_error(fit_a_full_rank):
    with pytest.raises(ValueError, match="got a FitResult and also"):
        gradient_variance(fit_a_full_rank, fit_a_full_rank.guide, num_samples=10)

"""Pathwise gradients through NumPyro's reparameterized samplers match closed forms.

For each family, ``theta -> h(dist.X(theta).sample(key, (n,)))`` is differentiated draw by draw
(forward mode, ``jax.jacfwd``, with respect to every parameter); the mean of the ``n`` per-draw
derivatives estimates d/dtheta E[h(z)] and must match the exact derivative of the closed-form
expectation within 5 standard errors (computed from the per-draw derivatives). A second set of tests checks
*how* each family is reparameterized: the draw is the stated map of parameter-free noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax.scipy.special import polygamma

NUM_SE = 5.0
N = 40_000
N_GAMMA = 20_000  # families drawn through jax.random.gamma: its implicit gradient runs draw by draw on CPU


def _jacobian(make, h, n, seed=0):
    """``theta -> (n, k, p)`` per-draw derivatives d h_j(z_s) / d theta_i (compiled once per family)."""
    key = jax.random.PRNGKey(seed)

    def values(theta):
        return jnp.reshape(h(make(theta).sample(key, (n,))), (n, -1))

    return jax.jit(jax.jacfwd(values))


def trigamma(x):
    return float(polygamma(1, x))


class Family:
    """A family with a parameter vector ``theta``, functions ``h`` of a draw and exact gradients."""

    def __init__(self, name, make, h, exact, n=N):
        self.name, self.make, self.h, self.exact, self.n = name, make, h, exact, n
        self._jac = None

    def per_draw(self, theta):
        """Per-draw derivatives at ``theta``, shape ``(n, k, p)``."""
        if self._jac is None:
            self._jac = _jacobian(self.make, self.h, self.n)
        return np.asarray(self._jac(jnp.asarray(theta, dtype=float)))


FAMILIES = {
    # theta = (mu, sigma); h = z^2: d/dmu E = 2 mu, d/dsigma E = 2 sigma.
    "Normal": Family(
        "Normal", lambda t: dist.Normal(t[0], t[1]), lambda z: z**2, lambda t: [[2 * t[0], 2 * t[1]]]
    ),
    # theta = (mu, sigma); h = z: E = exp(mu + sigma^2 / 2).
    "LogNormal": Family(
        "LogNormal",
        lambda t: dist.LogNormal(t[0], t[1]),
        lambda z: z,
        lambda t: [[np.exp(t[0] + t[1] ** 2 / 2), t[1] * np.exp(t[0] + t[1] ** 2 / 2)]],
    ),
    # theta = (rate,); h = z: E = 1 / rate.
    "Exponential": Family("Exponential", lambda t: dist.Exponential(t[0]), lambda z: z, lambda t: [[-1 / t[0] ** 2]]),
    # theta = (alpha, rate); h = (z, log z): E z = alpha / rate, E log z = digamma(alpha) - log(rate).
    "Gamma": Family(
        "Gamma",
        lambda t: dist.Gamma(t[0], t[1]),
        lambda z: jnp.stack([z, jnp.log(z)], -1),
        lambda t: [[1 / t[1], -t[0] / t[1] ** 2], [trigamma(t[0]), -1 / t[1]]],
        n=N_GAMMA,
    ),
    # theta = (a, b); h = z: E z = a / (a + b).
    "Beta": Family(
        "Beta",
        lambda t: dist.Beta(t[0], t[1]),
        lambda z: z,
        lambda t: [[t[1] / (t[0] + t[1]) ** 2, -t[0] / (t[0] + t[1]) ** 2]],
        n=N_GAMMA,
    ),
    # theta = alpha (3 components); h = z_0: E z_0 = alpha_0 / sum(alpha).
    "Dirichlet": Family(
        "Dirichlet",
        lambda t: dist.Dirichlet(t),
        lambda z: z[..., 0],
        lambda t: [[(sum(t) - t[0]) / sum(t) ** 2, -t[0] / sum(t) ** 2, -t[0] / sum(t) ** 2]],
        n=N_GAMMA,
    ),
}

CASES = [
    ("Normal", (0.7, 1.3)),
    ("LogNormal", (0.2, 0.5)),
    ("Exponential", (2.0,)),
    ("Gamma", (3.0, 2.0)),  # shape >= 1: Marsaglia-Tsang directly
    ("Gamma", (0.5, 2.0)),  # shape < 1: boosted, Gamma(a + 1) * U^(1/a)
    ("Beta", (2.0, 3.0)),
    ("Beta", (0.5, 3.0)),
    ("Dirichlet", (1.5, 2.0, 3.0)),
]


@pytest.mark.parametrize("family, theta", CASES, ids=[f"{f}{t}" for f, t in CASES])
def test_pathwise_gradient_matches_closed_form(family, theta):
    fam = FAMILIES[family]
    assert fam.make(jnp.asarray(theta)).has_rsample
    d = fam.per_draw(theta)  # (n, k, p)
    exact = np.asarray(fam.exact(theta), dtype=float)
    assert d.shape == (fam.n,) + exact.shape and np.isfinite(d).all()
    se = d.std(0, ddof=1) / np.sqrt(fam.n)
    # Within NUM_SE Monte Carlo standard errors; an entry with no Monte Carlo noise (a gradient
    # that is exactly zero for every draw) must match to rounding.
    err = np.abs(d.mean(0) - exact)
    assert np.all(err <= NUM_SE * se + 1e-12 * (1 + np.abs(exact))), (err, NUM_SE * se)


# -- how each family is reparameterized -------------------------------------------------------
KEY = jax.random.PRNGKey(3)


def test_normal_is_location_scale():
    z = dist.Normal(0.7, 1.3).sample(KEY, (5,))
    np.testing.assert_allclose(z, 0.7 + 1.3 * jax.random.normal(KEY, (5,)), rtol=1e-12)


def test_lognormal_is_exp_of_a_normal():
    z = dist.LogNormal(0.2, 0.5).sample(KEY, (5,))
    np.testing.assert_allclose(z, jnp.exp(0.2 + 0.5 * jax.random.normal(KEY, (5,))), rtol=1e-12)


def test_exponential_is_inverse_cdf_of_a_uniform():
    z = dist.Exponential(2.0).sample(KEY, (5,))
    u = jax.random.uniform(KEY, (5,))
    np.testing.assert_allclose(z, -jnp.log1p(-u) / 2.0, rtol=1e-12)


@jax.jit
def _gamma_family_draws(key):
    z, dz = jax.jvp(lambda a: jax.random.gamma(key, a), (3.0,), (1.0,))
    eps = 1e-6
    dcdf = (jax.scipy.special.gammainc(3.0 + eps, z) - jax.scipy.special.gammainc(3.0 - eps, z)) / (2 * eps)
    return {
        "gamma": (dist.Gamma(3.0, 2.0).sample(key, (5,)), jax.random.gamma(key, 3.0, (5,)) / 2.0),
        "beta": (dist.Beta(2.0, 3.0).sample(key, (5,)), jax.random.dirichlet(key, jnp.array([2.0, 3.0]), (5,))[:, 0]),
        # Implicit reparameterization: dz/dalpha = -(dF(z; alpha)/dalpha) / p(z; alpha), F the CDF.
        "implicit": (dz, -dcdf / jnp.exp(dist.Gamma(3.0).log_prob(z))),
    }


def test_gamma_beta_dirichlet_go_through_jax_random_gamma():
    # Marsaglia-Tsang draws (jax.random.gamma), differentiated implicitly (JAX's gamma JVP rule).
    # Beta(a, b) is the first component of Dirichlet((a, b)); NumPyro's Dirichlet calls
    # jax.random.dirichlet, which normalizes jax.random.loggamma draws (a softmax).
    for name, (got, expected) in _gamma_family_draws(KEY).items():
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=name)


# -- the hazard of the exp map ----------------------------------------------------------------
def test_lognormal_pathwise_gradient_variance_explodes_with_sigma():
    # d/dmu z = z, so the per-draw variance is Var[z] = (exp(s^2) - 1) exp(2 mu + s^2):
    # 0.365 at s = 0.5, 4.67 at s = 1, 2.9e3 at s = 2, 6.6e7 at s = 3 (mu = 0).
    def var_closed(s):
        return (np.exp(s**2) - 1) * np.exp(s**2)

    lognormal = FAMILIES["LogNormal"]
    d = {s: lognormal.per_draw((0.0, s))[:, 0, 0] for s in (0.5, 1.0, 3.0)}
    sq = (d[0.5] - d[0.5].mean()) ** 2
    assert abs(d[0.5].var(ddof=1) - var_closed(0.5)) < NUM_SE * sq.std(ddof=1) / np.sqrt(d[0.5].size)
    largest = [float(np.abs(d[s]).max()) for s in (0.5, 1.0, 3.0)]
    assert largest[0] < 10 < largest[1] < 100 < 1e4 < largest[2]
    assert var_closed(3.0) / var_closed(0.5) > 1e8

"""Partial centring of non-centred hierarchies: the weights, the bijection, a fit through it.

Exact identities (a bijection and its inverse, a log-determinant against JAX's Jacobian, the
centring weight of a Gaussian hierarchy) are checked to rounding; a fit against the closed-form
posterior of a Gaussian hierarchy within four Monte Carlo standard errors (``sd / sqrt(n)`` for
a mean, ``sd / sqrt(2 n)`` for an sd, ``n`` the draws' effective sample size, at least 1000).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference import fit
from inference.engine.noncentring import NON_CENTRED, centring_weights, noncentred_sites, partial_centring
from inference.engine.target import make_target

G, N, S, TAU, MU_SD = 6, 5, 0.5, 1.0, 3.0
Y = np.random.default_rng(1).normal(0.7 + TAU * np.random.default_rng(2).normal(size=(G, 1)), S, size=(G, N))


def gaussian_hierarchy(noise_sd):
    """``theta_g = mu + TAU z_g`` (non-centred, marked), ``y_gj ~ N(theta_g, noise_sd)``: a Gaussian posterior."""

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, MU_SD))
        with numpyro.plate("g", G):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0), infer={NON_CENTRED: (mu, TAU)})
        theta = mu + TAU * z
        with numpyro.plate("g", G):
            numpyro.sample("y", dist.Normal(theta[:, None], noise_sd).to_event(1), obs=Y)

    return model


known_tau = gaussian_hierarchy(S)


def latent_tau():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    with numpyro.plate("g", 4):
        numpyro.sample("z", dist.Normal(0.0, 1.0), infer={NON_CENTRED: (mu, tau)})


def mu_posterior():
    """Mean and sd of ``mu``: each group mean ``ybar_g ~ N(mu, TAU^2 + S^2 / N)`` given ``mu``."""
    v = TAU**2 + S**2 / N
    precision = 1 / MU_SD**2 + G / v
    return Y.mean(axis=1).sum() / v / precision, precision**-0.5


def test_marked_sites_are_found():
    assert noncentred_sites(make_target(known_tau)) == ("z",)
    assert noncentred_sites(make_target(latent_tau)) == ("z",)


def test_the_centring_weight_is_the_data_share_of_each_group_precision():
    target = make_target(known_tau)
    u = np.random.default_rng(0).standard_normal(target.dim)
    precision = -target.hessian(u)  # constant: the posterior is Gaussian
    tril = np.linalg.cholesky(np.linalg.inv(precision))
    weights = centring_weights(target, u, tril)
    h = 1 + TAU**2 * N / S**2  # the Hessian diagonal of -log p in z_g
    np.testing.assert_allclose(weights["z"], np.full(G, 1 - 1 / h), rtol=1e-6)
    # Uninformative groups (weights near 0): the model's non-centred form is kept.
    vague = make_target(gaussian_hierarchy(50 * S))
    precision = -vague.hessian(u)
    assert centring_weights(vague, u, np.linalg.cholesky(np.linalg.inv(precision))) is None
    assert centring_weights(target, u, np.full_like(tril, np.nan)) is None


def test_partial_centring_is_a_bijection_with_the_log_determinant_of_its_jacobian():
    target = make_target(latent_tau)
    assert target.layout.names == ("mu", "tau", "z")
    lam = np.array([0.0, 0.3, 0.8, 1.0])
    pc = partial_centring(target, {"z": lam})
    v = jnp.asarray(np.random.default_rng(0).standard_normal((5, target.dim)))
    u, log_det = pc.push(v)
    np.testing.assert_allclose(pc.pull(u), v, rtol=1e-12, atol=1e-12)
    mu, tau = v[:, :1], jnp.exp(v[:, 1:2])  # tau is log-transformed in the flat vector
    np.testing.assert_allclose(u[:, 2:], (v[:, 2:] - lam * mu) * tau ** (-lam), rtol=1e-12)
    np.testing.assert_allclose(u[:, :2], v[:, :2], rtol=0, atol=0)
    jac = jax.vmap(jax.jacfwd(lambda w: pc.push(w[None])[0][0]))(v)
    np.testing.assert_allclose(log_det, jnp.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def centred_fit():
    return fit(known_tau, progress=False, seed=0, guide_options={"ladder": ("multivariate_normal",)})


def test_auto_fits_the_guide_through_the_centring_and_matches_the_closed_form(centred_fit):
    result = centred_fit
    start = result.attempts[0]
    assert "partially centred coordinates of z" in start.outcome, start.outcome
    lo, hi = result.settings["centring"]["z"]
    assert lo == pytest.approx(1 - 1 / (1 + TAU**2 * N / S**2), rel=1e-3) and hi == pytest.approx(lo, rel=1e-6)
    verdict = result.verdict()
    assert verdict.level == "reliable", verdict.reason
    assert result.posterior.family.through is not None
    n = 8000
    draws = result.sample(n)
    mean, sd = mu_posterior()
    ess = max(1000.0, min(n, float(result.diagnose().psis.ess)))
    assert abs(draws["mu"].mean() - mean) < 4 * sd / np.sqrt(ess)
    assert abs(draws["mu"].std() - sd) < 4 * sd / np.sqrt(2 * ess)
    assert draws["z"].shape == (n, G)  # the model's own sites


def test_a_guide_fitted_through_the_centring_has_no_numpyro_twin(centred_fit):
    with pytest.raises(ValueError, match="partially centred coordinates of z"):
        centred_fit.posterior.numpyro_guide(0)

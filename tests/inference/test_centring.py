"""Partial centring of non-centred hierarchies: the weights, the bijection, a fit through it.

Exact identities (a bijection and its inverse, a log-determinant against JAX's Jacobian, the
centring weight of a Gaussian hierarchy) are checked to rounding; a fit of a hierarchy with a
latent scale against its posterior computed on a grid (the group values integrate out in closed
form) within four Monte Carlo standard errors (``sd / sqrt(n)`` for a mean, ``sd / sqrt(2 n)``
for an sd, with ``1 / n`` the sum of the importance weights' and the resampling's ``1 / ESS``).
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


def test_marked_sites_are_found():
    assert noncentred_sites(make_target(known_tau)) == ("z",)
    assert noncentred_sites(make_target(latent_tau)) == ("z",)
    assert noncentred_sites(make_target(lambda: numpyro.sample("x", dist.Normal(0.0, 1.0)))) == ()


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


def latent_hierarchy():
    """``theta_g = mu + tau z_g`` (non-centred, marked) with ``tau`` latent; informative groups."""
    mu = numpyro.sample("mu", dist.Normal(0.0, MU_SD))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    with numpyro.plate("g", G):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0), infer={NON_CENTRED: (mu, tau)})
    theta = mu + tau * z
    with numpyro.plate("g", G):
        numpyro.sample("y", dist.Normal(theta[:, None], S).to_event(1), obs=Y)


def hierarchy_moments():
    """Posterior means and sds of ``mu`` and ``log tau`` of :func:`latent_hierarchy`, on a fine grid.

    The group values integrate out in closed form: ``ybar_g ~ N(mu, tau^2 + S^2 / N)`` given
    ``(mu, tau)``, and the spread of each group's points about its mean does not involve them.
    """
    mu = np.linspace(-4.0, 5.0, 1201)[:, None]
    log_tau = np.linspace(-7.0, 2.5, 1201)[None, :]
    tau = np.exp(log_tau)
    v = tau**2 + S**2 / N
    ybar = Y.mean(axis=1)
    lp = -0.5 * (mu / MU_SD) ** 2 - 0.5 * tau**2 + log_tau  # HalfNormal(1) prior, on log tau
    for yb in ybar:
        lp = lp - 0.5 * np.log(v) - 0.5 * (yb - mu) ** 2 / v
    w = np.exp(lp - lp.max())
    w /= w.sum()
    out = {}
    for name, x in (("mu", mu + 0 * log_tau), ("log_tau", log_tau + 0 * mu)):
        m = float((w * x).sum())
        out[name] = (m, float(np.sqrt((w * (x - m) ** 2).sum())))
    return out


@pytest.fixture(scope="module")
def centred_fit():
    return fit(latent_hierarchy, progress=False, seed=0)


def test_auto_fits_the_guide_through_the_centring_and_matches_the_posterior(centred_fit):
    result = centred_fit
    start = result.attempts[0]
    assert "partially centred coordinates of z" in start.outcome, start.outcome
    lo, hi = result.settings["centring"]["z"]
    assert 0.5 <= lo <= hi < 1.0
    verdict = result.verdict()
    assert verdict.level == "reliable", verdict.reason
    assert result.posterior.family.through is not None
    n = 8000
    draws = result.sample(n)
    assert draws["z"].shape == (n, G)  # the model's own sites
    # Resampled draws: the weights' own error (their effective sample size) and the resampling's.
    rel = np.sqrt(1 / float(result.diagnose().psis.ess) + 1 / n)
    for name, x in (("mu", draws["mu"]), ("log_tau", np.log(draws["tau"]))):
        mean, sd = hierarchy_moments()[name]
        assert abs(x.mean() - mean) < 4 * sd * rel, name
        assert abs(x.std() - sd) < 4 * sd * rel / np.sqrt(2), name


def test_a_guide_fitted_through_the_centring_has_no_numpyro_twin():
    result = fit(latent_hierarchy, progress=False, seed=0, guide_options={"ladder": ("multivariate_normal",), "exact": False})
    assert result.guide_name == "multivariate_normal" and result.posterior.family.through is not None
    with pytest.raises(ValueError, match="partially centred coordinates of z"):
        result.posterior.numpyro_guide(0)


def test_well_measured_groups_example_fits_in_centred_coordinates(load_example):
    out = load_example("well_measured_groups").main(small=True)
    assert "partially centred coordinates of k_z" in out["start"], out["start"]
    assert min(out["centring"]["k_z"]) > 0.9  # 12 readings of noise 0.02 pin every run's k down
    assert out["verdict"] == "reliable"
    truth = load_example("well_measured_groups").TRUTH
    for name in ("k_mu", "k_tau"):
        mean, sd = out[name]
        assert abs(mean - truth[name]) < 3 * sd, name
    # Each run's k within 3 posterior sds of its true value.
    k = out["k"]
    assert k.shape[1] == 10
    assert abs((k.mean(axis=0) - out["k_true"]) / k.std(axis=0)).max() < 3

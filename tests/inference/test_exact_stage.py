"""The exact stage's pieces: its stopping rule, chains started apart, the non-centring map.

Exact identities (a bijection and its inverse, a log-determinant against JAX's Jacobian, the
number of draws asked for) are checked to rounding; NUTS's draws against a closed form within
four Monte Carlo standard errors (``sd / sqrt(ESS)`` for a mean, ``sd / sqrt(2 ESS)`` for an
sd, with ESS at least the stage's bound of 1000).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from inference import fit
from inference.engine.families import make_family
from inference.engine.noncentring import centred_sites, non_centring
from inference.engine.target import make_target
from inference.engine.transport import (
    DIVERGENT_CARE,
    DIVERGENT_OK,
    ESS_OK,
    ESS_TAIL_OK,
    _draws_needed,
    transport_nuts,
)

V_SD = 2.0


def centred_funnel():
    """Neal's funnel, centred: ``x_i ~ N(0, exp(v / 2))`` with ``v ~ N(0, V_SD)`` exactly."""
    v = numpyro.sample("v", dist.Normal(0.0, V_SD))
    with numpyro.plate("i", 3):
        numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)))


def non_centred_funnel():
    v = numpyro.sample("v", dist.Normal(0.0, V_SD))
    with numpyro.plate("i", 3):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.deterministic("x", jnp.exp(v / 2) * z)


def test_draws_needed_scales_by_the_shortfall_and_stops_where_draws_cannot_help():
    d, chains, n = 3, 4, 1000
    ok = np.ones(d)
    assert _draws_needed(ok, ok * ESS_OK, ok * ESS_TAIL_OK, 0, chains, n) == 0
    # Half the bulk ESS needed: twice the draws, with 20% to spare.
    assert _draws_needed(ok, ok * ESS_OK / 2, ok * ESS_TAIL_OK, 0, chains, n) == int(np.ceil(n * (1.2 * 2 - 1)))
    # An R-hat above 1.01 asks for at least as many draws again.
    assert _draws_needed(ok * 1.02, ok * ESS_OK, ok * ESS_TAIL_OK, 0, chains, n) == n
    # Divergences above the reliable share: as many again; above the share of "use with care": stop.
    some = int(2 * DIVERGENT_OK * chains * n)
    assert _draws_needed(ok, ok * ESS_OK, ok * ESS_TAIL_OK, some, chains, n) == n
    many = int(DIVERGENT_CARE * chains * n) + 1
    assert _draws_needed(ok, ok * 10, ok * 10, many, chains, n) == 0


def test_centred_sites_are_found_and_non_centred_ones_left_alone():
    assert centred_sites(make_target(centred_funnel)) == ("x",)
    assert centred_sites(make_target(non_centred_funnel)) == ()


def test_non_centring_is_a_bijection_with_the_log_determinant_of_its_jacobian():
    target = make_target(centred_funnel)
    nc = non_centring(target, ("x",))
    v = jnp.asarray(np.random.default_rng(0).standard_normal((5, target.dim)))
    u, log_det = nc.push(v)
    np.testing.assert_allclose(nc.pull(u), v, rtol=1e-12, atol=1e-12)
    # Layout: sites sorted by name, so v is the first coordinate; x_i = exp(v / 2) z_i, v unchanged.
    assert target.layout.names == ("v", "x")
    np.testing.assert_allclose(u[:, 1:], jnp.exp(v[:, :1] / 2) * v[:, 1:], rtol=1e-12)
    np.testing.assert_allclose(u[:, 0], v[:, 0], rtol=0, atol=0)
    jac = jax.vmap(jax.jacfwd(lambda w: nc.push(w[None])[0][0]))(v)
    np.testing.assert_allclose(log_det, jnp.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-12)


def test_chains_started_at_far_points_converge_and_are_counted():
    def gaussian():
        numpyro.sample("a", dist.Normal(jnp.array([1.0, -2.0]), jnp.array([0.5, 2.0])))

    target = make_target(gaussian)
    family = make_family("multivariate_normal", 2)
    params = family.init(np.array([1.0, -2.0]), np.diag([0.5, 2.0]), jax.random.PRNGKey(0))
    starts = np.array([[4.0, 6.0], [-3.0, -9.0]])  # 6 and 4 sds out
    run = transport_nuts(target, family, params, seed=3, starts=starts)
    assert run.chains_at_starts == 2
    assert run.converged, run.summary()
    u = run.u
    assert abs(u[:, 0].mean() - 1.0) < 4 * 0.5 / np.sqrt(ESS_OK)
    assert abs(u[:, 1].std() - 2.0) < 4 * 2.0 / np.sqrt(2 * ESS_OK)
    assert run.grad_evals > run.num_chains * (run.num_warmup + run.num_samples)


def test_auto_non_centres_a_centred_funnel_in_its_exact_stage():
    # Only the full-rank Gaussian before the exact stage (the map auto's exact stage prefers anyway).
    result = fit(centred_funnel, progress=False, seed=0, guide_options={"ladder": ("multivariate_normal",)})
    assert result.exact_stage_draws, [a.guide for a in result.attempts]
    assert "non-centres x" in result.settings["draws_from"]
    assert "non-centres x" in result.draws_label
    assert result.verdict().level == "reliable", result.verdict().reason
    draws = result.sample(4000)
    v = draws["v"]
    assert abs(v.mean()) < 4 * V_SD / np.sqrt(ESS_OK)
    assert abs(v.std() - V_SD) < 4 * V_SD / np.sqrt(2 * ESS_OK)
    assert draws["x"].shape == (4000, 3)  # the model's own sites, not the non-centred ones

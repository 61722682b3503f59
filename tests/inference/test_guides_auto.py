"""Every guide and objective, the Laplace stage, and ``guide="auto"``'s choices and escalation.

The models here have closed-form likelihoods (no ODE), so each compile takes a second or two.
"""


import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

from inference import FitSettings, fit, make_target
from inference.engine.auto import check_modes, guide_ladder, heaviest_optimum, latent_dimension
from inference.engine.guides import GUIDES, canonical_name, make_guide
from inference.engine.settings import make_optimizer
from inference.engine.svi import run_svi as _run_svi
from inference.engine.vi import MapResult, find_map


def run_svi(model, *args, **options):
    """One fit through NumPyro's SVI (the engine for guide objects and traced objectives)."""
    return _run_svi(model, args, {}, FitSettings(**options))

# -- a small regression with correlated intercept and slope ---------------------------------------
X = jnp.linspace(2.0, 6.0, 12)  # far from 0: intercept and slope strongly correlated
Y = 1.0 + 0.5 * X + 0.3 * jnp.asarray(np.random.default_rng(0).standard_normal(12))


def regression(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x, sigma), obs=y)


QUICK = dict(min_steps=100, max_steps=100, chunk_size=100, progress=False, num_particles=4)
NAMED = tuple(GUIDES)
OBJECTIVE_NAMES = ("elbo", "meanfield_elbo")


@pytest.fixture(scope="module")
def fits():
    """One short fit per guide x objective, shared by the property tests (compiled once each)."""
    cache = {}

    def get(guide, objective):
        if (guide, objective) not in cache:
            # The Laplace guide needs its MAP reached before the Hessian is positive definite.
            settings = dict(QUICK, lr=0.1, max_steps=400, min_steps=400) if guide == "laplace" else QUICK
            cache[guide, objective] = run_svi(regression, X, Y, guide=guide, objective=objective, **settings)
        return cache[guide, objective]

    return get


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
@pytest.mark.parametrize("guide", NAMED)
def test_every_guide_with_every_objective(fits, guide, objective):
    """Compiles, finite loss, draws of the right shapes and supports."""
    result = fits(guide, objective)
    assert result.guide_name == guide
    assert result.losses.shape[0] == 1 and result.num_steps >= 100
    assert np.all(np.isfinite(result.losses))
    draws = result.sample(50)
    assert set(draws) == {"a", "b", "sigma"}
    assert all(v.shape == (50,) for v in draws.values())
    assert np.all(draws["sigma"] > 0)
    if guide == "delta":
        assert np.ptp(draws["a"]) == 0.0  # a point estimate
    else:
        assert np.std(draws["a"]) > 0


@pytest.mark.parametrize("guide", NAMED)
def test_every_guide_exports_to_arviz(fits, guide):
    idata = fits(guide, "elbo").to_arviz(num_samples=40, verdict=False)
    assert idata.posterior["b"].shape == (1, 40)
    assert idata.log_likelihood["y"].shape[-1] == 12
    assert "loss" in idata.optimization


def test_guide_names_and_errors():
    assert canonical_name("full-rank") == "multivariate_normal"
    assert canonical_name("Flow") == "iaf"
    assert canonical_name("MAP") == "delta"
    with pytest.raises(ValueError, match="unknown guide 'gaussian'.*use one of"):
        canonical_name("gaussian")
    with pytest.raises(ValueError, match="guide 'multivariate_normal' has no option 'rank'; it takes none"):
        make_guide("multivariate_normal", regression, rank=2)
    with pytest.raises(ValueError, match="rank of the low_rank guide must be a positive integer"):
        make_guide("low_rank", regression, rank=0)
    with pytest.raises(ValueError, match="guide='auto' has no option 'rungs'"):
        fit(regression, X, Y, guide="auto", guide_options={"rungs": 2}, progress=False)


def test_optimizer_schedules_and_clipping():
    constant = run_svi(regression, X, Y, guide="normal", lr=0.01, seed=3, **QUICK)
    scheduled = run_svi(regression, X, Y, guide="normal", lr=optax.constant_schedule(0.01), seed=3, **QUICK)
    np.testing.assert_allclose(scheduled.losses, constant.losses, rtol=1e-12)
    chain = make_optimizer(0.01, clip_norm=1.0)
    params = {"w": jnp.array([3.0, 4.0])}
    updates, _ = chain.update({"w": jnp.array([30.0, 40.0])}, chain.init(params))
    clipped, _ = optax.clip_by_global_norm(1.0).update({"w": jnp.array([30.0, 40.0])}, None)
    np.testing.assert_allclose(np.linalg.norm(clipped["w"]), 1.0, rtol=1e-12)
    assert np.all(np.isfinite(updates["w"]))
    with pytest.raises(ValueError, match="lr must be a positive number or an optax schedule"):
        make_optimizer(-1.0)
    with pytest.raises(ValueError, match="clip_norm must be a positive number"):
        make_optimizer(0.01, clip_norm=0.0)


# -- Laplace: exact on a Gaussian posterior --------------------------------------------------------
def conjugate(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("tau", dist.Normal(1.0, 0.5))
    numpyro.sample("y", dist.Normal(mu + tau, 1.0).expand([y.shape[0]]).to_event(1), obs=y)
    numpyro.sample("z", dist.Normal(mu - tau, 0.5), obs=0.3)


def _exact_conjugate(y):
    """Posterior covariance and mean of (mu, tau): a Gaussian linear model, in closed form."""
    n = y.shape[0]
    A = np.array([[1.0, 1.0]] * n + [[1.0, -1.0]])
    noise = np.array([1.0] * n + [0.25])
    prior_prec = np.diag([1 / 4.0, 1 / 0.25])
    prec = prior_prec + A.T @ (A / noise[:, None])
    cov = np.linalg.inv(prec)
    mean = cov @ (A.T @ (np.concatenate([np.asarray(y), [0.3]]) / noise) + prior_prec @ np.array([0.0, 1.0]))
    return mean, cov


def test_laplace_stage_is_exact_on_a_gaussian_posterior():
    y = jnp.array([0.8, 1.6, 1.1, 1.4])
    mean, cov = _exact_conjugate(y)
    target = make_target(conjugate, (y,), batch_size=8)
    assert target.layout.names == ("mu", "tau") and target.dim == 2
    found = find_map(target, target.starts(3, spread=1.0))
    for r in range(3):  # every start reaches the one optimum
        np.testing.assert_allclose(found.locs[r], mean, atol=1e-6)
    L = found.scale_trils[found.best]
    np.testing.assert_allclose(L @ L.T, cov, rtol=1e-5)  # central differences of an exact gradient
    assert check_modes(found.locs, found.potential, found.scale_trils, found.best).level == "reliable"
    # The named guide "laplace" (the flat engine: the MAP and its Hessian) hands over the same Gaussian.
    flat = fit(conjugate, y, guide="laplace", progress=False)
    assert flat.guide_name == "laplace" and flat.num_steps == 0
    np.testing.assert_allclose(flat.params["auto_loc"], mean, atol=1e-6)
    tril = flat.params["auto_scale_tril"]
    np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-5)
    # NumPyro's Laplace guide fitted by SVI hands over the same Gaussian.
    result = run_svi(conjugate, y, guide="laplace", lr=0.05, min_steps=1000, max_steps=3000, progress=False, num_particles=1)
    assert result.guide_name == "laplace"
    tril = result.params["auto_scale_tril"]
    np.testing.assert_allclose(result.params["auto_loc"], mean, atol=1e-3)
    np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-3)


def test_layout_matches_the_autoguides():
    """The target's flat layout is the one AutoContinuous guides use (sites sorted by name)."""

    def unsorted(y=None):
        zeta = numpyro.sample("zeta", dist.Normal(3.0, 1.0))
        alpha = numpyro.sample("alpha", dist.LogNormal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(zeta, alpha), obs=y)

    y = jnp.array([2.5, 3.5, 3.0])
    target = make_target(unsorted, (y,), batch_size=4)
    assert target.layout.names == ("alpha", "zeta") and target.layout.model_order == ("zeta", "alpha")
    found = find_map(target, target.starts(2))
    start = {"auto_loc": found.locs[found.best], "auto_scale_tril": np.eye(2) * 1e-6}
    one = run_svi(unsorted, y, guide="multivariate_normal", init_params=start, lr=1e-12, min_steps=1, max_steps=1,
                  chunk_size=1, num_particles=1, progress=False)
    values = target.constrain(found.locs[found.best][None])
    median = one.guide.median(jax.tree.map(jnp.asarray, one.params))
    for name in ("alpha", "zeta"):
        np.testing.assert_allclose(median[name], values[name][0], rtol=1e-8)


def test_check_modes_weighs_separate_optima_by_laplace_mass():
    tril = np.stack([np.eye(2)] * 3)
    locs = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0]])
    even = check_modes(locs, np.array([5.0, 5.0, 5.5]), tril, 0)  # third: exp(-0.5) = 61% of the mass
    # A fit of one mode leaves the other 38% of the mass out: unreliable, unless the mixture captures both.
    assert even.level == "unreliable" and "2 of 3 MAP starts" in even.message and "61%" in even.message
    tiny = check_modes(locs, np.array([5.0, 5.0, 20.0]), tril, 0)  # exp(-15): negligible
    assert tiny.level == "reliable" and "less than 1%" in tiny.message
    # A lower optimum in a much wider basin (a flat direction) holds more mass: a ratio, not "1670415%".
    wide = np.stack([np.eye(2), np.eye(2), np.diag([100.0, 100.0])])
    heavy = check_modes(locs, np.array([5.0, 5.0, 6.0]), wide, 0)  # 1e4 * exp(-1) = 3.7e3 times
    assert heavy.level == "unreliable" and "about 3.7e+03 times the best one's" in heavy.message, heavy.message


def test_the_guides_start_at_the_optimum_with_the_most_laplace_mass():
    locs = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0]])
    wide = np.stack([np.eye(2), np.eye(2), np.diag([100.0, 100.0])])

    def found(potential, trils):
        n = len(potential)
        return MapResult(locs, np.asarray(potential), trils, 0, np.ones(n, int), np.zeros(n))

    # 1e4 * exp(-1) times the best one's mass: the wide optimum, though its density is lower.
    assert heaviest_optimum(found([5.0, 5.0, 6.0], wide)) == 2
    # exp(-15) * 1e4 = 3e-3 of it: the best one stays.
    assert heaviest_optimum(found([5.0, 5.0, 20.0], wide)) == 0
    # An end point with no Laplace approximation is never weighed, so never chosen.
    stuck = wide.copy()
    stuck[2] = np.nan
    assert heaviest_optimum(found([5.0, 5.0, 6.0], stuck)) == 0


def test_flow_guides_start_as_the_gaussian_they_are_given():
    """NumPyro's whitened IAF is the identity at initialization: z = loc + L eps, like the full-rank guide."""
    loc = np.array([1.0, 0.5, -1.0])
    tril = np.array([[0.3, 0.0, 0.0], [0.1, 0.2, 0.0], [0.0, -0.05, 0.1]])
    start = {"auto_loc": loc, "auto_scale_tril": tril}
    steps = dict(min_steps=1, max_steps=1, chunk_size=1, progress=False, lr=1e-12, num_particles=1)
    iaf = run_svi(regression, X, Y, guide="iaf", init_params=start, **steps)
    mvn = run_svi(regression, X, Y, guide="multivariate_normal", init_params=start, **steps)
    z = jnp.asarray(np.random.default_rng(2).standard_normal((20, 3)))
    as_params = lambda r: jax.tree.map(jnp.asarray, r.params)  # noqa: E731
    lp_iaf = iaf.guide.get_posterior(as_params(iaf)).log_prob(z)
    lp_mvn = mvn.guide.get_posterior(as_params(mvn)).log_prob(z)
    np.testing.assert_allclose(lp_iaf, lp_mvn, rtol=1e-8)
    np.testing.assert_allclose(iaf.params["auto_loc"], loc, atol=1e-10)


# -- auto ---------------------------------------------------------------------------------------------
def test_ladder_by_size_and_what_auto_cannot_fit():
    assert guide_ladder(3) == ("multivariate_normal", "multivariate_t", "iaf")
    assert guide_ladder(1) == ("multivariate_normal", "multivariate_t")
    assert guide_ladder(52) == ("multivariate_normal",)
    assert guide_ladder(150) == ("low_rank", "multivariate_normal")
    assert guide_ladder(1000)[0] == "normal"
    assert latent_dimension(regression, (X, Y)) == (3, None)

    def local(y):
        with numpyro.plate("n", 100, subsample_size=10):
            numpyro.sample("z", dist.Normal(0, 1))

    d, problem = latent_dimension(local, (None,))
    assert "subsampled plate 'n'" in problem

    def plated(y):  # a plate without subsampling holds ordinary latents
        with numpyro.plate("group", 3):
            numpyro.sample("theta", dist.Normal(0, 1))

    assert latent_dimension(plated, (None,)) == (3, None)


@pytest.fixture(scope="module")
def escalation():
    """auto on the correlated regression, forced to try the mean-field guide first."""
    return fit(
        regression, X, Y, guide="auto", guide_options={"ladder": ("normal", "multivariate_normal"), "khat_draws": 8000},
        progress=False, seed=0,
    )


def test_auto_escalates_past_a_guide_that_cannot_fit_correlations(escalation):
    attempts = escalation.attempts
    assert [a.guide for a in attempts] == ["laplace", "normal", "multivariate_normal"]
    assert attempts[0].outcome == "start" and attempts[0].level == "reliable"
    assert attempts[1].level in ("unreliable", "use with care")
    assert attempts[1].outcome.startswith("moved on") and "trying multivariate_normal" in attempts[1].outcome
    assert escalation.guide_name == "multivariate_normal"
    assert escalation.settings["guide"] == "auto"
    assert escalation.settings["chosen_guide"] == "multivariate_normal"
    assert [a["guide"] for a in escalation.settings["attempts"]] == ["laplace", "normal", "multivariate_normal"]
    assert attempts[2].elbo > attempts[1].elbo  # a smaller KL divergence from the posterior
    # The verdict of the chosen fit includes the MAP-stage mode check.
    assert "modes" in [c.name for c in escalation.verdict().checks]
    draws = escalation.sample(4000)
    rho = np.corrcoef(draws["a"], draws["b"])[0, 1]
    assert rho < -0.9  # the correlation the mean-field guide missed


def test_auto_summary_names_the_guide_and_the_attempts(escalation):
    text = str(escalation.summary())
    assert "guide: multivariate_normal (auto)" in text
    assert "normal: moved on" in text


# -- a multimodal likelihood: where the prior median starts in the wrong basin ----------------------
T = jnp.linspace(0.0, 4.0, 40)
W_TRUE = 2.3
SIGNAL = jnp.sin(W_TRUE * T) + 0.1 * jnp.asarray(np.random.default_rng(1).standard_normal(40))


def oscillator(t, y=None):
    w = numpyro.sample("w", dist.LogNormal(0.0, 0.6))  # prior median 1: far from 2.3
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(jnp.sin(w * t), sigma), obs=y)


def test_multistart_map_finds_the_mode_that_the_median_start_misses():
    plain = fit(oscillator, T, SIGNAL, guide="multivariate_normal", draws="fresh", progress=False, max_steps=1500)
    assert abs(float(np.median(plain.sample(500)["w"])) - W_TRUE) > 0.3  # a wrong local optimum
    result = fit(oscillator, T, SIGNAL, guide="auto", progress=False, guide_options={"map_starts": 8, "khat_draws": 4000})
    w = result.sample(2000)["w"]
    assert abs(float(np.mean(w)) - W_TRUE) < 0.02
    assert result.elbo > plain.elbo + 10
    modes = next(c for c in result.verdict().checks if c.name == "modes")
    assert "separate optima" in modes.message  # other starts ended in the wrong basins


def test_check_modes_names_symmetric_optima_and_never_prints_nan():
    tril = np.stack([np.eye(2)] * 3)
    locs = np.array([[0.0, 0.0], [10.0, 0.0], [0.1, 0.0]])
    swap = check_modes(locs, np.array([5.0, 5.0, 5.0]), tril, 0)  # a mirror optimum of equal density
    assert swap.level == "unreliable" and "same density" in swap.message and "50%, 50%" in swap.message
    saddle = tril.copy()
    saddle[1] = np.nan  # the far start stopped where the Hessian is not negative definite
    stuck = check_modes(locs, np.array([5.0, 7.0, 5.0]), saddle, 0)
    assert "nan" not in stuck.message.lower() and "not an optimum" in stuck.message
    assert stuck.level == "reliable" and "2 of 3 MAP starts reached the same optimum" in stuck.message

"""The Concrete / Gumbel-softmax distributions of ``vi_models.relaxed``, and the mixture example.

Exact identities are checked at tight tolerance; Monte Carlo checks at about 5 standard errors
(stated at each), with fixed seeds so that a failure reproduces.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import integrate, stats

from vi_models import RelaxedOneHotCategorical, RelaxedOneHotCategoricalStraightThrough

PROBS3 = jnp.array([0.2, 0.5, 0.3])


# -- the limit tau -> 0 ------------------------------------------------------------------------------
def test_low_temperature_draws_are_nearly_one_hot_with_categorical_frequencies():
    n = 4000
    d = RelaxedOneHotCategorical(0.05, probs=PROBS3)
    y = np.asarray(d.sample(jax.random.PRNGKey(0), (n,)))
    # At tau = 0.05, 86% of draws have a coordinate above 0.99 (1e6 draws); SE here 0.006.
    assert np.mean(y.max(-1) > 0.99) > 0.8
    # The arg max is Categorical(probs) at every temperature (Gumbel-max trick): chi-square, 2 df.
    counts = np.bincount(y.argmax(-1), minlength=3)
    statistic, p_value = stats.chisquare(counts, n * np.asarray(PROBS3))
    assert p_value > 0.001, (counts, statistic)


# -- the density ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.5])
def test_two_categories_equal_relaxed_bernoulli(tau):
    @jax.jit
    def both(tau):
        logits = jnp.array([0.7, -0.4])
        y = jnp.linspace(0.001, 0.999, 41)
        ours = RelaxedOneHotCategorical(tau, logits=logits).log_prob(jnp.stack([y, 1 - y], -1))
        return ours, dist.RelaxedBernoulliLogits(tau, logits[0] - logits[1]).log_prob(y)

    ours, numpyro_lp = both(tau)
    np.testing.assert_allclose(ours, numpyro_lp, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_two_category_density_integrates_to_one(tau):
    # Over y = sigmoid(x), x real: dy = y (1 - y) dx keeps the integrand smooth. In log space (the
    # intermediates path of log_prob), so that y does not round to 0 or 1 in the far tails.
    d = RelaxedOneHotCategorical(tau, logits=jnp.array([0.3, -1.2]))

    @jax.jit
    def log_integrand(x):
        log_y = jnp.stack([jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)])
        return d.log_prob(jnp.exp(log_y), [log_y]) + log_y.sum()

    # In x the density has logistic tails of scale 1 / tau: beyond 60 / tau they hold < e^-50.
    total, _ = integrate.quad(lambda x: math.exp(float(log_integrand(x))), -60 / tau, 60 / tau, epsabs=1e-12, limit=400)
    assert abs(total - 1.0) < 1e-6


@partial(jax.jit, static_argnames="num_draws")
def _grid_and_draws(tau, key, num_draws=20000):
    """Density on a grid over R^2, mapped onto the 3-simplex by y = softmax(x1, x2, 0), and draws.

    ``x = u / tau`` with ``u`` on [-40, 40]^2 in steps of 0.2; the density in ``x`` is the Concrete
    density times the Jacobian ``|dy/dx| = y1 y2 y3``, and its tails decay like ``exp(-|u|)``.
    """
    d = RelaxedOneHotCategorical(tau, probs=PROBS3)
    step = 0.2
    u = jnp.arange(-40.0, 40.0 + step / 2, step)
    u1, u2 = jnp.meshgrid(u, u, indexing="ij")
    log_y = jax.nn.log_softmax(jnp.stack([u1, u2, jnp.zeros_like(u1)], -1) / tau, axis=-1)
    # log_prob from the log values (the ``intermediates`` path), so that no coordinate underflows.
    weights = jnp.exp(d.log_prob(jnp.exp(log_y), [log_y]) + log_y.sum(-1)) * (step / tau) ** 2
    return weights, jnp.exp(log_y), d.sample(key, (num_draws,))


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.0])
def test_three_category_density_integrates_to_one_and_matches_the_sampler(tau):
    weights, y_grid, draws = _grid_and_draws(tau, jax.random.PRNGKey(1))
    # The rectangle rule on a smooth integrand with exponential tails: exact to rounding (~1e-15).
    assert abs(float(weights.sum()) - 1.0) < 1e-9
    # The density is the law of the draws: E[y1^2] and E[y0 y2] on the grid vs 20000 draws (5 SE).
    draws = np.asarray(draws)
    for f in (lambda y: y[..., 1] ** 2, lambda y: y[..., 0] * y[..., 2]):
        exact = float(jnp.sum(weights * f(y_grid)))
        values = f(draws)
        assert abs(values.mean() - exact) < 5 * values.std() / np.sqrt(values.size)


def test_log_prob_from_intermediates_equals_log_prob_of_the_value():
    @jax.jit
    def both(key):
        d = RelaxedOneHotCategorical(0.4, logits=jnp.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]]))
        y, intermediates = d.sample_with_intermediates(key, (5,))
        return d.log_prob(y, intermediates), d.log_prob(y)

    from_log, from_value = both(jax.random.PRNGKey(2))
    np.testing.assert_allclose(from_log, from_value, rtol=1e-10)


def test_probs_and_logits_give_the_same_distribution():
    logits = jnp.array([0.3, -1.0, 2.0, 0.0])

    @jax.jit
    def draws_and_densities(key):
        by_logits = RelaxedOneHotCategorical(0.7, logits=logits)
        by_probs = RelaxedOneHotCategorical(0.7, probs=jax.nn.softmax(logits))
        y = by_logits.sample(key, (6,))
        return y, by_probs.sample(key, (6,)), by_logits.log_prob(y), by_probs.log_prob(y), by_probs.probs

    y, y_probs, lp_logits, lp_probs, probs = draws_and_densities(jax.random.PRNGKey(3))
    np.testing.assert_allclose(y, y_probs, rtol=1e-10)
    np.testing.assert_allclose(lp_logits, lp_probs, rtol=1e-10)
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-12)


def test_relaxed_kl_does_not_change_with_the_temperature():
    # Draw by draw (the same Gumbel noise), log q(y) - log p(y) is the same at every temperature:
    # annealing moves the draws towards the vertices, not the KL term towards the discrete KL.
    q_logits, p_logits = jnp.array([2.0, -1.0, 0.0]), jnp.log(PROBS3)

    @jax.jit
    def log_ratio(tau):
        q = RelaxedOneHotCategorical(tau, logits=q_logits)
        p = RelaxedOneHotCategorical(tau, logits=p_logits)
        y, intermediates = q.sample_with_intermediates(jax.random.PRNGKey(4), (4000,))
        return q.log_prob(y, intermediates) - p.log_prob(y, intermediates)

    reference = log_ratio(1.0)
    for tau in (0.3, 0.1, 3.0):
        np.testing.assert_allclose(log_ratio(tau), reference, rtol=1e-9, atol=1e-9)
    # ... and its mean, the relaxed KL, is well above the discrete KL (2.27 against 1.00 here;
    # the MC standard error of the relaxed KL is 0.03).
    discrete = float(jnp.sum(jax.nn.softmax(q_logits) * (jax.nn.log_softmax(q_logits) - p_logits)))
    assert float(reference.mean()) > 1.5 * discrete


# -- gradients ---------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("n", "family"))
def _mc_mean(logits, key, tau=0.5, n=4000, family=RelaxedOneHotCategorical):
    """Common-random-number MC estimate of E[h(y)], h(y) = y0^2 + 2 y1 - y0 y2 (K = 3)."""
    y = family(tau, logits=logits).sample(key, (n,))
    return jnp.mean(y[:, 0] ** 2 + 2 * y[:, 1] - y[:, 0] * y[:, 2])


def test_pathwise_gradient_matches_finite_differences_with_common_random_numbers():
    logits, key = jnp.array([0.2, -0.5, 0.4]), jax.random.PRNGKey(5)
    grad = jax.grad(_mc_mean)(logits, key)
    assert np.all(np.isfinite(grad)) and np.any(np.abs(grad) > 1e-3)
    delta = 1e-5
    for j in range(3):
        e = jnp.zeros(3).at[j].set(delta)
        fd = (_mc_mean(logits + e, key) - _mc_mean(logits - e, key)) / (2 * delta)
        assert abs(float(fd) - float(grad[j])) < 1e-7
    # The temperature gets a pathwise gradient too.
    grad_tau = jax.grad(lambda t: _mc_mean(logits, key, tau=t))(0.5)
    assert np.isfinite(grad_tau) and grad_tau != 0


def test_pathwise_gradient_is_unbiased_for_two_categories():
    # E[y0^2] for K = 2 is a 1-D integral (y0 = sigmoid((dl + L) / tau), L standard logistic);
    # its derivative in dl = logits[0] - logits[1], by quadrature, against 20000 pathwise draws (5 SE).
    tau, logits = 0.5, jnp.array([0.4, -0.1])

    def expectation(dl):
        def f(u):
            return (1.0 / (1.0 + math.exp(-(dl + u) / tau))) ** 2 * stats.logistic.pdf(u)

        return integrate.quad(f, -40, 40, epsabs=1e-13, epsrel=1e-13, limit=200)[0]

    dl, h = float(logits[0] - logits[1]), 1e-4
    exact = (expectation(dl + h) - expectation(dl - h)) / (2 * h)
    per_draw = jax.vmap(
        jax.grad(lambda lg, k: RelaxedOneHotCategorical(tau, logits=lg).sample(k)[0] ** 2)
    )(jnp.broadcast_to(logits, (20000, 2)), jax.random.split(jax.random.PRNGKey(6), 20000))
    per_draw = np.asarray(per_draw)
    np.testing.assert_allclose(per_draw[:, 0], -per_draw[:, 1], rtol=1e-10, atol=1e-12)  # softmax: shift-free
    se = per_draw[:, 0].std() / np.sqrt(len(per_draw))
    assert abs(per_draw[:, 0].mean() - exact) < 5 * se


def test_straight_through_is_one_hot_forward_and_relaxed_backward():
    logits, key, c = jnp.array([0.2, -0.5, 0.4]), jax.random.PRNGKey(7), jnp.array([1.0, -2.0, 0.5])

    def linear(lg, family):
        return jnp.sum(family(0.5, logits=lg).sample(key, (4000,)) @ c)

    @jax.jit
    def run(lg):
        hard = RelaxedOneHotCategoricalStraightThrough(0.5, logits=lg).sample(key, (4000,))
        soft = RelaxedOneHotCategorical(0.5, logits=lg).sample(key, (4000,))
        g_st = jax.grad(linear)(lg, RelaxedOneHotCategoricalStraightThrough)
        g_relaxed = jax.grad(linear)(lg, RelaxedOneHotCategorical)
        # Through a nonlinear h the straight-through gradient differs from the relaxed one (h' is
        # taken at the one-hot value), but it is finite and not zero.
        g_h = jax.grad(_mc_mean)(lg, key, family=RelaxedOneHotCategoricalStraightThrough)
        return hard, soft, g_st, g_relaxed, g_h

    hard, soft, g_st, g_relaxed, g_h = map(np.asarray, run(logits))
    # Exactly one-hot, at the arg max of the relaxed draw of the same noise.
    assert set(np.unique(hard)) <= {0.0, 1.0} and np.all(hard.sum(-1) == 1.0)
    np.testing.assert_array_equal(hard.argmax(-1), soft.argmax(-1))
    # Backward: the relaxed gradient, exactly (and not zero).
    assert np.any(np.abs(g_st) > 1e-3)
    np.testing.assert_allclose(g_st, g_relaxed, rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(g_h)) and np.any(np.abs(g_h) > 1e-3)


def test_straight_through_log_prob_is_the_categorical_log_probability():
    st = RelaxedOneHotCategoricalStraightThrough(0.3, probs=PROBS3)
    one_hots = jnp.eye(3)
    np.testing.assert_allclose(st.log_prob(one_hots), jnp.log(PROBS3), rtol=1e-12)
    categorical = dist.Categorical(probs=PROBS3).log_prob(jnp.arange(3))
    np.testing.assert_allclose(st.log_prob(one_hots), categorical, rtol=1e-12)
    # The value gradient (the straight-through path into the log density) is log pi.
    np.testing.assert_allclose(jax.grad(lambda v: st.log_prob(v))(one_hots[1]), jnp.log(PROBS3), rtol=1e-12)
    # A zero-probability category gives finite numbers for the other categories.
    zero = RelaxedOneHotCategoricalStraightThrough(0.3, probs=jnp.array([0.5, 0.0, 0.5]))
    np.testing.assert_allclose(zero.log_prob(jnp.array([1.0, 0.0, 0.0])), math.log(0.5), rtol=1e-12)
    # The draws are Categorical(probs): chi-square, 2 df, at level 0.001.
    counts = np.bincount(np.asarray(st.sample(jax.random.PRNGKey(8), (4000,))).argmax(-1), minlength=3)
    assert stats.chisquare(counts, 4000 * np.asarray(PROBS3)).pvalue > 0.001


# -- shapes, NumPyro integration, errors ------------------------------------------------------------
def test_shapes_and_batch_broadcasting():
    d = RelaxedOneHotCategorical(jnp.full((4, 1), 0.5), logits=jnp.zeros((5, 3)))
    assert d.batch_shape == (4, 5) and d.event_shape == (3,)
    assert d.support is numpyro.distributions.constraints.simplex
    assert d.has_rsample and "logits" in d.reparametrized_params
    single = RelaxedOneHotCategorical(0.5, probs=PROBS3)
    st = RelaxedOneHotCategoricalStraightThrough(jnp.array([0.5, 1.0]), probs=PROBS3)
    assert single.batch_shape == () and st.batch_shape == (2,)

    # The distributions are pytrees: they go through jit as arguments.
    @jax.jit
    def draws(d, single, st, key):
        y = d.sample(key, (2,))
        # Unbatched parameters broadcast against a batched value.
        return y, d.log_prob(y), single.log_prob(y), st.sample(key, (7,))

    y, lp, lp_single, y_st = draws(d, single, st, jax.random.PRNGKey(0))
    assert y.shape == (2, 4, 5, 3) and lp.shape == (2, 4, 5) and lp_single.shape == (2, 4, 5)
    assert y_st.shape == (7, 2, 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-12)
    assert np.all(np.asarray(y) > 0)
    # A traced temperature (a scheduled one, inside the compiled fit loop) is fine.
    vmapped = jax.jit(jax.vmap(lambda t, k: RelaxedOneHotCategorical(t, probs=PROBS3).sample(k)))
    assert vmapped(jnp.array([0.5, 1.0]), jax.random.split(jax.random.PRNGKey(1), 2)).shape == (2, 3)


def test_in_a_numpyro_model_with_a_plate():
    def model(temperature=0.5):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        with numpyro.plate("data", 10):
            numpyro.sample("z", RelaxedOneHotCategorical(temperature, logits=w))

    @jax.jit
    def run(key):
        trace = numpyro.handlers.trace(numpyro.handlers.seed(model, key)).get_trace()
        values = {name: trace[name]["value"] for name in ("w", "z")}
        log_joint, _ = numpyro.infer.util.log_density(model, (), {}, values)
        return values["z"], log_joint

    z, log_joint = run(jax.random.PRNGKey(0))
    assert z.shape == (10, 3) and np.isfinite(log_joint)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0, "logits": jnp.zeros(3)}, "needs temperature > 0, got 0.0"),
        ({"temperature": -1.0, "logits": jnp.zeros(3)}, "needs temperature > 0"),
        ({"temperature": 1.0}, "exactly one of probs and logits, got neither"),
        ({"temperature": 1.0, "probs": PROBS3, "logits": jnp.zeros(3)}, "exactly one of probs and logits, got both"),
        ({"temperature": 1.0, "probs": jnp.array([0.5, 0.6])}, "sum to 1 along the last axis"),
        ({"temperature": 1.0, "probs": jnp.array([1.2, -0.2])}, "non-negative"),
        ({"temperature": 1.0, "logits": jnp.zeros(1)}, "K >= 2 categories on the last axis, got shape \\(1,\\)"),
        ({"temperature": 1.0, "logits": jnp.array([0.0, jnp.nan])}, "NaN in logits"),
    ],
)
def test_errors_are_sentences(kwargs, message):
    for cls in (RelaxedOneHotCategorical, RelaxedOneHotCategoricalStraightThrough):
        with pytest.raises(ValueError, match=message):
            cls(**kwargs)


# -- the example -------------------------------------------------------------------------------------

def test_mixture_gumbel_softmax_example(load_example):
    out = load_example("mixture_gumbel_softmax").main(small=True)
    st = out["straight_through"]
    assert st["accuracy"] > 0.9
    # Fitted means: within 0.1 of the per-label sample means (a fit that knew the labels; the prior
    # shrinks them by < 0.001), and within 0.25 of the truth (about 3 sampling SEs, 0.5 / sqrt(51)).
    np.testing.assert_allclose(st["means"], out["sample_means"], atol=0.1)
    np.testing.assert_allclose(st["means"], out["true_means"], atol=0.25)
    assert abs(st["sigma"] - 0.5) < 0.15
    assert st["final_temperature"] == pytest.approx(0.1)
    # The Concrete relaxation (relaxed KL, the same at every temperature) merges the components.
    concrete = out["concrete"]
    assert abs(concrete["means"][0] - concrete["means"][1]) < 0.5 and concrete["accuracy"] < 0.8

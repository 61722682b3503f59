"""optimize_expectation and expected_value: known optima, bounds, sources of draws, errors, the reactor example."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference import fit
from inference.toolkit.decisions import DecisionResult, expected_value, optimize_expectation

M, S, N = 1.5, 0.7, 4000
THETA = {"theta": np.random.default_rng(0).normal(M, S, N)}


def neg_square(x, th):
    """-(x - theta)^2: E over theta is maximized at x = E[theta]."""
    return -((x - th["theta"]) ** 2)


def square(x, th):
    return (x - th["theta"]) ** 2


# -- known optima -------------------------------------------------------------------------------


def test_quadratic_optimum_is_the_mean_of_the_draws():
    res = optimize_expectation(neg_square, THETA, 0.0, steps=500, lr=0.05, seed=0)
    theta = THETA["theta"]
    assert isinstance(res, DecisionResult) and isinstance(res.x, float)
    # The maximizer of the average over the draws is their mean: only optimization noise is left.
    assert abs(res.x - theta.mean()) < 0.01
    assert abs(res.x - M) < 4 * S / math.sqrt(N) + 0.01
    # value is the average over every draw at x, exactly; its se is sd / sqrt(n).
    values = -((res.x - theta) ** 2)
    assert res.value == pytest.approx(values.mean(), rel=1e-12)
    assert res.value_se == pytest.approx(values.std(ddof=1) / math.sqrt(N), rel=1e-9)
    assert res.num_value_draws == N and res.source == "draws" and res.steps == 500
    assert res.trace.shape == (500,) and res.x_trace.shape == (500,)
    assert res.nonfinite_steps == 0
    # The trace climbs: the last steps are better than the first.
    assert res.trace[-100:].mean() > res.trace[:10].mean()


def test_fresh_draws_from_a_callable_find_the_true_mean():
    def sampler(key):
        return {"theta": M + S * jax.random.normal(key)}

    res = optimize_expectation(neg_square, sampler, 0.0, steps=500, lr=0.05, seed=1, value_draws=8000)
    assert res.source == "sampler" and res.num_value_draws == 8000
    assert abs(res.x - M) < 0.03
    # U(x) = -(S^2 + (x - M)^2); the estimate is within 5 standard errors of it.
    assert abs(res.value + S**2 + (res.x - M) ** 2) < 5 * res.value_se


def test_pytree_decision_and_its_traces():
    def objective(x, th):
        return -jnp.sum((x["a"] - th["theta"]) ** 2) - (x["b"] + 1.0) ** 2

    res = optimize_expectation(objective, THETA, {"a": np.zeros(2), "b": 0.0}, steps=500, lr=0.05)
    assert set(res.x) == {"a", "b"} and isinstance(res.x["b"], float) and res.x["a"].shape == (2,)
    np.testing.assert_allclose(res.x["a"], THETA["theta"].mean(), atol=0.01)
    assert abs(res.x["b"] + 1.0) < 0.01
    assert res.x_trace["a"].shape == (500, 2) and res.x_trace["b"].shape == (500,)


def test_forward_mode_gives_the_same_steps_as_reverse_mode():
    rev = optimize_expectation(neg_square, THETA, 0.0, steps=200, seed=3)
    fwd = optimize_expectation(neg_square, THETA, 0.0, steps=200, seed=3, gradient="forward")
    np.testing.assert_allclose(fwd.x_trace, rev.x_trace, rtol=1e-10, atol=1e-12)


def test_minimize_is_maximize_of_the_negative():
    lo = optimize_expectation(square, THETA, 0.0, steps=300, seed=2, maximize=False)
    hi = optimize_expectation(neg_square, THETA, 0.0, steps=300, seed=2)
    assert not lo.maximize and hi.maximize
    np.testing.assert_allclose(lo.x_trace, hi.x_trace, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lo.trace, -hi.trace, rtol=1e-12)
    assert lo.value == pytest.approx(-hi.value, rel=1e-12)


def test_progress_chunks_give_the_same_numbers():
    one = optimize_expectation(neg_square, THETA, 0.0, steps=200, seed=4)
    chunked = optimize_expectation(neg_square, THETA, 0.0, steps=200, seed=4, progress=True)
    np.testing.assert_allclose(chunked.x_trace, one.x_trace, rtol=1e-12, atol=1e-12)


# -- bounds -------------------------------------------------------------------------------------

FAR = {"theta": np.random.default_rng(1).normal(3.0, 0.5, 1000)}  # optimum x = 3 is outside [0, 1]


def test_active_bound_by_transform_is_approached_from_inside():
    res = optimize_expectation(neg_square, FAR, 0.5, steps=500, lr=0.1, bounds=(0.0, 1.0))
    assert np.all((res.x_trace > 0.0) & (res.x_trace < 1.0))
    assert 0.99 < res.x < 1.0


def test_active_bound_by_clip_is_reached_exactly():
    res = optimize_expectation(neg_square, FAR, 0.5, steps=300, lr=0.05, bounds=(0.0, 1.0), bounds_method="clip")
    assert np.all((res.x_trace >= 0.0) & (res.x_trace <= 1.0))
    assert res.x == 1.0


def test_one_sided_and_per_name_bounds():
    def objective(x, th):
        return -((x["up"] - th["theta"]) ** 2) - (x["free"] - 2.0) ** 2 - (x["low"] + 1.0) ** 2

    init = {"up": 0.0, "free": 0.0, "low": 1.0}
    bounds = {"up": (None, 1.0), "low": (0.5, None)}  # "free" is left unbounded
    res = optimize_expectation(objective, FAR, init, steps=600, lr=0.1, bounds=bounds)
    assert 0.98 < res.x["up"] < 1.0
    assert 0.5 < res.x["low"] < 0.52
    assert abs(res.x["free"] - 2.0) < 0.02
    # An inactive bound does not move an interior optimum.
    inner = optimize_expectation(neg_square, THETA, 0.0, steps=500, lr=0.05, bounds=(-10.0, 10.0))
    assert abs(inner.x - THETA["theta"].mean()) < 0.01


# -- a FitResult as the source of draws -----------------------------------------------------------

Y = jnp.array([1.2, 2.3, 2.9, 2.1, 1.6, 2.4, 3.1, 1.9])
PRIOR_SD, NOISE_SD = 10.0, 0.8


def conjugate(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("obs_plate", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def test_fit_result_draws_fresh_from_the_guide():
    result = fit(conjugate, Y, guide="multivariate_normal", seed=0, progress=False, max_steps=1500)
    precision = 1 / PRIOR_SD**2 + Y.size / NOISE_SD**2
    mean, sd = float(Y.sum() / NOISE_SD**2 / precision), precision**-0.5

    def objective(x, th):
        return -((x - th["mu"]) ** 2)

    res = optimize_expectation(objective, result, 0.0, steps=400, lr=0.05, seed=0)
    assert res.source == "guide" and res.num_value_draws == 4000
    # x* is the posterior mean; the guide's mean is within a few percent of an sd of the exact one.
    assert abs(res.x - mean) < 0.1 * sd
    # U(x*) = -posterior variance.
    assert abs(res.value + sd**2) < 5 * res.value_se + 0.1 * sd**2
    m, se = expected_value(objective, res.x, result)
    assert m == pytest.approx(res.value, rel=1e-12) and se == pytest.approx(res.value_se, rel=1e-12)


# -- expected_value --------------------------------------------------------------------------------


def test_expected_value_is_the_average_over_the_draws():
    theta = THETA["theta"]
    mean, se = expected_value(neg_square, 0.3, THETA)
    values = -((0.3 - theta) ** 2)
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert se == pytest.approx(values.std(ddof=1) / math.sqrt(N), rel=1e-9)
    assert expected_value(neg_square, 0.3, {"theta": np.array([2.0])}) == (pytest.approx(-(1.7**2)), 0.0)


# -- non-finite steps and errors -------------------------------------------------------------------


def test_nonfinite_steps_are_skipped_and_counted():
    def objective(x, th):
        return jnp.where(th["theta"] > 3.0, jnp.nan, -((x - th["theta"]) ** 2))

    with pytest.warns(RuntimeWarning, match="steps were skipped"):
        res = optimize_expectation(objective, THETA, 0.0, steps=200, batch_size=16)
    assert 0 < res.nonfinite_steps < 200
    assert np.isnan(res.trace).sum() == res.nonfinite_steps
    with pytest.raises(ValueError, match="not finite at any of the 50 steps"):
        optimize_expectation(lambda x, th: jnp.nan * x, THETA, 0.0, steps=50)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"optimizer": "adam"}, "optimizer must be an optax.GradientTransformation"),
        ({"maximize": "yes"}, "maximize must be True or False"),
        ({"gradient": "central"}, "gradient must be 'reverse' or 'forward'"),
        ({"bounds_method": "wrap"}, "bounds_method must be 'transform' or 'clip'"),
        ({"bounds": (1.0, 0.0)}, "is not below the upper bound"),
        ({"bounds": (0.5, 1.0)}, "lies on or outside its bounds"),
        ({"bounds": (0.0, 1.0, 2.0)}, "bounds must be a pair"),
        ({"init": float("nan")}, "init must be finite"),
        ({"init": "high"}, "init must hold real numbers"),
        ({"init": {}}, "init must be a float or a pytree"),
        ({"init": {"t": 1.0}, "bounds": {"T": (0, 2)}}, "bounds are given for 'T'"),
        ({"draws": {}}, "draws is an empty dict"),
        ({"draws": {"theta": 1.0}}, "is a single number"),
        ({"draws": {"theta": np.ones(3), "phi": np.ones(4)}}, "different numbers of draws"),
        ({"draws": {"theta": np.array([1.0, np.inf])}}, "has 1 non-finite draws of 2"),
        ({"draws": [1.0, 2.0]}, "draws must be a dict of posterior draws"),
        ({"draws": {"phi": np.ones(3)}}, "objective\\(x, theta\\) failed .*sites phi.*KeyError"),
        ({"objective": lambda x, th: jnp.stack([x, x])}, "must return one number for one draw"),
        ({"objective": lambda x, th: np.exp(x)}, "use JAX operations"),
    ],
)
def test_bad_input_is_a_sentence(kwargs, match):
    args = {"objective": neg_square, "draws": THETA, "init": 0.0, **kwargs}
    objective, draws, init = args.pop("objective"), args.pop("draws"), args.pop("init")
    with pytest.raises(ValueError, match=match) as info:
        optimize_expectation(objective, draws, init, **args)
    message = str(info.value)
    assert message[0].islower() and len(message.split()) >= 5


# -- the reactor example ---------------------------------------------------------------------------



def test_reactor_decision_example_gradient_matches_grid(load_example):
    example = load_example("reactor_decision")
    out = example.main(small=True, guide="multivariate_normal")
    # The test: the gradient optimum is within one grid step of the grid optimum.
    assert out["grid_steps_off"]["t"] <= 1.0 and out["grid_steps_off"]["T"] <= 1.0
    assert out["finite"] and out["nonfinite_steps"] == 0
    # The gradient answer is at least as good as the best grid point (the same draws), up to the
    # optimizer's residual noise, far below the Monte Carlo error of either.
    assert out["gradient"]["value"] > out["grid"]["value"] - 1e-6
    # The pilot run recovers the true rate constants.
    for name, true in example.K_TRUE.items():
        assert abs(out["k_mean"][name] - true) < 4 * out["k_sd"][name]
    # The plug-in answer cannot beat the expected-value answer on the same draws (beyond noise).
    assert out["gain"] > -1e-6
    assert out["plug_in_steps_off"]["t"] <= 1.0 and out["plug_in_steps_off"]["T"] <= 1.0
    # The diffrax solve and its forward-mode gradient in (t, T) agree with the closed form
    # B(t) = k1 / (k2 - k1) (exp(-k1 t) - exp(-k2 t)).
    theta = {"k1": jnp.asarray(0.6), "k2": jnp.asarray(0.15)}

    def closed(x):
        k1, k2 = example.rate_constants(theta, x["T"])
        b = k1 / (k2 - k1) * (jnp.exp(-k1 * x["t"]) - jnp.exp(-k2 * x["t"]))
        return b - example.TIME_COST * x["t"]

    x = {"t": jnp.asarray(5.0), "T": jnp.asarray(340.0)}
    grad, value = jax.jacfwd(lambda x: (example.utility(x, theta),) * 2, has_aux=True)(x)
    assert float(value) == pytest.approx(float(closed(x)), abs=1e-6)
    exact = jax.grad(closed)(x)
    for key in x:
        assert float(grad[key]) == pytest.approx(float(exact[key]), rel=1e-4, abs=1e-7)

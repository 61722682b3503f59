"""Every ODE gradient method against central finite differences, and against each other.

Gradients of ``L(y0, times, k) = sum(W * ys)`` (fixed random weights ``W``) with respect to the
initial state, the output times and the rate constants, on a linear network (``A <=> B``), a
Michaelis-Menten law and a nonlinear mass-action system (Lotka-Volterra predator-prey); then the
gradient of a kinetics model's log density.

Finite differences: central, in float64, with the relative step ``h = 1e-3 * max(|x|, 1)``. The
solves run at ``rtol = 1e-10``, so each value carries a relative error ``delta ~ 1e-10`` (the
adaptive step pattern changes discretely with the inputs, so this error is not smooth). A central
difference then errs by about ``h^2 |L'''| / 6 + delta |L| / h``; the two terms balance near
``h = (3 delta)^(1/3) ~ 7e-4``, and ``h = 1e-3`` keeps both near ``1e-7`` relative. The checks
allow ``1e-5`` relative (plus a small absolute term for entries near zero): a wrong gradient (a
missing chain-rule factor, a zero time cotangent) is off by order one.
"""

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from vi_models import kinetics

RTOL_SOLVE, ATOL_SOLVE = 1e-10, 1e-12
STEP = 1e-3
FD_RTOL, FD_ATOL = 1e-5, 1e-7

# These programs run once or twice each: compile them with XLA's cheap settings (about a fifth
# less compile time; the arithmetic, and so the values, is the same up to rounding).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled(fn, *example):
    """``jax.jit(fn)`` compiled once for the shapes of ``example`` with :data:`FAST_COMPILE`."""
    return jax.jit(fn).lower(*example).compile(compiler_options=FAST_COMPILE)

CASES = {
    "linear": dict(
        text="A <=> B : kf, kb",
        y0=[1.0, 0.2],
        k=[0.5, 0.2],
        times=np.linspace(0.3, 10.0, 12),
        methods=("expm", "forward", "reverse", "adjoint"),
    ),
    "michaelis_menten": dict(
        text="S -> P : mm(Vmax, Km)",
        y0=[10.0, 0.0],
        k=[1.2, 2.5],
        times=np.linspace(0.5, 20.0, 12),
        methods=("forward", "reverse", "adjoint"),
    ),
    "lotka_volterra": dict(
        text="X -> 2 X : a; X + Y -> 2 Y : b; Y -> 0 : c",
        y0=[1.0, 0.5],
        k=[1.0, 0.8, 0.6],
        times=np.linspace(0.25, 8.0, 12),
        methods=("forward", "reverse", "adjoint"),
    ),
}


def _inputs(case):
    c = CASES[case]
    return jnp.asarray(c["y0"], float), jnp.asarray(c["times"], float), jnp.asarray(c["k"], float)


def _weights(case):
    c = CASES[case]
    return jnp.asarray(np.random.default_rng(0).normal(size=(len(c["times"]), len(c["y0"]))))


@lru_cache(maxsize=None)
def _loss_and_grad(case, method):
    """Jitted ``(L, dL/dy0, dL/dtimes, dL/dk)`` of one case under one gradient method (shared)."""
    mech = kinetics.Mechanism.parse(CASES[case]["text"])
    opts = kinetics.SolverOptions(gradient=method, rtol=RTOL_SOLVE, atol=ATOL_SOLVE)
    solve_one = kinetics.make_solver(mech, opts)
    W = _weights(case)

    def loss(y0, times, k):
        ys, failed = solve_one(y0, times, k)
        return jnp.sum(W * ys) + jnp.where(failed, jnp.nan, 0.0)

    return _compiled(jax.value_and_grad(loss, argnums=(0, 1, 2)), *_inputs(case))


@lru_cache(maxsize=None)
def _finite_differences(case):
    """Central differences of ``L`` in every input, all perturbations in one vmapped call."""
    mech = kinetics.Mechanism.parse(CASES[case]["text"])
    method = "expm" if mech.is_linear else "reverse"
    solve_one = kinetics.make_solver(mech, kinetics.SolverOptions(gradient=method, rtol=RTOL_SOLVE, atol=ATOL_SOLVE))
    W = _weights(case)
    y0, times, k = _inputs(case)
    x = jnp.concatenate([y0, times, k])
    n0, nt = y0.size, times.size
    h = STEP * jnp.maximum(jnp.abs(x), 1.0)
    eye = jnp.eye(x.size)

    def run(x):
        def loss(x):
            ys, failed = solve_one(x[:n0], x[n0 : n0 + nt], x[n0 + nt :])
            return jnp.sum(W * ys) + jnp.where(failed, jnp.nan, 0.0)

        up = jax.vmap(loss)(x + eye * h)
        down = jax.vmap(loss)(x - eye * h)
        return (up - down) / (2 * h)

    fd = np.asarray(_compiled(run, x)(x))
    return fd[:n0], fd[n0 : n0 + nt], fd[n0 + nt :]


PAIRS = [(case, method) for case, c in CASES.items() for method in c["methods"]]


@pytest.mark.parametrize(("case", "method"), PAIRS)
def test_gradient_matches_finite_differences(case, method):
    y0, times, k = _inputs(case)
    value, grads = _loss_and_grad(case, method)(y0, times, k)
    assert np.isfinite(float(value))
    for name, g, fd in zip(("y0", "times", "k"), grads, _finite_differences(case)):
        scale = np.max(np.abs(fd))
        np.testing.assert_allclose(
            np.asarray(g), fd, rtol=FD_RTOL, atol=FD_ATOL * max(scale, 1.0), err_msg=f"{case} {method} d/d{name}"
        )


@pytest.mark.parametrize("case", list(CASES))
def test_methods_agree(case):
    """All methods give the same values and gradients (to the solver tolerance)."""
    y0, times, k = _inputs(case)
    results = {m: _loss_and_grad(case, m)(y0, times, k) for m in CASES[case]["methods"]}
    ref_value, ref_grads = results[CASES[case]["methods"][0]]
    for method, (value, grads) in results.items():
        np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-8)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-6, atol=1e-8, err_msg=f"{case} {method}")


@pytest.mark.parametrize("method", CASES["michaelis_menten"]["methods"])
def test_time_cotangent_at_zero_is_the_rate(method):
    """At ``t = 0`` (fixed start) the time derivative of ``y(t_0)`` is ``f(y0)``; same compiled program."""
    mech = kinetics.Mechanism.parse(CASES["michaelis_menten"]["text"])
    y0, times, k = _inputs("michaelis_menten")
    _, (_, g_times, _) = _loss_and_grad("michaelis_menten", method)(y0, times.at[0].set(0.0), k)
    expected = float(jnp.dot(_weights("michaelis_menten")[0], mech.rhs(0.0, y0, k)))
    np.testing.assert_allclose(float(g_times[0]), expected, rtol=1e-8)


@pytest.mark.parametrize("method", CASES["lotka_volterra"]["methods"])
def test_failed_solve_has_zero_gradient(method):
    """A solve that fails (here: a thousand times longer than the step limit allows) has zero gradient."""
    y0, times, k = _inputs("lotka_volterra")
    value, grads = _loss_and_grad("lotka_volterra", method)(y0, 1000.0 * times, k)
    assert np.isnan(float(value))  # the test loss marks a failed solve with NaN
    for g in grads:
        assert np.all(np.asarray(g) == 0.0), method


def test_auto_and_adjoint_choice():
    opts = kinetics.SolverOptions()
    assert opts.gradient_method(kinetics.Mechanism.parse("A <=> B : kf, kb")) == "expm"
    assert opts.gradient_method(kinetics.Mechanism.parse(CASES["lotka_volterra"]["text"])) == "forward"
    # 17 species + 16 constants: more than 32 inputs, so reverse mode.
    chain = "; ".join(f"2 A{i} -> A{i + 1} : k{i}" for i in range(16))
    assert opts.gradient_method(kinetics.Mechanism.parse(chain)) == "reverse"
    assert kinetics.SolverOptions(gradient="adjoint").gradient_method(kinetics.Mechanism.parse(chain)) == "adjoint"
    with pytest.raises(ValueError, match="unknown gradient method"):
        kinetics.SolverOptions(gradient="backsolve")


# -- the full model's log density ------------------------------------------------------------------


def _mm_dataset():
    t = np.linspace(0.0, 20.0, 11)
    mech = kinetics.Mechanism.parse("S -> P : mm(Vmax, Km)")
    ys, _ = kinetics.solve(mech, [10.0, 0.0], t, [1.2, 2.5])
    noise = 0.05 * np.random.default_rng(1).standard_normal(t.size)
    return kinetics.Dataset.from_arrays(t, {"S": np.asarray(ys[:, 0]) + noise})


@lru_cache(maxsize=None)
def _mm_model_logp(method):
    model = kinetics.model(
        "S -> P : mm(Vmax, Km)",
        _mm_dataset(),
        initial={"S": "infer", "P": 0.0},
        solver={"gradient": method, "rtol": RTOL_SOLVE, "atol": ATOL_SOLVE},
    )
    assert model.gradient == method

    def logp(x):
        return log_density(model, (), {}, dict(zip(MODEL_SITES, x)))[0]

    return logp


MODEL_SITES = ("Vmax", "Km", "S0", "sigma")
MODEL_POINT = (1.1, 2.7, 9.8, 0.07)


@lru_cache(maxsize=None)
def _mm_model_finite_differences():
    logp = _mm_model_logp("forward")
    x = jnp.asarray(MODEL_POINT)
    # A tenth of the step above: the log density (sum of squared residuals over sigma^2) curves
    # faster than L, and its solver error is relative to a larger value.
    h = 0.1 * STEP * jnp.maximum(jnp.abs(x), 1.0)
    eye = jnp.eye(x.size)
    diffs = _compiled(jax.vmap(lambda e: logp(x + e * h) - logp(x - e * h)), eye)(eye)
    return np.asarray(diffs) / (2 * np.asarray(h))


@pytest.mark.parametrize(
    "method",
    # The model layer (experiments, failed-solve guard, noise) is the same under every method and
    # each solve gradient is checked above; the other two methods are the slow run's (7 s each).
    ["forward", pytest.param("reverse", marks=pytest.mark.slow), pytest.param("adjoint", marks=pytest.mark.slow)],
)
def test_model_log_density_gradient(method):
    """Gradient of log p in (Vmax, Km, S0, sigma) of a kinetics model under each method, against finite differences."""
    x = jnp.asarray(MODEL_POINT)
    grad = np.asarray(_compiled(jax.grad(_mm_model_logp(method)), x)(x))
    fd = _mm_model_finite_differences()
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5 * np.max(np.abs(fd)))


def test_linear_model_log_density_gradient_expm():
    """The exact (expm) gradient of a linear model's log density, against finite differences."""
    t = np.linspace(0.0, 10.0, 9)
    data = kinetics.Dataset.from_arrays(t, {"A": np.exp(-0.4 * t) + 0.01 * np.cos(3 * t)})
    model = kinetics.model("A -> B : k", data, initial={"A": "infer"}, solver={"gradient": "expm"})
    names = ("k", "A0", "sigma")

    @jax.jit
    def logp(x):
        return log_density(model, (), {}, dict(zip(names, x)))[0]

    x = jnp.asarray([0.42, 0.97, 0.02])
    h = 1e-6 * jnp.maximum(jnp.abs(x), 1.0)  # no solver error here, only rounding: a small step
    fd = np.asarray(jax.vmap(lambda e: logp(x + e * h) - logp(x - e * h))(jnp.eye(3))) / (2 * np.asarray(h))
    np.testing.assert_allclose(np.asarray(jax.grad(logp)(x)), fd, rtol=1e-6)


# -- data-informed starting values (KineticsModel.initial_values) ----------------------------------


def _two_experiments(sigma=0.02, n=120):
    rng = np.random.default_rng(5)
    t1 = np.linspace(0.0, 10.0, n)
    t2 = np.linspace(0.5, 10.0, n)  # no measurement at t = 0: the nearest one is used
    a1, a2 = 1.0 * np.exp(-0.3 * t1), 2.0 * np.exp(-0.3 * t2)
    return kinetics.Dataset.from_arrays(
        [t1, t2],
        [{"A": a1 + sigma * rng.standard_normal(n)}, {"A": a2 + sigma * rng.standard_normal(n)}],
    )


def test_initial_values_shapes_and_values():
    from numpyro import handlers

    data = _two_experiments()
    model = kinetics.model("A -> B : k", data, initial={"A": "infer", "B": "LogNormal(0, 1)"})
    values = model.initial_values()
    assert set(values) == {"A0", "B0", "sigma"}  # rate constants are left to the prior
    trace = handlers.trace(handlers.seed(model, 0)).get_trace()
    for site, value in values.items():
        assert np.shape(value) == trace[site]["value"].shape, site
    np.testing.assert_allclose(values["A0"], [data.values[0, 0, 0], data.values[1, 0, 0]])
    np.testing.assert_allclose(values["B0"], [1.0, 1.0])  # unobserved: the prior median, exp(0)
    assert 0.016 < values["sigma"] < 0.024  # the true noise scale is 0.02
    logp = log_density(model, (), {}, dict(values, k=0.3))[0]
    assert np.isfinite(float(logp))


def test_initial_values_one_experiment_and_relative_noise():
    t = np.linspace(0.0, 10.0, 80)
    noisy = np.exp(-0.3 * t) * np.exp(0.05 * np.random.default_rng(2).standard_normal(t.size))
    data = kinetics.Dataset.from_arrays(t, {"A": noisy})
    model = kinetics.model("A -> B : k", data, initial={"A": "infer"}, noise="lognormal")
    values = model.initial_values()
    assert isinstance(values["A0"], float) and values["A0"] == noisy[0]
    assert 0.04 < values["sigma"] < 0.06  # relative (log-scale) noise 0.05
    # Noise-free data: the estimate is floored, not zero.
    clean = kinetics.model("A -> B : k", kinetics.Dataset.from_arrays(t, {"A": 1.0 - 0.05 * t}), initial={"A": "infer"})
    assert clean.initial_values()["sigma"] == pytest.approx(1e-3 * 1.0)

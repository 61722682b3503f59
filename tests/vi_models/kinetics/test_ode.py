"""ODE solutions against closed forms, gradients against finite differences, failed solves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from vi_models import kinetics
from vi_models.kinetics.ode import expm_small

TIMES = jnp.linspace(0.0, 10.0, 21)
METHODS = ["expm", "forward", "reverse"]


@pytest.mark.parametrize("gradient", METHODS)
def test_first_order_matches_closed_form(gradient):
    mech = kinetics.Mechanism.parse("A -> B : k")
    ys, failed = kinetics.solve(mech, [1.0, 0.0], TIMES, [0.35], kinetics.SolverOptions(gradient=gradient))
    expected = np.exp(-0.35 * np.asarray(TIMES))
    assert not bool(failed)
    np.testing.assert_allclose(ys[:, 0], expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ys[:, 1], 1 - expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("gradient", METHODS)
@pytest.mark.parametrize("stiff", [False, True])
def test_reversible_matches_closed_form(gradient, stiff):
    kf, kb = 0.5, 0.2
    mech = kinetics.Mechanism.parse("A <=> B : kf, kb")
    # rtol bounds the local error per step; a tight one keeps the global error below 1e-6.
    opts = kinetics.SolverOptions(gradient=gradient, stiff=stiff, rtol=1e-6 if not stiff else 1e-9)
    ys, failed = kinetics.solve(mech, [1.0, 0.0], TIMES, [kf, kb], opts)
    eq = kb / (kf + kb)
    a = eq + (1 - eq) * np.exp(-(kf + kb) * np.asarray(TIMES))
    assert not bool(failed)
    np.testing.assert_allclose(ys[:, 0], a, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ys.sum(axis=1), 1.0, atol=1e-6)


def test_production_degradation_steady_state():
    mech = kinetics.Mechanism.parse("0 -> A : ks; A -> 0 : kd")
    ys, _ = kinetics.solve(mech, [0.0], TIMES, [2.0, 0.5])
    np.testing.assert_allclose(ys[:, 0], 4.0 * (1 - np.exp(-0.5 * np.asarray(TIMES))), atol=1e-6)


def test_expm_small_matches_scipy_expm():
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 30.0, 500.0):
        A = jnp.asarray(rng.normal(size=(4, 4)) * scale / 4)
        A = A - 2 * scale * jnp.eye(4)  # keep the exponential bounded, like kinetics
        np.testing.assert_allclose(expm_small(A), jax.scipy.linalg.expm(A), rtol=1e-9, atol=1e-12)


def test_auto_chooses_by_structure():
    opts = kinetics.SolverOptions()
    assert opts.gradient_method(kinetics.Mechanism.parse("A -> B : k")) == "expm"
    assert opts.gradient_method(kinetics.Mechanism.parse("S -> P : mm(Vmax, Km)")) == "forward"
    with pytest.raises(ValueError, match="linear"):
        kinetics.SolverOptions(gradient="expm").gradient_method(kinetics.Mechanism.parse("2 A -> B : k"))


def _loglik_grad_check(mechanism, data, initial, params, gradient):
    model = kinetics.model(mechanism, data, initial=initial, solver={"gradient": gradient})

    @jax.jit
    def logp(p):
        return log_density(model, (), {}, p)[0]

    grad = jax.grad(logp)(params)
    for name in params:
        h = 1e-6 * max(1.0, abs(params[name]))
        up = dict(params, **{name: params[name] + h})
        down = dict(params, **{name: params[name] - h})
        fd = (logp(up) - logp(down)) / (2 * h)
        # The solve's own error (rtol 1e-6) limits how well the two can agree; a wrong gradient
        # is off by far more.
        np.testing.assert_allclose(grad[name], fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient", ["forward", "reverse"])
def test_gradient_through_nonlinear_solve_matches_finite_differences(bench_data, gradient):
    data = kinetics.Dataset.from_csv(bench_data / "c_mm.csv")
    params = {"Vmax": 1.1, "Km": 2.3, "sigma": 0.06}
    _loglik_grad_check("S -> P : mm(Vmax, Km)", data, {"S": 10.0}, params, gradient)


@pytest.mark.parametrize("gradient", METHODS)
def test_gradient_through_linear_solve_matches_finite_differences(bench_data, gradient):
    data = kinetics.Dataset.from_csv(bench_data / "b_reversible.csv")
    params = {"kf": 0.45, "kb": 0.25, "sigma": 0.03}
    _loglik_grad_check("A <=> B : kf, kb", data, {"A": 1.0, "B": 0.0}, params, gradient)


def test_gradient_with_inferred_initial_condition():
    data = kinetics.Dataset.from_csv(kinetics.bundled_path("bod.csv"))
    params = {"k": 0.5, "L0": 19.0, "sigma": 2.5}
    _loglik_grad_check("L -> Y : k", data, {"L": "infer", "Y": 0.0}, params, "forward")


def test_failed_solve_is_an_impossible_draw_not_an_exception(bench_data):
    mech = kinetics.Mechanism.parse("S -> P : mm(Vmax, Km)")
    opts = kinetics.SolverOptions(max_steps=2)
    ys, failed = kinetics.solve(mech, [10.0, 0.0], jnp.linspace(0, 20, 25), [1.2, 2.5], opts)
    assert bool(failed) and np.all(np.asarray(ys) == 0)
    data = kinetics.Dataset.from_csv(bench_data / "c_mm.csv")
    model = kinetics.model(mech, data, initial={"S": 10.0}, solver=opts)
    logp, trace = log_density(model, (), {}, {"Vmax": 1.2, "Km": 2.5, "sigma": 0.05})
    assert float(logp) == -np.inf
    assert float(trace["ode_solve_failed"]["fn"].log_factor) == -np.inf


def test_solver_options_are_validated():
    with pytest.raises(ValueError, match="unknown ODE solver 'rk99'"):
        kinetics.SolverOptions(solver="rk99")
    with pytest.raises(ValueError, match="unknown gradient method"):
        kinetics.SolverOptions(gradient="adjointish")
    with pytest.raises(ValueError, match="max_steps"):
        kinetics.SolverOptions(max_steps=0)

"""The exact solver of linear mechanisms at fixed times: shared steps and a prefix product.

``make_grid_solver`` must give the same trajectories as evaluating the matrix exponential at every
time (``make_solver`` with ``gradient="expm"``), to rounding, on even grids, uneven and repeated
times, and experiments of different lengths (padding repeats the last time).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_models import kinetics


def test_time_increments_of_an_even_grid_is_one_step():
    times = np.linspace(0.0, 10.0, 20)[None, :]
    steps, index = kinetics.time_increments(times)
    # 0 (the first time is t0) and the grid spacing.
    np.testing.assert_allclose(np.sort(steps), [0.0, 10.0 / 19], rtol=1e-12)
    np.testing.assert_allclose(np.cumsum(steps[index], axis=-1), times, rtol=0, atol=1e-12 * 10.0)


def test_time_increments_rebuild_uneven_times():
    times = np.array([[0.3, 0.3, 1.0, 2.5, 2.5, 7.0], [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]])
    steps, index = kinetics.time_increments(times)
    assert index.shape == times.shape
    np.testing.assert_allclose(np.cumsum(steps[index], axis=-1), times, rtol=0, atol=1e-12 * 7.0)
    assert len(steps) == len(np.unique(np.round(np.diff(times, prepend=0.0), 12)))


@pytest.mark.parametrize(
    ("text", "k"),
    [
        ("A <=> B : kf, kb", [0.7, 0.3]),
        ("A -> B : k1; B -> C : k2", [1.3, 1.3]),  # equal rates: the confluent case
        ("0 -> A : kin; A -> 0 : kout", [0.8, 0.5]),  # a constant source, the b of dy/dt = K y + b
    ],
)
def test_grid_solver_matches_expm_at_every_time(text, k):
    mech = kinetics.Mechanism.parse(text)
    n = len(mech.species)
    times = np.array([np.linspace(0.0, 12.0, 25), np.r_[0.2, 0.2, 0.9, 3.0, 7.5, 11.0, np.full(19, 11.0)]])
    y0 = np.tile(np.linspace(1.0, 0.4, n), (2, 1))
    per_time = kinetics.make_solver(mech, kinetics.SolverOptions(gradient="expm"))
    want, want_failed = jax.vmap(per_time, in_axes=(0, 0, None))(jnp.asarray(y0), jnp.asarray(times), jnp.asarray(k))
    got, failed = kinetics.make_grid_solver(mech, times)(jnp.asarray(y0), jnp.asarray(k))
    assert got.shape == (2, 25, n) and not np.any(failed) and not np.any(want_failed)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-11, atol=1e-13)


def test_grid_solver_gradient_matches_expm_at_every_time():
    mech = kinetics.Mechanism.parse("A -> B : k1; B -> C : k2")
    times = np.linspace(0.0, 6.0, 13)[None, :]
    y0 = jnp.asarray([[1.0, 0.1, 0.0]])
    w = jnp.asarray(np.random.default_rng(0).standard_normal((1, 13, 3)))
    per_time = kinetics.make_solver(mech, kinetics.SolverOptions(gradient="expm"))
    grid = kinetics.make_grid_solver(mech, times)

    def loss_per_time(k, y0):
        return jnp.sum(w * jax.vmap(per_time, in_axes=(0, 0, None))(y0, jnp.asarray(times), k)[0])

    def loss_grid(k, y0):
        return jnp.sum(w * grid(y0, k)[0])

    k = jnp.asarray([0.9, 0.4])
    for a, b in zip(jax.grad(loss_grid, (0, 1))(k, y0), jax.grad(loss_per_time, (0, 1))(k, y0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)


def test_linear_model_uses_the_grid_solver_and_nonlinear_does_not():
    t = np.linspace(0.0, 5.0, 8)
    data = kinetics.Dataset.from_arrays(t, {"A": np.exp(-0.5 * t)})
    linear = kinetics.model("A -> B : k", data, initial={"A": 1.0})
    assert linear.gradient == "expm" and linear._solve_data is not None
    nonlinear = kinetics.model("2 A -> B : k", data, initial={"A": 1.0})
    assert nonlinear.gradient != "expm" and nonlinear._solve_data is None


def test_grid_solver_refuses_a_nonlinear_mechanism():
    with pytest.raises(ValueError, match="linear"):
        kinetics.make_grid_solver(kinetics.Mechanism.parse("2 A -> B : k"), np.linspace(0, 1, 3)[None])


def test_make_solver_shares_steps_when_the_times_are_constants():
    """``make_solver``'s exponential path, times known while tracing (shared steps) against times
    passed as an argument (one exponential per time): the same values and gradients, to rounding."""
    mech = kinetics.Mechanism.parse("A <=> B : kf, kb")
    solve_one = kinetics.make_solver(mech)
    y0 = jnp.array([1.0, 0.2])
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.7, 3.7, 9.0])

    def constant(k):
        return solve_one(y0, jnp.asarray(times), k)[0]

    def argument(k, t):
        return solve_one(y0, t, k)[0]

    k = jnp.array([0.7, 0.3])
    np.testing.assert_allclose(jax.jit(constant)(k), jax.jit(argument)(k, jnp.asarray(times)), rtol=1e-12, atol=1e-14)
    g_constant = jax.jit(jax.jacrev(lambda k: constant(k).sum()))(k)
    g_argument = jax.jit(jax.jacrev(lambda k: argument(k, jnp.asarray(times)).sum()))(k)
    np.testing.assert_allclose(g_constant, g_argument, rtol=1e-11, atol=1e-13)

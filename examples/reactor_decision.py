"""When to stop a batch reactor, and how hot to run it, when the rate constants are uncertain.

Consecutive first-order reactions ``A -> B : k1``, ``B -> C : k2`` in a batch reactor; B is the
product. The rate constants at the reference temperature ``T_ref = 350 K`` are known only from
a short pilot run: the script simulates it (the exact solution at ``k1 = 0.6 /h``,
``k2 = 0.15 /h``, A and B at 8 times in [0.25, 4] h, plus Normal noise of sd 0.03 with seed 0)
and fits ``k1`` and ``k2`` with :func:`inference.fit` on :func:`vi_models.kinetics.model`.

The decision is the batch time ``t`` (h) and the temperature ``T`` (K). The rate constants
follow Arrhenius, ``k_i(T) = k_i(T_ref) exp(-Ea_i / R (1/T - 1/T_ref))``, with activation
energies taken as known, ``Ea1 = 60 kJ/mol`` and ``Ea2 = 90 kJ/mol``: the side reaction is
more sensitive to temperature, so a cooler reactor is more selective but slower. Each hour
costs 0.01 of yield. The utility of a batch is

    f((t, T), k) = B(t; k(T)) / A0 - 0.01 t,

with ``B(t)`` from a diffrax solve of the mechanism's right-hand side
(:meth:`vi_models.kinetics.Mechanism.rhs`, adaptive Tsit5), differentiated in forward mode
(``diffrax.ForwardMode``) with respect to the end time ``t`` and, through ``k(T)``, the
temperature. (The project's :func:`vi_models.kinetics.make_solver` is built for fits: for a
linear mechanism it uses the matrix exponential, and its ``"forward"`` method returns no
gradient in the times.) :func:`inference.toolkit.decisions.optimize_expectation` maximizes the expected
utility over the posterior draws by the pathwise gradient. The script checks the answer against
a grid search of the same expected utility over the same draws, and compares it with the plug-in
answer, the optimum for the posterior mean of ``k``.

Run ``python examples/reactor_decision.py`` (``--small`` for a quick run).
"""

import argparse
import math
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from inference import fit
from inference.toolkit.decisions import expected_value, optimize_expectation
from vi_models import kinetics

MECHANISM = "A -> B : k1\nB -> C : k2"
K_TRUE, SIGMA_TRUE = {"k1": 0.6, "k2": 0.15}, 0.03
T_REF = 350.0  # K, the temperature of the pilot run
EA = {"k1": 60e3, "k2": 90e3}  # J/mol, activation energies (taken as known)
GAS_CONSTANT = 8.314  # J/(mol K)
TIME_COST = 0.01  # yield lost per hour of reactor time
BOUNDS = {"t": (0.5, 24.0), "T": (310.0, 390.0)}
PRIORS = {"k1": "LogNormal(log(0.5), 1)", "k2": "LogNormal(log(0.5), 1)"}
Y0 = jnp.array([1.0, 0.0, 0.0])  # A0 = 1: B is the yield


def simulate_pilot(seed: int = 0) -> kinetics.Dataset:
    """Simulate the pilot run at ``T_REF``: the exact solution at the true k plus Normal noise."""
    times = np.linspace(0.25, 4.0, 8)
    k1, k2 = K_TRUE["k1"], K_TRUE["k2"]
    a = np.exp(-k1 * times)
    b = k1 / (k2 - k1) * (np.exp(-k1 * times) - np.exp(-k2 * times))
    noise = np.random.default_rng(seed).normal(0.0, SIGMA_TRUE, (2, times.size))
    return kinetics.Dataset.from_arrays(times, {"A": a + noise[0], "B": b + noise[1]})


MECH = kinetics.Mechanism.parse(MECHANISM)
B_INDEX = MECH.species.index("B")
TERM = diffrax.ODETerm(MECH.rhs)  # the mechanism's right-hand side, f(t, y, k)


def solve_b(k: jax.Array, times: jax.Array) -> jax.Array:
    """Solve for the concentration of B at ``times`` (increasing, after 0) from ``A0 = 1``, by adaptive Tsit5.

    Differentiable in ``k`` and in ``times`` (the end time included). ``ForwardMode`` differentiates
    the solve by forward-mode sensitivities (a JVP through the steps): with two decision variables
    that is the cheap direction, and it compiles several times faster than reverse mode through
    diffrax's checkpointed loop. A failed solve gives NaN, which the optimizer skips.
    """
    sol = diffrax.diffeqsolve(
        TERM,
        diffrax.Tsit5(),
        t0=0.0,
        t1=times[-1],
        dt0=None,
        y0=Y0,
        args=k,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
        max_steps=256,
        adjoint=diffrax.ForwardMode(),
        throw=False,
    )
    return jnp.where(sol.result == diffrax.RESULTS.successful, sol.ys[:, B_INDEX], jnp.nan)


def rate_constants(theta: dict, T) -> jax.Array:
    """``k(T)`` in mechanism order, from ``k(T_ref)`` in ``theta`` by Arrhenius."""
    return jnp.stack(
        [theta[name] * jnp.exp(-EA[name] / GAS_CONSTANT * (1.0 / T - 1.0 / T_REF)) for name in MECH.parameters]
    )


def utility(x: dict, theta: dict) -> jax.Array:
    """Return the yield of B at batch time ``x["t"]`` and temperature ``x["T"]``, less the time cost."""
    return solve_b(rate_constants(theta, x["T"]), jnp.reshape(x["t"], (1,)))[0] - TIME_COST * x["t"]


@jax.jit
def expected_utility_grid(theta: dict, t_grid: jax.Array, T_grid: jax.Array) -> jax.Array:
    """Compute the expected utility at every (T, t) of the grids, shape ``(len(T_grid), len(t_grid))``.

    One solve per draw and temperature, saved at every ``t`` of the grid (``t_grid[0] > 0``).
    """

    def at(T):
        ys = jax.vmap(lambda th: solve_b(rate_constants(th, T), t_grid))(theta)
        return jnp.mean(ys, axis=0) - TIME_COST * t_grid

    return jax.lax.map(at, T_grid)


def grid_search(draws: dict, n: int) -> dict:
    """Maximize the expected utility on a grid: n x n points over the box, then n x n around the best.

    The fine grid has a fifth of the coarse steps in t and a tenth in T: the optimum lies on a ridge
    along which the best t falls by about 0.45 h per K, so a step in T must move the best t by less
    than a step in t. Both grids have the same shape, so they share one compiled program.
    """
    theta = {name: jnp.asarray(draws[name]) for name in MECH.parameters}
    (t_lo, t_hi), (T_lo, T_hi) = BOUNDS["t"], BOUNDS["T"]
    t_grid, T_grid = np.linspace(t_lo, t_hi, n), np.linspace(T_lo, T_hi, n)
    u = np.asarray(expected_utility_grid(theta, jnp.asarray(t_grid), jnp.asarray(T_grid)))
    i, j = np.unravel_index(np.nanargmax(u), u.shape)
    dt, dT = (t_grid[1] - t_grid[0]) / 5, (T_grid[1] - T_grid[0]) / 10
    half = (n - 1) // 2
    t_start = min(max(t_grid[j] - half * dt, t_lo), t_hi - (n - 1) * dt)
    T_start = min(max(T_grid[i] - half * dT, T_lo), T_hi - (n - 1) * dT)
    t_fine, T_fine = t_start + dt * np.arange(n), T_start + dT * np.arange(n)
    u = np.asarray(expected_utility_grid(theta, jnp.asarray(t_fine), jnp.asarray(T_fine)))
    i, j = np.unravel_index(np.nanargmax(u), u.shape)
    return {"t": float(t_fine[j]), "T": float(T_fine[i]), "value": float(u[i, j]), "dt": float(dt), "dT": float(dT)}


def main(small: bool = False, guide: str = "auto") -> dict:
    """Fit the pilot run, decide (t, T) by the gradient and by a grid; return both and the plug-in answer."""
    data = simulate_pilot()
    model = kinetics.model(MECHANISM, data, initial={"A": 1.0, "B": 0.0}, priors=PRIORS)
    tic = time.perf_counter()
    result = fit(model, guide=guide, seed=0, progress=not small, max_steps=3000 if small else 20000)
    fit_s = time.perf_counter() - tic
    if not small:
        print(result.summary(num_samples=2000))
    draws = result.sample(500 if small else 4000, seed=1)
    k_mean = {name: float(draws[name].mean()) for name in MECH.parameters}
    k_sd = {name: float(draws[name].std()) for name in MECH.parameters}

    init = {"t": 4.0, "T": T_REF}
    steps, batch = (600, 32) if small else (3000, 64)
    tic = time.perf_counter()
    best = optimize_expectation(
        utility, draws, init, steps=steps, batch_size=batch, lr=0.05, bounds=BOUNDS, gradient="forward", seed=0
    )
    gradient_s = time.perf_counter() - tic

    tic = time.perf_counter()
    grid = grid_search(draws, 48 if small else 120)
    grid_s = time.perf_counter() - tic
    dt, dT = grid["dt"], grid["dT"]
    off = {"t": abs(best.x["t"] - grid["t"]) / dt, "T": abs(best.x["T"] - grid["T"]) / dT}

    # The plug-in answer: the same optimization for a posterior collapsed onto its mean (the same
    # shapes as `draws`, so the compiled loop is reused).
    at_mean = {name: np.full_like(draws[name], value) for name, value in k_mean.items()}
    plug = optimize_expectation(
        utility, at_mean, init, steps=steps, batch_size=batch, lr=0.05, bounds=BOUNDS, gradient="forward", seed=0
    )
    plug_value = expected_value(utility, plug.x, draws)
    plug_off = {"t": abs(plug.x["t"] - best.x["t"]) / dt, "T": abs(plug.x["T"] - best.x["T"]) / dT}
    gain = best.value - plug_value[0]

    print()
    print(f"fit: {result.num_steps} steps, {fit_s:.1f} s")
    print(f"posterior k1 = {k_mean['k1']:.4f} +- {k_sd['k1']:.4f} /h (true {K_TRUE['k1']})")
    print(f"posterior k2 = {k_mean['k2']:.4f} +- {k_sd['k2']:.4f} /h (true {K_TRUE['k2']})")
    print(
        f"gradient ({steps} steps, {gradient_s:.1f} s): t = {best.x['t']:.3f} h, T = {best.x['T']:.2f} K, "
        f"E[utility] = {best.value:.5f} +- {best.value_se:.5f}"
    )
    print(
        f"grid (dt = {dt:.3g} h, dT = {dT:.3g} K, {grid_s:.1f} s): t = {grid['t']:.3f} h, T = {grid['T']:.2f} K, "
        f"E[utility] = {grid['value']:.5f}"
    )
    print(f"difference in grid steps: t {off['t']:.2f}, T {off['T']:.2f}")
    print(f"E[utility] at the gradient answer minus at the grid's best point: {best.value - grid['value']:.1e}")
    print(
        f"plug-in (posterior mean k): t = {plug.x['t']:.3f} h, T = {plug.x['T']:.2f} K, its utility at mean k "
        f"{plug.value:.5f}, its E[utility] {plug_value[0]:.5f} +- {plug_value[1]:.5f}"
    )
    print(f"plug-in minus expected-value answer in grid steps: t {plug_off['t']:.2f}, T {plug_off['T']:.2f}")
    print(f"E[utility] gained by deciding on the expectation (same draws): {gain:.2e}")
    return {
        "k_mean": k_mean,
        "k_sd": k_sd,
        "gradient": {"t": best.x["t"], "T": best.x["T"], "value": best.value, "se": best.value_se},
        "grid": grid,
        "grid_steps_off": off,
        "plug_in": {"t": plug.x["t"], "T": plug.x["T"], "value": plug_value[0], "se": plug_value[1]},
        "plug_in_steps_off": plug_off,
        "gain": gain,
        "nonfinite_steps": best.nonfinite_steps,
        "finite": all(math.isfinite(v) for v in (best.value, grid["value"], plug_value[0])),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a short run")
    parser.add_argument("--guide", default="auto", help="guide name (default auto)")
    args = parser.parse_args()
    main(args.small, args.guide)

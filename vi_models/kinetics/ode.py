"""Solving a mechanism's ODE: diffrax solvers and the gradient method chosen for speed.

The right-hand side is :meth:`Mechanism.rhs` in diffrax convention ``f(t, y, args)`` with
``args = k``, the rate constants in ``Mechanism.parameters`` order. A solve never raises inside a
fit: a failed solve (step limit reached, non-finite state) is returned as ``failed = True`` with a
zero trajectory, and the model turns it into an impossible draw.

Solve status
------------
``make_solver(..., status=True)`` returns why a solve failed instead of ``failed``, as an integer
code (diffrax's ``sol.result`` and step counts, read inside the compiled program):

* :data:`ODE_OK` (0): solved;
* :data:`ODE_STEP_LIMIT` (1): ``max_steps`` was reached while most steps were accepted: the
  solver crawled with steps far shorter than the time scale of the data, which is what an
  explicit solver does on a stiff system (use ``stiff=True``);
* :data:`ODE_NONFINITE` (2): the state became infinite or NaN (it overflows: the rates are
  beyond what double precision holds, or the system blows up), or ``max_steps`` was reached
  while most steps were rejected (each trial step gave a non-finite state);
* :data:`ODE_FAILED` (3): another failure reported by diffrax.

The kinetics model records the worst code of each experiment as the deterministic site
``_ode_status`` (see :mod:`inference.engine.faults`).

Gradient methods
----------------
Each method gives the gradient with respect to ``y0``, ``k`` and the output ``times``.

``"expm"``
    Linear (first-order) networks, ``dy/dt = K y + b``, have the exact solution
    ``[y(t); 1] = expm(t M) [y0; 1]`` with ``M = [[K, b], [0, 0]]`` (Moler & Van Loan 2003).
    No time stepping; gradients by reverse mode through :func:`expm_small`, exact up to
    rounding (times included).
``"forward"``
    Forward-mode sensitivities: the Jacobian ``dy(t_i)/d(y0, k)`` of the whole trajectory is
    computed by a JVP through the solver (``diffrax.ForwardMode``, one tangent per input) in
    the same pass as the solve, and handed to reverse mode through a custom VJP. The
    cotangent of the output time ``t_i`` is ``g_i . f(t_i, y(t_i), k)``, since
    ``dy(t_i)/dt_i = f``. Cost grows with ``n_species + n_parameters``; fast to compile and
    to run when that is small.
``"reverse"``
    Discretise-then-optimise: reverse mode through the solver's own steps
    (``diffrax.RecursiveCheckpointAdjoint``, binomial checkpointing). The gradient is the exact
    gradient of the computed solution, and memory grows only logarithmically with the number
    of steps; cost is independent of the number of parameters.
``"adjoint"``
    Optimise-then-discretise: the continuous adjoint (``diffrax.BacksolveAdjoint``) solves the
    adjoint ODE backwards in time from the last output time (Pontryagin; Chen et al. 2018).
    Constant memory and cost independent of the number of parameters, but the gradient is
    that of the exact solution only up to the tolerance of the backward solve (it is not the
    gradient of the computed forward solution), and the backward pass reconstructs ``y(t)``
    by solving backwards, which loses accuracy when the dynamics contract strongly. The time
    cotangents come from ``f`` as for ``"forward"``. Prefer ``"reverse"`` unless memory
    limits it.
``"auto"``
    ``expm`` for linear networks, ``forward`` when ``n_species + n_parameters <= 32``, else
    ``reverse`` (as accurate as the forward solve, and faster than ``adjoint`` per step on
    the mechanisms measured in ``benchmarks/ode_gradients.py``).

Runtime checks
--------------
``diffrax.diffeqsolve`` checks its output times with ``equinox.error_if``, which by default
puts a host callback into the compiled program; JAX never writes a program with host callbacks
to its persistent compilation cache, so every fit through an ODE would compile from scratch in
each process. The solves here are traced with equinox's checks in ``"nan"`` mode (a failed
check turns the solution into NaN, which :func:`make_solver` reports as a failed solve): the
program has no callbacks and is cached like any other.

References
----------
Moler, C. and Van Loan, C. (2003). Nineteen dubious ways to compute the exponential of a matrix,
twenty-five years later. SIAM Review 45(1), 3-49.

Kidger, P. (2021). On Neural Differential Equations. PhD thesis, University of Oxford.

Chen, R. T. Q., Rubanova, Y., Bettencourt, J. and Duvenaud, D. (2018). Neural ordinary
differential equations. NeurIPS 31.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import diffrax
import equinox._errors as _eqx_errors
import jax
import jax.numpy as jnp
import numpy as np

from .mechanism import Mechanism

__all__ = [
    "SolverOptions",
    "make_solver",
    "solve",
    "GRADIENT_METHODS",
    "SOLVERS",
    "ODE_OK",
    "ODE_STEP_LIMIT",
    "ODE_NONFINITE",
    "ODE_FAILED",
]

#: Solve status codes (see "Solve status" in the module docstring).
ODE_OK, ODE_STEP_LIMIT, ODE_NONFINITE, ODE_FAILED = 0, 1, 2, 3

SOLVERS: dict[str, Callable[[], Any]] = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}
"""Solvers by name: ``tsit5`` (default, non-stiff), ``kvaerno5`` (stiff, the ``stiff=True`` choice)."""

GRADIENT_METHODS = ("auto", "expm", "forward", "reverse", "adjoint")

_FORWARD_MAX_INPUTS = 32


@dataclass(frozen=True)
class SolverOptions:
    """How to solve the ODE and differentiate through the solve.

    Parameters
    ----------
    solver : str or diffrax.AbstractSolver
        A name from :data:`SOLVERS` or a diffrax solver object. ``"tsit5"`` by default;
        use ``"kvaerno5"`` (or ``stiff=True``) for stiff mechanisms.
    stiff : bool
        Shorthand for ``solver="kvaerno5"``.
    rtol, atol : float
        Tolerances of the adaptive step-size controller. ``atol=None`` scales it to the data:
        ``1e-8`` times the largest observed concentration.
    max_steps : int
        Step limit of one solve. A solve that reaches it counts as failed (an impossible draw),
        which keeps the cost of a bad region of parameter space bounded.
    gradient : str
        One of :data:`GRADIENT_METHODS`; see the module docstring.
    """

    solver: Any = "tsit5"
    stiff: bool = False
    rtol: float = 1e-6
    atol: float | None = None
    max_steps: int = 4096
    gradient: str = "auto"

    def __post_init__(self):
        if isinstance(self.solver, str) and self.solver.lower() not in SOLVERS:
            raise ValueError(
                f"unknown ODE solver {self.solver!r}; use one of {', '.join(SOLVERS)} "
                "or pass a diffrax solver object"
            )
        if self.stiff and not (isinstance(self.solver, str) and self.solver.lower() == "tsit5"):
            raise ValueError(
                "stiff=True chooses the solver (kvaerno5), and a solver was named as well; give one of "
                "the two, e.g. solver='kvaerno5'"
            )
        if self.gradient not in GRADIENT_METHODS:
            raise ValueError(
                f"unknown gradient method {self.gradient!r}; use one of {', '.join(GRADIENT_METHODS)}"
            )
        if not (self.rtol > 0):
            raise ValueError(f"rtol must be positive, got {self.rtol}")
        if self.atol is not None and not (self.atol > 0):
            raise ValueError(f"atol must be positive, got {self.atol}")
        if int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps}")

    def make_solver(self) -> diffrax.AbstractSolver:
        """Return the diffrax solver object."""
        if not isinstance(self.solver, str):
            return self.solver
        name = "kvaerno5" if self.stiff and self.solver.lower() == "tsit5" else self.solver.lower()
        return SOLVERS[name]()

    def gradient_method(self, mechanism: Mechanism) -> str:
        """Resolve ``"auto"`` into the method used for ``mechanism``."""
        if self.gradient != "auto":
            if self.gradient == "expm" and not mechanism.is_linear:
                raise ValueError(
                    "gradient='expm' needs a linear (first-order) mechanism, and this one has "
                    "higher-order or saturating rate laws; use gradient='forward' or 'auto'"
                )
            return self.gradient
        if mechanism.is_linear:
            return "expm"
        if len(mechanism.species) + len(mechanism.parameters) <= _FORWARD_MAX_INPUTS:
            return "forward"
        return "reverse"


_TAYLOR_ORDER = 12
_MAX_SQUARINGS = 24


def expm_small(A: jax.Array) -> jax.Array:
    """Matrix exponential of a small matrix by scaling and squaring a Taylor polynomial.

    ``exp(A) = (T_12(A / 2^s))^(2^s)`` with ``s`` the smallest integer that brings the 1-norm of
    ``A / 2^s`` below 1/2, where the truncation error of the order-12 Taylor polynomial is below
    ``0.5^13 / 13! ~ 2e-14`` relative. Unlike ``jax.scipy.linalg.expm`` it has no data-dependent
    branches, so under ``vmap`` (many times, many particles) it evaluates one polynomial instead
    of every Pade approximant; the squarings are a fixed-length loop, masked beyond ``s``, so
    reverse mode differentiates it. Norms above ``0.5 * 2^24`` (a reaction that finished
    about 10^7 half-lives ago) are not scaled further, and the result may overflow to a failed
    solve.
    """
    norm = jnp.max(jnp.sum(jnp.abs(A), axis=0))
    s = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-300) / 0.5)), 0, _MAX_SQUARINGS)
    B = A / jnp.exp2(s)
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    P = eye
    for j in range(_TAYLOR_ORDER, 0, -1):  # Horner: I + B/1 (I + B/2 (I + ...))
        P = eye + (B @ P) / j

    def square(i, X):
        return jnp.where(i < s, X @ X, X)

    return jax.lax.fori_loop(0, _MAX_SQUARINGS, square, P)


def _expm_solver(mechanism: Mechanism) -> Callable:
    """``solve_one(y0, times, k)`` of a linear mechanism by matrix exponentials.

    When ``times`` are known while tracing (a constant of the program, not an argument that
    varies), the work is shared between them as in :func:`make_grid_solver`: one exponential per
    distinct step (one for an evenly spaced grid) and a prefix product, instead of one per time;
    the solution is the same to rounding.
    """
    n = len(mechanism.species)

    def solve_one(y0, times, k):
        K, b = mechanism.linear_system(k)
        M = jnp.zeros((n + 1, n + 1), dtype=jnp.result_type(float))
        M = M.at[:n, :n].set(K).at[:n, n].set(b)
        z0 = jnp.concatenate([y0, jnp.ones((1,), dtype=M.dtype)])
        if isinstance(times, jax.core.Tracer) or np.ndim(times) != 1 or np.size(times) < 2:
            ys = jax.vmap(lambda t: expm_small(t * M) @ z0)(times)[:, :n]
        else:
            steps, index = time_increments(np.asarray(times)[None, :])
            step_maps = jax.vmap(lambda h: expm_small(h * M))(jnp.asarray(steps))  # (U, n+1, n+1)
            maps = jax.lax.associative_scan(lambda a, c: c @ a, step_maps[jnp.asarray(index[0])], axis=0)
            ys = (maps @ z0)[:, :n]
        failed = ~jnp.all(jnp.isfinite(ys))
        return jnp.where(failed, 0.0, ys), jnp.where(failed, ODE_NONFINITE, ODE_OK).astype(jnp.int32)

    return solve_one


def time_increments(times: np.ndarray, *, rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Split fixed output times into steps, shared where they are equal.

    ``t_i = sum_{j <= i} delta_j`` with ``delta_0 = t_0`` (from ``t0 = 0``); steps that agree
    to ``rtol`` times the largest time are one step (their mean), so a grid made by
    ``linspace`` has one step however many times it has.

    Parameters
    ----------
    times : array, shape (E, T)
        Non-decreasing times of each experiment, from ``t0 = 0``.
    rtol : float
        Relative agreement (to the largest time) under which two steps are the same.

    Returns
    -------
    steps : ndarray, shape (U,)
        The distinct steps.
    index : ndarray of int, shape (E, T)
        ``delta[e, i] = steps[index[e, i]]``.
    """
    times = np.asarray(times, dtype=float)
    deltas = np.diff(times, axis=-1, prepend=0.0)
    scale = max(float(np.max(np.abs(times))), 1e-300) * rtol
    keys = np.round(deltas / scale)
    unique, index = np.unique(keys, return_inverse=True)
    index = index.reshape(deltas.shape)
    steps = np.array([deltas[index == u].mean() for u in range(len(unique))])
    return steps, index


def make_grid_solver(mechanism: Mechanism, times: np.ndarray) -> Callable:
    """Exact solver of a linear mechanism at fixed output times, sharing work between times.

    With ``M = [[K, b], [0, 0]]`` (see ``"expm"`` in the module docstring) the solution at
    ``t_i = delta_0 + ... + delta_i`` is ``expm(t_i M) = expm(delta_i M) ... expm(delta_0 M)``
    applied to ``[y0; 1]``, since all these exponentials commute. Only one matrix exponential
    is computed per distinct step (:func:`time_increments`; one for an evenly spaced grid),
    and the products for all times come from a parallel prefix product
    (``jax.lax.associative_scan``, ``log2(T)`` levels of batched matrix products). Gradients
    with respect to ``y0`` and ``k`` by reverse mode, exact up to rounding; the times are fixed.

    Parameters
    ----------
    mechanism : Mechanism
        A linear (first-order) mechanism.
    times : array, shape (E, T)
        Output times of each experiment, non-decreasing from ``t0 = 0``.

    Returns
    -------
    callable
        ``solve(y0, k) -> (ys, failed)`` with ``y0`` of shape ``(E, n_species)`` and ``k`` of
        shape ``(n_parameters,)``; ``ys`` has shape ``(E, T, n_species)`` (zeros for an
        experiment whose solve failed) and ``failed`` shape ``(E,)``.
    """
    if not mechanism.is_linear:
        raise ValueError("make_grid_solver needs a linear (first-order) mechanism")
    n = len(mechanism.species)
    steps, index = time_increments(times)
    steps = jnp.asarray(steps)
    index = jnp.asarray(index)

    def solve(y0, k):
        K, b = mechanism.linear_system(k)
        M = jnp.zeros((n + 1, n + 1), dtype=jnp.result_type(float))
        M = M.at[:n, :n].set(K).at[:n, n].set(b)
        step_maps = jax.vmap(lambda h: expm_small(h * M))(steps)  # (U, n+1, n+1)
        maps = jax.lax.associative_scan(lambda a, c: c @ a, step_maps[index], axis=1)  # (E, T, ...)
        z0 = jnp.concatenate([y0, jnp.ones((y0.shape[0], 1), dtype=M.dtype)], axis=-1)
        ys = jnp.einsum("etij,ej->eti", maps, z0)[..., :n]
        failed = ~jnp.all(jnp.isfinite(ys), axis=(-2, -1))
        return jnp.where(failed[:, None, None], 0.0, ys), failed

    return solve


@contextlib.contextmanager
def _checks_without_callbacks() -> Iterator[None]:
    """Trace ``equinox.error_if`` checks as NaN-producing branches instead of host callbacks.

    Equinox reads its error mode (``EQX_ON_ERROR``, default ``"raise"``) when a check is
    traced; ``"raise"`` compiles to a host callback, which keeps the program out of JAX's
    persistent compilation cache. Within this context (and only here) the mode is ``"nan"``.
    """
    previous = _eqx_errors.EQX_ON_ERROR
    _eqx_errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        _eqx_errors.EQX_ON_ERROR = previous


def _diffrax_solve(mechanism, options: SolverOptions, adjoint, atol: float):
    term = diffrax.ODETerm(mechanism.rhs)
    solver = options.make_solver()
    controller = diffrax.PIDController(rtol=options.rtol, atol=atol)

    def solve_one(y0, times, k):
        with _checks_without_callbacks():
            sol = diffrax.diffeqsolve(
                term,
                solver,
                t0=0.0,
                t1=times[-1],
                dt0=None,
                y0=y0,
                args=k,
                saveat=diffrax.SaveAt(ts=times),
                stepsize_controller=controller,
                max_steps=int(options.max_steps),
                adjoint=adjoint,
                throw=False,
            )
        status = _solve_status(sol)
        return jnp.where(status != ODE_OK, 0.0, sol.ys), status

    return solve_one


def _solve_status(sol) -> jax.Array:
    """The status code of a diffrax solution (see "Solve status" in the module docstring)."""
    finite = jnp.all(jnp.isfinite(sol.ys))
    step_limit = sol.result == diffrax.RESULTS.max_steps_reached
    # At the step limit, mostly rejected steps mean non-finite trial states (a blow-up or an
    # overflow); mostly accepted ones mean steps far too short for the time span (stiffness).
    rejected = sol.stats["num_rejected_steps"] > sol.stats["num_accepted_steps"]
    return jnp.where(
        sol.result == diffrax.RESULTS.successful,
        jnp.where(finite, ODE_OK, ODE_NONFINITE),
        jnp.where(step_limit, jnp.where(rejected, ODE_NONFINITE, ODE_STEP_LIMIT), ODE_FAILED),
    ).astype(jnp.int32)


def _time_cotangent(mechanism, times, ys, k, g_ys, failed):
    """Cotangent of the output times: ``g_i . dy(t_i)/dt_i = g_i . f(t_i, y(t_i), k)``."""
    f = jax.vmap(mechanism.rhs, in_axes=(0, 0, None))(times, ys, k)
    return jnp.where(failed, 0.0, jnp.einsum("ts,ts->t", g_ys, f))


def _forward_solver(mechanism, options, atol) -> Callable:
    primal = _diffrax_solve(mechanism, options, diffrax.ForwardMode(), atol)
    n = len(mechanism.species)

    @jax.custom_vjp
    def solve_flat(x, times):
        return primal(x[:n], times, x[n:])

    def solve_fwd(x, times):
        def with_aux(x):
            ys, status = primal(x[:n], times, x[n:])
            return ys, (ys, status)

        jac, (ys, status) = jax.jacfwd(with_aux, has_aux=True)(x)
        failed = status != ODE_OK
        jac = jnp.where(failed, 0.0, jac)
        return (ys, status), (jac, x, times, ys, failed)

    def solve_bwd(residuals, cotangents):
        jac, x, times, ys, failed = residuals
        g_ys, _ = cotangents
        g_x = jnp.einsum("tsn,ts->n", jac, g_ys)
        return g_x, _time_cotangent(mechanism, times, ys, x[n:], g_ys, failed)

    solve_flat.defvjp(solve_fwd, solve_bwd)

    def solve_one(y0, times, k):
        return solve_flat(jnp.concatenate([y0, k]), times)

    return solve_one


def _adjoint_solver(mechanism, options, atol) -> Callable:
    # BacksolveAdjoint differentiates with respect to y0 and args only; the output times get
    # their cotangent from the right-hand side, as in the forward method.
    controller = diffrax.PIDController(rtol=options.rtol, atol=atol)
    adjoint = diffrax.BacksolveAdjoint(
        solver=options.make_solver(), stepsize_controller=controller, max_steps=int(options.max_steps), throw=False
    )
    primal = _diffrax_solve(mechanism, options, adjoint, atol)
    n = len(mechanism.species)

    @jax.custom_vjp
    def solve_flat(x, times):
        return primal(x[:n], times, x[n:])

    def solve_fwd(x, times):
        (ys, status), pullback = jax.vjp(lambda x: primal(x[:n], times, x[n:]), x)
        return (ys, status), (pullback, x, times, ys, status != ODE_OK)

    def solve_bwd(residuals, cotangents):
        pullback, x, times, ys, failed = residuals
        g_ys, g_status = cotangents
        with _checks_without_callbacks():  # the backward solve is traced here
            (g_x,) = pullback((g_ys, g_status))
        g_x = jnp.where(failed, 0.0, g_x)
        return g_x, _time_cotangent(mechanism, times, ys, x[n:], g_ys, failed)

    solve_flat.defvjp(solve_fwd, solve_bwd)

    def solve_one(y0, times, k):
        return solve_flat(jnp.concatenate([y0, k]), times)

    return solve_one


def make_solver(mechanism: Mechanism, options: SolverOptions | None = None, *, atol: float = 1e-8, status: bool = False):
    """Build ``solve_one(y0, times, k) -> (ys, failed)`` for one experiment.

    Parameters
    ----------
    mechanism : Mechanism
        The reaction mechanism.
    options : SolverOptions, optional
        Solver, tolerances, step limit and gradient method.
    atol : float
        Absolute tolerance used when ``options.atol`` is None.
    status : bool
        Return the solve's status code (int32, see "Solve status" in the module docstring)
        instead of ``failed``.

    Returns
    -------
    callable
        ``solve_one(y0, times, k)`` with ``y0`` of shape ``(n_species,)``, ``times`` of shape
        ``(T,)`` (non-decreasing, from ``t0 = 0``), ``k`` of shape ``(n_parameters,)``; returns
        ``ys`` of shape ``(T, n_species)`` (zeros where the solve failed) and a boolean
        ``failed`` (with ``status=True``: the status code, 0 where solved). Pure JAX: jit, vmap
        and grad work on it.
    """
    options = options or SolverOptions()
    method = options.gradient_method(mechanism)
    tol = options.atol if options.atol is not None else atol
    if method == "expm":
        solve_status = _expm_solver(mechanism)
    elif method == "forward":
        solve_status = _forward_solver(mechanism, options, tol)
    elif method == "adjoint":
        solve_status = _adjoint_solver(mechanism, options, tol)
    else:
        solve_status = _diffrax_solve(mechanism, options, diffrax.RecursiveCheckpointAdjoint(), tol)
    if status:
        return solve_status

    def solve_one(y0, times, k):
        ys, code = solve_status(y0, times, k)
        return ys, code != ODE_OK

    return solve_one


def solve(mechanism: Mechanism, y0, times, k, options: SolverOptions | None = None):
    """Solve ``mechanism`` from ``y0`` at ``t0 = 0`` and return ``(ys, failed)`` at ``times``.

    A convenience wrapper around :func:`make_solver` for one call; see it for shapes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from vi_models.kinetics import Mechanism, solve
    >>> mech = Mechanism.parse("A -> B : k")
    >>> ys, failed = solve(mech, jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), jnp.array([0.5]))
    >>> round(float(ys[1, 0]), 6), bool(failed)
    (0.606531, False)
    """
    fn = make_solver(mechanism, options)
    return fn(jnp.asarray(y0, dtype=float), jnp.asarray(times, dtype=float), jnp.asarray(k, dtype=float))

r"""MAP from several starting points, and the Laplace approximation at each optimum.

The first stage of ``guide="auto"`` (:mod:`inference.engine.auto`). In the unconstrained space
:math:`u` of a model's latent sites, the potential is

.. math::

    U(u) = -\log p(x, T(u)) - \log |\det J_T(u)|,

NumPyro's :func:`~numpyro.infer.util.potential_energy`. From ``R`` starting points at once
L-BFGS (SciPy's ``L-BFGS-B`` on a compiled potential and gradient) minimizes :math:`U`; it is
deterministic, so it converges in tens of iterations where stochastic SVI needs thousands. At each
optimum :math:`\hat u_r` the Hessian :math:`H_r = \nabla^2 U(\hat u_r)` is taken by central
differences of the exact gradient (ODE solvers with custom gradients do not support
forward-over-reverse differentiation), and the Laplace approximation is
:math:`N(\hat u_r, H_r^{-1})` with Cholesky factor :math:`S_r`.

The flat layout of :math:`u` is the one of NumPyro's ``AutoContinuous`` guides for the same
model, so ``(loc, S)`` initializes the full-rank, low-rank and flow guides directly.

References
----------
Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd ed., ch. 7 (L-BFGS). Springer.

Tierney, L. and Kadane, J. B. (1986). Accurate approximations for posterior moments and marginal
densities. JASA 81(393), 82-86.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import potential_energy

from .guides import SpreadInit

__all__ = ["MapResult", "Layout", "layout_and_starts", "find_map"]


class MapResult(NamedTuple):
    """Optima of the potential from several starts, with their Laplace approximations.

    Attributes
    ----------
    locs : ndarray, shape (R, d)
        Unconstrained optimum reached from each start (AutoContinuous layout).
    potential : ndarray, shape (R,)
        :math:`U` at each optimum (``inf`` where the start was not finite).
    scale_trils : ndarray, shape (R, d, d)
        Cholesky factor of :math:`H_r^{-1}`; NaN where the Hessian is not positive definite.
    best : int
        The start with the lowest potential.
    iterations : ndarray, shape (R,)
        L-BFGS iterations used.
    grad_norm : ndarray, shape (R,)
        Gradient norm at each optimum.
    """

    locs: np.ndarray
    potential: np.ndarray
    scale_trils: np.ndarray
    best: int
    iterations: np.ndarray
    grad_norm: np.ndarray

    @property
    def laplace_ok(self) -> bool:
        """Whether the best optimum has a positive definite Hessian."""
        return bool(np.all(np.isfinite(self.scale_trils[self.best])))


class Layout(NamedTuple):
    """The flat unconstrained layout of a model's latent sites.

    Sites sorted by name, each raveled: the order of NumPyro's ``AutoContinuous`` guides (their
    initial values come back from a compiled function as a dict, and JAX orders dict keys).

    Attributes
    ----------
    names : tuple of str
    shapes : tuple of tuple
        Each site's unconstrained shape.
    """

    names: tuple
    shapes: tuple

    @property
    def size(self) -> int:
        """Number ``d`` of unconstrained dimensions."""
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def unpack(self, u) -> dict:
        """Flat unconstrained ``u`` (``(d,)``) to a dict of unconstrained site values."""
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = int(np.prod(shape))
            out[name] = jnp.reshape(u[i : i + n], shape)
            i += n
        return out

    def constrain(self, model, u, args=(), kwargs=None) -> dict:
        """Flat unconstrained ``u`` to a dict of constrained site values of ``model``."""
        from numpyro.infer.util import constrain_fn

        values = jax.jit(lambda x: constrain_fn(model, args, kwargs or {}, self.unpack(x)))(jnp.asarray(u))
        return {name: np.asarray(values[name]) for name in self.names}


def layout_and_starts(model, args=(), kwargs=None, *, num_starts: int = 8, spread: float = 1.0, seed: int = 0,
                      init_values: dict | None = None):
    r"""The model's flat layout and ``num_starts`` starting points in it.

    Start 0 is the centre: each site's prior median in the unconstrained space, or
    :math:`T^{-1}` of a given value (``init_values``: e.g. initial concentrations read off the
    data); start :math:`r > 0` is :math:`c + s\,(u^*_r - c)` with :math:`u^*_r` a prior draw
    (:class:`inference.engine.guides.SpreadInit`, applied site by site as the model runs, so priors
    that depend on other sites see the start's values). One compiled forward run of the model,
    vectorized over starts; no gradient is compiled.

    Returns
    -------
    (Layout, ndarray of shape (num_starts, d))
    """
    kwargs = kwargs or {}
    init = SpreadInit(values=init_values)

    def latent_sites(trace):
        return [(k, s) for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]

    order: list = []

    def unconstrained(key, s):
        with init.spread(s):
            trace = handlers.trace(handlers.substitute(handlers.seed(model, key), substitute_fn=init)).get_trace(*args, **kwargs)
        sites = sorted(latent_sites(trace), key=lambda item: item[0])
        order[:] = [name for name, _ in sites]
        return [biject_to(site["fn"].support).inv(site["value"]) for _, site in sites]

    keys = jax.random.split(jax.random.PRNGKey(seed), num_starts)
    spreads = jnp.where(jnp.arange(num_starts) == 0, 0.0, spread)
    shapes = jax.eval_shape(unconstrained, keys[0], spreads[0])
    layout = Layout(tuple(order), tuple(tuple(v.shape) for v in shapes))
    flat = jax.jit(jax.vmap(lambda k, s: jnp.concatenate([jnp.ravel(v) for v in unconstrained(k, s)])))
    return layout, np.asarray(flat(keys, spreads))


def _potential_fn(model, layout, args, kwargs):
    def potential(u):
        value = potential_energy(model, args, kwargs, layout.unpack(u))
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    return potential


def find_map(model, args=(), kwargs=None, *, layout, starts: np.ndarray, max_iter: int = 500, gtol: float = 1e-6) -> MapResult:
    """Minimize the potential from each start with L-BFGS and take the Laplace factors.

    One compiled function, the potential and its gradient, serves every start, every L-BFGS
    iteration (SciPy's ``L-BFGS-B`` drives it from the host: for the few parameters of these
    models its bookkeeping costs microseconds, while compiling a line search into the program
    costs seconds) and the central differences of the Hessian.

    Parameters
    ----------
    model : callable
    args, kwargs
        The model's arguments.
    layout : Layout
        The flat layout (:func:`layout_and_starts`).
    starts : ndarray, shape (R, d)
    max_iter : int
        L-BFGS iteration limit per start.
    gtol : float
        Stop a start when its largest gradient component is below this.
    """
    from scipy.optimize import minimize

    kwargs = kwargs or {}
    potential = _potential_fn(model, layout, args, kwargs)
    value_and_grad = jax.jit(jax.value_and_grad(potential))

    def fun(u):
        value, grad = value_and_grad(jnp.asarray(u))
        value, grad = float(value), np.asarray(grad, dtype=float)
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            return np.inf, np.zeros_like(grad)
        return value, grad

    R, d = starts.shape
    locs = np.array(starts, dtype=float)
    values = np.full(R, np.inf)
    iters = np.zeros(R, dtype=int)
    gnorm = np.full(R, np.inf)
    for r in range(R):
        if not np.isfinite(fun(locs[r])[0]):
            continue
        with np.errstate(all="ignore"):
            opt = minimize(
                fun, locs[r], jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-14}
            )
        locs[r], values[r], iters[r] = opt.x, opt.fun, opt.nit
        gnorm[r] = float(np.linalg.norm(fun(opt.x)[1]))
    best = int(np.argmin(values))

    trils = np.full((R, d, d), np.nan)
    for r in range(R):
        if np.isfinite(values[r]):
            trils[r] = _laplace_factor(lambda u: fun(u)[1], locs[r])
    return MapResult(locs, values, trils, best, iters, gnorm)


def _laplace_factor(grad, u: np.ndarray, rel_step: float = 1e-4) -> np.ndarray:
    """Cholesky factor of the inverse of the central-difference Hessian of ``grad``'s function; NaN if not PD."""
    d = u.size
    h = rel_step * np.maximum(1.0, np.abs(u))
    hess = np.empty((d, d))
    for i in range(d):
        e = np.zeros(d)
        e[i] = h[i]
        hess[i] = (grad(u + e) - grad(u - e)) / (2 * h[i])
    hess = 0.5 * (hess + hess.T)
    try:
        chol = np.linalg.cholesky(hess)
        inv = np.linalg.inv(chol)  # H^{-1} = C^{-T} C^{-1}
        return np.linalg.cholesky(inv.T @ inv)
    except np.linalg.LinAlgError:
        return np.full((d, d), np.nan)

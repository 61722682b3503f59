r"""Decisions under uncertainty: maximize an expected utility by the pathwise gradient.

Given uncertain parameters :math:`\theta` with a posterior :math:`p(\theta \mid y)` and a
utility :math:`f(x, \theta)` of a decision :math:`x`, :func:`optimize_expectation` maximizes
(or minimizes)

.. math::

    U(x) = \mathbb E_{\theta \sim p(\theta \mid y)}[f(x, \theta)]

by stochastic gradient ascent. Each step draws a batch :math:`\theta_1, \dots, \theta_B` that
does not depend on :math:`x` and follows the Monte Carlo gradient

.. math::

    \nabla_x U(x) \approx \frac1B \sum_{b=1}^B \nabla_x f(x, \theta_b),

the pathwise (reparameterization) gradient: an unbiased estimate of :math:`\nabla_x U`,
because differentiation and expectation commute when the distribution of :math:`\theta` does
not depend on :math:`x`. It is the estimator that trains variational guides
(:math:`z = g_\phi(\epsilon)`, Kingma & Welling 2014) and deterministic policies in
reinforcement learning (:math:`a = \mu(s) + \sigma\epsilon`, Silver et al. 2014). ``f`` must
be differentiable in ``x`` with JAX: through an ODE solve with diffrax, for example. The
optimizer is optax's Adam by default (Kingma & Ba 2015); the answer is the Polyak average of
the iterates over the last 20% of steps (Polyak & Juditsky 1992), which removes most of the
step-to-step noise of a constant learning rate.

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Kingma, D. P. and Ba, J. (2015). Adam: a method for stochastic optimization. ICLR.

Polyak, B. T. and Juditsky, A. B. (1992). Acceleration of stochastic approximation by
averaging. SIAM Journal on Control and Optimization 30(4), 838-855.

Silver, D., Lever, G., Heess, N., Degris, T., Wierstra, D. and Riedmiller, M. (2014).
Deterministic policy gradient algorithms. ICML.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..engine.result import FitResult
from ..engine.settings import positive_int

__all__ = ["DecisionResult", "optimize_expectation", "expected_value"]

_AVERAGE_FRACTION = 0.2  # Polyak averaging over the last 20% of steps
_EVAL_BATCH = 1024  # draws per vectorized batch when averaging over many draws


@dataclass(frozen=True, eq=False)
class DecisionResult:
    r"""The answer of :func:`optimize_expectation`. Arrays are NumPy.

    Attributes
    ----------
    x : float or pytree
        The optimal decision, in the structure of ``init`` (a float for a scalar ``init``,
        0-d leaves as floats, other leaves as ndarrays): the average of the iterates over the
        last 20% of steps (at least one).
    value : float
        Monte Carlo estimate of :math:`U(x) = \mathbb E_\theta[f(x, \theta)]` at ``x``: the
        mean over every draw of a draws dict, or over ``value_draws`` fresh draws of a fit or
        sampler.
    value_se : float
        Its Monte Carlo standard error, ``sd / sqrt(n)`` over the ``n`` draws (0 for ``n = 1``).
    trace : ndarray, shape (steps,)
        The minibatch estimate of :math:`U` at each step's iterate (NaN where a step was
        not finite).
    x_trace : ndarray or pytree of ndarray
        The iterate of each step, where ``trace`` was evaluated: shape ``(steps, *x_shape)``,
        or a pytree like ``init`` of such arrays.
    steps : int
        Number of optimization steps.
    maximize : bool
        Whether :math:`U` was maximized (True) or minimized.
    source : str
        Where the draws of each step came from: ``"draws"`` (minibatches of a draws dict),
        ``"guide"`` (fresh draws from a fitted guide, inside the compiled loop), ``"pool"``
        (minibatches of a pool of ``value_draws`` draws of a fit) or ``"sampler"`` (fresh
        draws of a callable).
    num_value_draws : int
        Number of draws behind ``value``.
    nonfinite_steps : int
        Steps skipped because the objective or its gradient was not finite.
    """

    x: Any
    value: float
    value_se: float
    trace: np.ndarray
    x_trace: Any
    steps: int
    maximize: bool = True
    source: str = "draws"
    num_value_draws: int = 0
    nonfinite_steps: int = 0

    def __str__(self) -> str:
        goal = "max" if self.maximize else "min"
        return (
            f"{goal} E[f(x, theta)] = {self.value:.6g} +- {self.value_se:.2g} (MC se, {self.num_value_draws} draws) "
            f"at x = {_format_x(self.x)} after {self.steps} steps (draws: {self.source})"
        )


def _format_x(x) -> str:
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {_format_x(v)}" for k, v in x.items()) + "}"
    if isinstance(x, float):
        return f"{x:.6g}"
    return np.array2string(np.asarray(x), precision=6)


# -- checks ------------------------------------------------------------------------------------


def _as_decision(init: Any):
    """``init`` as a pytree of float arrays, with checks."""
    leaves, treedef = jax.tree.flatten(init)
    if not leaves:
        raise ValueError(f"init must be a float or a pytree of arrays with at least one number, got {init!r}")
    out = []
    for leaf in leaves:
        try:
            arr = np.asarray(leaf)
        except Exception as err:  # noqa: BLE001 - report any unconvertible leaf the same way
            raise ValueError(f"init must hold numbers, and one of its leaves is {leaf!r}") from err
        if arr.dtype.kind not in "biuf":
            raise ValueError(
                f"init must hold real numbers, and one of its leaves has dtype {arr.dtype} ({leaf!r}); "
                "decisions are continuous: give them as floats"
            )
        arr = arr.astype(float)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"init must be finite, and one of its leaves is {arr}")
        out.append(arr)
    return out, treedef


def _gather(data: dict, key, b: int) -> dict:
    """``b`` draws picked uniformly with replacement from a draws dict (leading axis ``n``)."""
    n = jax.tree.leaves(data)[0].shape[0]
    idx = jax.random.randint(key, (b,), 0, n)
    return jax.tree.map(lambda v: v[idx], data)


@dataclass(frozen=True)
class _GuideSampler:
    """Fresh draws from a guide with a flat latent Gaussian: ``theta = T(mu + L eps)``."""

    guide: Any

    def __call__(self, params, key, b: int) -> dict:
        from numpyro.distributions.transforms import biject_to

        from ..engine.sampling import _latent_names

        latent = self.guide.get_posterior(params).sample(key, (b,))
        unpacked = jax.vmap(self.guide._unpack_latent)(latent)
        trace = self.guide.prototype_trace
        return {n: biject_to(trace[n]["fn"].support)(unpacked[n]) for n in _latent_names(self.guide)}


@dataclass(frozen=True)
class _CallableSampler:
    """Fresh draws of a callable ``key -> theta``, one per key."""

    fn: Callable

    def __call__(self, data, key, b: int) -> dict:
        return jax.vmap(self.fn)(jax.random.split(key, b))


class _Source(NamedTuple):
    """Where the uncertain parameters come from.

    ``sampler(data, key, b)`` (static, hashable) returns a batch of ``b`` draws inside the compiled
    loop; ``data`` is its array input; ``value_draws`` (leading axis ``n``) give the final estimate
    of ``U``; ``one`` is a single draw for the checks.
    """

    kind: str
    sampler: Callable
    data: Any
    value_draws: dict
    one: dict


def _check_draws_dict(draws: Mapping) -> tuple[dict, int]:
    if not draws:
        raise ValueError("draws is an empty dict; give the posterior draws, e.g. result.sample(4000)")
    out, sizes = {}, {}
    for name, value in draws.items():
        arr = jnp.asarray(value)
        if arr.ndim == 0:
            raise ValueError(
                f"draws[{name!r}] is a single number; each site needs a leading axis of draws, "
                f"e.g. {{{name!r}: np.array([{float(arr)}])}} for one draw"
            )
        if not jnp.issubdtype(arr.dtype, jnp.number) and arr.dtype != jnp.bool_:
            raise ValueError(f"draws[{name!r}] must be numeric, got dtype {arr.dtype}")
        bad = int(np.sum(~np.isfinite(np.asarray(arr, dtype=float).reshape(arr.shape[0], -1)).any(axis=1)))
        if bad:
            raise ValueError(
                f"draws[{name!r}] has {bad} non-finite draws of {arr.shape[0]}; drop them before deciding "
                "(a failed ODE solve, or a guide that put mass where the model has none)"
            )
        out[name], sizes[name] = arr, arr.shape[0]
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            f"the sites of draws have different numbers of draws ({listed}); every site needs the same "
            "leading axis, one entry per joint posterior draw"
        )
    return out, next(iter(sizes.values()))


def _dict_source(draws: Mapping, kind: str = "draws") -> _Source:
    arrays, _ = _check_draws_dict(draws)
    return _Source(kind, _gather, arrays, arrays, jax.tree.map(lambda v: v[0], arrays))


def _fit_source(result: FitResult, value_draws: int, seed: int) -> _Source:
    from numpyro.infer.autoguide import AutoContinuous

    from ..engine.sampling import _static_supports

    guide = result.guide
    pool = result.sample(value_draws, seed=seed + 1)
    flat = getattr(result, "posterior", None)
    if flat is not None and flat.importance is None and flat.family.name != "iaf":
        guide, params = flat.numpyro_guide(result.best_restart)
        arrays, _ = _check_draws_dict(pool)
        return _Source("guide", _GuideSampler(guide), params, arrays, jax.tree.map(lambda v: v[0], arrays))
    if isinstance(guide, AutoContinuous) and _static_supports(guide):
        params = jax.tree.map(lambda v: jnp.asarray(v[result.best_restart]), result.restart_params)
        arrays, _ = _check_draws_dict(pool)
        return _Source("guide", _GuideSampler(guide), params, arrays, jax.tree.map(lambda v: v[0], arrays))
    return _dict_source(pool, kind="pool")


def _sampler_source(sampler: Callable, value_draws: int, seed: int) -> _Source:
    fn = _CallableSampler(sampler)
    try:
        draws = jax.jit(fn, static_argnums=2)((), jax.random.PRNGKey(seed + 1), value_draws)
    except Exception as err:  # noqa: BLE001 - name the callable's contract whatever went wrong
        raise ValueError(
            "draws is a callable, so it must map one PRNG key to one draw of theta (a dict of arrays) "
            f"and be traceable by JAX; calling it failed: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(draws, Mapping):
        raise ValueError(
            f"draws is a callable, so it must return a dict of arrays (site -> value), got {type(draws).__name__}"
        )
    arrays, _ = _check_draws_dict(draws)
    return _Source("sampler", fn, (), arrays, jax.tree.map(lambda v: v[0], arrays))


def _make_source(draws: Any, value_draws: int, seed: int) -> _Source:
    if isinstance(draws, FitResult):
        return _fit_source(draws, value_draws, seed)
    if isinstance(draws, Mapping):
        return _dict_source(draws)
    if callable(draws) and not hasattr(draws, "sample"):
        return _sampler_source(draws, value_draws, seed)
    hint = "; for a NutsResult pass its draws, result.sample()" if hasattr(draws, "sample") else ""
    raise ValueError(
        "draws must be a dict of posterior draws (site -> array with a leading axis of draws), a FitResult, "
        f"or a callable key -> theta dict, got {type(draws).__name__}{hint}"
    )


def _check_objective(objective: Callable, x, theta) -> None:
    if not callable(objective):
        raise ValueError(f"objective must be a function f(x, theta) -> scalar, got {type(objective).__name__}")
    sites = ", ".join(theta)
    try:
        out = jax.eval_shape(objective, x, theta)
    except Exception as err:  # noqa: BLE001 - name the contract whatever went wrong
        raise ValueError(
            f"objective(x, theta) failed on the initial x and one draw of theta (sites {sites}); it must take x "
            f"shaped like init and a dict of one draw per site, and use JAX operations: {type(err).__name__}: {err}"
        ) from err
    if not hasattr(out, "shape") or out.shape not in ((), (1,)):
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"objective(x, theta) must return one number for one draw of theta, got shape {shape}; "
            "sum or average the utility inside the objective"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"objective(x, theta) must return a float (to be differentiated), got dtype {out.dtype}")


# -- bounds ------------------------------------------------------------------------------------


def _broadcast_bound(value, shape, what: str, default: float) -> np.ndarray:
    if value is None:
        return np.full(shape, default)
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=float), shape)
    except ValueError as err:
        raise ValueError(
            f"bounds: the {what} bound {value!r} does not fit the decision's shape {shape}; give one number "
            "or an array of that shape"
        ) from err
    return np.array(arr)


def _leaf_bounds(
    bounds, init, leaves: list[np.ndarray], treedef, method: str = "transform"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(low, high)`` per leaf, infinite where unbounded."""
    n = len(leaves)
    if bounds is None:
        return [(np.full(v.shape, -np.inf), np.full(v.shape, np.inf)) for v in leaves]
    if isinstance(init, Mapping) and isinstance(bounds, Mapping):
        unknown = sorted(set(bounds) - set(init))
        if unknown:
            raise ValueError(
                f"bounds are given for {', '.join(map(repr, unknown))}, which init does not have "
                f"(decisions: {', '.join(map(repr, init))})"
            )
        low_tree, high_tree = {}, {}
        for key, sub in init.items():
            spec = bounds.get(key)
            if spec is None:
                spec = (None, None)
            if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
                raise ValueError(f"bounds[{key!r}] must be a pair (low, high), got {spec!r}")
            lo = -np.inf if spec[0] is None else spec[0]
            hi = np.inf if spec[1] is None else spec[1]
            low_tree[key] = jax.tree.map(lambda _, v=lo: v, sub)
            high_tree[key] = jax.tree.map(lambda _, v=hi: v, sub)
        # Flattened like init (JAX orders dict keys), so each leaf meets its own bounds.
        lows, highs = jax.tree.leaves(type(init)(low_tree)), jax.tree.leaves(type(init)(high_tree))
    else:
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise ValueError(
                f"bounds must be a pair (low, high) (numbers, None, or pytrees like init), or for a dict init a "
                f"dict {{name: (low, high)}}, got {bounds!r}"
            )
        lows, highs = [], []
        for value, out in zip(bounds, (lows, highs)):
            if value is None or np.ndim(value) == 0 and not isinstance(value, (tuple, list, Mapping)):
                out += [value] * n
                continue
            value_leaves, value_def = jax.tree.flatten(value, is_leaf=lambda v: v is None)
            if value_def == treedef or len(value_leaves) == n and n > 1:
                out += list(value_leaves)
            elif n == 1:
                out.append(value)
            else:
                raise ValueError(
                    f"bounds: {value!r} does not match the structure of init; give one number for every leaf "
                    "or a pytree like init"
                )
    result = []
    for i, leaf in enumerate(leaves):
        lo = _broadcast_bound(lows[i], leaf.shape, "lower", -np.inf)
        hi = _broadcast_bound(highs[i], leaf.shape, "upper", np.inf)
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise ValueError("bounds must not be NaN; use None or inf for an open side")
        if np.any(lo >= hi):
            raise ValueError(
                f"bounds: the lower bound {lo} is not below the upper bound {hi}; to hold a decision fixed, "
                "leave it out of x and close over it in the objective"
            )
        if method == "clip" and (np.any(leaf < lo) or np.any(leaf > hi)):
            raise ValueError(f"init {leaf} lies outside its bounds ({lo}, {hi}); start inside them")
        if method == "transform" and (np.any(leaf <= lo) or np.any(leaf >= hi)):
            raise ValueError(
                f"init {leaf} lies on or outside its bounds ({lo}, {hi}); start strictly inside them, where "
                "the bounding transform is defined, or use bounds_method='clip'"
            )
        result.append((lo, hi))
    return result


class _Transform:
    """Map an unconstrained ``u`` onto a box elementwise, and back (``method="transform"``).

    ``x = low + (high - low) sigmoid(u)`` with both bounds, ``x = low + softplus(u)`` with a lower
    bound only, ``x = high - softplus(u)`` with an upper bound only, ``x = u`` without bounds.
    With ``method="clip"``, ``x = u`` and :meth:`project` clips ``u`` into the box after each step.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, method: str = "transform"):
        self.clip = method == "clip"
        self.box = (np.asarray(low, dtype=float), np.asarray(high, dtype=float))
        self.both = np.isfinite(low) & np.isfinite(high)
        self.lower = np.isfinite(low) & ~np.isfinite(high)
        self.upper = ~np.isfinite(low) & np.isfinite(high)
        self.any = bool(np.any(np.isfinite(low) | np.isfinite(high)))
        # Infinite bounds replaced by 0 so that unused branches of `where` have finite gradients.
        self.low = np.where(np.isfinite(low), low, 0.0)
        self.high = np.where(np.isfinite(high), high, 0.0)
        self._key = (self.clip, self.box[0].shape, self.box[0].tobytes(), self.box[1].tobytes())

    # Hashable by value: a static argument of the compiled loop, reused by equal bounds.
    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Transform) and self._key == other._key

    def project(self, u):
        if not (self.clip and self.any):
            return u
        return jnp.clip(u, self.box[0], self.box[1])

    def forward(self, u):
        if self.clip or not self.any:
            return u
        lo, hi = jnp.asarray(self.low), jnp.asarray(self.high)
        x = jnp.where(self.both, lo + (hi - lo) * jax.nn.sigmoid(u), u)
        x = jnp.where(self.lower, lo + jax.nn.softplus(u), x)
        return jnp.where(self.upper, hi - jax.nn.softplus(u), x)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        if self.clip or not self.any:
            return x
        with np.errstate(all="ignore"):
            span = np.where(self.both, self.high - self.low, 1.0)
            p = (x - self.low) / span
            u = np.where(self.both, np.log(p) - np.log1p(-p), x)
            d = np.where(self.lower, x - self.low, self.high - x)
            inv_softplus = np.where(d > 30, d, np.log(np.expm1(np.maximum(d, 1e-300))))
            return np.where(self.lower | self.upper, inv_softplus, u)


# -- estimates ---------------------------------------------------------------------------------


@partial(jax.jit, static_argnums=0)
def _mean_and_se(objective: Callable, x, draws: dict):
    """Mean of ``objective(x, theta_i)`` over the draws and its standard error (compiled once per objective)."""
    n = jax.tree.leaves(draws)[0].shape[0]
    values = jax.lax.map(lambda th: jnp.reshape(objective(x, th), ()), draws, batch_size=min(n, _EVAL_BATCH))
    mean = jnp.mean(values)
    se = jnp.std(values, ddof=1) / jnp.sqrt(n) if n > 1 else jnp.zeros(())
    return mean, se


def expected_value(objective: Callable, x: Any, draws: Any, *, value_draws: int = 4000, seed: int = 0):
    r"""Monte Carlo estimate of :math:`U(x) = \mathbb E_\theta[f(x, \theta)]` and its standard error.

    Parameters
    ----------
    objective : callable
        ``f(x, theta) -> scalar`` with ``theta`` one draw (a dict of arrays of the site shapes).
    x : float or pytree
        The decision.
    draws : dict, FitResult or callable
        As in :func:`optimize_expectation`: every draw of a dict is used; a fit or a callable
        ``key -> theta`` gives ``value_draws`` fresh draws.
    value_draws : int
        Number of draws from a fit or a callable.
    seed : int
        Seed of those draws (a fit draws with ``seed + 1``, as :func:`optimize_expectation`).

    Returns
    -------
    mean, se : float
        The average of ``f(x, theta_i)`` over the ``n`` draws and ``sd / sqrt(n)`` (0 for one draw).
    """
    value_draws = positive_int("value_draws", value_draws)
    source = _make_source(draws, value_draws, seed)
    leaves, treedef = _as_decision(x)
    x = jax.tree.unflatten(treedef, [jnp.asarray(v) for v in leaves])
    _check_objective(objective, x, source.one)
    mean, se = _mean_and_se(objective, x, source.value_draws)
    return float(mean), float(se)


# -- the optimization --------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _adam(lr: float) -> optax.GradientTransformation:
    # One object per learning rate, so that the compiled loop is reused across calls.
    return optax.adam(lr)


class _Spec(NamedTuple):
    """Everything static about one optimization: the compiled loop is cached on it."""

    objective: Callable
    treedef: Any
    transforms: tuple
    batch_size: int
    sign: float
    optimizer: optax.GradientTransformation
    sampler: Callable
    gradient: str


def _to_x(spec: _Spec, u_leaves):
    return jax.tree.unflatten(spec.treedef, [tr.forward(u) for tr, u in zip(spec.transforms, u_leaves)])


@partial(jax.jit, static_argnums=0)
def _run_chunk(spec: _Spec, carry, keys, data):
    """``lax.scan`` of optimization steps over ``keys``; per step the estimate, the iterate and a non-finite flag."""

    def step(carry, key):
        u, opt_state = carry
        theta = spec.sampler(data, key, spec.batch_size)

        def loss(u):
            x = _to_x(spec, u)
            values = jax.vmap(lambda th: jnp.reshape(spec.objective(x, th), ()))(theta)
            mean = jnp.mean(values)
            return spec.sign * mean, (mean, x)

        if spec.gradient == "forward":
            grad, (mean, x) = jax.jacfwd(loss, has_aux=True)(u)
        else:
            (_, (mean, x)), grad = jax.value_and_grad(loss, has_aux=True)(u)
        finite = jnp.isfinite(mean) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in grad]))
        grad = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
        updates, new_opt = spec.optimizer.update(grad, opt_state, u)
        new_u = [tr.project(v) for tr, v in zip(spec.transforms, optax.apply_updates(u, updates))]
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        carry = (jax.tree.map(keep, new_u, u), jax.tree.map(keep, new_opt, opt_state))
        return carry, (jnp.where(finite, mean, jnp.nan), jax.tree.leaves(x), ~finite)

    return jax.lax.scan(step, carry, keys)


def optimize_expectation(
    objective: Callable[[Any, dict], Any],
    draws: Mapping | FitResult | Callable,
    init: Any,
    *,
    steps: int = 500,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    bounds: Any = None,
    maximize: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = False,
    value_draws: int = 4000,
    bounds_method: str = "transform",
    gradient: str = "reverse",
) -> DecisionResult:
    r"""Find the decision ``x`` that maximizes (or minimizes) ``E_theta[objective(x, theta)]``.

    Stochastic gradient ascent on :math:`U(x) = \mathbb E_\theta[f(x, \theta)]` with the
    pathwise gradient :math:`\frac1B \sum_b \nabla_x f(x, \theta_b)` of a batch of ``B``
    draws (module docstring). The whole loop is one compiled ``jax.lax.scan`` (about 20
    chunks with ``progress=True``; the numbers are the same).

    Parameters
    ----------
    objective : callable
        ``f(x, theta) -> scalar``: the utility (or cost, with ``maximize=False``) of decision
        ``x`` (structured like ``init``) for one draw ``theta`` (a dict: site -> array of the
        site's shape). It must be differentiable in ``x`` with JAX, e.g. through a diffrax
        solve; it is ``vmap``-ed over the draws of a batch.
    draws : dict, FitResult or callable
        The uncertain parameters:

        * a dict of posterior draws, site -> array with a leading axis of ``n`` draws (e.g.
          ``FitResult.sample(4000)``): each step uses ``batch_size`` draws picked uniformly
          with replacement, so ``U`` is the average over these ``n`` draws;
        * a :class:`FitResult`: each step draws ``batch_size`` fresh values from the fitted
          guide inside the compiled loop, :math:`\theta = T(\mu + L\epsilon)` with
          :math:`\epsilon \sim N(0, I)` (guides with a flat latent Gaussian, such as the
          default ``multivariate_normal``); for other guides, ``value_draws`` draws are taken
          once with :meth:`FitResult.sample` and minibatched like a dict (``source="pool"``);
        * a callable ``sampler(key) -> theta dict``: one draw per PRNG key, traceable by JAX;
          each step ``vmap``-s it over ``batch_size`` fresh keys.
    init : float or pytree of arrays
        The starting decision; its structure is the structure of ``x``.
    steps : int
        Optimization steps.
    lr : float
        Learning rate of the default optimizer, ``optax.adam(lr)``. With bounds it acts on the
        unconstrained ``u`` (see ``bounds``).
    batch_size : int
        Draws ``B`` per step.
    seed : int
        Seed of the draws; the same seed gives the same numbers.
    bounds : pair or dict, optional
        Box constraints ``low <= x <= high``. Give ``(low, high)`` with numbers (for every
        element), ``None`` (an open side) or pytrees like ``init``; for a dict ``init`` also
        ``{name: (low, high)}`` (names left out are unbounded). See ``bounds_method``.
    maximize : bool
        Maximize ``U`` (default); False minimizes it (an expected cost or loss).
    optimizer : optax.GradientTransformation, optional
        Replaces ``optax.adam(lr)`` (e.g. with a learning-rate schedule); ``lr`` is then unused.
    progress : bool
        Show a progress bar (tqdm).
    value_draws : int
        Number of fresh draws behind ``value`` for a fit or a callable (a dict uses all of its
        draws); also the pool size for a fit whose guide is minibatched.
    bounds_method : {"transform", "clip"}
        How ``bounds`` are enforced. ``"transform"`` (default) optimizes an unconstrained ``u``
        with ``x = low + (high - low) sigmoid(u)`` (both bounds), ``low + softplus(u)`` (lower
        only) or ``high - softplus(u)`` (upper only): ``x`` never leaves the open box, the
        step size adapts to the width of the box, and ``init`` must lie strictly inside. An
        active bound is only approached (the sigmoid saturates, and Adam's steps shrink
        with it): after some hundred steps, expect ``x`` a few thousandths of the box's width inside.
        ``"clip"`` takes the step in ``x`` itself and projects it onto the box
        (:math:`x \leftarrow \min(\max(x, low), high)`): an active bound is reached
        exactly, and ``lr`` is in the units of ``x``.
    gradient : {"reverse", "forward"}
        How :math:`\nabla_x` is computed: ``"reverse"`` (``jax.value_and_grad``, default) or
        ``"forward"`` (``jax.jacfwd``, one JVP per element of ``x``). Forward mode suits the few
        variables a decision usually has, and objectives that support only forward mode, such as
        a diffrax solve with ``adjoint=diffrax.ForwardMode()`` (which also compiles several times
        faster than reverse mode through diffrax's checkpointed loop).

    Returns
    -------
    DecisionResult
        ``x`` (averaged over the last 20% of steps), ``value`` and ``value_se`` (the Monte Carlo
        estimate of ``U(x)``), ``trace`` of shape ``(steps,)`` and ``x_trace`` of shape
        ``(steps, *x_shape)``.

    Raises
    ------
    ValueError
        For bad settings, draws, bounds or an objective that does not return one float per
        draw, before anything is compiled; and when no step had a finite objective.

    Examples
    --------
    >>> import numpy as np
    >>> theta = {"m": np.random.default_rng(0).normal(2.0, 0.5, 4000)}
    >>> res = optimize_expectation(lambda x, th: -((x - th["m"]) ** 2), theta, 0.0, steps=300, lr=0.1)
    >>> round(res.x, 1), round(float(theta["m"].mean()), 1)
    (2.0, 2.0)
    """
    steps = positive_int("steps", steps)
    batch_size = positive_int("batch_size", batch_size)
    value_draws = positive_int("value_draws", value_draws)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if optimizer is None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.number)) or not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        optimizer = _adam(float(lr))
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"optimizer must be an optax.GradientTransformation (e.g. optax.adam(0.05)), got {type(optimizer).__name__}"
        )
    if not isinstance(maximize, (bool, np.bool_)):
        raise ValueError(f"maximize must be True or False, got {maximize!r}")

    if gradient not in ("reverse", "forward"):
        raise ValueError(f"gradient must be 'reverse' or 'forward', got {gradient!r}")
    if bounds_method not in ("transform", "clip"):
        raise ValueError(f"bounds_method must be 'transform' or 'clip', got {bounds_method!r}")
    leaves, treedef = _as_decision(init)
    boxes = _leaf_bounds(bounds, init, leaves, treedef, bounds_method)
    transforms = [_Transform(lo, hi, bounds_method) for lo, hi in boxes]
    source = _make_source(draws, value_draws, int(seed))
    x0 = jax.tree.unflatten(treedef, [jnp.asarray(v) for v in leaves])
    _check_objective(objective, x0, source.one)

    sign = -1.0 if maximize else 1.0
    spec = _Spec(objective, treedef, tuple(transforms), batch_size, sign, optimizer, source.sampler, gradient)

    u0 = [jnp.asarray(tr.inverse(v)) for tr, v in zip(transforms, leaves)]
    carry = (u0, optimizer.init(u0))
    keys = jax.random.split(jax.random.PRNGKey(int(seed)), steps)
    n_chunks = min(20, steps) if progress else 1
    bounds_at = np.linspace(0, steps, n_chunks + 1).astype(int)
    traces, x_traces, bad = [], [], []
    from tqdm.auto import tqdm

    with tqdm(total=steps, desc="decision", unit="step", disable=not progress, leave=False) as bar:
        for a, b in zip(bounds_at[:-1], bounds_at[1:]):
            carry, (trace, xs, nonfinite) = _run_chunk(spec, carry, keys[a:b], source.data)
            traces.append(np.asarray(trace))
            x_traces.append([np.asarray(v) for v in xs])
            bad.append(np.asarray(nonfinite))
            bar.update(int(b - a))
            if np.isfinite(traces[-1]).any():
                bar.set_postfix_str(f"E[f] {np.nanmean(traces[-1][-max(1, (b - a) // 5) :]):.4g}")
    trace = np.concatenate(traces)
    x_leaves = [np.concatenate([chunk[i] for chunk in x_traces]) for i in range(len(leaves))]
    nonfinite = int(np.concatenate(bad).sum())
    if nonfinite == steps:
        raise ValueError(
            f"the objective or its gradient was not finite at any of the {steps} steps (starting from x = "
            f"{_format_x(init)}); check that objective(x, theta) is finite and differentiable there"
        )
    if nonfinite:
        warnings.warn(
            f"{nonfinite} of {steps} steps were skipped because the objective or its gradient was not finite",
            RuntimeWarning,
            stacklevel=2,
        )

    finite_rows = ~np.concatenate(bad)
    n_avg = max(1, math.ceil(_AVERAGE_FRACTION * steps))
    tail = np.arange(steps) >= steps - n_avg
    rows = tail & finite_rows if np.any(tail & finite_rows) else finite_rows
    x_avg = [v[rows].mean(axis=0) for v in x_leaves]
    x_jax = jax.tree.unflatten(treedef, [jnp.asarray(v) for v in x_avg])
    mean, se = _mean_and_se(objective, x_jax, source.value_draws)

    x_out = jax.tree.unflatten(treedef, [float(v) if v.ndim == 0 else v for v in x_avg])
    return DecisionResult(
        x=x_out,
        value=float(mean),
        value_se=float(se),
        trace=trace,
        x_trace=jax.tree.unflatten(treedef, x_leaves),
        steps=steps,
        maximize=bool(maximize),
        source=source.kind,
        num_value_draws=int(jax.tree.leaves(source.value_draws)[0].shape[0]),
        nonfinite_steps=nonfinite,
    )

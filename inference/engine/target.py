r"""The target: a NumPyro model and its data, traced once, compiled once, used by every stage.

A :class:`Target` is the one object that describes a model for the whole fit, as NumPyro's
``initialize_model`` does for MCMC, but built without running the model eagerly. From the model
and its arguments it holds

* the **flat layout** of the latent sites in the unconstrained space (site names sorted, each
  raveled; the order of NumPyro's ``AutoContinuous`` guides), found by an abstract trace
  (``jax.eval_shape``: shapes only, nothing computed);
* the **log density and its gradient** over a fixed batch of ``B`` points (one compiled
  program, which also draws the starting points from the prior),

  .. math::

      \log \pi(u) = \log p\big(x, T(u)\big) + \log\lvert\det J_T(u)\rvert
                  = -U(u),

  with :math:`U` NumPyro's :func:`~numpyro.infer.util.potential_energy`, compiled ahead of time
  once (``jax.jit(...).lower(...).compile()``); non-finite values (a failed ODE solve, a draw
  outside the support) come back as :math:`-\infty` with a zero gradient, so a failure is a
  counted, impossible draw and never a crash;
  the starting points are draws of the latent sites in the unconstrained space, moved part of
  the way from the prior median (spread 1 gives prior draws), made by the same program;
* the **predictive program** (compiled on first use): constrained latent values with the
  deterministic sites, the model's log joint and the Jacobian term, a posterior predictive draw
  and the pointwise log likelihood of each observed site, for the ArviZ export.

These are the only programs that contain the model. Every stage of a fit (multistart MAP, the
Laplace Hessian, each guide family's optimization, the verdict's draws, PSIS, the curvature check)
calls :meth:`Target.value_and_grad` with batches of ``B`` points; the guide families are small
programs over the flat vector that contain no model. The number of gradient evaluations is
counted (:attr:`Target.num_grad_evals`).

The programs are deterministic functions of the model and data, with no host callbacks, so the
persistent compilation cache (:mod:`inference._jax_setup`) finds them again in a new process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Layout", "Target", "make_target", "PredictiveDraws"]


class Layout(NamedTuple):
    """The flat unconstrained layout of a model's latent sites.

    Attributes
    ----------
    names : tuple of str
        Latent sample sites, sorted by name (NumPyro's ``AutoContinuous`` order).
    shapes : tuple of tuple
        Each site's unconstrained shape.
    constrained_shapes : tuple of tuple
        Each site's shape in the model (constrained).
    """

    names: tuple
    shapes: tuple
    constrained_shapes: tuple = ()
    model_order: tuple = ()

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

    def labels(self) -> list[str]:
        """One label per flat coordinate: ``name`` or ``name[i,j]``."""
        out = []
        for name, shape in zip(self.names, self.shapes):
            if len(shape) == 0:
                out.append(name)
            else:
                out += [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]
        return out


class PredictiveDraws(NamedTuple):
    """What the predictive program returns for ``n`` flat points.

    Attributes
    ----------
    latent : dict of str to ndarray
        Latent sample sites (constrained) and deterministic sites, each ``(n, *shape)``.
    log_joint : ndarray, shape (n,)
        :math:`\\log p(x, z)` in the constrained space (``-inf`` where zero).
    log_det_jacobian : ndarray, shape (n,)
        :math:`\\log|\\det J_T(u)|`, so that ``log_joint + log_det_jacobian`` is the flat log density.
    log_likelihood : dict of str to ndarray
        Pointwise log likelihood of each observed site, ``(n, *site_shape)``.
    predictive : dict of str to ndarray
        A posterior (or prior) predictive draw of each observed site, ``(n, *site_shape)``.
    observed : dict of str to ndarray
        The observed values of each observed site (masked entries NaN), ``(*site_shape)``.
    """

    latent: dict
    log_joint: np.ndarray
    log_det_jacobian: np.ndarray
    log_likelihood: dict
    predictive: dict
    observed: dict = {}


def _latent(trace) -> list:
    from .sampling import latent_sites

    return sorted(latent_sites(trace))


@dataclass(eq=False)
class Target:
    """A model and its data, compiled once for every stage of a fit (see the module docstring).

    Build it with :func:`make_target`. Attributes other than the methods are plain data.

    Attributes
    ----------
    model : callable
    args : tuple
    kwargs : dict
    layout : Layout
    batch_size : int
        ``B``, the number of points of every call of the compiled log density.
    prototype_trace : dict
        The model's trace from the abstract run: every site with its shape (``value`` is a
        ``jax.ShapeDtypeStruct``), distribution and plates, for naming dimensions.
    num_grad_evals : int
        Points at which the log density and gradient have been evaluated so far (padding included).
    num_density_evals : int
        Points at which the log density alone has been evaluated (the verdict's draws).
    placement : inference.engine.devices.Placement or None
        With ``devices=``: the mesh and how the model's data are split; None on one device.
    chunk : int
        Points evaluated together (vectorized) within a call (:func:`make_target`); 1 when the
        log density runs a while loop (an adaptive ODE solve), which vectorized points slow down.
    """

    model: Callable
    args: tuple
    kwargs: dict
    layout: Layout
    batch_size: int
    _program: Any = field(repr=False)
    _idle: Any = field(repr=False)
    _predict: Any = field(default=None, repr=False)
    prototype_trace: dict = field(default_factory=dict, repr=False)
    num_grad_evals: int = 0
    num_density_evals: int = 0
    compile_s: float = 0.0
    placement: Any = field(default=None, repr=False)
    chunk: int = 1

    @property
    def dim(self) -> int:
        """Number ``d`` of unconstrained dimensions."""
        return self.layout.size

    # -- the log density ---------------------------------------------------------------------
    def value_and_grad(self, u) -> tuple[jax.Array, jax.Array]:
        """Log density and gradient at exactly ``B`` points ``u`` of shape ``(B, d)`` (device arrays)."""
        self.num_grad_evals += self.batch_size
        logp, grad, _ = self._program(u, self._idle[0], self._idle[1], np.int32(0))
        return logp, grad

    def log_density(self, u: np.ndarray, *, grad: bool = False):
        """Log density (and gradient) at any number ``n`` of points, in batches of ``B``.

        Parameters
        ----------
        u : array, shape (n, d)
        grad : bool
            Also return the gradient.

        Returns
        -------
        ndarray (n,), or (ndarray (n,), ndarray (n, d)) with ``grad=True``
        """
        u = np.asarray(u, dtype=float).reshape(-1, self.dim)
        n, B = u.shape[0], self.batch_size
        pad = (-n) % B
        if pad:
            u = np.concatenate([u, np.repeat(u[-1:] if n else np.zeros((1, self.dim)), pad, axis=0)])
        values, grads = [], []
        for i in range(0, u.shape[0], B):
            if grad:
                v, g = self.value_and_grad(u[i : i + B])
                grads.append(np.asarray(g))
            else:
                self.num_density_evals += B
                v = self._program(u[i : i + B], self._idle[0], self._idle[1], np.int32(1))[0]
            values.append(np.asarray(v))
        value = np.concatenate(values)[:n] if values else np.zeros(0)
        if not grad:
            return value
        return value, (np.concatenate(grads)[:n] if grads else np.zeros((0, self.dim)))

    def hessian(self, u: np.ndarray, steps: np.ndarray | None = None, rel_step: float = 1e-4) -> np.ndarray:
        """Hessian of the log density at ``u`` (``(d,)``); see :meth:`hessians`."""
        u = np.asarray(u, dtype=float)
        return self.hessians(u[None], None if steps is None else np.asarray(steps)[None], rel_step)[0]

    def hessians(self, u: np.ndarray, steps: np.ndarray | None = None, rel_step: float = 1e-4) -> np.ndarray:
        """Hessians of the log density at ``n`` points ``u`` (``(n, d)``), all in one pass: ``(n, d, d)``.

        By central differences of the exact gradient (:func:`inference.engine.guides.fd_hessian`'s
        formula): column ``i`` is ``(g(u + h_i e_i) - g(u - h_i e_i)) / (2 h_i)`` with ``h_i``
        from ``steps`` or ``rel_step * max(1, |u_i|)``, symmetrized; ``2 d`` gradient evaluations
        per point. (ODE solvers with custom gradients do not support forward-over-reverse
        differentiation.)
        """
        from .guides import fd_points, fd_symmetric_hessian

        u = np.asarray(u, dtype=float).reshape(-1, self.dim)
        h = rel_step * np.maximum(1.0, np.abs(u)) if steps is None else np.asarray(steps, dtype=float).reshape(u.shape)
        points = np.concatenate([fd_points(x, hx, np) for x, hx in zip(u, h)])
        _, g = self.log_density(points, grad=True)
        n2 = 2 * self.dim
        return np.stack([fd_symmetric_hessian(g[j * n2 : (j + 1) * n2], hx, np) for j, hx in enumerate(h)])

    # -- the prior program -------------------------------------------------------------------
    def starts(self, n: int, *, spread: float = 0.5, seed: int = 0, values: dict | None = None) -> np.ndarray:
        """``n`` starting points ``(n, d)``: the first at the prior median, the others spread around it.

        Start ``r > 0`` is :math:`c + s (u^*_r - c)` with :math:`c` the prior median and
        :math:`u^*_r` a prior draw (:class:`inference.engine.guides.SpreadInit`); ``spread=1``
        gives prior draws. ``values`` (constrained, by site name; e.g. initial concentrations
        read off the data) move the centre of those sites there, each start keeping its spread.
        """
        spreads = np.where(np.arange(n) == 0, 0.0, float(spread))
        starts = self._batched_prior(seed, spreads)
        if values:
            from numpyro.distributions.transforms import biject_to

            i = 0
            for name, shape in zip(self.layout.names, self.layout.shapes):
                size = int(np.prod(shape))
                if name in values:
                    support = self.prototype_trace[name]["fn"].support
                    c = np.ravel(np.asarray(biject_to(support).inv(np.asarray(values[name], dtype=float))))
                    if c.size == size and np.all(np.isfinite(c)):
                        starts[:, i : i + size] = c[None] + (starts[:, i : i + size] - starts[:1, i : i + size])
                i += size
        return starts

    def prior_draws(self, n: int, *, seed: int = 0) -> np.ndarray:
        """``n`` draws of the prior in the flat unconstrained space, ``(n, d)``."""
        return self._batched_prior(seed, np.ones(n))

    def _batched_prior(self, seed: int, spreads: np.ndarray) -> np.ndarray:
        n, B = len(spreads), self.batch_size
        pad = (-n) % B
        spreads = np.concatenate([spreads, np.zeros(pad)])
        u0 = self._idle[2]
        out = []
        for i in range(0, n + pad, B):
            seeds = np.stack([np.full(B, seed, dtype=np.int64), np.arange(i, i + B, dtype=np.int64)], axis=1)
            out.append(np.asarray(self._program(u0, seeds, spreads[i : i + B], np.int32(2))[2]))
        return np.concatenate(out)[:n]

    # -- the predictive program --------------------------------------------------------------
    def predict(self, u: np.ndarray, *, seed: int = 0) -> PredictiveDraws:
        """Constrained values, densities, predictive draws and pointwise log likelihoods at ``u`` ``(n, d)``."""
        if self._predict is None:
            self._predict = _predictive_program(self.model, self.args, self.kwargs, self.layout, self.batch_size)
        u = np.asarray(u, dtype=float).reshape(-1, self.dim)
        n, B = u.shape[0], self.batch_size
        pad = (-n) % B
        if pad:
            u = np.concatenate([u, np.repeat(u[-1:], pad, axis=0)])
        keys = np.asarray(jax.random.split(jax.random.PRNGKey(seed), u.shape[0]))
        # Each batch is written into arrays allocated once: memory holds the draws once, not twice.
        out = None
        for i in range(0, u.shape[0], B):
            part = jax.device_get(self._predict(u[i : i + B], keys[i : i + B]))
            if out is None:
                out = jax.tree.map(lambda v: np.empty((n,) + np.shape(v)[1:], np.asarray(v).dtype), part[:5])
                observed = {k: np.asarray(v)[0] for k, v in part[5].items()}
            stop = min(i + B, n)
            if stop > i:
                jax.tree.map(lambda dst, src: dst.__setitem__(slice(i, stop), np.asarray(src)[: stop - i]), out, part[:5])
            del part
        latent, log_joint, log_det, loglik, predictive = out
        return PredictiveDraws(latent, log_joint, log_det, loglik, predictive, observed)

    def constrain(self, u: np.ndarray) -> dict:
        """Constrained latent (and deterministic) values at flat points ``u`` ``(n, d)``."""
        return self.predict(u).latent


# -- building ---------------------------------------------------------------------------------------
def _find_layout(model, args, kwargs) -> Layout:
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    found: dict = {}

    def run():
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
        names = _latent(trace)
        found["names"] = names
        found["discrete"] = [n for n in names if trace[n]["fn"].support.is_discrete]
        if found["discrete"]:
            return []
        found["constrained"] = [jnp.shape(trace[n]["value"]) for n in names]
        found["order"] = [n for n in trace if n in set(names)]
        found["trace"] = {
            n: {
                "type": s["type"],
                "name": n,
                "is_observed": s.get("is_observed", False),
                "fn": s.get("fn"),
                "value": jax.ShapeDtypeStruct(jnp.shape(s["value"]), jnp.result_type(s["value"]))
                if s.get("value") is not None and s["type"] in ("sample", "deterministic")
                else None,
                "args": s.get("args") if s["type"] == "plate" else (),
                "cond_indep_stack": s.get("cond_indep_stack", ()),
                # Values an infer dict carries (a non-centred site's location and scale) are
                # tracers of this abstract run: only their presence is kept.
                "infer": {k: (True if k == "non_centred" else v) for k, v in (s.get("infer") or {}).items()},
            }
            for n, s in trace.items()
        }
        return [biject_to(trace[n]["fn"].support).inv(trace[n]["value"]) for n in names]

    shapes = jax.eval_shape(run)
    if found.get("discrete"):
        raise ValueError(
            f"the latent site {found['discrete'][0]!r} is discrete; the flat engine fits continuous latents only: "
            "pass a NumPyro guide object to fit(), or enumerate the site out in the model"
        )
    if not found["names"]:
        raise ValueError("the model has no latent sample sites to fit; add a numpyro.sample site without obs=")
    layout = Layout(
        tuple(found["names"]),
        tuple(tuple(s.shape) for s in shapes),
        tuple(tuple(s) for s in found["constrained"]),
        tuple(found["order"]),
    )
    return layout, found["trace"]


_LAYOUTS: list = []


def find_layout(model, args: tuple, kwargs: dict, *, keep: bool = True) -> tuple[Layout, dict]:
    """The model's flat layout and prototype trace (an abstract trace; nothing is computed).

    With ``keep=True`` the answer is kept for the next call with the same model and argument
    objects (one entry), which takes it back (``keep=False``): deciding on the model's size
    before building its target costs one abstract trace, not two.
    """
    key = (id(model), tuple(map(id, args)), tuple(sorted((k, id(v)) for k, v in kwargs.items())))
    for i, entry in enumerate(_LAYOUTS):
        if entry[0] == key and entry[1] is model:
            found = entry[2]
            if not keep:
                del _LAYOUTS[i]
            if isinstance(found, Exception):
                raise found
            return found
    try:
        found = _find_layout(model, args, kwargs)
    except ValueError as err:
        found = err
    if keep:
        # The arguments are held so that their ids stay theirs while the entry lives.
        _LAYOUTS[:] = [(key, model, found, args, kwargs)]
    if isinstance(found, Exception):
        raise found
    return found


def _log_density_fn(model, args, kwargs, layout):
    from numpyro.infer.util import potential_energy

    def log_density(u):
        value = -potential_energy(model, args, kwargs, layout.unpack(u))
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    def value_and_grad(u):
        value, grad = jax.value_and_grad(log_density)(u)
        ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        return jnp.where(ok, value, -jnp.inf), jnp.where(ok, grad, 0.0)

    def density(u):
        value = log_density(u)
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    return value_and_grad, density


def _aot(fn, *shapes):
    return jax.jit(fn).lower(*shapes).compile()


class _Cut(Exception):
    """Raised once every latent site is drawn: the likelihood is not needed for prior draws."""


def _latents_only(model, names):
    """The model run until every latent site in ``names`` has a value, then stopped.

    The prior draws need only the latent sites; stopping the model right after the last of them
    keeps the likelihood (an ODE solve, say) out of the traced program.
    """
    from numpyro.primitives import Messenger

    wanted = set(names)

    class CutAfterLatents(Messenger):
        def __init__(self, fn):
            self.seen = set()
            super().__init__(fn)

        def postprocess_message(self, msg):
            if msg["type"] == "sample" and not msg["is_observed"]:
                self.seen.add(msg["name"])
                if self.seen >= wanted:
                    raise _Cut

    return CutAfterLatents(model)


def _prior_fn(model, args, kwargs, layout):
    """``prior(seed_pair, spread) -> u``: a start or prior draw in the flat space (one point)."""
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    from .guides import SpreadInit

    init = SpreadInit()

    def one(seed_pair, spread):
        key = jax.random.fold_in(jax.random.PRNGKey(seed_pair[0]), seed_pair[1])
        tracer = handlers.trace(handlers.substitute(handlers.seed(model, key), substitute_fn=init))
        with init.spread(spread):
            try:
                with tracer:
                    _latents_only(tracer.fn, layout.names)(*args, **kwargs)
            except _Cut:
                pass
        trace = tracer.trace
        return jnp.concatenate(
            [jnp.ravel(biject_to(trace[n]["fn"].support).inv(trace[n]["value"])) for n in layout.names]
        )

    return one


def _predictive_program(model, args, kwargs, layout, batch_size):
    from numpyro.infer.util import constrain_fn, potential_energy

    from .sampling import _model_pieces

    def one(u, key):
        values = constrain_fn(model, args, kwargs, layout.unpack(u))
        latent, log_joint, loglik, predictive, observed = _model_pieces(model, values, key, args, kwargs)
        log_density = -potential_energy(model, args, kwargs, layout.unpack(u))
        log_joint = jnp.where(jnp.isnan(log_joint), -jnp.inf, log_joint)
        log_det = jnp.where(jnp.isfinite(log_density) & jnp.isfinite(log_joint), log_density - log_joint, 0.0)
        return latent, log_joint, log_det, loglik, predictive, observed

    key_shape = jax.eval_shape(lambda: jax.random.split(jax.random.PRNGKey(0), batch_size))
    return _aot(jax.vmap(one), jax.ShapeDtypeStruct((batch_size, layout.size), jnp.float64), key_shape)


def make_target(
    model: Callable, args: tuple = (), kwargs: dict | None = None, *, batch_size: int = 32, devices=None,
    chunk: int | None = None,
) -> Target:
    """Trace ``model`` once and compile its log density, gradient and prior program.

    Parameters
    ----------
    model : callable
        A NumPyro model with continuous latent sites and no subsampled plates.
    args, kwargs
        The model's arguments (its data); they are constants of the compiled programs.
    batch_size : int
        ``B``: points per call of the compiled log density (the ELBO's particles, MAP starts and
        line-search trials, verdict draws all come in batches of ``B``).
    devices : None, int, "all", "local" or sequence of jax devices
        Split the model's data along its experiments over these devices
        (:mod:`inference.engine.devices`): the data arrays become inputs of the program, placed
        with ``NamedSharding`` over a one-dimensional mesh. None (default): one device, the data
        are constants of the program.
    chunk : int, optional
        Points of a call evaluated together, vectorized (``jax.vmap``); the chunks of a call run
        one after another (``jax.lax.map(..., batch_size=chunk)``). A chunk at least ``B`` is one
        vectorized batch. By default (None): 1 when the log density contains a while loop (an
        adaptive ODE solver: vectorized points would each take as many steps as the slowest one),
        else 4. Smaller chunks keep a call's working set in the processor's caches: 32 points of
        problem d (diffrax) cost 52 ms one after another against 670 ms vectorized; 32 points of
        the 24-subject population model (matrix exponentials) 6.4 ms in chunks of 4 against 30 ms
        vectorized. The values are the same either way.
    Returns
    -------
    Target

    Raises
    ------
    ValueError
        With a sentence, for a model without latent sites or with discrete latent sites.
    """
    import time

    kwargs = dict(kwargs or {})
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer of at least 2, got {batch_size!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer (points evaluated together), got {chunk!r}")
    t0 = time.perf_counter()
    layout, trace = find_layout(model, args, kwargs, keep=False)
    subsampled = [n for n, s in trace.items() if s["type"] == "plate" and s["args"][1] is not None and s["args"][1] != s["args"][0]]
    if subsampled:
        raise ValueError(
            f"the plate {subsampled[0]!r} subsamples its data (minibatches), so the model's log density changes from "
            "call to call; fit it through NumPyro's SVI (a guide object, or guide='normal' with objective='meanfield_elbo')"
        )
    value_and_grad_one, log_density_one = _log_density_fn(model, args, kwargs, layout)
    if chunk is None:
        chunk = 1 if _has_while_loop(value_and_grad_one, layout.size) else DEFAULT_CHUNK
    chunk = int(chunk)
    value_and_grad, log_density = _over_points(value_and_grad_one, chunk, batch_size), _over_points(log_density_one, chunk, batch_size)
    prior = jax.vmap(_prior_fn(model, args, kwargs, layout))
    B, d = int(batch_size), layout.size

    def target_program(u, seeds, spreads, mode):
        # One program for every use, by mode: the log density and its gradient at u (0), the log
        # density alone (1), or prior draws / starting points (2).
        def density_and_grad(_):
            logp, grad = value_and_grad(u)
            return logp, grad, jnp.zeros((B, d))

        def density(_):
            return log_density(u), jnp.zeros((B, d)), jnp.zeros((B, d))

        def starts(_):
            return jnp.zeros(B), jnp.zeros((B, d)), prior(seeds, spreads)

        return jax.lax.switch(mode, (density_and_grad, density, starts), None)

    from .devices import resolve_devices

    chosen = resolve_devices(devices)
    placement = None
    if chosen is None:
        program = _aot(
            target_program,
            jax.ShapeDtypeStruct((B, d), jnp.float64),
            jax.ShapeDtypeStruct((B, 2), jnp.int64),
            jax.ShapeDtypeStruct((B,), jnp.float64),
            jax.ShapeDtypeStruct((), jnp.int32),
        )
    else:
        program, placement = _sharded_program(model, layout, trace, args, kwargs, B, chosen, chunk)
    idle = (jnp.zeros((B, 2), jnp.int64), jnp.zeros(B), jnp.zeros((B, d)))
    return Target(model, tuple(args), kwargs, layout, B, program, idle, prototype_trace=trace,
                  compile_s=time.perf_counter() - t0, placement=placement, chunk=chunk)


class _ShardedProgram:
    """The target program over a mesh: inputs placed, outputs handed back on the default device."""

    def __init__(self, compiled, placement):
        self.compiled = compiled
        self.placement = placement

    def __call__(self, u, seeds, spreads, mode):
        put = self.placement.put
        out = self.compiled(put(u), put(seeds), put(spreads), put(np.int32(mode)), *self.placement.data)
        return tuple(self.placement.local(x) for x in out)


#: Points evaluated together (vectorized) when the log density has no while loop; see make_target.
DEFAULT_CHUNK = 4


def _has_while_loop(fn, d: int) -> bool:
    """Whether ``fn`` of one point (traced abstractly, nothing computed) runs a while loop anywhere inside."""

    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "while":
                return True
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns") and walk(inner):
                        return True
        return False

    return walk(jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((d,), jnp.float64)).jaxpr)


def _over_points(fn, chunk: int, batch_size: int):
    """``fn`` of one point mapped over the points of a call, ``chunk`` of them vectorized at a time."""
    if chunk >= batch_size:
        return jax.vmap(fn)
    if chunk == 1:
        return lambda u: jax.lax.map(fn, u)
    return lambda u: jax.lax.map(fn, u, batch_size=chunk)


def _sharded_program(model, layout, trace, args, kwargs, B, devices, chunk):
    """The target program with the model's data as inputs split along the experiments (see :mod:`.devices`)."""
    from .devices import placement_for

    placement = placement_for(devices, args, kwargs, trace)
    d = layout.size

    def target_program(u, seeds, spreads, mode, *data):
        args_, kwargs_ = placement.rebuild(data)
        value_and_grad_one, log_density_one = _log_density_fn(model, args_, kwargs_, layout)
        prior = jax.vmap(_prior_fn(model, args_, kwargs_, layout))

        def density_and_grad(_):
            logp, grad = _over_points(value_and_grad_one, chunk, B)(u)
            return logp, grad, jnp.zeros((B, d))

        def density(_):
            return _over_points(log_density_one, chunk, B)(u), jnp.zeros((B, d)), jnp.zeros((B, d))

        def starts(_):
            return jnp.zeros(B), jnp.zeros((B, d)), prior(seeds, spreads)

        return jax.lax.switch(mode, (density_and_grad, density, starts), None)

    rep = placement.replicated
    shapes = [
        jax.ShapeDtypeStruct((B, d), jnp.float64, sharding=rep),
        jax.ShapeDtypeStruct((B, 2), jnp.int64, sharding=rep),
        jax.ShapeDtypeStruct((B,), jnp.float64, sharding=rep),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
    ] + [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in placement.data]
    compiled = (
        jax.jit(target_program, in_shardings=tuple(s.sharding for s in shapes), out_shardings=(rep, rep, rep))
        .lower(*shapes)
        .compile()
    )
    return _ShardedProgram(compiled, placement), placement

"""The compiled optimization loop: pure functions over NamedTuple state.

One *chunk* is ``lax.scan`` over ``chunk_size`` SVI steps; it is compiled once and reused, and the
host looks at the result once per chunk (progress bar, stopping rule, non-finite guard).
Restarts are a leading batch axis: the chunk is ``vmap``-ed over them.

Each step is :meth:`numpyro.infer.SVI.stable_update`: a step whose loss or gradient is not finite
leaves the optimizer state unchanged and reports a NaN loss. The loop counts such steps and
keeps the state from just before the most recent one, so that the host can replay it and name
the site or parameter that went bad (:func:`explain_nonfinite`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.infer.autoguide as _autoguide
from numpyro import handlers
from numpyro.infer import SVI
from numpyro.infer.util import initialize_model
from numpyro.infer.svi import SVIState

__all__ = ["LoopState", "ChunkInfo", "init_state", "make_chunk", "explain_nonfinite", "prototype_without_gradient"]


class LoopState(NamedTuple):
    """Carried state of the loop (one restart; a batch of restarts has a leading axis).

    Attributes
    ----------
    svi_state : numpyro.infer.svi.SVIState
        Optimizer state, mutable state and random key.
    bad_state : numpyro.infer.svi.SVIState
        The state just before the most recent step with a non-finite loss or gradient.
    n_nonfinite : int array, shape ()
        Number of steps skipped so far.
    """

    svi_state: SVIState
    bad_state: SVIState
    n_nonfinite: jax.Array


class ChunkInfo(NamedTuple):
    """What one chunk reports to the host.

    Attributes
    ----------
    losses : array, shape (chunk_size,)
        Loss (negative ELBO) at each step, before the update; NaN where the step was skipped.
    mean_params : pytree
        Unconstrained guide parameters averaged over the chunk's steps (for iterate averaging).
    """

    losses: jax.Array
    mean_params: Any


@contextlib.contextmanager
def prototype_without_gradient() -> Iterator[None]:
    """Set up autoguide prototypes without differentiating the model.

    An autoguide's first call runs ``numpyro.infer.util.initialize_model``, which by default
    checks that the model's gradient is finite at the starting point (``validate_grad``); traced
    inside the compiled initialization, that check compiles a second full gradient of the model
    (for an ODE model, a second differentiated solve), which the initialization never uses. Within
    this context the starting point is only required to have a finite log density; a non-finite
    gradient there still shows at the first step, where the non-finite guard reports it.
    """
    previous = _autoguide.initialize_model
    _autoguide.initialize_model = partial(initialize_model, validate_grad=False)
    try:
        yield
    finally:
        _autoguide.initialize_model = previous


def init_state(svi: SVI, rng_key, args=(), kwargs=None, init_params=None) -> LoopState:
    """Initialize one restart: ``svi.init`` (from ``init_params`` where given) plus empty non-finite bookkeeping."""
    svi_state = svi.init(rng_key, *args, init_params=init_params, **(kwargs or {}))
    return LoopState(svi_state, svi_state, jnp.zeros((), jnp.int32))


def make_chunk(svi: SVI, chunk_size: int, args=(), kwargs=None, schedules=None):
    """Return ``chunk(state) -> (state, ChunkInfo)`` running ``chunk_size`` steps.

    ``schedules`` maps keyword names to functions of the step number (see
    :mod:`inference.engine.schedules`); their values are passed to the model and guide at each step.
    The function is pure; the caller jits (and vmaps over restarts) it.
    """
    kwargs = kwargs or {}
    schedules = schedules or {}

    def step(carry, _):
        state, param_sum = carry
        i = state.svi_state.optim_state[0]
        step_kwargs = dict(kwargs, **{name: fn(i) for name, fn in schedules.items()})
        new_svi_state, loss = svi.stable_update(state.svi_state, *args, **step_kwargs)
        bad = ~jnp.isfinite(loss)
        bad_state = jax.tree.map(lambda old, cur: jnp.where(bad, cur, old), state.bad_state, state.svi_state)
        params = svi.optim.get_params(new_svi_state.optim_state)
        param_sum = jax.tree.map(jnp.add, param_sum, params)
        new_state = LoopState(new_svi_state, bad_state, state.n_nonfinite + bad.astype(jnp.int32))
        return (new_state, param_sum), loss

    def chunk(state: LoopState):
        zeros = jax.tree.map(jnp.zeros_like, svi.optim.get_params(state.svi_state.optim_state))
        (state, param_sum), losses = jax.lax.scan(step, (state, zeros), None, length=chunk_size)
        mean_params = jax.tree.map(lambda s: s / chunk_size, param_sum)
        return state, ChunkInfo(losses, mean_params)

    return chunk


def _site_log_densities(model, guide, params, rng_key, args, kwargs):
    """Per-site log densities of one guide draw replayed through the model."""
    seeded_guide = handlers.seed(handlers.substitute(guide, data=params), rng_key)
    guide_trace = handlers.trace(seeded_guide).get_trace(*args, **kwargs)
    seeded_model = handlers.seed(handlers.substitute(model, data=params), rng_key)
    model_trace = handlers.trace(handlers.replay(seeded_model, guide_trace)).get_trace(*args, **kwargs)
    latent, model_lp, guide_lp = {}, {}, {}
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        model_lp[name] = jnp.sum(site["fn"].log_prob(site["value"]))
        if not site["is_observed"]:
            latent[name] = site["value"]
    for name, site in guide_trace.items():
        if site["type"] == "sample" and not site.get("is_observed", False):
            guide_lp[name] = jnp.sum(site["fn"].log_prob(site["value"]))
    return latent, model_lp, guide_lp


def explain_nonfinite(svi: SVI, bad_state: SVIState, num_particles: int, args=(), kwargs=None) -> str:
    """Replay the step that went bad and say, in a sentence, which site or parameter did it.

    Parameters
    ----------
    svi : numpyro.infer.SVI
    bad_state : SVIState
        The state before the bad step (one restart, no batch axis).
    num_particles : int
        Particles per step of the objective (to replay the same draws).
    """
    kwargs = kwargs or {}
    params = svi.get_params(bad_state)
    bad_params = [name for name, v in params.items() if not np.all(np.isfinite(np.asarray(v)))]
    if bad_params:
        return (
            f"guide parameter {bad_params[0]!r} became non-finite; lower the learning rate "
            "(lr=...) or clip gradients"
        )
    _, step_key = jax.random.split(bad_state.rng_key)
    keys = jax.random.split(step_key, num_particles) if num_particles > 1 else step_key[None]

    @jax.jit
    def replay(keys):
        return jax.vmap(lambda k: _site_log_densities(svi.model, svi.guide, params, k, args, kwargs))(keys)

    latent, model_lp, guide_lp = jax.device_get(replay(keys))
    for where, table in (("model", model_lp), ("guide", guide_lp)):
        for name, lp in table.items():
            lp = np.asarray(lp)
            if not np.all(np.isfinite(lp)):
                i = int(np.argmin(np.isfinite(lp)))
                values = ", ".join(
                    f"{k}={np.asarray(v)[i].ravel()[0]:.4g}" if np.asarray(v)[i].size == 1 else f"{k}=[...]"
                    for k, v in latent.items()
                )
                return (
                    f"the {where} site {name!r} had a non-finite log density ({lp[i]}) at the draw "
                    f"{values}; check its prior and the model there (a failed ODE solve shows here as "
                    "'ode_solve_failed': try a stiff solver or a higher max_steps)"
                )
    loss_fn = lambda p: svi.loss.loss(step_key, p, svi.model, svi.guide, *args, **kwargs)  # noqa: E731
    grads = jax.grad(loss_fn)(params)
    bad_grads = [name for name, g in grads.items() if not np.all(np.isfinite(np.asarray(g)))]
    if bad_grads:
        return (
            f"the gradient with respect to guide parameter {bad_grads[0]!r} was non-finite although "
            "the loss was finite; a sample site's log density has an infinite slope there (check "
            "priors with hard bounds)"
        )
    return "the non-finite step could not be reproduced (it depended on random draws); lower the learning rate"

"""NumPyro's SVI as an engine: guide objects, minibatches, discrete latents, traced objectives.

:func:`run_svi` maximizes the evidence lower bound

.. math::

    \\mathcal L(\\phi) = \\mathbb E_{q_\\phi(z)}[\\log p(x, z) - \\log q_\\phi(z)]
    \\le \\log p(x)

over the parameters :math:`\\phi` of a reparameterized guide, :math:`z = g_\\phi(\\epsilon)` with
parameter-free noise :math:`\\epsilon`, so that the gradient of the expectation is the
expectation of a gradient (Kingma & Welling 2014; Ranganath, Gerrish & Blei 2014; Kucukelbir et
al. 2017). Guides and ELBO estimators are NumPyro's; optimizers are optax's.

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Kucukelbir, A., Tran, D., Ranganath, R., Gelman, A. and Blei, D. M. (2017). Automatic
differentiation variational inference. JMLR 18(14), 1-45.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoLaplaceApproximation

from .guides import SpreadInit, guide_name, laplace_to_multivariate_normal, make_guide
from .loop import explain_nonfinite, init_state, make_chunk, prototype_without_gradient
from .minibatch import minibatch_rule
from .objectives import make_objective
from .result import FitResult, Timings
from .settings import FitSettings
from .schedules import check_schedules
from .stopping import StopReason, final_window, nonfinite_limit_reached

__all__ = ["run_svi"]


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="vifit", unit="step", disable=None if enabled else True, leave=False, dynamic_ncols=True)


@partial(jax.jit, static_argnums=0)
def _average_and_constrain(svi: SVI, chunk_means: list):
    """Average unconstrained parameters over chunks and map them to constrained space."""
    unconstrained = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *chunk_means)
    return jax.vmap(svi.constrain_fn)(unconstrained)


def run_svi(model: Callable[..., Any], args: tuple, kwargs: dict, settings: FitSettings, *, control=None) -> FitResult:
    """One SVI fit of one guide with NumPyro's ``SVI`` (the path for what a flat vector cannot hold).

    Used for NumPyro guide objects, models with subsampled plates (minibatches) or discrete latent
    sites, objectives other than the plain ELBO, schedules, and the ``delta`` guide. Restarts run
    vectorized in compiled chunks of ``settings.chunk_size`` steps.

    Parameters
    ----------
    model : callable
    args : tuple
    kwargs : dict
        The model's arguments.
    settings : FitSettings
        ``settings.guide`` is a guide name or a NumPyro guide object.
    """
    if settings.devices is not None:
        raise ValueError(
            "devices= splits the compiled target of the flat engine across devices; this fit runs through NumPyro's "
            "SVI (a guide object, a subsampled plate, discrete latents or another objective), which runs on one "
            "device: leave devices out, or fit the whole plate (subsample_size=None) with guide='auto' or a named guide"
        )
    guide, objective = settings.guide, settings.objective
    num_particles = settings.num_particles or 8
    seed = settings.seed
    restarts, chunk_size, nonfinite_limit = settings.restarts, settings.chunk_size, settings.nonfinite_limit
    init_scale, restart_spread, init_params = settings.init_scale, settings.restart_spread, settings.init_params
    init_values, guide_options, progress = settings.init_values, settings.guide_options, settings.progress
    t_start = time.perf_counter()
    optim = settings.make_optimizer()
    schedules = check_schedules(settings.schedules, kwargs)
    init_kwargs = dict(kwargs, **{name: fn(0) for name, fn in schedules.items()})
    # Minibatches: a window of whole epochs, and every member visited before stopping (see .minibatch).
    rule = minibatch_rule(model, args, init_kwargs, settings.rule)

    guide_obj = make_guide(guide, model, init_scale=init_scale, init_values=init_values, **(guide_options or {}))
    elbo = make_objective(objective, num_particles=num_particles)
    svi = SVI(model, guide_obj, optim, elbo)

    keys = jax.random.split(jax.random.PRNGKey(seed), restarts)
    # Restart 0 starts at the prior median, the others spread around it (see SpreadInit).
    spreads = jnp.where(jnp.arange(restarts) == 0, 0.0, restart_spread)
    init_fn = getattr(guide_obj, "init_loc_fn", None)
    start = None if init_params is None else {k: jnp.asarray(v) for k, v in init_params.items()}

    def init_one(key, spread):
        if isinstance(init_fn, SpreadInit):
            with init_fn.spread(spread):
                return init_state(svi, key, args, init_kwargs, start)
        return init_state(svi, key, args, init_kwargs, start)

    with prototype_without_gradient():
        state = jax.block_until_ready(jax.jit(jax.vmap(init_one))(keys, spreads))
    t_init = time.perf_counter()

    chunk = jax.jit(jax.vmap(make_chunk(svi, chunk_size, args, kwargs, schedules)))
    compiled = chunk.lower(state).compile()
    t_compiled = time.perf_counter()

    losses: list[np.ndarray] = []
    recent_means: deque = deque(maxlen=max(1, math.ceil(rule.max_window / chunk_size)))
    steps, plateau_checks = 0, 0
    stop_reason = StopReason.MAX_STEPS
    bar = _progress_bar(rule.max_steps, progress)
    try:
        while steps < rule.max_steps:
            state, info = compiled(state)
            chunk_losses = np.asarray(info.losses)  # (R, chunk_size)
            losses.append(chunk_losses)
            recent_means.append(info.mean_params)
            steps += chunk_size
            trace = np.concatenate(losses, axis=1)
            recent = trace[:, -chunk_size:]
            finite = recent[np.isfinite(recent)]
            bar.update(chunk_size)
            if finite.size:
                bar.set_postfix_str(f"ELBO {-finite.mean():.4g}")
            n_bad = int(np.asarray(state.n_nonfinite).max())
            if nonfinite_limit_reached(n_bad, steps, nonfinite_limit):
                stop_reason = StopReason.NONFINITE
                break
            plateau_checks = plateau_checks + 1 if rule.is_plateau(trace) else 0
            if plateau_checks >= rule.patience:
                stop_reason = StopReason.CONVERGED
                break
            if control is not None and control.stopped:
                # A requested stop (SIGINT / SIGTERM) ends the fit at this chunk's end.
                stop_reason = StopReason.INTERRUPTED
                break
    except KeyboardInterrupt:
        stop_reason = StopReason.INTERRUPTED
    finally:
        bar.close()
    t_run = time.perf_counter()

    trace = np.concatenate(losses, axis=1) if losses else np.zeros((restarts, 0))
    steps = trace.shape[1]
    # The model as it is at the end of the optimization (scheduled keywords at their last value).
    kwargs = dict(kwargs, **{name: jnp.asarray(fn(max(steps - 1, 0))) for name, fn in schedules.items()})
    # Iterate averaging over the final window: the mean of the stationary phase of Adam is a
    # lower-variance estimate of the optimum than the last iterate.
    n_avg = max(1, min(len(recent_means), math.ceil(rule.window_length(steps) / chunk_size)))
    if stop_reason == StopReason.NONFINITE or not recent_means:
        picked = [svi.optim.get_params(state.svi_state.optim_state)]
    else:
        picked = list(recent_means)[-n_avg:]
    restart_params = jax.device_get(_average_and_constrain(svi, picked))
    restart_params = jax.tree.map(np.asarray, restart_params)
    tail = final_window(trace)
    with np.errstate(all="ignore"):
        final = np.array([np.nanmean(t) if np.isfinite(t).any() else np.inf for t in tail])
    best = int(np.argmin(final)) if restarts > 1 else 0

    nonfinite = np.asarray(state.n_nonfinite).astype(int).reshape(restarts)
    reason = None
    if nonfinite.any():
        r = int(np.argmax(nonfinite))
        bad_state = jax.tree.map(lambda v: v[r], state.bad_state)
        reason = explain_nonfinite(svi, bad_state, num_particles, args, kwargs)

    name = guide_name(guide_obj)
    if isinstance(guide_obj, AutoLaplaceApproximation):
        # Hand the Laplace guide over as the equal full-rank Gaussian (MAP and inverse Hessian).
        guide_obj, restart_params = _laplace_as_gaussian(guide_obj, restart_params, best, model, args, kwargs, init_scale)

    t_end = time.perf_counter()
    record = dict(
        settings.as_dict(),
        guide=guide if isinstance(guide, str) else name,
        num_particles=num_particles,
        averaged_steps=int(min(steps, n_avg * chunk_size)),
        engine="numpyro-svi",
    )
    return FitResult(
        model=model,
        guide=guide_obj,
        guide_name=name,
        objective_name=record["objective"],
        model_args=args,
        model_kwargs=kwargs,
        params=jax.tree.map(lambda v: v[best], restart_params),
        restart_params=restart_params,
        losses=trace,
        best_restart=best,
        stop_reason=stop_reason,
        num_steps=steps,
        nonfinite_steps=nonfinite,
        nonfinite_reason=reason,
        timings=Timings(
            init_s=t_init - t_start,
            compile_s=t_compiled - t_init,
            run_s=t_run - t_compiled,
            total_s=t_end - t_start,
        ),
        seed=seed,
        settings=record,
    )


def _laplace_as_gaussian(guide, restart_params, best, model, args, kwargs, init_scale):
    """Convert every restart of a fitted Laplace guide into full-rank Gaussian parameters."""
    restarts = next(iter(restart_params.values())).shape[0]
    mvn, locs, trils = None, [], []
    for r in range(restarts):
        params = {k: v[r] for k, v in restart_params.items()}
        try:
            mvn_r, gauss = laplace_to_multivariate_normal(guide, params, model, args, kwargs, init_scale=init_scale)
        except ValueError:
            if r == best:
                raise
            loc = np.asarray(params[f"{guide.prefix}_loc"])
            gauss = {f"{guide.prefix}_loc": loc, f"{guide.prefix}_scale_tril": np.eye(loc.size) * init_scale}
            mvn_r = None
        mvn = mvn or mvn_r
        locs.append(gauss[f"{guide.prefix}_loc"])
        trils.append(gauss[f"{guide.prefix}_scale_tril"])
    return mvn, {f"{guide.prefix}_loc": np.stack(locs), f"{guide.prefix}_scale_tril": np.stack(trils)}

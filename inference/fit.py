"""``fit``: stochastic variational inference for any NumPyro model, end to end.

``fit`` maximizes the evidence lower bound

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
import optax
from numpyro.infer import SVI

from .guides import SpreadInit, guide_name, make_guide
from .loop import explain_nonfinite, init_state, make_chunk
from .objectives import make_objective
from .result import FitResult, Timings
from .schedules import check_schedules
from .stopping import PlateauRule, StopReason

__all__ = ["fit"]


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="vifit", unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@partial(jax.jit, static_argnums=0)
def _average_and_constrain(svi: SVI, chunk_means: list):
    """Average unconstrained parameters over chunks and map them to constrained space."""
    unconstrained = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *chunk_means)
    return jax.vmap(svi.constrain_fn)(unconstrained)


def fit(
    model: Callable[..., Any],
    *args: Any,
    guide: str | Callable[..., Any] = "multivariate_normal",
    objective: str | Any = "elbo",
    num_particles: int = 8,
    optimizer: optax.GradientTransformation | None = None,
    lr: float = 0.01,
    seed: int = 0,
    restarts: int = 1,
    min_steps: int | None = None,
    max_steps: int | None = None,
    stopping: PlateauRule | None = None,
    chunk_size: int = 100,
    nonfinite_limit: float = 0.1,
    init_scale: float = 0.1,
    restart_spread: float = 0.5,
    schedules: dict | None = None,
    progress: bool = True,
    method: str = "svi",
    **kwargs: Any,
):
    """Fit a guide to ``model`` by maximizing the ELBO; stop by itself when converged.

    Parameters
    ----------
    model : callable
        A NumPyro model.
    *args, **kwargs
        Passed to the model (and guide) at every step.
    guide : str or guide object
        ``"multivariate_normal"`` (full-rank Gaussian, default), ``"normal"`` (mean-field), or a
        NumPyro guide object. See :mod:`inference.guides`.
    objective : str or ELBO
        ``"elbo"`` (NumPyro ``Trace_ELBO``, default) or ``"meanfield_elbo"``, or an ELBO object.
    num_particles : int
        Monte Carlo draws per step, vectorized. More particles, less gradient noise.
    optimizer : optax.GradientTransformation, optional
        Defaults to ``optax.adam(lr)``.
    lr : float
        Learning rate of the default optimizer.
    seed : int
        Random seed; the same seed gives the same numbers.
    restarts : int
        Number of independent fits, run vectorized. Restart 0 starts at the prior median, the
        others at points spread around it (``restart_spread``). The best (highest final ELBO) is
        used where one is needed; all are kept, and the verdict checks that they agree.
    min_steps, max_steps : int, optional
        Shorthand for the stopping rule's limits (defaults 1000 and 20000).
    stopping : PlateauRule, optional
        The stopping rule; see :mod:`inference.stopping`.
    chunk_size : int
        Steps per compiled chunk; the host checks progress, stopping and non-finite steps
        once per chunk.
    nonfinite_limit : float
        Stop (``StopReason.NONFINITE``) when more than this fraction of steps (and more than
        50 steps) had a non-finite loss or gradient.
    init_scale : float
        Initial scale of named guides.
    restart_spread : float
        How far restarts after the first start from the prior median, as a fraction of the way
        to a random prior draw in unconstrained space (:class:`inference.guides.SpreadInit`).
    schedules : dict, optional
        Keyword arguments of the model and guide that change with the step: ``{name: fn}``
        with ``fn(step) -> value`` (see :mod:`inference.schedules`, e.g. an annealed
        Gumbel-softmax temperature). The result keeps the value at the last step in
        ``model_kwargs``.
    progress : bool
        Show a progress bar with the current ELBO.
    method : str
        ``"svi"`` (default) or ``"nuts"``: the latter runs :func:`inference.nuts` on the same
        model instead (a reference to check the variational fit against); the SVI settings are
        then not used.

    Returns
    -------
    FitResult
        ``losses`` has shape ``(restarts, num_steps)``; see :class:`FitResult`. With
        ``method="nuts"``, a :class:`inference.nuts.NutsResult`.

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> from inference import fit
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0, 10))
    ...     numpyro.sample("y", dist.Normal(mu, 1), obs=y)
    >>> result = fit(model, jnp.array([1.0, 2.0, 3.0]), progress=False)
    >>> round(float(result.params["auto_loc"][0]), 1)
    2.0
    """
    if method == "nuts":
        from .nuts import nuts

        return nuts(model, *args, seed=seed, progress=progress, **kwargs)
    if method != "svi":
        raise ValueError(f"method must be 'svi' or 'nuts', got {method!r}")
    t_start = time.perf_counter()
    restarts = _check_positive_int("restarts", restarts)
    if not (0 <= restart_spread <= 2):
        raise ValueError(f"restart_spread is a fraction in [0, 2], got {restart_spread!r}")
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    num_particles = _check_positive_int("num_particles", num_particles)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (0 <= nonfinite_limit <= 1):
        raise ValueError(f"nonfinite_limit is a fraction of steps in [0, 1], got {nonfinite_limit!r}")
    schedules = check_schedules(schedules, kwargs)
    init_kwargs = dict(kwargs, **{name: fn(0) for name, fn in schedules.items()})
    rule = stopping or PlateauRule()
    if min_steps is not None or max_steps is not None:
        from dataclasses import replace

        lo = _check_positive_int("min_steps", min_steps) if min_steps is not None else min(rule.min_steps, max_steps)
        hi = _check_positive_int("max_steps", max_steps) if max_steps is not None else max(rule.max_steps, lo)
        rule = replace(rule, min_steps=min(lo, hi), max_steps=hi)

    guide_obj = make_guide(guide, model, init_scale=init_scale)
    elbo = make_objective(objective, num_particles=num_particles)
    optim = optimizer if optimizer is not None else optax.adam(lr)
    svi = SVI(model, guide_obj, optim, elbo)

    keys = jax.random.split(jax.random.PRNGKey(seed), restarts)
    # Restart 0 starts at the prior median, the others spread around it (see SpreadInit).
    spreads = jnp.where(jnp.arange(restarts) == 0, 0.0, restart_spread)
    init_fn = getattr(guide_obj, "init_loc_fn", None)

    def init_one(key, spread):
        if isinstance(init_fn, SpreadInit):
            with init_fn.spread(spread):
                return init_state(svi, key, args, init_kwargs)
        return init_state(svi, key, args, init_kwargs)

    state = jax.jit(jax.vmap(init_one))(keys, spreads)
    state = jax.block_until_ready(state)
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
            if n_bad > max(50, nonfinite_limit * steps):
                stop_reason = StopReason.NONFINITE
                break
            plateau_checks = plateau_checks + 1 if rule.is_plateau(trace) else 0
            if plateau_checks >= rule.patience:
                stop_reason = StopReason.CONVERGED
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
    restart_params = {k: np.asarray(v) for k, v in restart_params.items()}
    tail = trace[:, -max(50, steps // 10) :] if steps else trace
    with np.errstate(all="ignore"):
        final = np.array([np.nanmean(t) if np.isfinite(t).any() else np.inf for t in tail])
    best = int(np.argmin(final)) if restarts > 1 else 0

    nonfinite = np.asarray(state.n_nonfinite).astype(int).reshape(restarts)
    reason = None
    if nonfinite.any():
        r = int(np.argmax(nonfinite))
        bad_state = jax.tree.map(lambda v: v[r], state.bad_state)
        reason = explain_nonfinite(svi, bad_state, num_particles, args, kwargs)

    t_end = time.perf_counter()
    settings = {
        "guide": guide if isinstance(guide, str) else guide_name(guide_obj),
        "objective": objective if isinstance(objective, str) else type(objective).__name__,
        "num_particles": num_particles,
        "optimizer": "adam" if optimizer is None else repr(optimizer),
        "lr": lr,
        "seed": seed,
        "restarts": restarts,
        "chunk_size": chunk_size,
        "init_scale": init_scale,
        "restart_spread": restart_spread,
        "schedules": {name: repr(fn) for name, fn in schedules.items()},
        "nonfinite_limit": nonfinite_limit,
        "stopping": {k: getattr(rule, k) for k in rule.__dataclass_fields__},
        "averaged_steps": int(min(steps, n_avg * chunk_size)),
    }
    return FitResult(
        model=model,
        guide=guide_obj,
        guide_name=guide_name(guide_obj),
        objective_name=settings["objective"],
        model_args=args,
        model_kwargs=kwargs,
        params={k: v[best] for k, v in restart_params.items()},
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
        settings=settings,
    )

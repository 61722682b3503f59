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
from numpyro.infer.autoguide import AutoLaplaceApproximation

from .guides import SpreadInit, canonical_name, guide_name, laplace_to_multivariate_normal, make_guide
from .loop import explain_nonfinite, init_state, make_chunk, prototype_without_gradient
from .objectives import make_objective
from .result import FitResult, Timings
from .schedules import check_schedules
from .stopping import PlateauRule, StopReason

__all__ = ["fit", "run_svi", "make_optimizer"]


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
    guide: str | Callable[..., Any] = "auto",
    objective: str | Any = "elbo",
    num_particles: int = 8,
    optimizer: optax.GradientTransformation | None = None,
    lr: float | Callable[[Any], Any] = 0.01,
    clip_norm: float | None = None,
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
    init_params: dict | None = None,
    guide_options: dict | None = None,
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
        ``"auto"`` (default: a multistart MAP stage, then the guide chosen by model size and
        escalated while the verdict is poor, every attempt recorded; see :mod:`inference.engine.auto`),
        a guide name (``"multivariate_normal"``, ``"normal"``, ``"low_rank"``, ``"iaf"``, ``"bnaf"``,
        ``"delta"``, ``"laplace"``; see :mod:`inference.engine.guides`), or a NumPyro guide object.
    objective : str or ELBO
        ``"elbo"`` (NumPyro ``Trace_ELBO``, default), ``"meanfield_elbo"``, or another name of
        :mod:`inference.engine.objectives`, or an ELBO object.
    num_particles : int
        Monte Carlo draws per step, vectorized. More particles, less gradient noise.
    optimizer : optax.GradientTransformation, optional
        Defaults to ``optax.adam(lr)`` (after gradient clipping when ``clip_norm`` is given).
    lr : float or optax schedule
        Learning rate of the default optimizer: a number, or a function of the step such as
        ``optax.cosine_decay_schedule(0.02, 5000)`` or ``optax.exponential_decay(...)``.
    clip_norm : float, optional
        Clip the gradient to this global norm before the default optimizer
        (``optax.clip_by_global_norm``): a guard against the rare huge gradient of a nearly
        failed ODE solve.
    seed : int
        Random seed; the same seed gives the same numbers.
    restarts : int
        Number of independent fits, run vectorized. Restart 0 starts at the prior median, the
        others at points spread around it (``restart_spread``). The best (highest final ELBO) is
        used where one is needed; all are kept, and the verdict checks that they agree.
    min_steps, max_steps : int, optional
        Shorthand for the stopping rule's limits (defaults 1000 and 20000).
    stopping : PlateauRule, optional
        The stopping rule; see :mod:`inference.engine.stopping`.
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
        to a random prior draw in unconstrained space (:class:`inference.engine.guides.SpreadInit`).
    schedules : dict, optional
        Keyword arguments of the model and guide that change with the step: ``{name: fn}``
        with ``fn(step) -> value`` (see :mod:`inference.engine.schedules`, e.g. an annealed
        Gumbel-softmax temperature). The result keeps the value at the last step in
        ``model_kwargs``.
    init_params : dict, optional
        Starting values of guide parameters by name (constrained, e.g. ``auto_loc`` and
        ``auto_scale_tril`` of a previous full-rank fit); every restart starts there.
    guide_options : dict, optional
        Options of a named guide: ``rank`` (``"low_rank"``), ``num_flows`` and
        ``hidden_dims`` (``"iaf"``), ``hidden_factors`` (``"bnaf"``); for ``"auto"``, see
        :func:`inference.engine.auto.fit_auto`.
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
        ``method="nuts"``, a :class:`inference.checks.nuts.NutsResult`.

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
        from ..checks.nuts import nuts

        return nuts(model, *args, seed=seed, progress=progress, **kwargs)
    if method != "svi":
        raise ValueError(f"method must be 'svi' or 'nuts', got {method!r}")
    if isinstance(guide, str) and canonical_name(guide) == "auto":
        from .auto import fit_auto

        # Arguments every attempt uses are checked before the MAP stage spends any time.
        _check_positive_int("restarts", restarts)
        make_objective(objective, num_particles=_check_positive_int("num_particles", num_particles))
        if optimizer is None:
            make_optimizer(lr, clip_norm)

        if init_params is not None:
            raise ValueError("init_params sets the parameters of one guide; with guide='auto' name the guide instead")
        return fit_auto(
            model,
            *args,
            objective=objective,
            num_particles=num_particles,
            optimizer=optimizer,
            lr=lr,
            clip_norm=clip_norm,
            seed=seed,
            restarts=restarts,
            min_steps=min_steps,
            max_steps=max_steps,
            stopping=stopping,
            chunk_size=chunk_size,
            nonfinite_limit=nonfinite_limit,
            init_scale=init_scale,
            restart_spread=restart_spread,
            schedules=schedules,
            progress=progress,
            options=guide_options,
            **kwargs,
        )
    return run_svi(
        model,
        *args,
        guide=guide,
        objective=objective,
        num_particles=num_particles,
        optimizer=optimizer,
        lr=lr,
        clip_norm=clip_norm,
        seed=seed,
        restarts=restarts,
        min_steps=min_steps,
        max_steps=max_steps,
        stopping=stopping,
        chunk_size=chunk_size,
        nonfinite_limit=nonfinite_limit,
        init_scale=init_scale,
        restart_spread=restart_spread,
        schedules=schedules,
        init_params=init_params,
        guide_options=guide_options,
        progress=progress,
        **kwargs,
    )


def make_optimizer(lr: float | Callable[[Any], Any] = 0.01, clip_norm: float | None = None) -> optax.GradientTransformation:
    """Adam with learning rate (or optax schedule) ``lr``, after global-norm clipping when ``clip_norm`` is given."""
    if callable(lr):
        try:
            value = float(np.asarray(lr(0)))
        except Exception as err:  # noqa: BLE001 - any failure is the user's schedule
            raise ValueError(f"lr is a function but lr(0) failed ({err}); pass a number or an optax schedule") from err
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"the learning-rate schedule gives lr(0) = {value}; it must be a non-negative number")
    elif isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number or an optax schedule, got {lr!r}")
    adam = optax.adam(lr)
    if clip_norm is None:
        return adam
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float, np.floating)) or not clip_norm > 0:
        raise ValueError(f"clip_norm must be a positive number (a global gradient norm), got {clip_norm!r}")
    return optax.chain(optax.clip_by_global_norm(float(clip_norm)), adam)


def _resolve_rule(stopping, min_steps, max_steps) -> PlateauRule:
    rule = stopping or PlateauRule()
    if min_steps is not None or max_steps is not None:
        from dataclasses import replace

        lo = _check_positive_int("min_steps", min_steps) if min_steps is not None else min(rule.min_steps, max_steps)
        hi = _check_positive_int("max_steps", max_steps) if max_steps is not None else max(rule.max_steps, lo)
        rule = replace(rule, min_steps=min(lo, hi), max_steps=hi)
    return rule


def run_svi(
    model: Callable[..., Any],
    *args: Any,
    guide: str | Callable[..., Any] = "multivariate_normal",
    objective: str | Any = "elbo",
    num_particles: int = 8,
    optimizer: optax.GradientTransformation | None = None,
    lr: float | Callable[[Any], Any] = 0.01,
    clip_norm: float | None = None,
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
    init_params: dict | None = None,
    init_values: dict | None = None,
    guide_options: dict | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> FitResult:
    """One SVI fit of one guide: the engine under :func:`fit` (same arguments, no ``"auto"``).

    ``init_values`` gives starting values of latent sites (see :class:`inference.engine.guides.SpreadInit`).
    """
    t_start = time.perf_counter()
    restarts = _check_positive_int("restarts", restarts)
    if not (0 <= restart_spread <= 2):
        raise ValueError(f"restart_spread is a fraction in [0, 2], got {restart_spread!r}")
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    num_particles = _check_positive_int("num_particles", num_particles)
    if not (0 <= nonfinite_limit <= 1):
        raise ValueError(f"nonfinite_limit is a fraction of steps in [0, 1], got {nonfinite_limit!r}")
    optim = optimizer if optimizer is not None else make_optimizer(lr, clip_norm)
    schedules = check_schedules(schedules, kwargs)
    init_kwargs = dict(kwargs, **{name: fn(0) for name, fn in schedules.items()})
    rule = _resolve_rule(stopping, min_steps, max_steps)

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
    restart_params = jax.tree.map(np.asarray, restart_params)
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

    name = guide_name(guide_obj)
    if isinstance(guide_obj, AutoLaplaceApproximation):
        # Hand the Laplace guide over as the equal full-rank Gaussian (MAP and inverse Hessian).
        guide_obj, restart_params = _laplace_as_gaussian(guide_obj, restart_params, best, model, args, kwargs, init_scale)

    t_end = time.perf_counter()
    settings = {
        "guide": guide if isinstance(guide, str) else name,
        "objective": objective if isinstance(objective, str) else type(objective).__name__,
        "num_particles": num_particles,
        "optimizer": "adam" if optimizer is None else repr(optimizer),
        "lr": lr if not callable(lr) else repr(lr),
        "clip_norm": clip_norm,
        "seed": seed,
        "restarts": restarts,
        "chunk_size": chunk_size,
        "init_scale": init_scale,
        "restart_spread": restart_spread,
        "schedules": {name: repr(fn) for name, fn in schedules.items()},
        "nonfinite_limit": nonfinite_limit,
        "stopping": {k: getattr(rule, k) for k in rule.__dataclass_fields__},
        "averaged_steps": int(min(steps, n_avg * chunk_size)),
        "guide_options": dict(guide_options or {}),
    }
    return FitResult(
        model=model,
        guide=guide_obj,
        guide_name=name,
        objective_name=settings["objective"],
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
        settings=settings,
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

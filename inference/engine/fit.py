r"""``fit``: variational inference for any NumPyro model, end to end.

``fit`` maximizes the evidence lower bound

.. math::

    \mathcal L(\phi) = \mathbb E_{q_\phi(z)}[\log p(x, z) - \log q_\phi(z)] \le \log p(x)

over the parameters :math:`\phi` of a reparameterized guide, :math:`z = g_\phi(\epsilon)` with
parameter-free noise :math:`\epsilon`, so that the gradient of the expectation is the
expectation of a gradient (Kingma & Welling 2014; Kucukelbir et al. 2017).

Two engines run it. **The flat engine** (the default wherever it applies): the model is traced
once into a :class:`~inference.engine.target.Target` (flat unconstrained layout, log density and
gradient over a batch compiled once) and the guide families of :mod:`inference.engine.families`
are small programs over the flat vector (:func:`fit_flat`). **NumPyro's SVI**
(:func:`inference.engine.svi.run_svi`) for what a flat vector cannot hold: NumPyro guide
objects, subsampled plates (minibatches), discrete latent sites, objectives other than the plain
ELBO (``meanfield_elbo``, Renyi, IWAE), schedules, and the ``delta`` / ``bnaf`` guides.

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Kucukelbir, A., Tran, D., Ranganath, R., Gelman, A. and Blei, D. M. (2017). Automatic
differentiation variational inference. JMLR 18(14), 1-45.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jax
import numpy as np

from .families import FAMILIES, make_family
from .guides import canonical_name
from .posterior import FlatPosterior, public_params
from .result import FitResult, Timings
from .settings import FitSettings
from .stopping import PlateauRule, StopReason
from .target import Target, make_target

__all__ = ["fit", "fit_flat", "flat_guide", "target_for"]

#: Named guides the flat engine fits (``laplace`` is the MAP with its Hessian).
FLAT_GUIDES = FAMILIES + ("laplace",)


def fit(
    model: Callable[..., Any],
    *args: Any,
    guide: str | Callable[..., Any] = "auto",
    objective: str | Any = "elbo",
    num_particles: int | None = None,
    optimizer=None,
    lr: float | Callable[[Any], Any] | None = None,
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
    draws: str = "auto",
    method: str = "svi",
    settings: FitSettings | None = None,
    **kwargs: Any,
):
    """Fit a guide to ``model`` by maximizing the ELBO; stop by itself when converged.

    Parameters
    ----------
    model : callable
        A NumPyro model.
    *args, **kwargs
        Passed to the model (its data).
    guide : str or guide object
        ``"auto"`` (default: a multistart MAP stage, then the guide chosen by model size and
        escalated while the verdict is poor, every attempt recorded; see :mod:`inference.engine.auto`),
        a guide name (``"multivariate_normal"``, ``"normal"``, ``"low_rank"``, ``"iaf"``,
        ``"laplace"``, ``"bnaf"``, ``"delta"``), or a NumPyro guide object.
    objective : str or ELBO
        ``"elbo"`` (default), or ``"meanfield_elbo"``, ``"renyi"``, ``"iwae"``
        (:mod:`inference.engine.objectives`, through NumPyro's SVI), or an ELBO object.
    num_particles : int, optional
        Monte Carlo draws per restart and step (the fixed draws of DADVI). Default: 32 on the
        flat engine, whose compiled batch holds ``restarts * num_particles`` points; 8 on
        NumPyro's SVI.
    optimizer : optax.GradientTransformation, optional
        Defaults to ``optax.adam(lr)`` (after gradient clipping when ``clip_norm`` is given).
    lr : float or optax schedule, optional
        Learning rate of the default optimizer (Adam; 0.01 when not given).
    clip_norm : float, optional
        Clip the gradient to this global norm before the default optimizer.
    seed : int
        Random seed; the same seed gives the same numbers.
    restarts : int
        Independent fits, run together. Restart 0 starts at the prior median, the others spread
        around it (``restart_spread``). The best (highest final ELBO) is used where one is needed.
    min_steps, max_steps : int, optional
        Limits of the stopping rule (defaults 1000 and 20000).
    stopping : PlateauRule, optional
        The stopping rule; see :mod:`inference.engine.stopping`.
    chunk_size : int
        Steps between checks of the stopping rule.
    nonfinite_limit : float
        Stop (``StopReason.NONFINITE``) when more than this fraction of steps (and more than
        50) had a non-finite loss or gradient.
    init_scale : float
        Initial scale of named guides.
    restart_spread : float
        How far restarts after the first start from the prior median (a fraction in [0, 2]).
    schedules : dict, optional
        Keyword arguments of the model and guide that change with the step (NumPyro's SVI).
    init_params : dict, optional
        Starting values of guide parameters by name (e.g. ``auto_loc`` and ``auto_scale_tril``).
    guide_options : dict, optional
        Options of a named guide (``rank``, ``num_flows``, ``hidden_dims``, ``hidden_factors``) or
        of ``"auto"`` (see :func:`inference.engine.auto.fit_auto`).
    progress : bool
        Show a progress bar with the current ELBO.
    draws : str
        How the flat engine estimates the ELBO: ``"fixed"`` (one moment-matched set of draws for
        the whole fit, a deterministic objective maximized by L-BFGS: DADVI, Giordano et al.
        2024), ``"fresh"`` (new draws every step, Adam, the noise-aware stopping rule), or
        ``"auto"`` (fixed for the Gaussian families unless an optimizer or ``lr`` is given,
        fresh for flows).
    method : str
        ``"svi"`` (default) or ``"nuts"`` (:func:`inference.nuts` on the same model).
    settings : FitSettings, optional
        All of the above as one object; keywords given as well are refused.

    Returns
    -------
    FitResult
        ``losses`` has shape ``(restarts, num_steps)``; see :class:`FitResult`.

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from inference import fit
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0, 10))
    ...     numpyro.sample("y", dist.Normal(mu, 1), obs=y)
    >>> result = fit(model, jnp.array([1.0, 2.0, 3.0]), guide="multivariate_normal", progress=False)
    >>> round(float(result.params["auto_loc"][0]), 1)
    2.0
    """
    if method == "nuts":
        from ..checks.nuts import nuts

        return nuts(model, *args, seed=seed, progress=progress, **kwargs)
    if method != "svi":
        raise ValueError(f"method must be 'svi' or 'nuts', got {method!r}")
    if model is None or not callable(model):
        raise TypeError(f"fit() needs a NumPyro model (a function or callable object), got {model!r}")
    if settings is None:
        settings = FitSettings(
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
            schedules=dict(schedules or {}),
            init_params=init_params,
            guide_options=dict(guide_options or {}),
            progress=progress,
            draws=draws,
        )
    elif not isinstance(settings, FitSettings):
        raise TypeError(f"settings must be an inference.FitSettings, got {type(settings).__name__}")
    else:
        given = {
            name: value
            for name, value, default in (
                ("guide", guide, "auto"), ("objective", objective, "elbo"), ("num_particles", num_particles, None),
                ("optimizer", optimizer, None), ("lr", lr, None), ("clip_norm", clip_norm, None), ("seed", seed, 0),
                ("restarts", restarts, 1), ("min_steps", min_steps, None), ("max_steps", max_steps, None),
                ("stopping", stopping, None), ("chunk_size", chunk_size, 100), ("nonfinite_limit", nonfinite_limit, 0.1),
                ("init_scale", init_scale, 0.1), ("restart_spread", restart_spread, 0.5), ("schedules", schedules, None),
                ("init_params", init_params, None), ("guide_options", guide_options, None), ("progress", progress, True),
                ("draws", draws, "auto"),
            )
            if value is not default and value != default
        }
        if given:
            raise TypeError(
                f"fit() got settings= and also {', '.join(sorted(given))}; put every option in the settings object "
                f"(settings.with_({next(iter(sorted(given)))}=...)) or pass keywords only"
            )
    return run(model, tuple(args), dict(kwargs), settings)


def run(model, args: tuple, kwargs: dict, settings: FitSettings) -> FitResult:
    """Fit with ``settings``: ``guide="auto"``, the flat engine where it applies, else NumPyro's SVI."""
    guide = settings.guide
    if isinstance(guide, str) and canonical_name(guide) == "auto":
        from .auto import fit_auto

        if settings.init_params is not None:
            raise ValueError("init_params sets the parameters of one guide; with guide='auto' name the guide instead")
        return fit_auto(model, args, kwargs, settings)
    name = flat_guide(settings)
    if name is not None:
        target = target_for(model, args, kwargs, settings)
        if target is not None:
            result = fit_flat(target, settings.with_(guide=name))
            # Tracing and compiling the target belong to this fit's time.
            t = result.timings
            timings = t._replace(compile_s=t.compile_s + target.compile_s, total_s=t.total_s + target.compile_s)
            return replace(result, timings=timings)
    from .svi import run_svi

    return run_svi(model, args, kwargs, settings)


def flat_guide(settings: FitSettings) -> str | None:
    """The flat family that fits ``settings``, or None when NumPyro's SVI must (see the module docstring)."""
    if not isinstance(settings.guide, str):
        return None
    name = canonical_name(settings.guide)
    if name not in FLAT_GUIDES or settings.objective not in ("elbo", "trace_elbo") or settings.schedules:
        return None
    if settings.init_params is not None and not {"auto_loc"} <= set(settings.init_params):
        return None
    return name


def fixed_draws(settings: FitSettings, name: str) -> bool:
    """Whether family ``name`` is fitted on fixed draws (DADVI) under ``settings.draws``."""
    if settings.draws == "auto":
        return name != "iaf" and settings.optimizer is None and settings.lr is None
    return settings.draws == "fixed"


def _particles(settings: FitSettings) -> int:
    return settings.num_particles or settings.batch_size


def target_for(model, args, kwargs, settings: FitSettings) -> Target | None:
    """The model's target for these settings, or None when the flat engine cannot hold the model.

    A model with discrete latent sites or subsampled plates goes to NumPyro's SVI; any other error
    in the model is the user's and is raised as it is.
    """
    try:
        return make_target(model, args, kwargs, batch_size=settings.restarts * _particles(settings))
    except ValueError as err:
        if "discrete" in str(err) or "subsamples" in str(err):
            return None
        raise


def _start(target: Target, settings: FitSettings, start: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """Starting ``(locs (R, d), scale_trils (R, d, d))`` of every restart."""
    R, d = settings.restarts, target.dim
    starts = target.starts(R, spread=settings.restart_spread, seed=settings.seed, values=settings.init_values)
    trils = np.repeat(np.eye(d)[None] * settings.init_scale, R, axis=0)
    if settings.init_params is not None:
        loc = np.asarray(settings.init_params["auto_loc"], dtype=float)
        tril = settings.init_params.get("auto_scale_tril")
        start = (loc, np.asarray(tril, dtype=float) if tril is not None else np.eye(d) * settings.init_scale)
    if start is not None:
        loc, tril = start
        # Restart 0 at the given Gaussian; the others moved from it as the prior starts are from the centre.
        starts = loc[None] + (starts - starts[:1])
        trils[:] = tril
    return starts, trils


def fit_flat(target: Target, settings: FitSettings, *, start: tuple | None = None) -> FitResult:
    """One guide family fitted on the flat engine (``settings.guide`` names it).

    Parameters
    ----------
    target : Target
        Compiled with batch size ``restarts * particles``.
    settings : FitSettings
    start : (ndarray (d,), ndarray (d, d)), optional
        A Gaussian ``N(loc, L L^T)`` (unconstrained) where restart 0 starts, e.g. the Laplace
        approximation; the family starts exactly there (flows at the identity).
    """
    from .vi import find_map, fit_family, fit_family_fixed

    t0 = time.perf_counter()
    name = canonical_name(settings.guide)
    R, d = settings.restarts, target.dim
    evals0 = target.num_grad_evals
    locs, trils = _start(target, settings, start)
    t_init = time.perf_counter()
    if name == "laplace":
        found = find_map(target, locs)
        family = make_family("multivariate_normal", d)
        ok = np.all(np.isfinite(found.scale_trils), axis=(1, 2))
        if not ok[found.best]:
            raise ValueError(
                "the log density is not concave at the MAP (its Hessian is not negative definite), so there is no "
                "Laplace approximation; use guide='multivariate_normal' or guide='auto'"
            )
        trils = np.where(ok[:, None, None], np.nan_to_num(found.scale_trils), trils)
        params = _init_params(family, found.locs, trils, settings.seed)
        losses = np.zeros((R, 0))
        best, stop, steps, nonfinite = found.best, StopReason.CONVERGED, 0, np.zeros(R, int)
        t_compiled = t_run = time.perf_counter()
    else:
        family = make_family(name, d, settings.guide_options)
        params = _init_params(family, locs, trils, settings.seed)
        t_compiled = time.perf_counter()
        if fixed_draws(settings, name):
            ff = fit_family_fixed(target, family, params, seed=settings.seed, max_iter=settings.rule.max_steps)
        else:
            ff = fit_family(
                target,
                family,
                params,
                optimizer=settings.make_optimizer(),
                rule=settings.rule,
                seed=settings.seed,
                chunk_size=settings.chunk_size,
                nonfinite_limit=settings.nonfinite_limit,
                progress=settings.progress,
                desc=f"vifit {name}",
            )
        params, losses, best, stop, steps, nonfinite = (
            ff.params, ff.losses, ff.best, ff.stop_reason, ff.num_steps, ff.nonfinite
        )
        t_compiled = t_compiled + ff.compile_s
        t_run = time.perf_counter()
    posterior = FlatPosterior(target, family, params)
    reason = _explain_nonfinite(posterior, best, settings.seed) if nonfinite.any() else None
    public = public_params(family, params)
    record = dict(
        settings.as_dict(),
        guide=name,
        num_particles=_particles(settings),
        batch_size=target.batch_size,
        engine="flat",
        draws="none" if name == "laplace" else "fixed" if fixed_draws(settings, name) else "fresh",
        grad_evals=int(target.num_grad_evals - evals0),
    )
    t_end = time.perf_counter()
    return FitResult(
        model=target.model,
        guide=posterior,
        guide_name=name,
        objective_name="elbo",
        model_args=target.args,
        model_kwargs=target.kwargs,
        params={k: v[best] for k, v in public.items()},
        restart_params=public,
        losses=losses,
        best_restart=best,
        stop_reason=stop,
        num_steps=steps,
        nonfinite_steps=nonfinite,
        nonfinite_reason=reason,
        timings=Timings(
            init_s=t_init - t0, compile_s=t_compiled - t_init, run_s=t_run - t_compiled, total_s=t_end - t0
        ),
        seed=settings.seed,
        settings=record,
        posterior=posterior,
    )


_INIT_PROGRAMS: dict = {}


def _init_params(family, locs: np.ndarray, trils: np.ndarray, seed: int):
    """The family's parameters for every restart, from Gaussians ``(locs, trils)`` (one small program)."""
    key = (family.name, family.noise_dim, locs.shape)
    if key not in _INIT_PROGRAMS or _INIT_PROGRAMS[key][0] is not family:
        fn = jax.jit(jax.vmap(lambda loc, tril, s: family.init(loc, tril, jax.random.PRNGKey(s))))
        _INIT_PROGRAMS[key] = (family, fn)
    fn = _INIT_PROGRAMS[key][1]
    seeds = np.full(locs.shape[0], seed, dtype=np.int64)
    return jax.tree.map(np.asarray, jax.device_get(fn(locs, trils, seeds)))


def _explain_nonfinite(posterior: FlatPosterior, restart: int, seed: int) -> str:
    """A sentence naming the site where the log density was not finite, from guide draws at the end of the fit."""
    target = posterior.target
    u, _ = posterior.draw_guide(restart, seed + 7, target.batch_size * 8)
    bad = np.flatnonzero(~np.isfinite(target.log_density(u)))
    if not bad.size:
        return (
            "some steps had a non-finite log density or gradient during the fit (none at its end); "
            "a failed ODE solve or a draw outside a prior's support does this: check the priors, or lower lr"
        )
    point = u[bad[0]]
    site = _bad_site(target, point)
    values = target.layout.unpack(point)
    shown = ", ".join(f"{k}={float(np.ravel(v)[0]):.4g}" for k, v in list(values.items())[:4])
    where = f"the site {site!r} has a non-finite log density" if site else "the log density is not finite"
    return (
        f"{where} at {bad.size} of {u.shape[0]} guide draws, e.g. at {shown} (unconstrained); check its prior and "
        "the model there (a failed ODE solve shows as 'ode_solve_failed': try a stiff solver or a higher max_steps)"
    )


def _bad_site(target: Target, point: np.ndarray) -> str | None:
    """The first sample site of the model whose log density is not finite at flat ``point`` (a failure path)."""
    from numpyro import handlers
    from numpyro.infer.util import constrain_fn

    def site_sums(u):
        values = constrain_fn(target.model, target.args, target.kwargs, target.layout.unpack(u))
        trace = handlers.trace(handlers.substitute(handlers.seed(target.model, 0), data=values)).get_trace(
            *target.args, **target.kwargs
        )
        return {n: jax.numpy.sum(s["fn"].log_prob(s["value"])) for n, s in trace.items() if s["type"] == "sample"}

    try:
        sums = jax.device_get(jax.jit(site_sums)(point))
    except Exception:  # noqa: BLE001 - the explanation must never hide the fit
        return None
    for name, value in sums.items():
        if not np.isfinite(value):
            return name
    return None

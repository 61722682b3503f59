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

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .auto import fit_auto
from .checkpoint import FitControl, Interrupt
from .flat import fit_flat, flat_guide, target_for
from .guides import canonical_name
from .result import FitResult
from .settings import FitSettings
from .stopping import PlateauRule
from .svi import run_svi

__all__ = ["fit", "run"]


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
    checkpoint=None,
    resume: bool = False,
    devices=None,
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
    checkpoint : str or path, optional
        A file where the state of the fit is saved periodically and atomically (NumPy ``.npz``
        with a JSON header; never pickle), and when the fit is interrupted.
    resume : bool
        Continue the fit saved in ``checkpoint``: the same parameters, bit for bit, as a fit
        that was never interrupted. A checkpoint of another model, data set or settings is
        refused.
    devices : int or sequence of jax devices, optional
        Shard the model's data over these local devices (see the "Many experiments" page).
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
    from .arguments import check_model_arguments

    check_model_arguments(model, args, kwargs)
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
            checkpoint=checkpoint,
            resume=resume,
            devices=devices,
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
                ("draws", draws, "auto"), ("checkpoint", checkpoint, None), ("resume", resume, False),
                ("devices", devices, None),
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
    """Fit with ``settings``: ``guide="auto"``, the flat engine where it applies, else NumPyro's SVI.

    SIGINT (Ctrl-C) and SIGTERM during the fit stop it at the next step boundary
    (:class:`~inference.engine.checkpoint.Interrupt`): the result holds what was learnt, its
    ``interrupted`` names the signal and its verdict says so; ``settings.checkpoint`` saves the
    state on the way (:class:`~inference.engine.checkpoint.Checkpoint`).
    """
    control = FitControl(settings, Interrupt())
    with control.interrupt:
        result = _run(model, args, kwargs, settings, control)
    if control.interrupt.requested:
        result = mark_interrupted(result, control)
    return result


def _run(model, args: tuple, kwargs: dict, settings: FitSettings, control: FitControl) -> FitResult:
    guide = settings.guide
    if isinstance(guide, str) and canonical_name(guide) == "auto":
        if settings.init_params is not None:
            raise ValueError("init_params sets the parameters of one guide; with guide='auto' name the guide instead")
        return fit_auto(model, args, kwargs, settings, control=control)
    name = flat_guide(settings)
    if name is not None:
        target = target_for(model, args, kwargs, settings)
        if target is not None:
            control.open(target)
            result = fit_flat(target, settings.with_(guide=name), control=control)
            # Tracing and compiling the target belong to this fit's time.
            t = result.timings
            timings = t._replace(compile_s=t.compile_s + target.compile_s, total_s=t.total_s + target.compile_s)
            return replace(result, timings=timings)
    if settings.checkpoint is not None:
        raise ValueError(
            "checkpoint= works for fits on the flat engine (guide='auto' and the named guides normal, "
            "multivariate_normal, low_rank, iaf, laplace, with the plain ELBO); this fit runs through NumPyro's SVI "
            "(a guide object, another objective, schedules, minibatch plates or discrete sites), so leave checkpoint out"
        )
    return run_svi(model, args, kwargs, settings, control=control)


def mark_interrupted(result: FitResult, control: FitControl) -> FitResult:
    """The result of an interrupted fit: its record names the signal, its verdict says so."""
    from ..checks.diagnostics import UNRELIABLE, Check, Diagnosis, Verdict

    signal_name = control.interrupt.requested
    where = f"; the state is saved in {str(control.checkpoint.path)!r}" if control.checkpoint is not None else ""
    how = (
        "resume it with fit(..., checkpoint=PATH, resume=True) or vifit fit --resume"
        if control.checkpoint is not None
        else "run the fit to the end (give checkpoint=PATH to be able to resume an interrupted fit)"
    )
    check = Check("interrupted", UNRELIABLE, f"the fit was stopped by {signal_name} before it finished{where}", how)
    settings = dict(result.settings, interrupted=signal_name)
    # Verdicts computed before the stop (guide="auto" computes its own) gain the check as well.
    cache = {}
    for key, value in result._cache.items():
        if isinstance(value, Diagnosis):
            v = value.verdict
            value = replace(value, verdict=Verdict.from_checks((check,) + v.checks, khat=v.khat, khat_draws=v.khat_draws, ess=v.ess))
        cache[key] = value
    return replace(result, settings=settings, extra_checks=tuple(result.extra_checks) + (check,), _cache=cache)

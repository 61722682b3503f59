"""One guide family fitted on the flat engine: the target built for a fit, the starts, the result.

:func:`fit_flat` is what :func:`inference.fit` and ``guide="auto"`` call for a named flat guide
(``normal``, ``multivariate_normal``, ``low_rank``, ``iaf``, ``laplace``): it starts the family
at a Gaussian (the Laplace approximation, or the prior median with ``init_scale``), fits it on
fixed or fresh draws (:mod:`inference.engine.vi`) and returns a :class:`FitResult` whose draws
and densities come from the target (:class:`inference.engine.posterior.FlatPosterior`).
:func:`flat_guide` and :func:`target_for` decide whether the flat engine can take a fit.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from .families import FAMILIES, make_family, through_map
from .faults import fit_faults, refit_if_stiff
from .guides import canonical_name
from .posterior import FlatPosterior, public_params
from .result import FitResult, Timings
from .settings import FitSettings
from .stopping import StopReason
from .target import Target, make_target

__all__ = ["FLAT_GUIDES", "fit_flat", "flat_guide", "target_for", "fixed_draws"]

#: Named guides the flat engine fits (``laplace`` is the MAP with its Hessian).
FLAT_GUIDES = FAMILIES + ("laplace",)


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
        return not name.startswith("iaf") and settings.optimizer is None and settings.lr is None
    return settings.draws == "fixed"


def _particles(settings: FitSettings) -> int:
    return settings.num_particles or settings.batch_size


def target_for(model, args, kwargs, settings: FitSettings) -> Target | None:
    """The model's target for these settings, or None when the flat engine cannot hold the model.

    A model with discrete latent sites or subsampled plates goes to NumPyro's SVI; any other error
    in the model is the user's and is raised as it is.
    """
    try:
        return make_target(model, args, kwargs, batch_size=settings.restarts * _particles(settings), devices=settings.devices)
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


def fit_flat(
    target: Target, settings: FitSettings, *, start: tuple | None = None, control=None, key: str | None = None,
    through=None,
) -> FitResult:
    """One guide family fitted on the flat engine (``settings.guide`` names it).

    Parameters
    ----------
    target : Target
        Compiled with batch size ``restarts * particles``.
    settings : FitSettings
    start : (ndarray (d,), ndarray (d, d)), optional
        A Gaussian ``N(loc, L L^T)`` (unconstrained) where restart 0 starts, e.g. the Laplace
        approximation; the family starts exactly there (flows at the identity).
    control : inference.engine.checkpoint.FitControl, optional
        The fit's interrupt request and checkpoint; this fit is its stage ``key`` (default
        ``"fit <guide>"``): replayed from the checkpoint when an earlier run finished it,
        continued when it was running, else fitted and recorded.
    through : inference.engine.noncentring.NonCentring, optional
        A fixed bijection ``v -> u`` to fit the family through
        (:func:`inference.engine.families.through_map`); ``start`` is then in its coordinates ``v``.
    """
    from .vi import (
        family_fit_arrays, family_fit_restore, find_map, fit_family, fit_family_fixed, map_result_arrays,
        map_result_restore,
    )

    t0 = time.perf_counter()
    name = canonical_name(settings.guide)
    R, d = settings.restarts, target.dim
    evals0 = target.num_grad_evals
    locs, trils = _start(target, settings, start)
    stage = control.stage(key or f"fit {name}") if control is not None else None
    done = stage.result() if stage is not None else None
    t_init = time.perf_counter()
    if name == "laplace":
        if done is not None:
            found = map_result_restore(done)
        else:
            found = find_map(target, locs, stage=stage)
            if stage is not None and not stage.halted:
                stage.finish(map_result_arrays(found))
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
        stop = StopReason.INTERRUPTED if stage is not None and stage.halted else StopReason.CONVERGED
        best, steps, nonfinite = found.best, 0, np.zeros(R, int)
        t_compiled = t_run = time.perf_counter()
    else:
        family = make_family(name, d, settings.guide_options)
        if through is not None:
            family = through_map(family, through)
        params = _init_params(family, locs, trils, settings.seed)
        t_compiled = time.perf_counter()
        if done is not None:
            ff = family_fit_restore(done, params)
        elif fixed_draws(settings, name):
            ff = fit_family_fixed(target, family, params, seed=settings.seed, max_iter=settings.rule.max_steps, stage=stage)
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
                stage=stage,
            )
        if stage is not None and done is None and ff.stop_reason != StopReason.INTERRUPTED:
            stage.finish(family_fit_arrays(ff))
        params, losses, best, stop, steps, nonfinite = (
            ff.params, ff.losses, ff.best, ff.stop_reason, ff.num_steps, ff.nonfinite
        )
        t_compiled = t_compiled + ff.compile_s
        t_run = time.perf_counter()
    posterior = FlatPosterior(target, family, params)
    # Skipped steps (and their cause at guide draws), a collapsed scale: inference.engine.faults.
    faults = fit_faults(posterior, best, settings.seed, nonfinite, steps, stop)
    reason = faults.step_cause or None
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
    result = FitResult(
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
        faults=faults,
    )
    if stop == StopReason.INTERRUPTED:
        return result
    # An explicit ODE solver at its step limit: refit once with the stiff solver (the model's own).
    again = f"{key or f'fit {name}'} (stiff solver)"
    return refit_if_stiff(result, lambda stiff: fit_flat(stiff, settings, start=start, control=control, key=again, through=through))


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


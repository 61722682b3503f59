r"""Minibatches: subsampled plates, their stopping rule and what a verdict can say about them.

A model whose plate draws ``b`` of its ``N`` members on every run (``numpyro.plate(name, N,
subsample_size=b)``) has every log-probability term inside the plate scaled by ``N / b``, so the
ELBO estimate and its gradient are unbiased for the full-data ones (the expectation over the random
subsample of ``N/b`` times a subsample sum is the full sum). Local latent sites inside the plate
need a guide that subsamples with it: the mean-field ``guide="normal"`` (NumPyro's ``AutoNormal``
keeps one location and scale per member and updates those of the members drawn), fitted through
NumPyro's SVI (:mod:`inference.engine.svi`).

Two things change with minibatches, and this module handles both.

**Stopping.** Each step sees ``b / N`` of the members, so a member's own guide parameters move
only when it is drawn: ``steps * b / N`` times in a fit (its *visits*). The loss is also noisier.
:func:`minibatch_rule` adapts the plateau rule: its window spans at least two passes over the data
(*epochs*, ``N / b`` steps each), so every member is in both halves it compares, and it never
stops before every member was visited about :data:`MIN_VISITS` times on average (within the
rule's ``max_steps``). The noise of the loss is estimated from it as before (first differences,
median absolute deviation), which includes the subsampling noise.

**The verdict.** PSIS, the curvature check and the density of the draws all evaluate the model on
fixed data; on minibatches every run sees other members, so those checks cannot be made.
:func:`minibatch_verdict` says so, checks what can be checked from the fit itself (why it stopped,
skipped steps, how often each member was visited, whether the loss of the last epochs still falls)
and, given the keyword that turns subsampling off (``full_data={"subsample_size": None}``),
runs the ordinary verdict of the same guide parameters on all the data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .result import FitResult, subsampled_plates
from .stopping import PlateauRule

__all__ = ["MIN_VISITS", "minibatch_rule", "visits", "minibatch_verdict", "on_full_data"]

#: Visits per member (on average) before a minibatch fit may stop as converged.
MIN_VISITS = 100


def _largest(plates: dict) -> tuple[str, int, int] | None:
    if not plates:
        return None
    name, (size, sub) = max(plates.items(), key=lambda item: item[1][0] / item[1][1])
    return name, size, sub


def minibatch_rule(model, args: tuple, kwargs: dict, rule: PlateauRule) -> PlateauRule:
    """``rule`` adapted to the model's subsampled plates (see the module docstring); unchanged without them.

    With ``N / b`` steps per epoch for the most subsampled plate: the window is at least two
    epochs, ``min_steps`` at least :data:`MIN_VISITS` epochs, both within ``max_steps``.
    """
    found = _largest(subsampled_plates(model, args, kwargs))
    if found is None:
        return rule
    _, size, sub = found
    epoch = math.ceil(size / sub)
    window = min(max(rule.window, 2 * epoch), max(rule.window, rule.max_steps // 4))
    min_steps = min(max(rule.min_steps, MIN_VISITS * epoch), rule.max_steps)
    return dataclasses.replace(
        rule, window=window, max_window=max(rule.max_window, window), min_steps=min_steps
    )


def visits(result: FitResult) -> dict:
    """Visits per member of each subsampled plate in a fit: ``{plate: steps * b / N}``."""
    return {name: result.num_steps * sub / size for name, (size, sub) in result.subsampled_plates.items()}


def on_full_data(result: FitResult, **full_data: Any) -> FitResult:
    """The same fitted guide with the model's keywords changed (e.g. ``subsample_size=None``): a full-data result.

    Draws, the verdict and the ArviZ export then run the model on all its data, with the guide
    parameters the minibatch fit found (a per-member guide covers every member).
    """
    import copy

    from numpyro import handlers

    kwargs = dict(result.model_kwargs, **full_data)
    guide = result.guide
    if hasattr(guide, "_setup_prototype"):
        # An autoguide's plates carry the subsample size it was set up with: set a copy up on all the data.
        guide = copy.copy(guide)
        with handlers.seed(rng_seed=0):
            guide._setup_prototype(*result.model_args, **kwargs)
    full = dataclasses.replace(result, guide=guide, model_kwargs=kwargs, _cache={})
    if full.subsampled_plates:
        name = next(iter(full.subsampled_plates))
        raise ValueError(
            f"with {full_data} the plate {name!r} still subsamples; give the keyword that turns subsampling off "
            "(for vi_models.kinetics.plate_model: subsample_size=None)"
        )
    return full


def minibatch_verdict(result: FitResult, *, full_data: dict | None = None, num_samples: int = 4000,
                      seed: int | None = None):
    """The verdict of a minibatch fit: what can be checked on minibatches, and what cannot.

    Parameters
    ----------
    result : FitResult
        A fit of a model with a subsampled plate.
    full_data : dict, optional
        Model keywords that make it see all its data (``{"subsample_size": None}``). When given,
        the ordinary checks (PSIS, curvature, density) run on the full data with the fitted guide
        parameters (:func:`on_full_data`) and join the verdict.
    num_samples : int
        Draws for the full-data checks.

    Returns
    -------
    inference.checks.diagnostics.Verdict
        Its checks: ``stopping``, ``visits`` (each member's guide parameters were updated often
        enough), ``trend`` (the loss of the last two epochs-long windows, compared in standard
        errors), and either the full-data checks or ``not checked`` (use with care) naming the
        checks a minibatch fit cannot have.
    """
    from ..checks.diagnostics import (
        CARE,
        RELIABLE,
        UNRELIABLE,
        Check,
        Verdict,
        check_stopping,
    )

    plates = result.subsampled_plates
    if not plates:
        raise ValueError("the model of this fit does not subsample: use result.verdict()")
    name, size, sub = _largest(plates)
    checks = [
        check_stopping(result.stop_reason, result.num_steps, int(np.sum(result.nonfinite_steps)),
                       result.num_restarts, result.nonfinite_reason)
    ]
    seen = result.num_steps * sub / size
    if seen >= MIN_VISITS:
        checks.append(Check("visits", RELIABLE, f"each of the {size} members of plate {name!r} was visited about "
                                                 f"{seen:.0f} times ({result.num_steps} steps of {sub})"))
    else:
        checks.append(Check(
            "visits", CARE if seen >= 10 else UNRELIABLE,
            f"each of the {size} members of plate {name!r} was visited only about {seen:.0f} times "
            f"({result.num_steps} steps of {sub}), so their own guide parameters may not have converged",
            f"run at least {math.ceil(MIN_VISITS * size / sub)} steps (max_steps), or larger minibatches",
        ))
    epoch = math.ceil(size / sub)
    trace = result.losses[result.best_restart]
    trace = trace[np.isfinite(trace)]
    W = max(2 * epoch, 50)
    if trace.size >= 2 * W:
        old, new = trace[-2 * W : -W], trace[-W:]
        se = math.sqrt(old.var() / W + new.var() / W)
        drop = float(old.mean() - new.mean())
        level = RELIABLE if drop < 2 * se + 0.02 else CARE
        checks.append(Check(
            "trend", level,
            f"the loss over the last {W} steps is {drop:+.3g} below the {W} before (standard error {se:.2g})"
            + ("" if level == RELIABLE else ": it was still falling"),
            "" if level == RELIABLE else "run longer (max_steps)",
        ))
    if full_data is not None:
        full = on_full_data(result, **full_data)
        diagnosis = full.diagnose(num_samples, seed=seed)
        checks += [c._replace(message=f"on all the data: {c.message}") for c in diagnosis.verdict.checks
                   if c.name != "stopping"]
        return Verdict.from_checks(checks, khat=diagnosis.verdict.khat, khat_draws=diagnosis.verdict.khat_draws,
                                   ess=diagnosis.verdict.ess)
    checks.append(Check(
        "not checked", CARE,
        f"the plate {name!r} draws {sub} of its {size} members on every run, so PSIS, the curvature check and the "
        "density of the draws (which need the model on fixed data) were not made",
        "minibatch_verdict(result, full_data={'subsample_size': None}) runs them on all the data with the fitted "
        "guide, if one pass over all the data fits in memory",
    ))
    return Verdict.from_checks(checks)

"""Schedules: keyword arguments of the model and guide that change with the optimization step.

``fit(model, ..., schedules={"temperature": exponential_anneal(1.0, 0.1, 5000)})`` calls each
schedule with the step number ``i`` (a JAX integer, starting at 0) inside the compiled loop and
passes the value to the model and the guide as that keyword argument at every step: a
Gumbel-softmax temperature annealed towards zero, a KL weight warmed up from zero, and the like.
After the fit, ``FitResult.model_kwargs`` holds the value at the last step, so that draws and
checks use the final model.

A schedule is any function ``step -> value`` built from ``jax.numpy`` operations.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

__all__ = ["exponential_anneal", "linear_anneal", "check_schedules"]


def exponential_anneal(start: float, end: float, num_steps: int) -> Callable:
    """Geometric interpolation from ``start`` to ``end`` over ``num_steps``, then constant.

    .. math::  v(i) = \\mathrm{start}\\,(\\mathrm{end}/\\mathrm{start})^{\\min(i, n)/n}

    The usual temperature schedule of the Gumbel-softmax relaxation (Jang, Gu & Poole 2017).
    """
    if not (start > 0 and end > 0):
        raise ValueError(f"exponential_anneal needs positive start and end, got {start!r} and {end!r}")
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    n = int(num_steps)
    ratio = float(end) / float(start)

    def schedule(step):
        frac = jnp.minimum(jnp.asarray(step, dtype=float), n) / n
        return float(start) * ratio**frac

    return schedule


def linear_anneal(start: float, end: float, num_steps: int) -> Callable:
    """Linear interpolation from ``start`` to ``end`` over ``num_steps``, then constant (e.g. KL warm-up)."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    n = int(num_steps)

    def schedule(step):
        frac = jnp.minimum(jnp.asarray(step, dtype=float), n) / n
        return float(start) + (float(end) - float(start)) * frac

    return schedule


def check_schedules(schedules, kwargs: dict) -> dict:
    """Validate ``schedules`` (a mapping of keyword name to callable); return it as a dict."""
    if schedules is None:
        return {}
    if not hasattr(schedules, "items"):
        raise TypeError(f"schedules must map keyword names to functions of the step, got {schedules!r}")
    out = {}
    for name, fn in schedules.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"schedules[{name!r}] must be a function step -> value, got {fn!r}")
        if name in kwargs:
            raise ValueError(f"{name!r} is given both as a model keyword argument and as a schedule; give it once")
        out[name] = fn
    return out

"""Hand-off to ArviZ: a :class:`FitResult` as :class:`arviz.InferenceData`.

Groups written:

``posterior``
    Draws from the fitted guide; dimension ``chain`` is the restart, ``draw`` the draw. Axes that
    belong to a NumPyro plate are named after the plate; labels come from ``model.coords`` when
    the model has that attribute (a mapping of dimension name to labels).
``observed_data``
    The observed sites' values (NaN where a masked site was not observed).

Attributes of the ``posterior`` group carry the fit: guide, objective, stop reason, steps, ELBO,
seed, non-finite steps and timings.
"""

from __future__ import annotations

import jax
import numpy as np
from numpyro import handlers
from numpyro.distributions import MaskedDistribution
from numpyro.distributions.distribution import Unit

__all__ = ["to_arviz", "plate_dims", "observed_values", "import_arviz"]


def import_arviz():
    """Import ArviZ without its notice about a future refactor (vifit pins the 0.x API)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def plate_dims(trace: dict, names) -> dict[str, list[str]]:
    """Dimension names of each site from the plates it sits in (``{site: [dim, ...]}``).

    Axes outside any plate get ``<site>_dim_<i>``, as ArviZ would name them.
    """
    dims = {}
    for name in names:
        site = trace[name]
        shape = np.shape(site["value"])
        out = [f"{name}_dim_{i}" for i in range(len(shape))]
        for frame in site.get("cond_indep_stack", ()):
            axis = len(shape) + frame.dim
            if 0 <= axis < len(shape):
                out[axis] = frame.name
        dims[name] = out
    return dims


def observed_values(model, args=(), kwargs=None) -> tuple[dict, dict]:
    """Values and plate dimensions of the observed sites of ``model`` (factors excluded)."""
    kwargs = kwargs or {}

    def run():
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
        out = {}
        for name, site in tr.items():
            if site["type"] != "sample" or not site["is_observed"] or isinstance(site["fn"], Unit):
                continue
            value = site["value"]
            fn = site["fn"]
            if isinstance(fn, MaskedDistribution) and not isinstance(fn._mask, bool):
                value = jax.numpy.where(fn._mask, value, jax.numpy.nan)
            out[name] = value
        return out, tr

    # Shapes and plates from an abstract trace (no computation), values from a compiled one.
    shapes = {}

    def capture():
        out, tr = run()
        shapes.update({n: {"value": tr[n]["value"], "cond_indep_stack": tr[n]["cond_indep_stack"]} for n in out})
        return out

    values = jax.device_get(jax.jit(capture)())
    return {k: np.asarray(v) for k, v in values.items()}, plate_dims(shapes, list(values))


def to_arviz(result, num_samples: int = 1000, *, seed: int | None = None):
    """Convert a :class:`FitResult` into :class:`arviz.InferenceData`.

    Parameters
    ----------
    result : FitResult
    num_samples : int
        Draws per restart.
    seed : int, optional
        Seed of the draws; the fit's seed plus one by default.

    Returns
    -------
    arviz.InferenceData
        ``posterior`` with shape ``(chain=R, draw=num_samples, ...)`` per site and
        ``observed_data``.
    """
    az = import_arviz()

    draws = result.sample_restarts(num_samples, seed=seed)
    trace = getattr(result.guide, "prototype_trace", None)
    coords = dict(getattr(result.model, "coords", {}) or {})
    if trace is not None:
        dims = plate_dims(trace, list(draws))
    else:
        dims = {}
    observed, observed_dims = observed_values(result.model, result.model_args, result.model_kwargs)
    dims.update(observed_dims)
    used = {d for ds in dims.values() for d in ds}
    coords = {k: list(v) for k, v in coords.items() if k in used}
    idata = az.from_dict(posterior=draws, observed_data=observed, coords=coords, dims=dims)
    attrs = {
        "inference_library": "vifit",
        "guide": result.guide_name,
        "objective": result.objective_name,
        "stop_reason": str(result.stop_reason),
        "num_steps": int(result.num_steps),
        "num_restarts": int(result.num_restarts),
        "best_restart": int(result.best_restart),
        "elbo": float(result.elbo),
        "seed": int(result.seed),
        "nonfinite_steps": int(result.nonfinite_steps.sum()),
        "init_s": float(result.timings.init_s),
        "compile_s": float(result.timings.compile_s),
        "run_s": float(result.timings.run_s),
    }
    idata.posterior.attrs.update(attrs)
    return idata

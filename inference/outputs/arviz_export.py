"""Hand-off to ArviZ: a :class:`FitResult` as :class:`arviz.InferenceData`.

The groups and attributes are documented in ``docs/arviz.md``: ``posterior`` (``chain`` = restart),
``sample_stats`` (``log_p``, ``log_q``, ``lp``), ``prior``, ``prior_predictive``,
``posterior_predictive``, ``observed_data``, ``log_likelihood`` (for :func:`arviz.loo`),
``constant_data``, ``predictions`` and ``predictions_constant_data`` (model-specific), and
``optimization`` (the loss trace and the guide parameters of every restart). Axes that belong to
a NumPyro plate are named after the plate.

A model can add its own data through optional attributes (the kinetics models have them):

``coords``
    Mapping of dimension name to labels.
``arviz_constant_data()``
    ``{name: (dims, array)}`` for ``constant_data``.
``arviz_predictions(samples, seed)``
    ``({name: (dims, array (n, ...))}, {name: (dims, array)})`` for ``predictions`` (without the
    ``chain`` axis) and ``predictions_constant_data``.
``arviz_attrs()``
    Extra attributes (netCDF-safe scalars and strings) for the ``posterior`` group.
"""

from __future__ import annotations

import jax
import numpy as np
from numpyro import handlers
from numpyro.distributions import MaskedDistribution
from numpyro.distributions.distribution import Unit

from ..engine.sampling import draw_prior

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
        fn = site.get("fn")
        event_ndim = len(getattr(fn, "event_shape", ())) if fn is not None else 0
        for frame in site.get("cond_indep_stack", ()):
            axis = len(shape) - event_ndim + frame.dim
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
                mask = jax.numpy.reshape(fn._mask, jax.numpy.shape(fn._mask) + (1,) * len(fn.event_shape))
                value = jax.numpy.where(mask, value, jax.numpy.nan)
            out[name] = value
        return out, tr

    # Shapes and plates from an abstract trace (no computation), values from a compiled one.
    shapes = {}

    def capture():
        out, tr = run()
        shapes.update(
            {n: {"value": tr[n]["value"], "fn": tr[n]["fn"], "cond_indep_stack": tr[n]["cond_indep_stack"]} for n in out}
        )
        return out

    values = jax.device_get(jax.jit(capture)())
    return {k: np.asarray(v) for k, v in values.items()}, plate_dims(shapes, list(values))


def _dims_for(dims: dict, name: str, value: np.ndarray, lead: int) -> list[str]:
    """Dimension names of ``value`` (after ``lead`` sample axes) from ``dims``, else ArviZ's."""
    known = list(dims.get(name, []))
    ndim = value.ndim - lead
    if len(known) == ndim:
        return known
    return [f"{name}_dim_{i}" for i in range(ndim)]


def _dataset(values: dict, dims: dict, coords: dict, lead_dims: tuple[str, ...]):
    import xarray as xr

    data_vars = {}
    for name, value in values.items():
        value = np.asarray(value)
        names = list(lead_dims) + _dims_for(dims, name, value, len(lead_dims))
        data_vars[name] = (names, value)
    ds = xr.Dataset(data_vars)
    for dim, labels in coords.items():
        if dim in ds.dims and len(labels) == ds.sizes[dim]:
            ds = ds.assign_coords({dim: list(labels)})
    for lead in lead_dims:
        if lead in ds.dims:
            ds = ds.assign_coords({lead: np.arange(ds.sizes[lead])})
    return ds


def _log_likelihood_dataset(loglik: dict, observed: dict, observed_dims: dict, coords: dict):
    """Pointwise log likelihood; masked points (NaN in ``observed``) are left out along ``<site>_point``."""
    import xarray as xr

    full, flat = {}, {}
    for name, value in loglik.items():
        obs = observed.get(name)
        if obs is None or np.all(np.isfinite(obs)):
            full[name] = value
            continue
        measured = np.isfinite(obs)
        point = f"{name}_point"
        idx = np.nonzero(measured)
        var = xr.DataArray(value[:, :, measured], dims=("chain", "draw", point))
        site_dims = observed_dims.get(name) or [f"{name}_dim_{i}" for i in range(obs.ndim)]
        var = var.assign_coords({f"{point}_{d}": (point, np.asarray(ix)) for d, ix in zip(site_dims, idx)})
        flat[name] = var
    ds = _dataset(full, observed_dims, coords, ("chain", "draw"))
    for name, var in flat.items():
        ds[name] = var
    return ds.assign_coords(chain=np.arange(ds.sizes["chain"]), draw=np.arange(ds.sizes["draw"]))


def _optimization_dataset(result):
    import xarray as xr

    data = {"loss": (("chain", "step"), np.asarray(result.losses, dtype=float))}
    for name, tree in result.restart_params.items():
        # Network parameters of flow guides are nested; each leaf becomes a variable of its own.
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        for path, value in leaves:
            label = name + "".join(f"_{getattr(p, 'idx', getattr(p, 'key', p))}" for p in path)
            value = np.asarray(value)
            data[label] = (["chain"] + [f"{label}_dim_{i}" for i in range(value.ndim - 1)], value)
    ds = xr.Dataset(data)
    return ds.assign_coords(chain=np.arange(result.num_restarts), step=np.arange(1, result.num_steps + 1))


def _stack(parts: list[dict]) -> dict:
    return {name: np.stack([p[name] for p in parts]) for name in parts[0]}


def to_arviz(result, num_samples: int = 1000, *, seed: int | None = None, verdict: bool = True):
    """Convert a :class:`FitResult` into :class:`arviz.InferenceData` with every group.

    Parameters
    ----------
    result : FitResult
    num_samples : int
        Draws per restart (and prior draws).
    seed : int, optional
        Seed of the draws; the fit's seed plus one by default.
    verdict : bool
        Run the checks (:meth:`FitResult.verdict`) and store the verdict in the attributes.

    Returns
    -------
    arviz.InferenceData
        Groups and attributes as documented in ``docs/arviz.md``; ``posterior`` has shape
        ``(chain=R, draw=num_samples, ...)`` per site.

    Raises
    ------
    ValueError
        When the model subsamples its data (a minibatch fit): every group would mix minibatches
        (see :meth:`FitResult.require_full_data`).
    """
    result.require_full_data("to_arviz")
    az = import_arviz()

    n = int(num_samples)
    key = jax.random.PRNGKey(result.seed + 1 if seed is None else seed)
    k_post, k_prior, k_pred = jax.random.split(key, 3)
    sampler = result._posterior_sampler()
    parts = [
        sampler(jax.tree.map(lambda v: v[r], result.restart_params), jax.random.fold_in(k_post, r), n)
        for r in range(result.num_restarts)
    ]
    latent = _stack([p.latent for p in parts])
    names = [name for name in result.latent_sites if name in latent] + [
        name for name in latent if name not in result.latent_sites
    ]
    posterior = {name: latent[name] for name in names}
    prior = draw_prior(result.model, k_prior, n, result.model_args, result.model_kwargs)

    model = result.model
    coords = {k: list(v) for k, v in (getattr(model, "coords", {}) or {}).items()}
    trace = getattr(result.guide, "prototype_trace", None)
    dims = plate_dims(trace, [n_ for n_ in names if n_ in trace]) if trace is not None else {}
    observed, observed_dims = observed_values(model, result.model_args, result.model_kwargs)
    dims.update(observed_dims)

    lead = ("chain", "draw")
    groups = {
        "posterior": _dataset(posterior, dims, coords, lead),
        "sample_stats": _dataset(
            {
                "log_p": np.stack([p.log_p for p in parts]),
                "log_q": np.stack([p.log_q for p in parts]),
                "lp": np.stack([p.log_p for p in parts]),
            },
            {},
            {},
            lead,
        ),
        "posterior_predictive": _dataset(_stack([p.predictive for p in parts]), dims, coords, lead),
        "log_likelihood": _log_likelihood_dataset(
            _stack([p.log_likelihood for p in parts]), observed, observed_dims, coords
        ),
        "prior": _dataset({k: v[None] for k, v in prior.latent.items() if k in posterior}, dims, coords, lead),
        "prior_predictive": _dataset({k: v[None] for k, v in prior.predictive.items()}, dims, coords, lead),
        "observed_data": _dataset(observed, dims, coords, ()),
    }
    if hasattr(model, "arviz_constant_data"):
        constant = model.arviz_constant_data()
        groups["constant_data"] = _dataset(
            {k: v for k, (_, v) in constant.items()}, {k: d for k, (d, _) in constant.items()}, coords, ()
        )
    if hasattr(model, "arviz_predictions"):
        best = {k: v[result.best_restart][: min(n, 500)] for k, v in posterior.items()}
        seed_pred = int(jax.random.randint(k_pred, (), 0, 2**31 - 1))
        predictions, pred_constant = model.arviz_predictions(best, seed_pred)
        groups["predictions"] = _dataset(
            {k: np.asarray(v)[None] for k, (_, v) in predictions.items()},
            {k: d for k, (d, _) in predictions.items()},
            coords,
            lead,
        )
        groups["predictions_constant_data"] = _dataset(
            {k: v for k, (_, v) in pred_constant.items()}, {k: d for k, (d, _) in pred_constant.items()}, coords, ()
        )
    idata = az.InferenceData(**groups)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimization" is not one of ArviZ's group names
        idata.add_groups({"optimization": _optimization_dataset(result)})

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
        "nonfinite_steps": int(np.sum(result.nonfinite_steps)),
        "init_s": float(result.timings.init_s),
        "compile_s": float(result.timings.compile_s),
        "run_s": float(result.timings.run_s),
        "total_s": float(result.timings.total_s),
    }
    if verdict:
        v = result.verdict()
        attrs.update(
            verdict=v.level,
            verdict_reason=v.reason,
            verdict_advice=v.advice,
            verdict_checks=v.checks_json(),
            khat=float(v.khat),
            khat_draws=int(v.khat_draws),
        )
    if hasattr(model, "arviz_attrs"):
        attrs.update(model.arviz_attrs())
    idata.posterior.attrs.update(attrs)
    return idata

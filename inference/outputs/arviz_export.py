"""Hand-off to ArviZ 1.x: a :class:`FitResult` as an :class:`xarray.DataTree`.

The groups and attributes are documented in ``docs/arviz.md``: ``posterior`` (``chain`` = restart),
``sample_stats`` (``log_p``, ``log_q``, ``lp``: the per-draw densities that
:func:`arviz_stats.loo_approximate_posterior` and PSIS take), ``prior``, ``prior_predictive``,
``posterior_predictive``, ``observed_data``, ``log_likelihood`` (for :func:`arviz_stats.loo`),
``constant_data``, ``predictions`` and ``predictions_constant_data`` (model-specific), and
``optimization`` (the loss trace and the guide parameters of every restart). Group and variable
names are those of :func:`arviz_base.from_numpyro_svi`; axes that belong to a NumPyro plate are
named after the plate, as ArviZ's NumPyro converters name them. Where vifit differs: the sample
dimensions are ``(chain, draw)`` with one chain per restart (``from_numpyro_svi`` has one
``sample`` axis), so that R-hat across restarts and every ArviZ function that expects chains work.

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

Nothing here imports xarray or ArviZ at module level: ``import inference`` and the command line
start without them, and :func:`to_arviz` imports xarray when it runs.
"""

from __future__ import annotations

import jax
import numpy as np
from numpyro import handlers
from numpyro.distributions import MaskedDistribution
from numpyro.distributions.distribution import Unit

from ..engine.sampling import draw_prior

__all__ = ["to_arviz", "summary_table", "plate_dims", "observed_values", "has_group", "group_names", "GROUPS"]

#: The groups :func:`to_arviz` writes, in order (``constant_data``, ``predictions`` and
#: ``predictions_constant_data`` only for a model that provides them).
GROUPS = (
    "posterior",
    "sample_stats",
    "posterior_predictive",
    "log_likelihood",
    "prior",
    "prior_predictive",
    "observed_data",
    "constant_data",
    "predictions",
    "predictions_constant_data",
    "optimization",
)


def group_names(tree) -> list[str]:
    """Names of the groups (child nodes) of an ArviZ :class:`xarray.DataTree`."""
    return [str(name) for name in getattr(tree, "children", {})]


def has_group(tree, name: str) -> bool:
    """Whether the :class:`xarray.DataTree` ``tree`` has the group ``name``."""
    return name in getattr(tree, "children", {})


def exact_stage_source(tree) -> str:
    """Where the best restart's draws come from when they are NUTS's (the exact stage of ``guide="auto"``); else ``""``.

    The ``draws_from`` attribute of the posterior group, e.g. ``"NUTS through the fitted
    multivariate_t guide's transport map (NeuTra HMC): 4 chains x 3000 draws ..."``. Such draws
    are not importance-weighted guide draws: ``log_p - log_q`` at them is no PSIS diagnostic.
    """
    if not has_group(tree, "posterior"):
        return ""
    source = str(tree["posterior"].attrs.get("draws_from", ""))
    return source if source.startswith("NUTS") else ""


def summary_table(data, *, var_names=None, kind: str = "stats", hdi_prob: float = 0.94):
    """:func:`arviz_stats.summary` at full precision, with the HDI columns named by their quantiles.

    Parameters
    ----------
    data : xarray.DataTree, xarray.Dataset or dict of str to ndarray
        A tree with a ``posterior`` group, a posterior Dataset (``chain``, ``draw``, ...), or draws
        of one chain, ``{name: array (n, *shape)}``.
    var_names : list of str, optional
        Variables in the table; all by default.
    kind : {"stats", "all"}
        ``"stats"``: ``mean``, ``sd`` and the HDI; ``"all"`` adds ``ess_bulk``, ``ess_tail``,
        ``r_hat``, ``mcse_mean`` and ``mcse_sd``.
    hdi_prob : float
        Mass of the highest-density interval.

    Returns
    -------
    pandas.DataFrame
        One row per scalar element (``theta[0]``, ``A0[exp1]``), the numbers unrounded. The HDI
        columns, ``hdi94_lb`` and ``hdi94_ub`` in arviz-stats, are named ``hdi_3%`` and ``hdi_97%``
        (for ``hdi_prob=0.94``), the names vifit's tables, ``summary.csv`` and docs use.
    """
    import arviz_stats

    if isinstance(hdi_prob, bool) or not isinstance(hdi_prob, (int, float, np.floating)) or not 0 < hdi_prob < 1:
        raise ValueError(f"hdi_prob is the mass of the interval, a number between 0 and 1 (e.g. 0.94), got {hdi_prob!r}")
    if kind not in ("stats", "all"):
        raise ValueError(f"kind must be 'stats' or 'all', got {kind!r}")
    if isinstance(data, dict):
        import arviz_base

        data = arviz_base.dict_to_dataset(
            {k: np.asarray(v)[None] for k, v in data.items()}, sample_dims=["chain", "draw"]
        )
    table = arviz_stats.summary(
        data, var_names=var_names, kind=kind, ci_kind="hdi", ci_prob=hdi_prob, round_to="none"
    )
    perc = int(hdi_prob * 100)
    tail = (100 - hdi_prob * 100) / 2
    lower, upper = f"{tail:g}", f"{100 - tail:g}"
    table = table.rename(columns={f"hdi{perc}_lb": f"hdi_{lower}%", f"hdi{perc}_ub": f"hdi_{upper}%"})
    table.columns.name = None
    return table


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

    loss_attrs = {
        "long_name": f"loss of the {result.objective_name} objective (the negative ELBO for the ELBO objectives)",
        "note": "NaN where a step was skipped for a non-finite loss or gradient",
    }
    data = {"loss": (("chain", "step"), np.asarray(result.losses, dtype=float), loss_attrs)}
    for name, tree in result.restart_params.items():
        # Network parameters of flow guides are nested; each leaf becomes a variable of its own.
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        for path, value in leaves:
            label = name + "".join(f"_{getattr(p, 'idx', getattr(p, 'key', p))}" for p in path)
            value = np.asarray(value)
            data[label] = (["chain"] + [f"{label}_dim_{i}" for i in range(value.ndim - 1)], value)
    ds = xr.Dataset(data)
    losses = np.asarray(result.losses)
    return ds.assign_coords(chain=np.arange(losses.shape[0]), step=np.arange(1, losses.shape[1] + 1))


def _stack(parts: list[dict]) -> dict:
    """Stack the restarts along a new leading axis (a view, not a copy, for one restart)."""
    if len(parts) == 1:
        return {name: np.asarray(value)[None] for name, value in parts[0].items()}
    return {name: np.stack([p[name] for p in parts]) for name in parts[0]}


def to_arviz(result, num_samples: int = 1000, *, seed: int | None = None, verdict: bool = True):
    """Convert a :class:`FitResult` into an ArviZ 1.x :class:`xarray.DataTree` with every group.

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
    xarray.DataTree
        Groups and attributes as documented in ``docs/arviz.md``; ``posterior`` has shape
        ``(chain=R, draw=num_samples, ...)`` per site, ``sample_stats.log_p`` and ``log_q`` shape
        ``(chain=R, draw=num_samples)``, ``optimization.loss`` shape ``(chain=R, step)``. Every
        function of arviz-stats and arviz-plots takes it, and ``to_netcdf`` writes it whole.

    Raises
    ------
    ValueError
        When the model subsamples its data (a minibatch fit): every group would mix minibatches
        (see :meth:`FitResult.require_full_data`).

    Examples
    --------
    >>> import arviz_stats as azs
    >>> tree = result.to_arviz(num_samples=1000)  # doctest: +SKIP
    >>> azs.summary(tree, kind="stats", ci_kind="hdi", ci_prob=0.94)  # doctest: +SKIP
    >>> azs.loo_approximate_posterior(tree, tree.sample_stats.log_p, tree.sample_stats.log_q)  # doctest: +SKIP
    """
    import xarray as xr

    result.require_full_data("to_arviz")

    from ..engine.settings import positive_int

    n = positive_int("num_samples", num_samples)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an integer (or None for the fit's seed plus one), got {seed!r}")
    key = jax.random.PRNGKey(result.seed + 1 if seed is None else seed)
    k_post, k_prior, k_pred = jax.random.split(key, 3)
    flat = getattr(result, "posterior", None)
    if flat is not None:
        # The flat engine: draws from the guide family, everything else from the target's programs.
        base = result.seed + 1 if seed is None else int(seed)
        # The exact stage's restart gives its NUTS draws (distinct ones up to their number: FitResult.sample).
        parts = [result._flat_model_draws(r, base + 1000 * r, n) for r in range(result.num_restarts)]
    else:
        sampler = result._posterior_sampler()
        parts = [
            sampler(jax.tree.map(lambda v: v[r], result.restart_params), jax.random.fold_in(k_post, r), n)
            for r in range(result.num_restarts)
        ]
    latent = _stack([p.latent for p in parts])
    # Deterministic sites named with a leading underscore are the engine's (a kinetics model's
    # _ode_status, counted by the verdict), not posterior quantities.
    names = [name for name in result.latent_sites if name in latent] + [
        name for name in latent if name not in result.latent_sites and not name.startswith("_")
    ]
    posterior = {name: latent[name] for name in names}
    if flat is not None:
        prior, observed_flat = flat.prior_draws(base + 500, n)
    else:
        prior = draw_prior(result.model, k_prior, n, result.model_args, result.model_kwargs)

    model = result.model
    coords = {k: list(v) for k, v in (getattr(model, "coords", {}) or {}).items()}
    trace = getattr(result.guide, "prototype_trace", None)
    dims = plate_dims(trace, [n_ for n_ in names if n_ in trace]) if trace is not None else {}
    if flat is not None:
        observed = observed_flat
        observed_dims = plate_dims(flat.prototype_trace, list(observed))
    else:
        observed, observed_dims = observed_values(model, result.model_args, result.model_kwargs)
    dims.update(observed_dims)

    lead = ("chain", "draw")
    sample_stats = _dataset(
        {
            "log_p": np.stack([p.log_p for p in parts]),
            "log_q": np.stack([p.log_q for p in parts]),
            "lp": np.stack([p.log_p for p in parts]),
        },
        {},
        {},
        lead,
    )
    sample_stats["log_p"].attrs["long_name"] = "log p(x, z): model log joint density of the draw"
    sample_stats["log_q"].attrs["long_name"] = "log q(z): guide log density of the draw"
    sample_stats["lp"].attrs["long_name"] = "log_p under ArviZ's usual name"
    groups = {
        "posterior": _dataset(posterior, dims, coords, lead),
        "sample_stats": sample_stats,
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
    groups["optimization"] = _optimization_dataset(result)

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
        **({"draws_from": str(result.settings["draws_from"])} if result.settings.get("draws_from") else {}),
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
    groups["posterior"].attrs.update(attrs)
    stamp = _stamp()
    for ds in groups.values():
        for k, v in stamp.items():
            ds.attrs.setdefault(k, v)
    return xr.DataTree.from_dict({name: groups[name] for name in GROUPS if name in groups})


def _stamp() -> dict[str, str]:
    """Return the attributes ArviZ's converters put on every group: when and by what it was made."""
    import datetime
    from importlib import metadata

    try:
        version = metadata.version("vifit")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "inference_library": "vifit",
        "inference_library_version": version,
    }

r"""``compare``: a posterior against a reference posterior, parameter by parameter.

The usual reference is NUTS (:func:`inference.checks.nuts.nuts`), which is exact up to Monte Carlo
error; the usual subject is a variational fit, which is only as good as its guide family. For
every scalar parameter the table gives both means and sds and two scale-free errors:

.. math::

    \mathrm{smd} = \frac{\bar z - \bar z_\mathrm{ref}}{s_\mathrm{ref}}, \qquad
    \mathrm{sd\ ratio} = \frac{s}{s_\mathrm{ref}},

the standardized mean difference (the error of the mean in reference sds) and the ratio of the
sds (below 1: the fit is overconfident, as a mean-field guide is when parameters correlate).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..outputs.arviz_export import has_group, plate_dims

__all__ = ["compare", "Comparison", "COLUMNS"]

COLUMNS = ("mean", "sd", "ref_mean", "ref_sd", "smd", "sd_ratio", "mean_ok", "sd_ok")


@dataclass(frozen=True, eq=False)
class Comparison:
    """A posterior against a reference, one row per scalar parameter.

    Attributes
    ----------
    table : pandas.DataFrame
        Indexed by parameter label (``k``, ``A0[exp1]``, ``theta[2]``), with the columns
        ``mean``, ``sd`` (the compared posterior), ``ref_mean``, ``ref_sd`` (the reference),
        ``smd = (mean - ref_mean) / ref_sd``, ``sd_ratio = sd / ref_sd``,
        ``mean_ok = |smd| <= mean_tol`` and ``sd_ok = |sd_ratio - 1| <= sd_tol``.
    reference_name : str
        What the reference is, e.g. ``"NUTS (4 chains x 1000 draws)"``.
    result_name : str
        What was compared, e.g. ``"vifit fit (multivariate_normal, 4000 draws)"``; for the exact
        stage of ``guide="auto"``, ``"vifit fit (exact stage of auto: NUTS through the
        multivariate_t guide's transport map, 4000 draws)"``.
    reference_idata : xarray.DataTree or None
        The reference as an ArviZ DataTree (NUTS or DataTree references), for ArviZ plots;
        None for a fit used as reference.
    mean_tol, sd_tol : float
        The tolerances of ``mean_ok`` and ``sd_ok``.
    """

    table: Any
    reference_name: str
    result_name: str
    reference_idata: Any
    mean_tol: float
    sd_tol: float

    @property
    def all_ok(self) -> bool:
        """Whether every parameter is within both tolerances."""
        return bool(self.table["mean_ok"].all() and self.table["sd_ok"].all())

    @property
    def num_ok(self) -> int:
        """Number of parameters within both tolerances."""
        return int((self.table["mean_ok"] & self.table["sd_ok"]).sum())

    def __str__(self) -> str:
        head = f"{self.result_name} against {self.reference_name}"
        body = self.table.to_string(
            formatters={
                **{c: (lambda v: f"{v:.4g}") for c in ("mean", "sd", "ref_mean", "ref_sd")},
                "smd": lambda v: f"{v:+.3f}",
                "sd_ratio": lambda v: f"{v:.3f}",
            }
        )
        tail = (
            f"{self.num_ok} of {len(self.table)} parameters within {self.mean_tol:g} sd in mean "
            f"and {100 * self.sd_tol:g}% in sd"
        )
        return "\n".join([head, "", body, "", tail])

    def plot(self):
        """Plot the standardized mean differences and sd ratios with their tolerance bands.

        Returns
        -------
        matplotlib.figure.Figure
            ``inference.outputs.plots.plot_comparison(table, mean_tol=..., sd_tol=...)``.
        """
        from ..outputs.plots import plot_comparison

        return plot_comparison(self.table, mean_tol=self.mean_tol, sd_tol=self.sd_tol)


class _Draws:
    """Pooled draws of one side: site -> (n, *shape), with labels of each site's elements."""

    def __init__(self, name: str, draws: dict, dims: dict, coords: dict, idata=None):
        self.name = name
        self.draws = {k: np.asarray(v, dtype=float) for k, v in draws.items()}
        self.dims = dims
        self.coords = coords
        self.idata = idata

    def labels(self, site: str) -> list[str] | None:
        """Coordinate labels of each element of ``site`` (C order), None where none are known."""
        shape = self.draws[site].shape[1:]
        if not shape:
            return [site]
        dims = self.dims.get(site, [])
        axes = []
        known = False
        for axis, size in enumerate(shape):
            dim = dims[axis] if axis < len(dims) else None
            values = self.coords.get(dim) if dim is not None else None
            if values is not None and len(values) == size:
                axes.append([str(v) for v in values])
                known = True
            else:
                axes.append([str(i) for i in range(size)])
        if not known:
            return None
        return [f"{site}[{', '.join(ix)}]" for ix in itertools.product(*axes)]


def _index_labels(site: str, shape: tuple) -> list[str]:
    if not shape:
        return [site]
    return [f"{site}[{', '.join(map(str, ix))}]" for ix in itertools.product(*(range(s) for s in shape))]


def _from_idata(idata, name: str | None = None) -> _Draws:
    if not has_group(idata, "posterior"):
        raise ValueError("the DataTree has no posterior group; pass one with posterior draws")
    post = idata["posterior"]
    draws, dims, coords = {}, {}, {}
    for var, da in post.data_vars.items():
        if da.dims[:2] != ("chain", "draw"):
            continue
        values = np.asarray(da.values)
        draws[var] = values.reshape((-1,) + values.shape[2:])
        dims[var] = list(da.dims[2:])
        for d in da.dims[2:]:
            if d in da.coords:
                coords[d] = list(np.asarray(da.coords[d].values))
    C, D = post.sizes.get("chain", 1), post.sizes.get("draw", 0)
    library = post.attrs.get("inference_library")
    label = name or f"DataTree ({library + ', ' if library else ''}{C} chains x {D} draws)"
    return _Draws(label, draws, dims, coords, idata)


def _from_fit(result, num_samples: int, seed: int | None) -> _Draws:
    draws = result.sample(num_samples, seed=seed)
    trace = getattr(result.guide, "prototype_trace", None)
    dims = plate_dims(trace, [n for n in draws if n in trace]) if trace is not None else {}
    coords = {k: list(v) for k, v in dict(getattr(result.model, "coords", {}) or {}).items()}
    if result.exact_stage_draws:  # guide="auto" ended in its exact stage: the draws are NUTS's, not the guide's
        what = f"exact stage of auto: NUTS through {result.exact_map}"
    else:
        what = result.guide_name
    return _Draws(f"vifit fit ({what}, {num_samples} draws)", draws, dims, coords)


def _side(obj, role: str, num_samples: int, seed: int | None) -> _Draws:
    from .nuts import NutsResult
    from ..engine.result import FitResult

    if isinstance(obj, NutsResult):
        return _from_idata(obj.to_arviz(), f"NUTS ({obj.num_chains} chains x {obj.num_draws} draws)")
    xr = sys.modules.get("xarray")  # a DataTree means xarray is imported; do not import it otherwise
    if xr is not None and isinstance(obj, xr.DataTree):
        return _from_idata(obj)
    if isinstance(obj, FitResult):
        return _from_fit(obj, num_samples, seed)
    raise ValueError(
        f"{role} must be a FitResult (from inference.fit), a NutsResult (from inference.nuts) or an "
        f"ArviZ xarray.DataTree (e.g. arviz.from_netcdf('posterior.nc')), got {type(obj).__name__}"
    )


def compare(
    result,
    reference,
    *,
    num_samples: int = 4000,
    seed: int | None = None,
    var_names=None,
    mean_tol: float = 0.1,
    sd_tol: float = 0.1,
) -> Comparison:
    r"""Compare the posterior of ``result`` with that of ``reference``, parameter by parameter.

    Parameters
    ----------
    result : FitResult, NutsResult or xarray.DataTree
        The posterior to check. A fit is represented by ``num_samples`` draws from its best
        restart (``result.sample(num_samples, seed=seed)``); NUTS and a DataTree by all
        their draws, chains pooled.
    reference : NutsResult, xarray.DataTree or FitResult
        The posterior to check against, usually ``inference.nuts(model)``. DataTree
        chains are pooled (for a vifit export, ``chain`` is the restart).
    num_samples : int
        Draws taken from a FitResult (either side).
    seed : int, optional
        Seed of those draws; the fit's seed plus one by default.
    var_names : str or sequence of str, optional
        Sites to compare; by default every site present on both sides.
    mean_tol : float
        ``mean_ok`` is ``|smd| <= mean_tol``.
    sd_tol : float
        ``sd_ok`` is ``|sd_ratio - 1| <= sd_tol``.

    Returns
    -------
    Comparison
        ``table`` has one row per scalar parameter (each element of a vector site is a row,
        ``name[label]`` with the coordinate label where one is known, else ``name[i]``).

    Notes
    -----
    For every scalar parameter with draws :math:`z_i` (``mean`` :math:`\bar z`, ``sd``
    :math:`s`, ddof 1) and reference draws (:math:`\bar z_\mathrm{ref}`,
    :math:`s_\mathrm{ref}`):

    .. math::

        \mathrm{smd} = (\bar z - \bar z_\mathrm{ref}) / s_\mathrm{ref}, \qquad
        \mathrm{sd\_ratio} = s / s_\mathrm{ref}.

    How to read them. ``smd`` is the error of the posterior mean in units of the reference
    posterior sd: 0.1 means the mean is off by a tenth of the posterior's own width, far
    inside its credible interval. ``sd_ratio`` below 1 means the posterior is too narrow
    (overconfident); a mean-field guide on correlated parameters typically gives 0.2 to 0.7.
    The project's accuracy targets are ``|smd| <= 0.1`` and an sd ratio within 10% of 1, the
    defaults of ``mean_tol`` and ``sd_tol``.

    Both numbers carry Monte Carlo error. With :math:`n` independent draws on one side and an
    effective sample size :math:`\mathrm{ESS}` on the reference side (``NutsResult.summary``
    gives it), for a roughly normal posterior

    .. math::

        \mathrm{se}(\mathrm{smd}) \approx \sqrt{1/n + 1/\mathrm{ESS}}, \qquad
        \mathrm{se}(\mathrm{sd\_ratio}) \approx \sqrt{1/(2n) + 1/(2\,\mathrm{ESS})}.

    With 4000 fit draws against NUTS with an ESS of 2000 these are about 0.027 and 0.019, so
    the 0.1 tolerances are 3.7 and 5 standard errors: a failed check is a real error, not
    noise. With short NUTS runs (ESS of a few hundred) an ``smd`` of 0.1 can be noise alone;
    run NUTS longer before blaming the fit.

    Examples
    --------
    >>> from inference import fit
    >>> from inference.checks.nuts import nuts
    >>> from inference.checks.compare import compare
    >>> check = compare(fit(model), nuts(model))  # doctest: +SKIP
    >>> print(check)  # doctest: +SKIP
    >>> check.all_ok  # doctest: +SKIP
    True
    """
    import pandas as pd

    for name, tol in (("mean_tol", mean_tol), ("sd_tol", sd_tol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not tol >= 0:
            raise ValueError(f"{name} must be a non-negative number (e.g. 0.1), got {tol!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer of at least 2, got {num_samples!r}")

    mine = _side(result, "result", int(num_samples), seed)
    ref = _side(reference, "reference", int(num_samples), seed)

    common = [n for n in ref.draws if n in mine.draws]
    if var_names is not None:
        wanted = [var_names] if isinstance(var_names, str) else list(var_names)
        missing = [n for n in wanted if n not in common]
        if missing:
            raise ValueError(
                f"var_names {', '.join(map(repr, missing))} not found on both sides; the parameters in "
                f"both are {', '.join(common) or 'none'}"
            )
        common = wanted
    if not common:
        raise ValueError(
            f"the result and the reference have no parameter in common: the result ({mine.name}) has "
            f"{', '.join(mine.draws) or 'none'}, the reference ({ref.name}) has "
            f"{', '.join(ref.draws) or 'none'}; compare posteriors of the same model"
        )

    rows, labels = [], []
    for site in common:
        x, y = mine.draws[site], ref.draws[site]
        if x.shape[1:] != y.shape[1:]:
            raise ValueError(
                f"parameter {site!r} has shape {x.shape[1:]} in the result and {y.shape[1:]} in the "
                "reference; compare posteriors of the same model and data"
            )
        shape = x.shape[1:]
        x = x.reshape(x.shape[0], -1)
        y = y.reshape(y.shape[0], -1)
        labels += ref.labels(site) or mine.labels(site) or _index_labels(site, shape)
        mean, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
        ref_mean, ref_sd = y.mean(axis=0), y.std(axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            smd = (mean - ref_mean) / ref_sd
            ratio = sd / ref_sd
        rows.append(np.stack([mean, sd, ref_mean, ref_sd, smd, ratio], axis=1))

    values = np.concatenate(rows, axis=0)
    table = pd.DataFrame(values, index=pd.Index(labels, name="parameter"), columns=list(COLUMNS[:6]))
    table["mean_ok"] = np.abs(table["smd"].to_numpy()) <= mean_tol
    table["sd_ok"] = np.abs(table["sd_ratio"].to_numpy() - 1.0) <= sd_tol
    return Comparison(
        table=table,
        reference_name=ref.name,
        result_name=mine.name,
        reference_idata=ref.idata,
        mean_tol=float(mean_tol),
        sd_tol=float(sd_tol),
    )

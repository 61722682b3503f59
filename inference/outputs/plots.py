"""Plots of a fit (matplotlib): loss trace, data with posterior bands, marginals, pairs, PSIS, comparison.

Each function draws into a new figure (or the ``ax`` given) and returns the figure, so that a
script can show it or save it. Nothing here opens a window: figures are drawn with the Agg backend
unless an inline backend is already active. The functions that take an ArviZ
:class:`xarray.DataTree` expect the layout of the ArviZ hand-off (``docs/arviz.md``): ``chain`` is
the restart, ``posterior.attrs["best_restart"]`` the best one.

The densities (KDE) and the Pareto smoothing come from arviz-stats; the figures are drawn here with
matplotlib because each shows something arviz-plots has no plot for (``docs/arviz.md`` says which
and why): the ODE fit on its fine time grid, the loss trace of every restart, the importance weights
of the guide against the model, one restart's marginals over a much wider prior, and a pair grid
overlaid with a reference posterior. For the standard ArviZ plots, give ``FitResult.to_arviz()``
to arviz-plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .arviz_export import exact_stage_source, has_group

__all__ = [
    "plot_elbo",
    "plot_fit_band",
    "plot_fit_from_idata",
    "plot_marginals",
    "plot_pair",
    "plot_restarts",
    "plot_psis",
    "plot_psis_weights",
    "plot_comparison",
    "KHAT_GOOD",
    "KHAT_BAD",
]

#: Pareto k-hat below which importance sampling from the guide is reliable (Yao et al. 2018).
KHAT_GOOD = 0.5
#: Pareto k-hat above which the guide is unreliable as a proposal (Yao et al. 2018).
KHAT_BAD = 0.7

_POSTERIOR = "C0"
_REFERENCE = "C1"
_PRIOR = "0.55"
_WARN = "#d62728"
_ZONES = (("good", "#d9f0d3"), ("usable", "#fee08b"), ("tails missed", "#f4a582"))


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in {"agg", "module://matplotlib_inline.backend_inline"}:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _plain_number(x: float) -> str:
    """A tick value as plain text: ``1``, ``10``, ``0.01``, ``1e-5``, ``2e6`` (no mathtext)."""
    text = f"{x:g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _plain_log_ticks(*axes) -> None:
    """Label the ticks of log-scaled ``axes`` (x or y axis objects) as plain numbers, e.g. ``0.1``, ``1``, ``10``.

    Matplotlib's default log labels are mathtext (``$\\mathdefault{10^{0}}$``), which shows as raw
    text where ``text.parse_math`` is off, as when the command line draws (so that user text is
    never parsed as math). Which ticks get a label is matplotlib's :class:`~matplotlib.ticker.LogFormatter`'s choice.
    """
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return _plain_number(x)

    for axis in axes:
        axis.set_major_formatter(PlainLogFormatter())
        axis.set_minor_formatter(PlainLogFormatter())


def _grid(plt, n: int, *, ncols: int, width: float, height: float):
    """Make a figure with ``n`` panels on a grid of ``ncols`` columns; hide the spare panels."""
    ncols = max(1, min(n, ncols))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# -- selecting scalar parameters ------------------------------------------------------------------


class _Param(NamedTuple):
    """One scalar element of a latent variable: its label, variable and coordinates."""

    label: str
    var: str
    index: dict  # dimension -> position, for the group it came from
    coords: dict  # dimension -> coordinate label, to find the same element in another group


def _has_group(idata, name: str) -> bool:
    return has_group(idata, name)


def _check_chain(ds, chain: int | None, what: str) -> int | None:
    if chain is None:
        return None
    n = ds.sizes.get("chain", 1)
    if not 0 <= int(chain) < n:
        raise ValueError(f"chain {chain} is out of range: the {what} has {n} chains (restarts 0 to {n - 1}).")
    return int(chain)


def _best_restart(idata) -> int:
    """``posterior.attrs["best_restart"]`` when present, else 0."""
    try:
        return int(idata.posterior.attrs.get("best_restart", 0))
    except (TypeError, ValueError):
        return 0


def _scalar_params(ds, var_names: Sequence[str] | None) -> list[_Param]:
    """List every scalar element of the variables of ``ds`` (dims other than chain and draw)."""
    if var_names is None:
        names = [str(v) for v in ds.data_vars]
    else:
        names = [var_names] if isinstance(var_names, str) else list(var_names)
        missing = [v for v in names if v not in ds.data_vars]
        if missing:
            raise ValueError(
                f"no variable {', '.join(map(repr, missing))} in the posterior; "
                f"choose from {', '.join(map(repr, ds.data_vars))}."
            )
    params = []
    for var in names:
        da = ds[var]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        if not extra:
            params.append(_Param(var, var, {}, {}))
            continue
        labels = {d: da[d].values for d in extra}
        for idx in np.ndindex(*[da.sizes[d] for d in extra]):
            coords = {d: labels[d][i] for d, i in zip(extra, idx)}
            text = ", ".join(str(c) for c in coords.values())
            params.append(_Param(f"{var}[{text}]", var, dict(zip(extra, idx)), coords))
    return params


def _posterior_params(idata, var_names, chain):
    """The posterior group, the checked chain and its scalar parameters; sentences for what is missing."""
    if not _has_group(idata, "posterior"):
        raise ValueError("this DataTree has no posterior group: there is nothing to plot.")
    post = idata.posterior
    chain = _check_chain(post, chain, "posterior")
    params = _scalar_params(post, var_names)
    if not params:
        raise ValueError("the posterior has no variables to plot; pass var_names naming some.")
    return post, chain, params


def _draws(ds, param: _Param, chain: int | None = None) -> np.ndarray:
    """Return the draws of ``param`` from the group it was listed from, flat over (chain, draw)."""
    da = ds[param.var].isel(param.index)
    if chain is not None and "chain" in da.dims:
        da = da.isel(chain=[chain])
    sample_dims = [d for d in ("chain", "draw") if d in da.dims]
    return np.asarray(da.transpose(*sample_dims).values, dtype=float).reshape(-1)


def _lookup(ds, param: _Param, chain: int | None = None) -> np.ndarray | None:
    """Return the same element's draws from another group (prior, reference), or None if absent."""
    if ds is None or param.var not in ds.data_vars:
        return None
    da = ds[param.var]
    if set(da.dims) - {"chain", "draw"} != set(param.coords):
        return None
    try:
        da = da.sel(param.coords)
    except (KeyError, ValueError, IndexError):
        return None
    if chain is not None and "chain" in da.dims:
        da = da.isel(chain=[chain])
    sample_dims = [d for d in ("chain", "draw") if d in da.dims]
    return np.asarray(da.transpose(*sample_dims).values, dtype=float).reshape(-1)


def _focus(x: np.ndarray) -> tuple[float, float] | None:
    """Return the 0.5-99.5% quantile range of ``x`` widened by 50% (25% each side), or None."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    lo, hi = np.quantile(x, [0.005, 0.995])
    width = hi - lo
    if width <= 0:
        width = 0.1 * abs(lo) if lo != 0 else 1.0
    return float(lo - 0.25 * width), float(hi + 0.25 * width)


def _union(*ranges) -> tuple[float, float] | None:
    ranges = [r for r in ranges if r is not None]
    if not ranges:
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _kde(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return arviz-stats' KDE of the finite values of ``x``, or None with fewer than two distinct values."""
    from arviz_stats.base import array_stats

    x = x[np.isfinite(x)]
    if x.size < 2 or np.ptp(x) == 0:
        return None
    grid, pdf, _ = array_stats.kde(x)
    return np.asarray(grid), np.asarray(pdf)


def _draw_density(ax, x, *, color, label, fill: bool, window=None, lw=1.5):
    """Draw a KDE line (and fill) of ``x``, a vertical line when constant; return a legend handle."""
    scale = 1.0
    if window is not None:
        # A wide prior's KDE over all its draws is too coarse on a narrow window: estimate it from
        # the draws near the window and scale by their share of all draws.
        finite = x[np.isfinite(x)]
        width = window[1] - window[0]
        near = finite[(finite > window[0] - width) & (finite < window[1] + width)]
        if near.size >= 20 and np.ptp(near) > 0:
            scale = near.size / finite.size
            x = near
    dens = _kde(x)
    if dens is None:
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            return None
        return ax.axvline(finite[0], color=color, lw=lw, label=label)
    grid, pdf = dens
    pdf = scale * pdf
    if window is not None:
        # Evaluate on the window (a wide prior's own grid would be too coarse there).
        inner = np.linspace(window[0], window[1], 400)
        pdf = np.interp(inner, grid, pdf, left=0.0, right=0.0)
        grid = inner
    (line,) = ax.plot(grid, pdf, color=color, lw=lw, label=label)
    if fill:
        ax.fill_between(grid, pdf, color=color, alpha=0.25, lw=0)
    return line


# -- ELBO ---------------------------------------------------------------------------------------


def _moving_average(values: np.ndarray, w: int) -> np.ndarray:
    """Average over windows of ``w`` steps, skipping NaN steps (NaN where a window has none)."""
    finite = np.isfinite(values)
    kernel = np.ones(w)
    total = np.convolve(np.where(finite, values, 0.0), kernel, mode="valid")
    count = np.convolve(finite.astype(float), kernel, mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_elbo(losses: np.ndarray, *, ax=None, title: str = "ELBO trace", best: int | None = None):
    """Plot the ELBO (negative loss) per step, one line per restart.

    Each restart gets a thin line of the raw ELBO per step and, for long runs, a thicker moving
    average over about 1/50 of the run. Steps with a NaN loss (skipped for a non-finite loss or
    gradient) leave a gap. The y range starts at the 2nd percentile of the ELBO so that the first
    steps do not squash the end of the run.

    Parameters
    ----------
    losses : ndarray, shape (R, n_steps) or (n_steps,)
        ``FitResult.losses`` or ``idata.optimization.loss``: negative ELBO per restart and step.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure by default.
    title : str
        Title of the axes.
    best : int, optional
        Restart to highlight (drawn thicker, labelled ``"restart r (best)"``), e.g.
        ``FitResult.best_restart``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    losses = np.atleast_2d(np.asarray(losses, dtype=float))
    R = losses.shape[0]
    if best is not None and not 0 <= int(best) < R:
        raise ValueError(f"best={best} is out of range: the losses have {R} restarts (0 to {R - 1}).")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.5))
    for r, trace in enumerate(losses):
        elbo = -trace
        steps = np.arange(1, elbo.size + 1)
        is_best = best is not None and r == int(best)
        if R > 1 or best is not None:
            label = f"restart {r} (best)" if is_best else f"restart {r}"
        else:
            label = "per step"
        raw_lw, smooth_lw = (1.2, 2.8) if is_best else (0.6, 1.5)
        alpha = 0.7 if is_best else 0.5
        (line,) = ax.plot(steps, elbo, lw=raw_lw, alpha=alpha, label=label, zorder=3 if is_best else 2)
        w = max(1, elbo.size // 50)
        if elbo.size >= 2 * w and w > 1:
            smooth = _moving_average(elbo, w)
            ax.plot(steps[w - 1 :], smooth, lw=smooth_lw, color=line.get_color(), zorder=3 if is_best else 2)
    finite = -losses[np.isfinite(losses)]
    if finite.size:
        lo, hi = np.percentile(finite, [2, 100])
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-12), hi + 0.05 * (hi - lo + 1e-12))
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


# -- fit to the data ----------------------------------------------------------------------------


def plot_fit_band(
    times: np.ndarray,
    curves: np.ndarray,
    data_times: np.ndarray,
    data_values: np.ndarray,
    *,
    species: Sequence[str],
    experiments: Sequence[str] = ("0",),
    predictive: np.ndarray | None = None,
    data_mask: np.ndarray | None = None,
    prob: float = 0.94,
    time_label: str = "time",
    value_label: str = "concentration",
    max_panels: int = 12,
):
    """Plot data points with the posterior median curve and its band, per species and experiment.

    Parameters
    ----------
    times : ndarray, shape (E, T)
        Fine time grid per experiment.
    curves : ndarray, shape (n_draws, E, T, S)
        Model curves (noise-free) per posterior draw.
    data_times : ndarray, shape (E, T_data)
    data_values : ndarray, shape (E, T_data, S)
        Measurements; NaN where not observed.
    species, experiments : sequence of str
        Labels of the last axis and of the experiments.
    predictive : ndarray, shape (n_draws, E, T, S), optional
        Posterior predictive draws (curves plus measurement noise); drawn as a lighter band.
    data_mask : ndarray of bool, shape (E, T_data, S), optional
    prob : float
        Probability mass of the bands (central interval).
    time_label, value_label : str
        Axis labels.
    max_panels : int
        At most this many experiments get a panel (the first ones).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    E = min(curves.shape[1], max_panels)
    S = curves.shape[-1]
    ncols = min(E, 3)
    nrows = int(np.ceil(E / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    lo_q, hi_q = 50 * (1 - prob), 50 * (1 + prob)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    band = f"{int(round(prob * 100))}%"
    for e in range(E):
        ax = axes[e // ncols][e % ncols]
        for s in range(S):
            c = colors[s % len(colors)]
            t = times[e]
            first = s == 0
            if predictive is not None:
                plo, phi = np.nanpercentile(predictive[:, e, :, s], [lo_q, hi_q], axis=0)
                ax.fill_between(
                    t,
                    plo,
                    phi,
                    color=c,
                    alpha=0.12,
                    lw=0,
                    label=f"{band} new measurements" if first else None,
                )
            lo, mid, hi = np.nanpercentile(curves[:, e, :, s], [lo_q, 50, hi_q], axis=0)
            ax.fill_between(t, lo, hi, color=c, alpha=0.3, lw=0, label=f"{band} curve" if first else None)
            ax.plot(t, mid, color=c, lw=1.5, label=f"{species[s]}: median curve, data")
            values = data_values[e, :, s]
            keep = (
                np.isfinite(values) & np.isfinite(data_times[e]) if data_mask is None else data_mask[e, :, s]
            )
            ax.plot(data_times[e][keep], values[keep], "o", color=c, ms=4, mec="k", mew=0.5)
        ax.set_xlabel(time_label)
        ax.set_ylabel(value_label)
        if curves.shape[1] > 1:
            ax.set_title(f"experiment {experiments[e]}", fontsize="medium")
        ax.legend(fontsize="small")
    for j in range(E, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.tight_layout()
    return fig


def _observed_name(idata) -> str:
    names = list(idata.observed_data.data_vars)
    if len(names) == 1:
        return str(names[0])
    if "obs" in names:
        return "obs"
    raise ValueError(
        f"observed_data has several variables ({', '.join(names)}) and none is called 'obs': "
        "the fit plot needs the kinetics model's single observed site."
    )


def plot_fit_from_idata(idata, *, max_panels: int = 12, prob: float = 0.94):
    """Plot the data with posterior bands (:func:`plot_fit_band`) from a kinetics result.

    Reads ``predictions.curve`` and ``predictions.predictive`` (``chain``, ``draw``,
    ``experiment``, ``fine_time``, ``species``), ``predictions_constant_data.fine_times``,
    ``observed_data`` (the single observed variable, or ``obs``; NaN where not measured) and
    ``constant_data.times``. Axis labels carry ``posterior.attrs["time_unit"]`` and
    ``["concentration_unit"]`` when present.

    Parameters
    ----------
    idata : xarray.DataTree
        A kinetics result, e.g. ``FitResult.to_arviz()`` or ``az.from_netcdf("posterior.nc")``.
    max_panels : int
        At most this many experiments get a panel (the first ones).
    prob : float
        Probability mass of the bands.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        When a group the plot needs is missing (the result is not from a kinetics model).
    """
    if not _has_group(idata, "predictions") or "curve" not in idata.predictions.data_vars:
        raise ValueError("this result has no predictions group: the fit plot needs a kinetics model.")
    if (
        not _has_group(idata, "predictions_constant_data")
        or "fine_times" not in idata.predictions_constant_data
    ):
        raise ValueError(
            "this result has no predictions_constant_data.fine_times: the fit plot needs the fine time grid "
            "that vifit writes for a kinetics model."
        )
    if not _has_group(idata, "observed_data"):
        raise ValueError("this result has no observed_data group: the fit plot needs the measured data.")
    if not _has_group(idata, "constant_data") or "times" not in idata.constant_data:
        raise ValueError(
            "this result has no constant_data.times: the fit plot needs the measurement times "
            "of a kinetics model."
        )
    order = ("chain", "draw", "experiment", "fine_time", "species")
    curve = idata.predictions["curve"]
    missing = [d for d in order if d not in curve.dims]
    if missing:
        raise ValueError(
            f"predictions.curve has dimensions {curve.dims}, without {', '.join(missing)}; "
            "the fit plot needs (chain, draw, experiment, fine_time, species)."
        )

    def stacked(da):
        values = np.asarray(da.transpose(*order).values, dtype=float)
        return values.reshape((-1,) + values.shape[2:])

    curves = stacked(curve)
    predictive = stacked(idata.predictions["predictive"]) if "predictive" in idata.predictions else None
    species = [str(s) for s in curve["species"].values]
    experiments = [str(e) for e in curve["experiment"].values]
    fine_times = np.asarray(
        idata.predictions_constant_data["fine_times"].transpose("experiment", "fine_time").values
    )

    obs = idata.observed_data[_observed_name(idata)]
    time_dim = [d for d in obs.dims if d not in ("experiment", "species")]
    if "experiment" not in obs.dims or "species" not in obs.dims or len(time_dim) != 1:
        raise ValueError(
            f"observed_data has dimensions {obs.dims}; the fit plot needs (experiment, time, species)."
        )
    obs = obs.transpose("experiment", time_dim[0], "species")
    obs_species = [str(s) for s in obs["species"].values]
    values = np.full(obs.shape[:2] + (len(species),), np.nan)
    for s, name in enumerate(species):
        if name in obs_species:
            values[:, :, s] = obs.values[:, :, obs_species.index(name)]
    times = idata.constant_data["times"]
    data_times = np.asarray(
        times.transpose("experiment", *[d for d in times.dims if d != "experiment"]).values
    )

    attrs = idata.posterior.attrs if _has_group(idata, "posterior") else {}
    time_unit, conc_unit = attrs.get("time_unit"), attrs.get("concentration_unit")
    return plot_fit_band(
        fine_times,
        curves,
        data_times,
        values,
        species=species,
        experiments=experiments,
        predictive=predictive,
        prob=prob,
        time_label=f"time ({time_unit})" if time_unit else "time",
        value_label=f"concentration ({conc_unit})" if conc_unit else "concentration",
        max_panels=max_panels,
    )


# -- marginals and pairs ------------------------------------------------------------------------


def plot_marginals(
    idata, var_names: Sequence[str] | None = None, *, max_panels: int = 12, chain: int | None = None
):
    """Plot the posterior density of each scalar parameter over its prior density.

    One panel per scalar parameter: each element of each latent variable of ``idata.posterior``,
    labelled with its coordinates (``L0[exp1]``). The posterior is ArviZ's KDE of the draws,
    coloured; the prior, when ``idata`` has a ``prior`` group, the KDE of the prior draws as a grey
    line and fill. The x range is the posterior's 0.5-99.5% quantile range widened by 50%, so a
    wide prior shows as a nearly flat line under a peaked posterior: how far the data moved the
    parameter away from its prior.

    Parameters
    ----------
    idata : xarray.DataTree
    var_names : sequence of str, optional
        Variables to show; every posterior variable by default.
    max_panels : int
        At most this many panels (the first parameters); the title says when some were left out.
    chain : int, optional
        Restart to show, e.g. ``idata.posterior.attrs["best_restart"]``; all restarts pooled by
        default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    post, chain, params = _posterior_params(idata, var_names, chain)
    shown = params[: max(1, int(max_panels))]
    prior = idata.prior if _has_group(idata, "prior") else None
    fig, axes = _grid(plt, len(shown), ncols=4, width=3.2, height=2.6)
    post_label = "posterior" if chain is None else f"posterior (restart {chain})"
    try:
        handles = {}
        for ax, param in zip(axes, shown):
            x = _draws(post, param, chain)
            window = _focus(x)
            prior_x = _lookup(prior, param)
            if prior_x is not None and window is not None:
                h = _draw_density(ax, prior_x, color=_PRIOR, label="prior", fill=True, window=window, lw=1.2)
                if h is not None:
                    handles.setdefault("prior", h)
            h = _draw_density(ax, x, color=_POSTERIOR, label=post_label, fill=True)
            if h is not None:
                handles.setdefault(post_label, h)
            if window is not None:
                ax.set_xlim(*window)
            ax.set_ylim(bottom=0)
            ax.set_yticks([])
            ax.set_title(param.label, fontsize="medium")
        axes[0].legend(handles=list(handles.values()), fontsize="small", loc="best")
        note = f" (first {len(shown)} of {len(params)} parameters)" if len(shown) < len(params) else ""
        fig.suptitle(f"Marginal posteriors over priors{note}", fontsize="medium")
        fig.tight_layout()
    except Exception:
        plt.close(fig)
        raise
    return fig


def plot_pair(
    idata,
    var_names: Sequence[str] | None = None,
    *,
    reference=None,
    chain: int | None = None,
    max_vars: int = 6,
    reference_label: str = "reference",
):
    """Plot pairs of posterior draws, optionally over a reference posterior (e.g. NUTS).

    A lower-triangular grid: each scalar parameter's KDE on the diagonal, the draws of each pair of
    parameters as a scatter below it (at most 1000 draws a set, evenly spaced). A reference
    DataTree's posterior is drawn in a second colour on the same axes; parameters it lacks are
    drawn without it. Elliptic clouds tilted along a diagonal show correlations, which a mean-field
    guide cannot represent.

    Parameters
    ----------
    idata : xarray.DataTree
    var_names : sequence of str, optional
        Variables to show; every posterior variable by default. Vector variables are expanded into
        their elements.
    reference : xarray.DataTree, optional
        A second posterior of the same model (same variable names and coordinates), all chains.
    chain : int, optional
        Restart of ``idata`` to show; all restarts pooled by default.
    max_vars : int
        At most this many scalar parameters (the first ones).
    reference_label : str
        Legend label of the reference, e.g. ``"NUTS"``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    post, chain, params = _posterior_params(idata, var_names, chain)
    shown = params[: max(1, int(max_vars))]
    ref = None
    if reference is not None:
        if not _has_group(reference, "posterior"):
            raise ValueError(
                "the reference DataTree has no posterior group; pass one with posterior draws."
            )
        ref = reference.posterior
    x = [_draws(post, p, chain) for p in shown]
    r = [_lookup(ref, p) for p in shown]
    windows = [_union(_focus(xi), _focus(ri) if ri is not None else None) for xi, ri in zip(x, r)]
    n = len(shown)
    size = 1.9 * n + 0.8 if n > 1 else 3.6
    fig, axes = plt.subplots(n, n, figsize=(size, size), squeeze=False)
    label = "vifit" if chain is None else f"vifit (restart {chain})"

    def thin(a, b):
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
        step = int(np.ceil(a.size / 1000)) if a.size else 1
        return a[::step], b[::step]

    try:
        handles = {}
        for i in range(n):
            for j in range(n):
                ax = axes[i][j]
                if j > i:
                    ax.set_visible(False)
                    continue
                if i == j:
                    h = _draw_density(ax, x[i], color=_POSTERIOR, label=label, fill=False)
                    if h is not None:
                        handles.setdefault(label, h)
                    if r[i] is not None:
                        h = _draw_density(ax, r[i], color=_REFERENCE, label=reference_label, fill=False)
                        if h is not None:
                            handles.setdefault(reference_label, h)
                    ax.set_yticks([])
                    ax.set_ylim(bottom=0)
                else:
                    if r[i] is not None and r[j] is not None and r[i].size == r[j].size:
                        a, b = thin(r[j], r[i])
                        ax.scatter(a, b, s=3, color=_REFERENCE, alpha=0.35, lw=0, rasterized=True)
                    a, b = thin(x[j], x[i])
                    ax.scatter(a, b, s=3, color=_POSTERIOR, alpha=0.35, lw=0, rasterized=True)
                    if windows[i] is not None:
                        ax.set_ylim(*windows[i])
                if windows[j] is not None:
                    ax.set_xlim(*windows[j])
                if i == n - 1:
                    ax.set_xlabel(shown[j].label)
                else:
                    ax.set_xticklabels([])
                if j == 0 and i > 0:
                    ax.set_ylabel(shown[i].label)
                elif i != j:
                    ax.set_yticklabels([])
                if n == 1:
                    ax.set_title(shown[0].label, fontsize="medium")
        if handles:
            if n > 1:
                fig.legend(handles=list(handles.values()), loc="upper right", fontsize="small")
            else:
                axes[0][0].legend(handles=list(handles.values()), fontsize="small")
        note = f" (first {n} of {len(params)} parameters)" if n < len(params) else ""
        if n > 1 or note:
            fig.suptitle(f"Posterior pairs{note}", fontsize="medium")
        fig.tight_layout()
    except Exception:
        plt.close(fig)
        raise
    return fig


def plot_restarts(idata, var_names: Sequence[str] | None = None, *, max_panels: int = 12):
    """Plot each restart's marginal posterior of each scalar parameter, one colour per restart.

    Drawn by arviz-plots (:func:`arviz_plots.plot_dist` with ``chain`` mapped to colour, the
    matplotlib backend): in a vifit result ``chain`` is the restart, so curves that lie on top of
    each other mean the restarts found the same optimum; a curve apart is a restart stuck
    elsewhere (the verdict's restart check and its R-hat across restarts say the same in numbers).

    Parameters
    ----------
    idata : xarray.DataTree
        A result with a ``posterior`` group.
    var_names : sequence of str, optional
        Variables to show; every posterior variable by default.
    max_panels : int
        At most this many panels (the first scalar parameters).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import xarray as xr

    plt = _pyplot()  # the Agg backend before arviz-plots imports pyplot
    import arviz_plots

    post, _, params = _posterior_params(idata, var_names, None)
    shown = params[: max(1, int(max_panels))]
    # Keep the shown elements only: per variable, the positions used along each of its dims.
    data = {}
    for var in dict.fromkeys(p.var for p in shown):
        used = [p.index for p in shown if p.var == var]
        da = post[var]
        for dim in [d for d in da.dims if d not in ("chain", "draw")]:
            da = da.isel({dim: sorted({ix[dim] for ix in used})})
        data[var] = da
    ds = xr.Dataset(data)
    facets = ["__variable__"] + [d for d in ds.dims if d not in ("chain", "draw")]
    n = len(shown)
    ncols = min(n, 4)
    nrows = int(np.ceil(n / ncols))
    pc = arviz_plots.plot_dist(
        xr.DataTree.from_dict({"posterior": ds}),
        sample_dims=["draw"],
        backend="matplotlib",
        visuals={"credible_interval": False, "point_estimate": False, "point_estimate_text": False},
        aes={"color": ["chain"]},
        cols=facets,
        col_wrap=ncols,
        figure_kwargs={"figsize": (3.2 * ncols, 2.7 * nrows + 0.5)},
    )
    fig = pc.get_viz("figure")
    try:
        pc.add_legend("chain", title="restart")
        note = f" (first {n} of {len(params)} parameters)" if n < len(params) else ""
        fig.suptitle(f"Marginal posterior of each restart{note}", fontsize="medium")
        fig.tight_layout()
    except Exception:
        plt.close(fig)
        raise
    return fig


# -- PSIS ---------------------------------------------------------------------------------------


def _khat_zone(khat: float) -> str:
    if not np.isfinite(khat):
        return "not estimable"
    if khat < KHAT_GOOD:
        return _ZONES[0][0]
    if khat <= KHAT_BAD:
        return _ZONES[1][0]
    return _ZONES[2][0]


def plot_psis_weights(log_weights: np.ndarray, *, title: str = "PSIS diagnostic"):
    """Plot the Pareto-smoothed importance weights of the guide against the model, and k-hat.

    The importance log weights ``log p(x, z) - log q(z)`` of draws ``z ~ q`` go through
    arviz-stats' PSIS (``arviz_stats.base.array_stats.psislw``, given the negated log weights as
    it expects). Left: the normalized weights sorted from largest, raw (grey) and
    smoothed (coloured), on log-log axes, against the level ``1/N`` of equal weights; a few draws
    far above it carry the estimate. Right: the Pareto shape estimate k-hat against the zones of
    Yao et al. (2018): below 0.5 good, 0.5-0.7 usable (importance weighting can correct the guide),
    above 0.7 the guide misses posterior mass in the tails (the verdict reads k-hat with the PSIS shift). The
    annotation gives the importance-sampling effective sample size ``1 / sum(w^2)``.

    Non-finite log weights (a draw the model gives zero density, e.g. a failed ODE solve) are set to
    the smallest finite log weight minus 50 before PSIS, and counted in the title.

    Parameters
    ----------
    log_weights : ndarray, shape (N,)
        Importance log weights of one restart's draws.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The k-hat marker of the right panel has ``gid="khat"``; it sits at the right edge when
        k-hat is above 2. The right panel's title gives k-hat to two decimals.

    References
    ----------
    Yao, Y., Vehtari, A., Simpson, D. and Gelman, A. (2018). Yes, but did it work?: Evaluating
    variational inference. ICML. Vehtari, A. et al. (2024). Pareto smoothed importance sampling.
    JMLR 25(72).
    """
    from arviz_stats.base import array_stats

    plt = _pyplot()
    lw = np.asarray(log_weights, dtype=float).reshape(-1)
    finite = np.isfinite(lw)
    n_bad = int((~finite).sum())
    if finite.sum() < 2:
        raise ValueError(
            f"{n_bad} of {lw.size} log weights are non-finite: PSIS needs at least two draws the model "
            "gives a finite density; check the model at the guide's draws (e.g. failed ODE solves)."
        )
    lw = np.where(finite, lw, lw[finite].min() - 50.0)
    try:
        smoothed, khat = array_stats.psislw(-lw, r_eff=1.0)
    except ValueError:  # equal values in the whole tail (e.g. all weights equal): no Pareto fit
        smoothed, khat = lw - lw.max() - np.log(np.sum(np.exp(lw - lw.max()))), float("nan")
    khat = float(khat)
    w = np.exp(np.asarray(smoothed, dtype=float))
    w = w / w.sum()
    ess = 1.0 / np.sum(w**2)
    raw = np.exp(lw - lw.max())
    raw = raw / raw.sum()
    N = lw.size
    zone = _khat_zone(khat)

    fig, (ax_w, ax_k) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    try:
        rank = np.arange(1, N + 1)
        ax_w.plot(rank, np.sort(raw)[::-1], color=_PRIOR, lw=1.0, ls="--", label="raw weights")
        ax_w.plot(rank, np.sort(w)[::-1], color=_POSTERIOR, lw=1.6, label="Pareto-smoothed weights")
        ax_w.axhline(1.0 / N, color="k", lw=0.8, ls=":", label="equal weights 1/N")
        ax_w.set_ylim(0.01 / N, 2.0)  # weights under 1/(100 N) hardly count
        ax_w.set_xlim(0.8, N * 1.25)
        ax_w.set_xscale("log")
        ax_w.set_yscale("log")
        _plain_log_ticks(ax_w.xaxis, ax_w.yaxis)
        ax_w.set_xlabel("draw rank (largest weight first)")
        ax_w.set_ylabel("normalized weight")
        ax_w.set_title(f"importance weights, sorted; ESS = 1/sum(w²) = {ess:.0f} of {N}", fontsize="medium")
        ax_w.legend(fontsize="small", loc="lower left")

        # Zones up to k-hat = 2 at most; a larger k-hat sits at the right edge, named in the title.
        right = min(max(1.2, khat + 0.15), 2.0) if np.isfinite(khat) else 1.2
        left = min(0.0, khat - 0.15) if np.isfinite(khat) else 0.0
        edges = [left, KHAT_GOOD, KHAT_BAD, right]
        for (name, color), a, b in zip(_ZONES, edges[:-1], edges[1:]):
            ax_k.axvspan(a, b, color=color, lw=0)
            ax_k.text((a + b) / 2, 0.08, name, ha="center", va="bottom", fontsize="small", rotation=90)
        for t in (KHAT_GOOD, KHAT_BAD):
            ax_k.axvline(t, color="k", lw=0.6)
        if np.isfinite(khat):
            shown = min(khat, right - 0.04)
            marker = "D" if shown == khat else ">"
            ax_k.plot([shown], [0.6], marker, color="k", ms=9, gid="khat")
            ax_k.set_title(f"k-hat = {khat:.2f}: {zone}", fontsize="medium")
        elif np.ptp(lw) == 0:
            ax_k.set_title("k-hat not estimable: all weights equal", fontsize="medium")
        else:
            ax_k.set_title("k-hat not estimable: too few tail draws", fontsize="medium")
        ax_k.set_xlim(left, right)
        ax_k.set_ylim(0, 1)
        ax_k.set_yticks([])
        ax_k.set_xlabel("Pareto k-hat")
        note = f"; {n_bad} of {N} draws with zero model density (non-finite log weight)" if n_bad else ""
        fig.suptitle(f"{title}{note}", fontsize="medium")
        fig.tight_layout()
    except Exception:
        plt.close(fig)
        raise
    return fig


def plot_psis(idata, *, chain: int | None = None):
    """Plot the PSIS diagnostic of a fit: :func:`plot_psis_weights` on one restart's log weights.

    The log weights are ``sample_stats.log_p - sample_stats.log_q`` of the draws of restart
    ``chain``.

    Parameters
    ----------
    idata : xarray.DataTree
        A vifit result with ``sample_stats`` ``log_p`` and ``log_q``.
    chain : int, optional
        Restart; ``posterior.attrs["best_restart"]`` when present, else 0.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        When the result has no ``log_p`` and ``log_q``, and when its draws are NUTS's (the exact
        stage of ``guide="auto"``, ``posterior.attrs["draws_from"]``): the ratio ``p/q`` at NUTS
        draws is no importance weight, and its k-hat would contradict the verdict, which rests
        on the chains' R-hat and ESS.
    """
    source = exact_stage_source(idata)
    if source:
        raise ValueError(
            f"the draws are NUTS's, not importance-weighted guide draws ({source}; the exact stage of guide='auto'), so "
            "there is no PSIS diagnostic of them: the verdict rests on the chains' R-hat and ESS"
        )
    if not _has_group(idata, "sample_stats") or not {"log_p", "log_q"} <= set(idata.sample_stats.data_vars):
        raise ValueError(
            "this result has no sample_stats log_p and log_q: the PSIS plot needs the model and guide "
            "log densities of each draw, which vifit's to_arviz writes."
        )
    stats = idata.sample_stats
    if chain is None:
        chain = _best_restart(idata) if _has_group(idata, "posterior") else 0
        chain = min(chain, stats.sizes.get("chain", 1) - 1)
    chain = _check_chain(stats, chain, "sample_stats")
    log_w = stats["log_p"] - stats["log_q"]
    if "chain" in log_w.dims:
        log_w = log_w.isel(chain=chain)
    return plot_psis_weights(np.asarray(log_w.values).reshape(-1), title=f"PSIS diagnostic, restart {chain}")


# -- comparison with a reference ----------------------------------------------------------------


def plot_comparison(
    table, *, mean_tol: float = 0.1, sd_tol: float = 0.1, reference_name: str = "the reference"
):
    """Plot the standardized mean difference and sd ratio of each parameter against a reference.

    Left: ``smd = (mean - ref_mean) / ref_sd`` per parameter, with the band ``±mean_tol``.
    Right: ``sd_ratio = sd / ref_sd`` (log scale) with the band ``[1 - sd_tol, 1 + sd_tol]``; a
    ratio below the band is the usual under-dispersion of variational inference. Points outside a
    band are drawn in red.

    Parameters
    ----------
    table : pandas.DataFrame
        Indexed by parameter label, with columns ``smd`` and ``sd_ratio`` (``mean``, ``sd``,
        ``ref_mean``, ``ref_sd`` are not drawn), e.g. ``Comparison.table``.
    mean_tol, sd_tol : float
        Half-widths of the bands.
    reference_name : str
        Name of the reference in the title, e.g. ``"NUTS"``.

    Returns
    -------
    matplotlib.figure.Figure
        The points are two scatter collections with ``gid`` ``"smd"`` and ``"sd_ratio"``.
    """
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    missing = [c for c in ("smd", "sd_ratio") if c not in getattr(table, "columns", ())]
    if missing:
        raise ValueError(
            f"the comparison table has no column {', '.join(map(repr, missing))}; pass the table of "
            "inference.compare (columns mean, sd, ref_mean, ref_sd, smd, sd_ratio)."
        )
    if len(table) == 0:
        raise ValueError("the comparison table is empty: the two posteriors share no parameter.")
    labels = [str(i) for i in table.index]
    n = len(labels)
    y = np.arange(n)[::-1]
    smd = np.asarray(table["smd"], dtype=float)
    ratio = np.asarray(table["sd_ratio"], dtype=float)
    fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=(9, max(2.4, 0.32 * n + 1.3)), sharey=True)
    try:
        ok = np.isfinite(smd)
        out = ok & (np.abs(smd) > mean_tol)
        ax_m.axvspan(-mean_tol, mean_tol, color="#d9f0d3", lw=0, label=f"±{mean_tol:g}")
        ax_m.axvline(0, color="k", lw=0.6)
        ax_m.scatter(
            smd[ok], y[ok], c=[_WARN if o else _POSTERIOR for o in out[ok]], s=30, zorder=3, gid="smd"
        )
        span = max(mean_tol, np.abs(smd[ok]).max() if ok.any() else 0.0) * 1.25
        ax_m.set_xlim(-span, span)
        ax_m.set_yticks(y, labels)
        ax_m.set_ylim(-0.7, n - 0.3)
        ax_m.set_xlabel("(mean - ref mean) / ref sd")
        ax_m.set_title(f"standardized mean difference: {int(out.sum())} of {n} outside", fontsize="medium")
        ax_m.legend(fontsize="small", loc="best")

        ok = np.isfinite(ratio) & (ratio > 0)
        out = ok & ((ratio < 1 - sd_tol) | (ratio > 1 + sd_tol))
        lo_band = max(1 - sd_tol, 1e-3)
        ax_s.axvspan(lo_band, 1 + sd_tol, color="#d9f0d3", lw=0, label=f"1 ± {sd_tol:g}")
        ax_s.axvline(1, color="k", lw=0.6)
        ax_s.scatter(
            ratio[ok], y[ok], c=[_WARN if o else _POSTERIOR for o in out[ok]], s=30, zorder=3, gid="sd_ratio"
        )
        ax_s.set_xscale("log")
        lo = min(lo_band, ratio[ok].min() if ok.any() else 1.0) / 1.25
        hi = max(1 + sd_tol, ratio[ok].max() if ok.any() else 1.0) * 1.25
        ax_s.set_xlim(lo, hi)
        ticks = [t for t in (0.1, 0.2, 0.5, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 5.0, 10.0) if lo <= t <= hi]
        ax_s.set_xticks(ticks, [f"{t:g}" for t in ticks])  # plain text labels, as _plain_log_ticks gives
        ax_s.xaxis.set_minor_formatter(NullFormatter())
        ax_s.set_xlabel("sd / ref sd")
        ax_s.set_title(f"sd ratio: {int(out.sum())} of {n} outside", fontsize="medium")
        ax_s.legend(fontsize="small", loc="best")
        bad = int((~np.isfinite(smd)).sum() + (~(np.isfinite(ratio) & (ratio > 0))).sum())
        note = f" ({bad} non-finite values not drawn)" if bad else ""
        fig.suptitle(f"Comparison with {reference_name}{note}", fontsize="medium")
        fig.tight_layout()
    except Exception:
        plt.close(fig)
        raise
    return fig

"""Plots of a fit (matplotlib): the loss trace and the data with posterior bands.

Each function draws into a new figure (or the ``ax`` given) and returns the figure, so that a
script can show it or save it. Nothing here opens a window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["plot_elbo", "plot_fit_band"]


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in {"agg", "module://matplotlib_inline.backend_inline"}:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_elbo(losses: np.ndarray, *, ax=None, title: str = "ELBO trace"):
    """Plot the ELBO (negative loss) per step, one line per restart.

    Parameters
    ----------
    losses : ndarray, shape (R, n_steps) or (n_steps,)
        ``FitResult.losses``.
    """
    plt = _pyplot()
    losses = np.atleast_2d(np.asarray(losses, dtype=float))
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.5))
    for r, trace in enumerate(losses):
        elbo = -trace
        steps = np.arange(1, elbo.size + 1)
        ax.plot(steps, elbo, lw=0.6, alpha=0.5, label=f"restart {r}" if losses.shape[0] > 1 else "per step")
        w = max(1, elbo.size // 50)
        if elbo.size >= 2 * w and w > 1:
            kernel = np.ones(w) / w
            finite = np.where(np.isfinite(elbo), elbo, np.nan)
            smooth = np.convolve(np.nan_to_num(finite, nan=np.nanmean(finite)), kernel, mode="valid")
            ax.plot(steps[w - 1 :], smooth, lw=1.5, color=ax.lines[-1].get_color())
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
    """Data points with the posterior median curve and its band, per species and experiment.

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
                    t, plo, phi, color=c, alpha=0.12, lw=0, label=f"{band} new measurements" if first else None
                )
            lo, mid, hi = np.nanpercentile(curves[:, e, :, s], [lo_q, 50, hi_q], axis=0)
            ax.fill_between(t, lo, hi, color=c, alpha=0.3, lw=0, label=f"{band} curve" if first else None)
            ax.plot(t, mid, color=c, lw=1.5, label=f"{species[s]}: median curve, data")
            values = data_values[e, :, s]
            keep = np.isfinite(values) if data_mask is None else data_mask[e, :, s]
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

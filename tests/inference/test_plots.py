"""Plots of a result: each returns one figure with the expected panels and finite content."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from arviz_stats.base import array_stats

from inference.outputs import plots

RED = matplotlib.colors.to_rgba(plots._WARN)


@pytest.fixture(scope="module")
def idata(synthetic):
    return synthetic.synthetic_idata()


@pytest.fixture(autouse=True)
def one_figure_each():
    """Each test starts with no figure and closes the ones it made."""
    plt.close("all")
    yield
    plt.close("all")


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def only_figure(fig):
    """Check the plot made exactly one figure, the one it returned."""
    assert plt.get_fignums() == [fig.number]


# -- ELBO ---------------------------------------------------------------------------------------


def test_elbo_one_line_per_restart_and_best_thicker(idata):
    loss = idata.optimization["loss"].values
    fig = plots.plot_elbo(loss, best=1)
    only_figure(fig)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["restart 0", "restart 1 (best)"]
    raw = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert raw["restart 1 (best)"].get_linewidth() > raw["restart 0"].get_linewidth()
    # The NaN step stays a gap; the other steps are the negative loss.
    y = raw["restart 0"].get_ydata()
    assert np.isnan(y[10]) and np.allclose(np.delete(y, 10), -np.delete(loss[0], 10))
    lo, hi = ax.get_ylim()
    assert np.isfinite([lo, hi]).all() and lo < hi


def test_elbo_single_trace_and_bad_best():
    fig = plots.plot_elbo(np.linspace(10.0, 1.0, 300))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["per step"]
    with pytest.raises(ValueError, match="out of range"):
        plots.plot_elbo(np.ones((2, 50)), best=2)


def test_elbo_moving_average_skips_nan():
    values = np.array([1.0, np.nan, 3.0, 5.0])
    assert np.allclose(plots._moving_average(values, 2), [1.0, 3.0, 4.0])
    assert np.isnan(plots._moving_average(np.array([np.nan, np.nan, 1.0]), 2)[0])


# -- marginals ----------------------------------------------------------------------------------


def test_marginals_one_panel_per_scalar_parameter(idata):
    fig = plots.plot_marginals(idata)
    only_figure(fig)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["k", "L0[exp0]", "L0[exp1]", "sigma"]
    for ax in axes:
        assert len(ax.lines) == 2  # prior and posterior
        for line in ax.lines:
            assert np.isfinite(line.get_ydata()).all() and line.get_ydata().max() > 0
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["prior", "posterior"]


def test_marginals_focus_on_the_posterior_not_the_wide_prior(idata):
    fig = plots.plot_marginals(idata, var_names=["k"])
    (ax,) = visible_axes(fig)
    k = idata.posterior["k"].values.ravel()
    lo, hi = ax.get_xlim()
    q_lo, q_hi = np.quantile(k, [0.005, 0.995])
    assert lo < q_lo and hi > q_hi
    assert hi - lo == pytest.approx(1.5 * (q_hi - q_lo))
    prior_k = idata.prior["k"].values.ravel()
    assert hi - lo < 0.2 * (prior_k.max() - prior_k.min())


def test_marginals_chain_cap_and_errors(idata):
    fig = plots.plot_marginals(idata, max_panels=2, chain=1)
    assert len(visible_axes(fig)) == 2
    assert "first 2 of 4" in fig.get_suptitle()
    assert "restart 1" in fig.axes[0].get_legend().get_texts()[-1].get_text()
    with pytest.raises(ValueError, match="out of range"):
        plots.plot_marginals(idata, chain=2)
    with pytest.raises(ValueError, match="choose from"):
        plots.plot_marginals(idata, var_names=["nope"])


def test_marginals_without_prior(synthetic):
    fig = plots.plot_marginals(synthetic.posterior_only())
    axes = visible_axes(fig)
    assert len(axes) == 2 and all(len(ax.lines) == 1 for ax in axes)


# -- restarts (arviz-plots) -----------------------------------------------------------------------


def test_restarts_one_curve_per_restart_in_each_panel(idata):
    fig = plots.plot_restarts(idata)
    only_figure(fig)
    axes = [ax for ax in visible_axes(fig) if ax.lines]
    assert len(axes) == 4  # k, L0[exp0], L0[exp1], sigma
    chains = idata.posterior.sizes["chain"]
    for ax in axes:
        assert len(ax.lines) == chains
        assert len({line.get_color() for line in ax.lines}) == chains
        assert all(np.isfinite(line.get_ydata()).all() for line in ax.lines)
    fig = plots.plot_restarts(idata, var_names=["L0"], max_panels=1)
    assert len([ax for ax in visible_axes(fig) if ax.lines]) == 1
    assert "first 1 of 2" in fig.get_suptitle()


# -- pairs --------------------------------------------------------------------------------------


def test_pair_lower_triangle_of_scalar_parameters(idata):
    fig = plots.plot_pair(idata)
    only_figure(fig)
    assert len(visible_axes(fig)) == 4 * 5 // 2
    for ax in visible_axes(fig):
        for coll in ax.collections:
            assert np.isfinite(coll.get_offsets()).all() and len(coll.get_offsets()) > 0
    fig = plots.plot_pair(idata, max_vars=2, chain=0)
    assert len(visible_axes(fig)) == 3
    assert "first 2 of 4" in fig.get_suptitle()


def test_pair_overlays_the_reference(idata, synthetic):
    reference = synthetic.synthetic_idata(seed=5, chains=4, draws=200)
    fig = plots.plot_pair(idata, var_names=["k", "sigma"], reference=reference, reference_label="NUTS")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["vifit", "NUTS"]
    diagonal, scatter = fig.axes[0], fig.axes[2]
    assert len(diagonal.lines) == 2
    assert len(scatter.collections) == 2  # reference and vifit draws


# -- PSIS ---------------------------------------------------------------------------------------


def khat_marker(fig):
    (marker,) = [line for ax in fig.axes for line in ax.lines if line.get_gid() == "khat"]
    return float(marker.get_xdata()[0])


def psis_khat(log_w) -> float:
    """k-hat of arviz-stats' PSIS of the importance log weights ``log_w`` (it takes their negation)."""
    return float(array_stats.psislw(-np.asarray(log_w, dtype=float), r_eff=1.0)[1])


def test_psis_khat_is_arviz_stats_psislw_of_the_best_restart(idata):
    fig = plots.plot_psis(idata)
    only_figure(fig)
    assert len(visible_axes(fig)) == 2
    log_w = (idata.sample_stats["log_p"] - idata.sample_stats["log_q"]).isel(chain=1).values
    khat = psis_khat(log_w)
    assert khat_marker(fig) == pytest.approx(float(khat), abs=1e-12)
    assert f"k-hat = {float(khat):.2f}" in fig.axes[1].get_title()
    assert "restart 1" in fig.get_suptitle()


def test_psis_heavy_tail_misses_the_tails_equal_weights_good():
    rng = np.random.default_rng(1)
    # log w ~ Exponential(scale 1.5) makes w Pareto with shape k = 1.5.
    fig = plots.plot_psis_weights(rng.exponential(1.5, 2000))
    assert khat_marker(fig) > plots.KHAT_BAD
    assert "tails missed" in fig.axes[1].get_title()
    fig = plots.plot_psis_weights(0.01 * rng.standard_normal(2000))
    assert khat_marker(fig) < plots.KHAT_GOOD
    assert "good" in fig.axes[1].get_title()
    assert "ESS = 1/sum(w²) = 2000 of 2000" in fig.axes[0].get_title()
    fig = plots.plot_psis_weights(np.zeros(100))
    assert "all weights equal" in fig.axes[1].get_title()


def test_psis_replaces_nonfinite_log_weights():
    rng = np.random.default_rng(2)
    log_w = rng.standard_normal(500)
    log_w[[3, 7, 11]] = -np.inf
    fig = plots.plot_psis_weights(log_w)
    assert "3 of 500 draws with zero model density" in fig.get_suptitle()
    replaced = np.where(np.isfinite(log_w), log_w, np.nanmin(log_w[np.isfinite(log_w)]) - 50.0)
    assert khat_marker(fig) == pytest.approx(psis_khat(replaced), abs=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        plots.plot_psis_weights(np.full(10, -np.inf))


def test_psis_needs_sample_stats(synthetic):
    with pytest.raises(ValueError, match="no sample_stats log_p and log_q"):
        plots.plot_psis(synthetic.posterior_only())
    assert plt.get_fignums() == []


# -- comparison ---------------------------------------------------------------------------------


def comparison_table():
    return pd.DataFrame(
        {
            "mean": [1.0, 2.0, 3.0, 4.0],
            "sd": [1.0, 1.0, 1.0, 1.0],
            "ref_mean": [1.0, 2.0, 3.0, 4.0],
            "ref_sd": [1.0, 1.0, 1.0, 1.0],
            "smd": [0.05, -0.3, 0.01, 0.0],
            "sd_ratio": [0.95, 0.6, 1.3, 1.0],
        },
        index=["k", "L0[exp0]", "L0[exp1]", "sigma"],
    )


def test_comparison_colours_points_outside_the_bands():
    fig = plots.plot_comparison(comparison_table(), mean_tol=0.1, sd_tol=0.1, reference_name="NUTS")
    only_figure(fig)
    assert len(visible_axes(fig)) == 2
    points = {c.get_gid(): c for ax in fig.axes for c in ax.collections if c.get_gid()}
    red = {gid: [tuple(fc) == RED for fc in c.get_facecolors()] for gid, c in points.items()}
    assert red["smd"] == [False, True, False, False]
    assert red["sd_ratio"] == [False, True, True, False]
    assert fig.axes[1].get_xscale() == "log"
    assert "NUTS" in fig.get_suptitle()
    # Wider tolerances: everything inside.
    fig = plots.plot_comparison(comparison_table(), mean_tol=0.5, sd_tol=0.5)
    points = [c for ax in fig.axes for c in ax.collections if c.get_gid()]
    assert not any(tuple(fc) == RED for c in points for fc in c.get_facecolors())


def test_comparison_needs_its_columns():
    with pytest.raises(ValueError, match="'sd_ratio'"):
        plots.plot_comparison(comparison_table().drop(columns="sd_ratio"))


# -- fit ----------------------------------------------------------------------------------------


def test_fit_from_idata_one_panel_per_experiment(idata):
    fig = plots.plot_fit_from_idata(idata)
    only_figure(fig)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["experiment exp0", "experiment exp1"]
    assert axes[0].get_xlabel() == "time (h)" and axes[0].get_ylabel() == "concentration (mM)"
    obs = idata.observed_data["obs"].values
    for e, ax in enumerate(axes):
        points = [line for line in ax.lines if line.get_marker() == "o"]
        assert sum(len(p.get_xdata()) for p in points) == np.isfinite(obs[e]).sum()
        for line in ax.lines:
            assert np.isfinite(line.get_ydata()).all()


def test_fit_from_idata_without_units_or_predictions(idata, synthetic):
    bare = idata.copy(deep=True)
    bare.posterior.attrs.pop("time_unit")
    fig = plots.plot_fit_from_idata(bare)
    assert fig.axes[0].get_xlabel() == "time"
    with pytest.raises(ValueError, match="no predictions group: the fit plot needs a kinetics model"):
        plots.plot_fit_from_idata(synthetic.posterior_only())


# -- tick labels under the command line's plain text ----------------------------------------------


def tick_texts(fig) -> list[str]:
    """The text of every tick label (major and minor) of every axis, after drawing."""
    fig.canvas.draw()
    texts = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            texts += [t.get_text() for t in axis.get_ticklabels(which="both")]
    return [t for t in texts if t]


def test_log_axes_tick_labels_are_plain_text_under_the_command_lines_settings():
    # The command line draws with text.parse_math off (user text is never math); matplotlib's
    # default log tick labels are mathtext, and would show as "$\mathdefault{10^{0}}$".
    from inference.outputs import cli

    rng = np.random.default_rng(3)
    with cli._plain_text():
        fig = plots.plot_psis_weights(rng.exponential(1.5, 2000))
        texts = tick_texts(fig)
        ax_w = fig.axes[0]
        assert ax_w.get_xscale() == ax_w.get_yscale() == "log"
        log_texts = tick_texts_of(ax_w)
        fig_c = plots.plot_comparison(comparison_table(), reference_name="NUTS")
        texts += tick_texts(fig_c)
    assert texts and not any("$" in t or "mathdefault" in t for t in texts), texts
    assert {"1", "10", "100", "0.1", "0.01"} <= set(log_texts), log_texts


def tick_texts_of(ax) -> list[str]:
    return [t.get_text() for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both") if t.get_text()]


def test_plain_numbers_of_log_ticks():
    assert [plots._plain_number(x) for x in (1.0, 10.0, 0.1, 1e-5, 2e6, 1000.0, 0.002)] == [
        "1", "10", "0.1", "1e-5", "2e6", "1000", "0.002"
    ]

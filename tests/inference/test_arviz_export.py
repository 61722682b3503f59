"""The ArviZ 1.x hand-off: every group, named dimensions, a netCDF round trip, and ArviZ's own functions."""

import json
import warnings

import arviz
import arviz_plots as azp
import arviz_stats as azs
import numpy as np
import pytest
import xarray as xr

from inference.outputs.arviz_export import group_names

GROUPS = {
    "posterior",
    "sample_stats",
    "prior",
    "prior_predictive",
    "posterior_predictive",
    "observed_data",
    "log_likelihood",
    "constant_data",
    "predictions",
    "predictions_constant_data",
    "optimization",
}
DRAWS = 300


@pytest.fixture(scope="module")
def idata(fit_a_full_rank):
    return fit_a_full_rank.to_arviz(num_samples=DRAWS)


def test_to_arviz_is_a_datatree_with_every_group(idata):
    assert isinstance(idata, xr.DataTree)
    assert set(group_names(idata)) == GROUPS
    assert set(idata.children) == GROUPS
    assert not idata.to_dataset().data_vars  # the root holds no data, only the groups do


def test_sample_stats_log_p_and_log_q_per_draw(idata, fit_a_full_rank):
    stats = idata.sample_stats
    for name in ("log_p", "log_q", "lp"):
        assert stats[name].dims == ("chain", "draw")
        assert stats[name].shape == (fit_a_full_rank.num_restarts, DRAWS)
        assert np.all(np.isfinite(stats[name].values))
    # The ELBO trace: the optimization loss of every restart and step.
    assert idata.optimization["loss"].shape == fit_a_full_rank.losses.shape
    assert "negative ELBO" in idata.optimization["loss"].attrs["long_name"]


def test_restarts_are_chains(idata, fit_a_full_rank):
    post = idata.posterior
    assert post.sizes["chain"] == fit_a_full_rank.num_restarts == 2
    assert post.sizes["draw"] == DRAWS
    assert idata.sample_stats["log_p"].shape == (2, DRAWS)
    # Each chain comes from its own restart's guide: the chains' means equal the restarts' guide means
    # up to Monte Carlo error (sd / sqrt(300) ~ 0.0003 for k).
    for r in range(2):
        own = fit_a_full_rank.sample(4000, restart=r)["k"].mean()
        assert float(post["k"].sel(chain=r).mean()) == pytest.approx(own, abs=0.0015)


def test_named_dimensions_never_dim_0(idata):
    for group in GROUPS:
        for name, var in idata[group].data_vars.items():
            assert not any(d.endswith("dim_0") and d.startswith("dim") for d in var.dims), (group, name, var.dims)
    assert idata.observed_data["obs"].dims == ("experiment", "time", "species")
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "experiment", "time", "species")
    assert list(idata.observed_data["species"].values) == ["A"]
    assert idata.constant_data["times"].dims == ("experiment", "time")
    assert idata.predictions["curve"].dims == ("chain", "draw", "experiment", "fine_time", "species")
    assert idata.optimization["loss"].dims == ("chain", "step")


def test_densities_are_consistent(idata, fit_a_full_rank):
    stats = idata.sample_stats
    np.testing.assert_array_equal(stats["lp"].values, stats["log_p"].values)
    log_w = (stats["log_p"] - stats["log_q"]).values
    assert np.all(np.isfinite(log_w))
    # For a good guide, log p - log q is nearly constant: its mean is the ELBO, its spread small.
    assert float(log_w.mean()) == pytest.approx(fit_a_full_rank.elbo, abs=0.1)
    assert float(log_w.std()) < 1.0
    # The pointwise log likelihood sums to log p minus the log prior.
    ll = idata.log_likelihood["obs"].sum(("experiment", "time", "species"))
    assert np.all(ll.values < stats["log_p"].values + 10)


def test_observed_data_and_constant_data_hold_the_measurements(idata, reference_model):
    data = reference_model("a").dataset
    np.testing.assert_allclose(idata.observed_data["obs"].values, data.values)
    np.testing.assert_allclose(idata.constant_data["times"].values, data.times)
    initial = idata.constant_data["initial"].sel(initial_species="A").values
    np.testing.assert_array_equal(initial, [1.0])


def test_attributes_carry_the_fit_and_the_verdict(idata, fit_a_full_rank):
    attrs = idata.posterior.attrs
    assert attrs["inference_library"] == "vifit"
    assert attrs["guide"] == "multivariate_normal"
    assert attrs["stop_reason"] == "converged"
    assert attrs["verdict"] == fit_a_full_rank.verdict().level
    assert attrs["khat"] == pytest.approx(fit_a_full_rank.verdict().khat)
    checks = json.loads(attrs["verdict_checks"])
    assert {c["check"] for c in checks} == {"stopping", "density", "psis", "curvature", "restarts", "modes"}
    assert attrs["mechanism"] == "A -> B : k"
    np.testing.assert_allclose(idata.optimization["loss"].values, fit_a_full_rank.losses)


@pytest.mark.parametrize("reader", ["arviz.from_netcdf", "xarray.open_datatree"])
def test_netcdf_round_trip_keeps_everything(idata, tmp_path, reader):
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    back = arviz.from_netcdf(str(path)) if reader == "arviz.from_netcdf" else xr.open_datatree(str(path))
    assert isinstance(back, xr.DataTree)
    assert set(back.children) == set(idata.children) == GROUPS
    for group in GROUPS:
        assert set(back[group].data_vars) == set(idata[group].data_vars), group
        for name, var in idata[group].data_vars.items():
            np.testing.assert_array_equal(back[group][name].values, var.values)
            assert back[group][name].dims == var.dims
        for dim, coord in idata[group].coords.items():
            np.testing.assert_array_equal(back[group][dim].values, coord.values)
        assert set(back[group].attrs) == set(idata[group].attrs), group
    for key, value in idata.posterior.attrs.items():
        assert back.posterior.attrs[key] == value
    xr.testing.assert_identical(back.load(), idata)


def test_arviz_functions_work_without_warnings_about_groups(idata):
    import matplotlib.pyplot as plt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = azs.summary(idata, kind="stats")
        azp.plot_dist(idata, var_names=["k"], backend="matplotlib")
        azp.plot_pair(idata, var_names=["k", "sigma"], backend="matplotlib")
        azp.plot_ppc_dist(idata, num_samples=20, backend="matplotlib")
        azp.plot_forest(idata, var_names=["k"], combined=False, backend="matplotlib")
        loo = azs.loo(idata)
        loo_q = azs.loo_approximate_posterior(idata, idata.sample_stats["log_p"], idata.sample_stats["log_q"])
    plt.close("all")
    assert set(table.index) == {"k", "sigma"}
    assert np.isfinite(loo.elpd) and np.isfinite(loo_q.elpd)
    about_groups = [w for w in caught if "group" in str(w.message).lower()]
    assert not about_groups, [str(w.message) for w in about_groups]


def test_masked_points_are_left_out_of_the_log_likelihood():
    """Species B is in the mechanism of a two-species data set but one point is missing."""
    from inference import fit
    from vi_models import kinetics

    t = np.linspace(0, 4, 6)
    values = np.stack([np.exp(-0.5 * t), 1 - np.exp(-0.5 * t)], -1)
    values[2, 1] = np.nan
    data = kinetics.Dataset.from_arrays(t, values, species=["A", "B"])
    model = kinetics.model("A -> B : k", data, initial={"A": 1.0, "B": 0.0})
    result = fit(model, guide="multivariate_normal", max_steps=200, min_steps=100, progress=False)
    idata = result.to_arviz(num_samples=50, verdict=False)
    ll = idata.log_likelihood["obs"]
    assert ll.dims == ("chain", "draw", "obs_point")
    assert ll.sizes["obs_point"] == 11
    missing = (2, 1)
    kept = list(zip(ll["obs_point_time"].values, ll["obs_point_species"].values))
    assert missing not in kept and len(kept) == 11
    assert "verdict" not in idata.posterior.attrs


def test_importing_inference_and_the_cli_loads_no_output_package():
    """ArviZ, xarray, pandas and matplotlib are imported by the outputs, after the fit, not at start-up."""
    import subprocess
    import sys

    code = (
        "import sys, inference, inference.outputs.cli, inference.outputs.plots, inference.outputs.report; "
        "print(','.join(m for m in ('arviz', 'arviz_base', 'arviz_stats', 'arviz_plots', 'xarray', 'pandas', "
        "'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

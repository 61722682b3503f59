"""NUTS reference runs and the comparison of a posterior against a reference.

Monte Carlo tolerances: a mean from draws with effective sample size ESS has standard error
sd / sqrt(ESS), an sd about sd / sqrt(2 ESS) (normal posterior). Checks allow 4-5 standard
errors, so they neither flake (about 1 in 10^4 to 10^6 per check) nor pass on a real error.
"""

import json

import arviz
import arviz_base
import arviz_stats as azs
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference import fit
from inference.checks.compare import COLUMNS, Comparison, compare
from inference.checks.nuts import NutsResult, nuts

# 24 measurements of which 20 are used (4 masked), y_i ~ Normal(mu, 1), mu ~ Normal(0, 10);
# theta (3 values, plate "group", labelled a, b, c) has no data, so its posterior is its prior.
Y = np.random.default_rng(0).normal(1.5, 1.0, 24)
MASK = np.ones(24, bool)
MASK[[3, 8, 15, 20]] = False
PRIOR_SD, NOISE_SD = 10.0, 1.0
CHAINS, DRAWS = 2, 1000


def conjugate(y, mask):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("group", 3):
        numpyro.sample("theta", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, NOISE_SD).mask(mask), obs=y)


conjugate.coords = {"group": ("a", "b", "c")}


def exact_mu() -> tuple[float, float]:
    """Closed-form posterior mean and sd of mu given the measured points."""
    precision = 1 / PRIOR_SD**2 + MASK.sum() / NOISE_SD**2
    return float(Y[MASK].sum() / NOISE_SD**2 / precision), float(precision**-0.5)


@pytest.fixture(scope="module")
def ref() -> NutsResult:
    return nuts(
        conjugate, jnp.asarray(Y), jnp.asarray(MASK), num_warmup=500, num_samples=DRAWS, num_chains=CHAINS,
        seed=0, progress=False,
    )


@pytest.fixture(scope="module")
def conjugate_fit():
    # Left to stop by itself (about 2000 steps, 5 s): a 300-step fit has not reached the optimum.
    return fit(conjugate, jnp.asarray(Y), jnp.asarray(MASK), guide="multivariate_normal", seed=0, progress=False)


# -- nuts ----------------------------------------------------------------------------------------


def test_nuts_matches_the_closed_form_posterior(ref):
    mean, sd = exact_mu()
    summary = ref.summary()
    ess = float(summary.loc["mu", "ess_bulk"])
    assert ess > 500  # a sound run: the tolerances below rely on it
    mu = ref.samples["mu"].reshape(-1)
    assert abs(mu.mean() - mean) < 4 * sd / np.sqrt(ess)
    assert abs(mu.std(ddof=1) - sd) < 4 * sd / np.sqrt(2 * ess)
    theta = ref.samples["theta"].reshape(-1, 3)
    ess_theta = summary.loc[["theta[a]", "theta[b]", "theta[c]"], "ess_bulk"].to_numpy()
    assert np.all(np.abs(theta.mean(0)) < 4 / np.sqrt(ess_theta))  # prior N(0, 1): sd 1
    assert ref.num_divergences == 0
    assert (summary["r_hat"] < 1.01).all()


def test_nuts_result_shapes_and_fields(ref):
    assert ref.method == "nuts"
    assert ref.samples["mu"].shape == (CHAINS, DRAWS)
    assert ref.samples["theta"].shape == (CHAINS, DRAWS, 3)
    assert ref.latent_sites == ("mu", "theta")
    assert (ref.num_chains, ref.num_draws) == (CHAINS, DRAWS)
    assert ref.timings.total_s > 0
    assert ref.settings["chain_method"] == "vectorized"
    assert ref.settings["init_strategy"] == "init_to_median"
    assert ref.dims() == {"mu": [], "theta": ["group"]}
    assert "mcmc" not in repr(ref)


def test_sample_pools_chains_and_thins_deterministically(ref):
    pooled = ref.sample()
    assert pooled["mu"].shape == (CHAINS * DRAWS,)
    assert pooled["theta"].shape == (CHAINS * DRAWS, 3)
    np.testing.assert_array_equal(pooled["mu"][DRAWS:], ref.samples["mu"][1])
    thin = ref.sample(100)
    index = np.round(np.linspace(0, CHAINS * DRAWS - 1, 100)).astype(int)
    np.testing.assert_array_equal(thin["theta"], pooled["theta"][index])
    a, b = ref.sample(100, seed=3), ref.sample(100, seed=3)
    np.testing.assert_array_equal(a["mu"], b["mu"])
    assert len(np.unique(a["mu"])) == 100
    with pytest.raises(ValueError, match="at most 2000"):
        ref.sample(5000)


def test_to_arviz_groups_dims_and_attributes(ref):
    idata = ref.to_arviz()
    post = idata.posterior
    assert dict(post.sizes) == {"chain": CHAINS, "draw": DRAWS, "group": 3}
    assert list(post["theta"].dims) == ["chain", "draw", "group"]
    assert list(post["group"].values) == ["a", "b", "c"]
    assert post.attrs["inference_library"] == "vifit-nuts"
    assert post.attrs["num_divergences"] == 0
    assert post.attrs["seed"] == 0
    assert post.attrs["total_s"] == pytest.approx(ref.timings.total_s)
    assert "diverging" in idata.sample_stats and "lp" in idata.sample_stats
    assert idata.sample_stats["diverging"].shape == (CHAINS, DRAWS)
    # Observed data on the plate's dimension, NaN where masked; the log likelihood keeps the 20
    # measured points only, with their index into observed_data.
    obs = idata.observed_data["y"]
    assert obs.dims == ("data",)
    np.testing.assert_array_equal(np.isnan(obs.values), ~MASK)
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "y_point")
    np.testing.assert_array_equal(ll["y_point_data"].values, np.flatnonzero(MASK))
    mu = post["mu"].values[0, 0]
    expected = dist.Normal(mu, NOISE_SD).log_prob(Y[MASK])
    np.testing.assert_allclose(ll.values[0, 0], expected, rtol=1e-10)
    assert np.isfinite(azs.loo(idata).elpd)
    # Each call gives a fresh object; without the log likelihood on request.
    assert ref.to_arviz() is not idata
    assert "log_likelihood" not in ref.to_arviz(log_likelihood=False).children


def vector_model(y=None, scale=1.0):
    loc = numpyro.sample("loc", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    numpyro.deterministic("loc_sum", loc.sum())
    with numpyro.plate("rows", y.shape[0]):
        numpyro.sample("y", dist.MultivariateNormal(loc, scale * jnp.eye(2)), obs=y)


def test_nuts_on_any_model_one_sequential_chain():
    # A site outside any plate, a deterministic site, a multivariate observed site, model kwargs.
    y = np.random.default_rng(7).normal(size=(10, 2))
    r = nuts(
        vector_model, y=jnp.asarray(y), scale=2.0, num_warmup=100, num_samples=100, num_chains=1,
        chain_method="sequential", progress=False,
    )
    assert list(r.samples) == ["loc"] and r.samples["loc"].shape == (1, 100, 2)
    assert r.model_kwargs["scale"] == 2.0
    assert r.dims() == {"loc": ["loc_dim_0"], "loc_sum": []}
    idata = r.to_arviz()
    np.testing.assert_allclose(idata.posterior["loc_sum"].values, r.samples["loc"].sum(-1))
    ll = idata.log_likelihood["y"]  # one log density per row of the multivariate site
    assert ll.shape == (1, 100, 10)
    expected = dist.MultivariateNormal(r.samples["loc"][0, 5], 2.0 * jnp.eye(2)).log_prob(y)
    np.testing.assert_allclose(ll.values[0, 5], expected, rtol=1e-10)
    assert list(compare(r, idata).table.index) == ["loc[0]", "loc[1]", "loc_sum"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"num_chains": 1.5}, "num_chains must be a positive integer"),
        ({"num_warmup": -1}, "num_warmup must be an integer of at least 0"),
        ({"target_accept": 1.0}, "target_accept must be a probability"),
        ({"chain_method": "threads"}, "chain_method must be one of"),
        ({"chain_method": "parallel", "num_chains": 64}, "use chain_method='vectorized'"),
        ({"init_strategy": "median"}, "init_strategy must be a NumPyro initialization strategy"),
    ],
)
def test_nuts_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nuts(conjugate, jnp.asarray(Y), jnp.asarray(MASK), progress=False, **kwargs)


# -- compare on draws with known moments -----------------------------------------------------------


def _idata(draws: dict, **kw):
    return arviz_base.from_dict({"posterior": draws}, **kw)


def test_smd_and_sd_ratio_match_the_analytic_values():
    rng = np.random.default_rng(1)
    shape = (4, 5000)  # n = 20000 independent draws a side
    n = shape[0] * shape[1]
    fit_draws = {"a": rng.normal(1.0, 2.0, shape), "b": rng.normal(0.0, 1.0, shape + (2,))}
    ref_draws = {"a": rng.normal(0.8, 2.5, shape), "b": rng.normal(0.5, 0.5, shape + (2,))}
    kw = {"coords": {"pair": ["x", "y"]}, "dims": {"b": ["pair"]}}
    c = compare(_idata(fit_draws, **kw), _idata(ref_draws, **kw))
    assert list(c.table.columns) == list(COLUMNS)
    assert list(c.table.index) == ["a", "b[x]", "b[y]"]
    # (mean, sd, ref_mean, ref_sd) of each row, and its exact smd and sd ratio.
    truth = {"a": (1.0, 2.0, 0.8, 2.5), "b[x]": (0.0, 1.0, 0.5, 0.5), "b[y]": (0.0, 1.0, 0.5, 0.5)}
    for label, (m, s, rm, rs) in truth.items():
        row = c.table.loc[label]
        # se of (mean - ref_mean) / ref_sd, and of sd / ref_sd (delta method, normal draws).
        se_smd = np.sqrt((s**2 + rs**2) / n) / rs
        se_ratio = (s / rs) * np.sqrt(1 / (2 * n) + 1 / (2 * n))
        assert abs(row["smd"] - (m - rm) / rs) < 4 * se_smd, label
        assert abs(row["sd_ratio"] - s / rs) < 4 * se_ratio, label
    assert c.table.loc["a", "mean_ok"] and not c.table.loc["a", "sd_ok"]  # smd 0.08, ratio 0.8
    assert not c.table.loc["b[x]", "mean_ok"]  # smd -1
    assert not c.all_ok
    assert c.reference_name == "DataTree (4 chains x 5000 draws)"


def test_identical_draws_agree_exactly():
    rng = np.random.default_rng(2)
    idata = _idata({"a": rng.normal(size=(2, 300)), "b": rng.gamma(2.0, size=(2, 300, 3))})
    c = compare(idata, idata)
    assert (c.table["smd"] == 0).all()
    assert (c.table["sd_ratio"] == 1).all()
    assert c.all_ok and c.num_ok == 4
    assert list(c.table.index) == ["a", "b[0]", "b[1]", "b[2]"]
    assert c.reference_idata is idata


def test_all_ok_flips_when_the_mean_moves_past_the_tolerance():
    z = np.random.default_rng(3).normal(0.0, 1.0, (1, 2000))
    sd = z.std(ddof=1)
    ref = _idata({"a": z})
    near = compare(_idata({"a": z + 0.09 * sd}), ref)
    far = compare(_idata({"a": z + 0.11 * sd}), ref)
    # A shift leaves the sd as it is, so smd is the shift in sds (up to rounding).
    assert near.table.loc["a", "smd"] == pytest.approx(0.09, abs=1e-12)
    assert near.all_ok and not far.all_ok
    assert far.table.loc["a", "sd_ok"] and not far.table.loc["a", "mean_ok"]
    assert compare(_idata({"a": z + 0.11 * sd}), ref, mean_tol=0.2).all_ok
    wide = compare(_idata({"a": 1.15 * z}), ref)
    assert wide.table.loc["a", "sd_ratio"] == pytest.approx(1.15, abs=1e-12)
    assert not wide.all_ok and compare(_idata({"a": 1.15 * z}), ref, sd_tol=0.2).all_ok


def test_str_has_a_header_the_table_and_a_verdict_line():
    z = np.random.default_rng(4).normal(size=(1, 500))
    c = compare(_idata({"a": z, "b": z + 10}), _idata({"a": z, "b": z}))
    lines = str(c).splitlines()
    assert lines[0] == "DataTree (1 chains x 500 draws) against DataTree (1 chains x 500 draws)"
    assert lines[-1] == "1 of 2 parameters within 0.1 sd in mean and 10% in sd"
    assert any(line.startswith("b ") for line in lines)


def test_var_names_restrict_and_bad_names_are_sentences():
    rng = np.random.default_rng(5)
    a = _idata({"mu": rng.normal(size=(1, 100)), "tau": rng.normal(size=(1, 100))})
    assert list(compare(a, a, var_names="tau").table.index) == ["tau"]
    with pytest.raises(ValueError, match="'sigma' not found on both sides; the parameters in both are mu, tau"):
        compare(a, a, var_names=["sigma"])
    b = _idata({"k": rng.normal(size=(1, 100))})
    with pytest.raises(ValueError, match=r"result .* has mu, tau, the reference .* has k"):
        compare(a, b)
    with pytest.raises(ValueError, match="shape"):
        compare(a, _idata({"mu": rng.normal(size=(1, 100, 2))}))
    with pytest.raises(ValueError, match="reference must be a FitResult"):
        compare(a, {"mu": np.zeros(3)})
    with pytest.raises(ValueError, match="mean_tol must be a non-negative number"):
        compare(a, a, mean_tol=-0.1)


# -- compare with NUTS and fits -------------------------------------------------------------------


def test_nuts_against_its_own_inference_data(ref, tmp_path):
    idata = ref.to_arviz()
    c = compare(ref, idata)
    assert (c.table["smd"] == 0).all() and (c.table["sd_ratio"] == 1).all()
    assert c.reference_idata is idata
    idata.to_netcdf(tmp_path / "nuts.nc")  # a saved reference works the same
    saved = arviz.from_netcdf(tmp_path / "nuts.nc")
    assert saved.posterior.attrs["inference_library"] == "vifit-nuts"
    assert (compare(ref, saved).table["smd"] == 0).all()
    c = compare(idata, ref)
    assert c.reference_name == f"NUTS ({CHAINS} chains x {DRAWS} draws)"
    assert c.reference_idata.posterior.attrs["inference_library"] == "vifit-nuts"
    assert list(c.table.index) == ["mu", "theta[a]", "theta[b]", "theta[c]"]


def test_full_rank_fit_agrees_with_nuts(conjugate_fit, ref):
    n = 4000
    c = compare(conjugate_fit, ref, num_samples=n, seed=1)
    assert isinstance(c, Comparison)
    assert c.result_name == f"vifit fit (multivariate_normal, {n} draws)"
    assert list(c.table.index) == ["mu", "theta[a]", "theta[b]", "theta[c]"]
    # The full-rank guide is exact on this Gaussian posterior, so the differences are Monte Carlo
    # error of both sides (ESS of NUTS from its summary) plus a few percent of optimization noise.
    ess = ref.summary()["ess_bulk"].to_numpy()
    se_smd = np.sqrt(1 / n + 1 / ess)
    se_ratio = np.sqrt(1 / (2 * n) + 1 / (2 * ess))
    assert np.all(np.abs(c.table["smd"].to_numpy()) < 4 * se_smd + 0.05)
    assert np.all(np.abs(c.table["sd_ratio"].to_numpy() - 1) < 4 * se_ratio + 0.05)
    # Same fit and seed on both sides: identical draws.
    same = compare(conjugate_fit, conjugate_fit, num_samples=500, seed=2)
    assert (same.table["smd"] == 0).all() and same.reference_idata is None
    assert list(same.table.index) == ["mu", "theta[a]", "theta[b]", "theta[c]"]


def test_plot_returns_a_figure():
    plots = pytest.importorskip("inference.outputs.plots")
    if not hasattr(plots, "plot_comparison"):
        pytest.skip("inference.outputs.plots.plot_comparison is not there yet")
    z = np.random.default_rng(6).normal(size=(1, 200))
    fig = compare(_idata({"a": z, "b": 0.5 * z}), _idata({"a": z, "b": z})).plot()
    assert fig.axes
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- a kinetics reference problem --------------------------------------------------------------------


def _prior_text(spec) -> str:
    family, *args = spec
    return f"{family}({', '.join(repr(float(a)) for a in args)})"


def test_nuts_on_reference_problem_a(bench_data, problems):
    from vi_models import kinetics

    priors = {name: _prior_text(problems["priors"][name]) for name in problems["params"]["a"]}
    model = kinetics.model("A -> B : k", bench_data / "a_decay.csv", priors=priors, initial={"A": 1.0})
    result = nuts(model, num_warmup=200, num_samples=200, num_chains=2, seed=0, progress=False)
    k = result.samples["k"]
    assert k.shape == (2, 200)
    # The truth within 4 posterior sds of the posterior mean.
    assert abs(k.mean() - problems["truth"]["a"]["k"]) < 4 * k.std()
    idata = result.to_arviz()
    assert set(idata.posterior.data_vars) == {"k", "sigma"}
    assert idata.observed_data["obs"].dims == ("experiment", "time", "species")
    assert list(idata.observed_data["species"].values) == ["A"]
    # The ODE-failure factor is not data.
    assert list(idata.log_likelihood.data_vars) == ["obs"]
    assert idata.log_likelihood["obs"].shape == (2, 200, 1, 20, 1)
    assert np.isfinite(idata.log_likelihood["obs"].values).all()
    assert json.loads(json.dumps(float(idata.posterior.attrs["total_s"]))) > 0
    print(f"\nNUTS on problem a, 2 chains x (200 + 200): {result.timings.total_s:.1f} s")


def test_default_chain_method_is_sequential_for_a_while_loop():
    """Chains run one after another when the log density runs a while loop (an adaptive ODE
    solve: vectorized, every chain would wait for the slowest one's loop), else vectorized."""
    from inference.checks.nuts import _default_chain_method
    from vi_models.kinetics import Mechanism, make_solver

    # Michaelis-Menten has no closed form: diffrax with adaptive steps, a while loop.
    solve = make_solver(Mechanism.parse("S -> P : mm(Vmax, Km)"))
    times = jnp.array([1.0, 2.0])

    def looped(y):
        k = numpyro.sample("k", dist.LogNormal(0.0, 1.0))
        ys, _ = solve(jnp.array([1.0, 0.0]), times, jnp.stack([k, 2.0]))
        numpyro.sample("y", dist.Normal(ys[:, 0], 1.0), obs=y)

    def plain(y):
        k = numpyro.sample("k", dist.LogNormal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(k, 1.0), obs=y)

    y = jnp.array([0.5, 0.7])
    assert _default_chain_method(looped, (y,), {}) == "sequential"
    assert _default_chain_method(plain, (y,), {}) == "vectorized"

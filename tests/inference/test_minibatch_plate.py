"""Plates of experiments: minibatch gradients, recovery, per-experiment time grids, the plate reader.

The model is ``vi_models.kinetics.plate_model``: first-order decay ``A -> B : k`` with a log-normal
population of rates (``k_mu``, ``k_tau``) and one rate per experiment (``k_u = log k``, centred).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import inference  # noqa: F401 - float64
from inference import fit, minibatch_rule, minibatch_verdict, site_moments
from inference.engine.stopping import PlateauRule
from vi_models.kinetics import PlateData, plate_model, read_plate, solve
from vi_models.kinetics.mechanism import Mechanism

MU, TAU, SIGMA = float(np.log(0.35)), 0.3, 0.02


def make_plate(E: int, *, seed: int = 0, times=None, mechanism="A -> B : k", species=("A",), initial=None):
    rng = np.random.default_rng(seed)
    times = np.linspace(0.0, 10.0, 15) if times is None else times
    grid = PlateData.grid(E, times, species=species) if np.ndim(times) == 1 else PlateData.from_arrays(
        times, np.zeros(np.shape(times) + (len(species),)), species=species)
    model = plate_model(mechanism, grid, initial=initial or {"A": 1.0, "B": 0.0}, hierarchical="k")
    u = MU + TAU * rng.standard_normal(E)
    data = model.synthetic(grid, {"k_mu": MU, "k_tau": TAU, "k_u": u, "sigma": SIGMA}, seed=seed + 1)
    return model, data, u


# -- minibatches --------------------------------------------------------------------------------------
def test_minibatch_elbo_gradient_is_unbiased():
    """The mean of many minibatch ELBO gradients equals the full-data one within Monte Carlo error.

    40 experiments, minibatches of 8: the likelihood and the per-experiment prior terms are scaled by
    40 / 8 inside the plate, and the guide (AutoNormal, one location and scale per experiment)
    subsamples with it. 4000 gradients of each kind (fresh guide draws, fresh minibatches), at
    guide parameters away from the optimum; every coordinate's difference within 4.5 standard errors.
    """
    model, data, _ = make_plate(40, seed=2)
    n = 4000

    def gradients(subsample_size):
        guide = AutoNormal(model, init_scale=0.2)
        with numpyro.handlers.seed(rng_seed=0):
            guide._setup_prototype(data, subsample_size=subsample_size)
        params = {
            "k_mu_auto_loc": jnp.asarray(-0.8), "k_mu_auto_scale": jnp.asarray(0.1),
            "k_tau_auto_loc": jnp.asarray(-1.0), "k_tau_auto_scale": jnp.asarray(0.2),
            "k_u_auto_loc": jnp.asarray(np.linspace(-1.5, -0.5, 40)), "k_u_auto_scale": jnp.full(40, 0.05),
            "sigma_auto_loc": jnp.asarray(-3.5), "sigma_auto_scale": jnp.asarray(0.1),
        }
        elbo = Trace_ELBO()

        def one(key):
            # The ELBO's loss takes the (constrained) guide parameters as its param_map.
            return jax.grad(lambda p: elbo.loss(key, p, model, guide, data, subsample_size=subsample_size))(params)

        grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(subsample_size or 99), n))
        return np.concatenate([np.asarray(g).reshape(n, -1) for g in jax.tree.leaves(grads)], axis=1)

    mini, full = gradients(8), gradients(None)
    se = np.sqrt(mini.var(0) / n + full.var(0) / n)
    z = (mini.mean(0) - full.mean(0)) / np.where(se > 0, se, 1.0)
    assert mini.shape[1] == 86
    assert np.max(np.abs(z)) < 4.5, np.max(np.abs(z))
    # The minibatch gradients are noisier (that is the price), not shifted.
    assert np.median(mini.var(0) / np.maximum(full.var(0), 1e-300)) > 1.5


def test_the_minibatch_rule_waits_for_whole_epochs():
    model, data, _ = make_plate(400, seed=3)
    base = PlateauRule()
    assert minibatch_rule(model, (data,), {}, base) == base
    rule = minibatch_rule(model, (data,), {"subsample_size": 4}, base)
    # 100 steps per epoch: windows of two epochs at least, 100 epochs before stopping (within max_steps).
    assert rule.window >= 200 and rule.min_steps == 10000 and rule.max_steps == base.max_steps
    capped = minibatch_rule(model, (data,), {"subsample_size": 4}, PlateauRule(min_steps=300, max_steps=600))
    assert capped.min_steps == 600


@pytest.fixture(scope="module")
def minibatch_fit():
    model, data, u = make_plate(200, seed=4)
    result = fit(model, data, subsample_size=20, guide="normal", progress=False, seed=0, max_steps=3000)
    return result, u


def test_minibatch_fit_recovers_the_population_and_says_what_it_cannot_check(minibatch_fit):
    result, u = minibatch_fit
    assert result.subsampled_plates == {"experiment": (200, 20)}
    # Every experiment was visited at least 100 times before the rule could stop.
    assert result.num_steps >= 1000
    p = result.params
    assert abs(p["k_mu_auto_loc"] - MU) < 3 * p["k_mu_auto_scale"]
    assert abs(p["k_tau_auto_loc"] - np.log(TAU)) < 3 * p["k_tau_auto_scale"]
    cover = np.mean(np.abs(p["k_u_auto_loc"] - u) < 1.645 * p["k_u_auto_scale"])
    assert 0.8 < cover <= 1.0
    verdict = minibatch_verdict(result)
    names = [c.name for c in verdict.checks]
    assert names[:2] == ["stopping", "visits"] and "not checked" in names
    assert verdict.level == "use with care"
    assert "PSIS, the curvature check and the density of the draws" in verdict.reason
    with pytest.raises(ValueError, match="the verdict"):
        result.verdict(200)


def test_minibatch_verdict_runs_the_full_data_checks_when_asked(minibatch_fit):
    result, _ = minibatch_fit
    verdict = minibatch_verdict(result, full_data={"subsample_size": None}, num_samples=1000)
    names = [c.name for c in verdict.checks]
    assert "psis" in names and "density" in names and "not checked" not in names
    assert verdict.khat_draws == 1000 and np.isfinite(verdict.khat)


# -- full data: recovery -----------------------------------------------------------------------------
def test_large_plate_recovers_the_truth_through_auto():
    """1200 experiments (1203 latent dimensions): guide='auto' takes the large-model path.

    MAP, then the mean-field ELBO's fixed point on fresh draws; mu and tau within 3 posterior sds of
    the truth, and the 90% intervals of the per-experiment log k cover the truth about 90% of the time.
    """
    model, data, u = make_plate(1200, seed=5)
    result = fit(model, data, progress=False, seed=0)
    assert result.guide_name == "normal" and [a.guide for a in result.attempts] == ["map", "normal"]
    assert "large_model" in result.settings and result.settings["latent_dimension"] == 1203
    moments = site_moments(result)
    (mu, mu_sd), (log_tau, tau_sd) = moments["k_mu"], moments["k_tau"]
    assert abs(mu - MU) < 3 * mu_sd and abs(log_tau - np.log(TAU)) < 3 * tau_sd
    m_u, s_u = moments["k_u"]
    assert 0.86 < np.mean(np.abs(m_u - u) < 1.645 * s_u) < 0.94
    assert result.stop_reason == "converged"
    verdict = result.verdict()
    assert verdict.khat_draws == result.settings["verdict_draws"] and verdict.khat < 0.7


# -- different time grids per experiment ---------------------------------------------------------------
def _ragged(E=9, seed=6):
    rng = np.random.default_rng(seed)
    counts = 3 + np.arange(E) % 5
    times = np.sort(rng.uniform(0.0, 8.0, (E, 7)), axis=1)
    values = np.where(np.arange(7)[None] < counts[:, None], 0.0, np.nan)
    return times, values, counts


def test_different_time_grids_give_the_sum_of_per_experiment_densities():
    """Each experiment its own times and number of points: the plate's log density is the sum, over
    experiments, of the density of each one alone (its own points only)."""
    times, values, counts = _ragged()
    grid = PlateData.from_arrays(times, values)
    model = plate_model("A -> B : k", grid, initial={"A": 1.0, "B": 0.0}, hierarchical="k")
    rng = np.random.default_rng(1)
    u = MU + TAU * rng.standard_normal(len(counts))
    data = model.synthetic(grid, {"k_mu": MU, "k_tau": TAU, "k_u": u, "sigma": SIGMA}, seed=2)
    assert list(data.n_times) == list(counts) and not data.complete

    def by_hand(k_mu, k_tau, k_u, sigma):
        total = dist.Normal(np.log(0.5), 1.0).log_prob(k_mu) + dist.HalfNormal(0.5).log_prob(k_tau)
        total += dist.HalfNormal(0.1).log_prob(sigma)
        for e, n in enumerate(counts):
            t, y = np.asarray(data.times)[e, :n], np.asarray(data.values)[e, :n, 0]
            total += dist.Normal(k_mu, k_tau).log_prob(k_u[e])
            total += jnp.sum(dist.Normal(jnp.exp(-jnp.exp(k_u[e]) * t), sigma).log_prob(y))
        return total

    from numpyro.infer.util import log_density

    for k_mu, k_tau, sigma in [(MU, TAU, SIGMA), (-0.5, 0.8, 0.05)]:
        values_ = {"k_mu": k_mu, "k_tau": k_tau, "k_u": jnp.asarray(u + 0.1), "sigma": sigma}
        lp, _ = log_density(model, (data,), {}, values_)
        assert abs(float(lp) - float(by_hand(**values_))) < 1e-10 * max(1.0, abs(float(lp)))


@pytest.mark.parametrize("shared", [False, True], ids=["own grids", "one grid"])
@pytest.mark.parametrize("mechanism, species, initial", [
    ("A -> B : k", ("A", "B"), {"A": 1.0, "B": 0.2}),
    ("A -> B : k; B -> C : k2", ("B", "C"), {"A": 1.0, "B": 0.0, "C": 0.0}),
    ("A <=> B : k, kb", ("A",), {"A": 1.0, "B": 0.5}),
])
def test_plate_solvers_match_the_ode_solution_on_per_experiment_grids(mechanism, species, initial, shared):
    """The closed form (decays) and the matrix exponentials (other linear mechanisms: one per distinct
    step on a shared grid, one per time increment on per-experiment grids) agree with vifit's solver
    experiment by experiment, each on its own times."""
    times, values, _ = _ragged()
    if shared:
        times = np.broadcast_to(np.linspace(0.0, 8.0, times.shape[1]), times.shape).copy()
    values = np.repeat(values[..., None], len(species), axis=-1)
    grid = PlateData.from_arrays(times, values, species=species)
    model = plate_model(mechanism, grid, initial=initial, hierarchical="k")
    mech = Mechanism.parse(mechanism)
    rng = np.random.default_rng(0)
    k = np.exp(rng.normal(np.log(0.4), 0.4, (len(times), len(mech.parameters))))
    ys, failed = jax.jit(lambda k: model._solve(model.y0, k, grid))(k)
    assert not np.any(failed)
    observed = [mech.species.index(s) for s in species]
    for e in range(len(times)):
        ref, bad = solve(mech, model.y0, times[e], k[e])
        got = np.asarray(ys[e]) if model.measured_only else np.asarray(ys[e])[:, observed]
        assert not bad and np.allclose(got, np.asarray(ref)[:, observed], rtol=1e-6, atol=1e-8)


# -- reading a plate -----------------------------------------------------------------------------------
def test_read_plate_long_and_wide_csv_and_parquet_agree(tmp_path):
    times, values, counts = _ragged(E=6)
    rng = np.random.default_rng(3)
    rows = []
    for e, n in enumerate(counts):
        for i in range(n):
            rows.append({"well": f"w{e}", "time": times[e, i], "species": "A", "value": rng.normal()})
            if e % 2 == 0:
                rows.append({"well": f"w{e}", "time": times[e, i], "species": "B", "value": rng.normal()})
    long = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # rows in any order
    long.to_csv(tmp_path / "long.csv", index=False)
    wide = long.pivot_table(index=["well", "time"], columns="species", values="value").reset_index()
    wide = wide.sample(frac=1.0, random_state=1)
    wide.to_csv(tmp_path / "wide.csv", index=False)
    pytest.importorskip("pyarrow", reason="Parquet is read through pyarrow (vifit[parquet])")
    long.to_parquet(tmp_path / "long.parquet")

    plates = [read_plate(tmp_path / name) for name in ("long.csv", "wide.csv", "long.parquet")]
    order = [plates[0].experiments.index(x) for x in plates[1].experiments]
    for p in plates:
        assert sorted(p.experiments) == [f"w{e}" for e in range(6)] and p.species == ("A", "B")
        assert p.read_seconds > 0 and p.nbytes > 0 and "MiB of arrays" in p.describe()
    first, second, third = plates
    assert np.array_equal(first.times, third.times) and np.array_equal(first.mask, third.mask)
    assert np.allclose(first.values[order], second.values) and np.array_equal(first.mask[order], second.mask)
    e = first.experiments.index("w1")
    assert first.n_times[e] == counts[1] and not first.mask[e, :, 1].any()  # B never measured in w1
    assert np.allclose(first.times[e, : counts[1]], times[1, : counts[1]])


def test_read_plate_names_what_is_missing(tmp_path):
    (tmp_path / "bad.csv").write_text("sample,t,A\n1,0,1.0\n")
    with pytest.raises(ValueError, match="no experiment column"):
        read_plate(tmp_path / "bad.csv")
    assert read_plate(tmp_path / "bad.csv", experiment="sample").n_experiments == 1

"""The kinetics model: its priors and checks, recovery of k, and agreement with NUTS."""

import math

import jax
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from inference import fit
from vi_models import kinetics

A_PRIORS = {"k": "LogNormal(log(0.5), 1)", "sigma": "HalfNormal(0.1)"}


@pytest.fixture(scope="module")
def decay_data(bench_data):
    return kinetics.Dataset.from_csv(bench_data / "a_decay.csv")


@pytest.fixture(scope="module")
def decay_model(decay_data):
    return kinetics.model("A -> B : k", decay_data, initial={"A": 1.0}, priors=A_PRIORS)


def test_latent_sites_and_given_priors(decay_model):
    assert decay_model.latent_sites == ("k", "sigma")
    assert decay_model.gradient == "expm"
    assert isinstance(decay_model.priors["k"], dist.LogNormal)
    assert float(decay_model.priors["k"].loc) == pytest.approx(math.log(0.5))


def test_default_priors_follow_the_scaling_rule(decay_data):
    m = kinetics.model("A -> B : k", decay_data, initial={"A": 1.0})
    c, T = float(decay_data.c_max), float(decay_data.t_max)
    assert float(m.priors["k"].loc) == pytest.approx(math.log(1 / T))
    assert float(m.priors["k"].scale) == 2.0
    assert float(m.priors["sigma"].scale) == pytest.approx(0.5 * c)
    mm = kinetics.model("S -> P : mm(Vmax, Km)", decay_data.__class__.from_arrays([0, 1, 4], {"S": [10, 8, 5]}), initial={"S": 10.0})
    assert float(mm.priors["Vmax"].loc) == pytest.approx(math.log(10 / 4))
    assert float(mm.priors["Km"].loc) == pytest.approx(math.log(10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial": {}}, "initial concentration of the observed species 'A' is not given"),
        ({"initial": {"A": 1.0, "C": 2.0}}, "'C', which the mechanism does not have"),
        ({"initial": {"A": [1.0, 2.0]}}, "one per experiment"),
        ({"initial": {"A": 1.0}, "priors": {"kk": "Normal(0, 1)"}}, "prior given for 'kk'"),
        ({"initial": {"A": 1.0}, "noise": "gaussian"}, "noise is 'gaussian', an unknown noise model"),
        ({"initial": {"A": 1.0}, "priors": {"k": "Gamma(-1, 1)"}}, "'k'"),
    ],
)
def test_bad_model_settings_are_sentences(decay_data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kinetics.model("A -> B : k", decay_data, **kwargs)


def test_lognormal_noise_needs_positive_data(bench_data):
    data = kinetics.Dataset.from_csv(bench_data / "b_reversible.csv")  # B has a negative value at t = 0
    with pytest.raises(ValueError, match="lognormal"):
        kinetics.model("A <=> B : kf, kb", data, initial={"A": 1.0, "B": 0.0}, noise="lognormal")


def test_unknown_species_in_data_is_named(decay_data):
    with pytest.raises(kinetics.DataError, match="'A'"):
        kinetics.model("X -> Y : k", decay_data, initial={"X": 1.0})


def test_per_experiment_and_inferred_initial_conditions():
    data = kinetics.Dataset.from_arrays(
        [np.array([0.5, 1.0, 2.0]), np.array([0.5, 1.0, 2.0])],
        [{"A": [0.8, 0.6, 0.4]}, {"A": [1.6, 1.2, 0.8]}],
    )
    m = kinetics.model("A -> B : k", data, initial={"A": "infer"})
    assert m.latent_sites == ("k", "A0", "sigma")
    traj = m.simulate({"k": np.array([0.5]), "A0": np.array([[1.0, 2.0]]), "sigma": np.array([0.01])}, n_points=5)
    assert traj.ys.shape == (1, 2, 5, 2)
    np.testing.assert_allclose(traj.ys[0, :, 0, 0], [1.0, 2.0])
    np.testing.assert_allclose(traj.ys[0, 1, -1, 0], 2.0 * np.exp(-0.5 * 2.0), rtol=1e-9)
    assert traj.predictive.shape == (1, 2, 5, 1)
    known = kinetics.model("A -> B : k", data, initial={"A": [1.0, 2.0]})
    np.testing.assert_allclose(known.known_initial[:, 0], [1.0, 2.0])


@pytest.mark.parametrize("noise", ["normal", "lognormal", "proportional"])
def test_noise_models_give_finite_log_density(noise):
    from numpyro.infer.util import log_density

    data = kinetics.Dataset.from_arrays([0.5, 1.0, 2.0], {"A": [0.8, 0.6, 0.4]})
    m = kinetics.model("A -> B : k", data, initial={"A": 1.0}, noise=noise)
    lp, _ = log_density(m, (), {}, {"k": 0.45, "sigma": 0.05})
    assert np.isfinite(float(lp))


@pytest.fixture(scope="module")
def decay_fit(decay_model):
    return fit(decay_model, guide="multivariate_normal", seed=0, progress=False)


@pytest.fixture(scope="module")
def decay_nuts(decay_model):
    mcmc = MCMC(NUTS(decay_model), num_warmup=500, num_samples=1000, num_chains=2, chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1))
    return mcmc.get_samples()


def test_recovers_k_on_the_reference_data(decay_fit, problems):
    k = decay_fit.sample(4000)["k"]
    truth = problems["truth"]["a"]["k"]
    # The truth lies within 3 posterior sd of the posterior mean (a 0.3% chance to fail by luck).
    assert abs(k.mean() - truth) < 3 * k.std()
    assert 0.001 < k.std() < 0.05


def test_full_rank_guide_agrees_with_nuts(decay_fit, decay_nuts):
    draws = decay_fit.sample(4000, seed=2)
    for name in ("k", "sigma"):
        ref_mean, ref_sd = float(decay_nuts[name].mean()), float(decay_nuts[name].std())
        assert abs(draws[name].mean() - ref_mean) < 0.2 * ref_sd, name
        assert abs(draws[name].std() / ref_sd - 1) < 0.2, name

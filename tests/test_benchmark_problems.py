"""The benchmark problems (``benchmarks/problems.py``) and the hand-written ELBO of ``benchmarks/speed.py``.

The vifit and plain NumPyro versions of each reference problem must be the same model (same priors,
same likelihood), and the hand-written ELBO must be the same estimator as NumPyro's ``Trace_ELBO``,
so that the benchmark compares like with like.
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal
from numpyro.infer.util import log_density

import inference  # noqa: F401  (float64 and the tests' compilation cache, as in the other tests)

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bp():
    """``benchmarks/problems.py`` as a module."""
    return _load("problems")


@pytest.fixture(scope="module")
def speed():
    """``benchmarks/speed.py`` as a module."""
    return _load("speed")


def _log_density(model, values) -> float:
    """Log joint density at ``values``, compiled as one program (faster than op-by-op)."""
    return float(jax.jit(lambda v: log_density(model, (), {}, v)[0])(values))


def _exact_mm_log_density(bp, problems) -> float:
    """Log joint density of problem c at the truth, with the exact (Lambert W) solution of the ODE."""
    from scipy.special import lambertw
    from scipy.stats import halfnorm, lognorm, norm

    data = bp.load_data("c")
    t, y = data["times"], data["values"][:, 0]
    truth, pri = problems["truth"]["c"], problems["priors"]
    vmax, km, sigma, s0 = truth["Vmax"], truth["Km"], truth["sigma"], problems["setup"]["c"]["S0"]
    s = km * np.real(lambertw((s0 / km) * np.exp((s0 - vmax * t) / km)))
    return float(
        norm.logpdf(y, s, sigma).sum()
        + lognorm.logpdf(vmax, pri["Vmax"][2], scale=np.exp(pri["Vmax"][1]))
        + lognorm.logpdf(km, pri["Km"][2], scale=np.exp(pri["Km"][1]))
        + halfnorm.logpdf(sigma, scale=pri["sigma"][1])
    )


def test_problem_tables_match_the_data(bp, bench_data, problems):
    """The data files have the set-up of problems.json, and the rate constants are named."""
    assert bp.DATA == bench_data
    for pid in bp.PROBLEM_IDS:
        setup = problems["setup"][pid]
        data = bp.load_data(pid)
        assert data["times"].shape == (setup["n_t"],)
        assert data["times"][0] == setup["t0"] and data["times"][-1] == pytest.approx(setup["t1"])
        if pid == "d":
            assert data["values"].shape == (setup["n_exp"], setup["n_t"])
        names = set(problems["params"][pid]) - {"sigma"}
        assert names <= set(bp.rate_constants(pid))
    assert bp.rate_constants("d") == ("mu", "tau", "k")


@pytest.mark.parametrize("pid", ["a", "b", "c", "d"])
def test_vifit_and_plain_models_agree_at_the_truth(bp, problems, pid):
    """Both versions of a problem build, and their log densities at the truth are finite and agree."""
    truth = bp.true_values(pid)
    vifit_lp = _log_density(bp.vifit_model(pid), truth)
    plain_lp = _log_density(bp.plain_numpyro_model(pid), truth)
    assert np.isfinite(vifit_lp) and np.isfinite(plain_lp)
    if pid != "c":
        # a, b, d: vifit solves these linear networks exactly (matrix exponential); diffrax agrees
        # to far below its tolerance.
        assert vifit_lp == pytest.approx(plain_lp, rel=1e-6)
        return
    # c (Michaelis-Menten) is solved numerically by both, with rtol 1e-6 but different absolute
    # tolerances (vifit scales atol to the data: 1e-8 x 10). With sigma = 0.05 and S up to 10 a
    # relative solver error of 1e-6 moves the log density by about 1e-5 relative, so both are
    # checked against the exact solution at that level, and against each other.
    exact = _exact_mm_log_density(bp, problems)
    assert vifit_lp == pytest.approx(exact, rel=2e-5)
    assert plain_lp == pytest.approx(exact, rel=2e-5)
    assert vifit_lp == pytest.approx(plain_lp, rel=2e-5)


def test_hierarchical_truth_reproduces_the_per_experiment_rates(bp, problems):
    """The non-centred truth of d gives back the true k_e through the derived ``k``."""
    truth = bp.true_values("d")
    derived = bp.with_derived("d", {name: np.asarray(v)[None] for name, v in truth.items()})
    np.testing.assert_allclose(derived["k"][0], problems["truth_d_k_i"], rtol=1e-12)


def test_hand_written_elbo_equals_numpyro_trace_elbo(bp, speed):
    """Same guide parameters, same noise: the hand-written ELBO is NumPyro's Trace_ELBO estimate."""
    model = bp.vifit_model("a")  # exact solution A(t) = exp(-k t), like the hand-written loop
    guide = AutoMultivariateNormal(model)
    loc = jnp.array([np.log(0.36), np.log(0.025)])
    scale_tril = jnp.array([[0.02, 0.0], [0.05, 0.15]])
    params = {"auto_loc": loc, "auto_scale_tril": scale_tril}
    key = jax.random.PRNGKey(7)
    n = speed.NUM_PARTICLES

    def numpyro_elbo_loss(params):
        return float(jax.jit(lambda p: Trace_ELBO(num_particles=n).loss(key, p, model, guide))(params))

    # The first call sets the guide up, which takes a key inside the ELBO; the second is the estimate.
    numpyro_elbo_loss(params)
    numpyro_loss = numpyro_elbo_loss(params)

    # The draws Trace_ELBO made: particle i seeds the guide with the second half of split(key_i).
    draws = []
    for particle_key in jax.random.split(key, n):
        _, guide_key = jax.random.split(particle_key)
        seeded = handlers.seed(handlers.substitute(guide, data=params), guide_key)
        draws.append(handlers.trace(seeded).get_trace()["_auto_latent"]["value"])
    z = jnp.stack(draws)
    eps = jax.scipy.linalg.solve_triangular(scale_tril, (z - loc).T, lower=True).T

    elbo = speed.hand_elbo(*speed.hand_problem_a())
    hand = float(jax.jit(elbo)(loc, scale_tril, eps))
    assert np.isfinite(hand)
    assert -hand == pytest.approx(numpyro_loss, rel=1e-8, abs=1e-8)

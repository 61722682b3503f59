"""Numerical faults: each one detected, counted, handled and reported (inference.engine.faults).

The fits are small and shared per module: a stiff system under an explicit solver (refitted with
the stiff one), the same system where no stiff variant exists (no draw has a finite density), a
prior so wide that values overflow, a noise scale with a prior on the whole real line (non-finite
losses), and a guide started with a collapsed scale. The contradictions of the verdict's checks
are tested on constructed draws.
"""

import json

import diffrax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference import fit
from inference.checks import diagnostics as dg
from inference.engine import faults as fl
from inference.engine.target import PredictiveDraws
from inference.outputs import report
from vi_models import kinetics

#: Verdict draws of the tests (the default, 16000, is for k-hat; the counts need fewer).
N = 2000

# A -> B fast (k1 = 1e4), 2 B -> C slow (k2 = 1e-2), noise sd 0.01: stiff for an explicit solver.
STIFF = "A -> B : k1; 2 B -> C : k2"
TIMES = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
STIFF_DATA = {
    "A": [1.00126, 0.00105, 0.01304, -0.01265, -0.02325, -0.00732, 0.00412, 0.01366],
    "B": [-0.00132, 0.97504, 0.97101, 0.90286, 0.83115, 0.70884, 0.51043, 0.32668],
    "C": [0.00640, 0.01342, 0.01219, 0.04587, 0.07087, 0.13969, 0.24871, 0.33685],
}
STIFF_PRIORS = {"k1": "LogNormal(log(1e4), 0.5)", "k2": "LogNormal(log(1e-2), 0.5)", "sigma": "HalfNormal(0.05)"}


def stiff_model(**solver):
    """The stiff system with a step limit of 256 (kvaerno5 needs about 160 steps, tsit5 about 4e5)."""
    data = kinetics.Dataset.from_arrays(TIMES, STIFF_DATA)
    return kinetics.model(
        STIFF, data, initial={"A": 1.0, "B": 0.0, "C": 0.0}, priors=STIFF_PRIORS, solver={"max_steps": 256, **solver}
    )


def check(verdict, name):
    return next(c for c in verdict.checks if c.name == name)


# -- the step limit and the stiff switch -----------------------------------------------------------
@pytest.fixture(scope="module")
def switched():
    """Fitted under tsit5, which hits its step limit at every draw: refitted once with kvaerno5."""
    result = fit(stiff_model(), guide="multivariate_normal", max_steps=30, progress=False)
    return result, result.diagnose(N)


def test_the_step_limit_switches_to_the_stiff_solver_and_says_so(switched):
    result, diagnosis = switched
    faults = result.faults
    assert faults.stiff_switch and result.model.solver.stiff
    assert "hit its step limit at 256 of 256 guide draws" in faults.stiff_note
    assert "tsit5: the system is stiff; it was refitted with the stiff solver kvaerno5" in faults.stiff_note
    assert faults.stiff_note in result.notes()
    assert result.settings["stiff_switch"] == faults.stiff_note
    # The refit solves every draw; the verdict says what happened, and the switch alone harms nothing.
    assert diagnosis.faults.zero_density == 0 and diagnosis.faults.stiff_switch
    noted = check(diagnosis.verdict, "numerical faults")
    assert noted.level == dg.RELIABLE and "refitted with the stiff solver kvaerno5" in noted.message
    record = json.loads(json.dumps(diagnosis.faults.as_dict()))
    assert record["stiff_switch"] is True and record["notes"] == [faults.stiff_note]


@pytest.fixture(scope="module")
def stuck():
    """The same system under a solver object (no stiff variant to switch to): no draw has a finite density."""
    result = fit(stiff_model(solver=diffrax.Tsit5()), guide="multivariate_normal", progress=False)
    return result, result.diagnose(N)


def test_no_finite_draw_gives_an_unreliable_verdict_that_says_why(stuck):
    result, diagnosis = stuck
    verdict = diagnosis.verdict
    assert not result.faults.stiff_switch
    assert verdict.level == dg.UNRELIABLE
    assert verdict.checks[0].name == "numerical faults"
    assert "have zero model density" in verdict.reason and "hit its step limit" in verdict.reason
    assert "the system is stiff for the explicit solver" in verdict.reason
    assert "--stiff" in verdict.advice and "learning rate" not in verdict.advice
    assert diagnosis.faults.zero_density == N and diagnosis.faults.ode_step_limit == N
    assert diagnosis.faults.ode_failed == N and diagnosis.faults.examined == fl.EXAMINE
    # No check contradicts: none is reliable about draws that do not exist.
    assert check(verdict, "density").level == dg.UNRELIABLE
    assert check(verdict, "curvature").level == dg.UNRELIABLE
    assert "no guide draw has a finite model density" in check(verdict, "curvature").message
    psis_message = check(verdict, "psis").message
    assert f"only 0 of {N} draws have finite importance weights ({N} of {N} draws have zero model density)" in psis_message
    # The skipped steps are explained by the same cause, with the same advice.
    assert "stiff" in result.nonfinite_reason and "--stiff" in check(verdict, "stopping").advice


# -- priors so wide that values overflow -----------------------------------------------------------
@pytest.fixture(scope="module")
def overflowing():
    """k2 is not measured (only A is) and its prior spans e^(+-800): the Laplace guide reaches the overflow."""
    t = np.array(TIMES[:6])
    data = kinetics.Dataset.from_arrays(t, {"A": np.exp(-0.4 * t) + np.array([1, -1, 2, 0, -2, 1]) * 0.01})
    model = kinetics.model(
        "A -> B : k1; B -> C : k2", data, initial={"A": 1.0, "B": 0.0, "C": 0.0}, priors={"k2": "LogNormal(0, 400)"}
    )
    result = fit(model, guide="laplace", progress=False)
    return result, result.diagnose(N)


def test_overflowing_draws_are_counted_left_out_and_make_the_verdict_unreliable(overflowing):
    result, diagnosis = overflowing
    faults = diagnosis.faults
    assert faults.overflow > fl.TOO_MANY * N and faults.zero_density >= faults.overflow
    assert diagnosis.verdict.level == dg.UNRELIABLE
    noted = check(diagnosis.verdict, "numerical faults")
    assert noted.level == dg.UNRELIABLE and "beyond double precision" in noted.message
    assert "narrow the prior" in noted.advice
    # The posterior's draws leave out every draw of zero density or with values that are not finite.
    draws = result.posterior.model_draws(result.best_restart, 11, 1000)
    assert np.all(np.isfinite(draws.log_p))
    assert all(np.all(np.isfinite(v)) for v in result.sample(1000).values())


# -- non-finite losses, and a cause named rightly --------------------------------------------------
def noise_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.Normal(0.05, 0.05))  # mass below zero, where no scale lives
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


Y = np.array([0.31, 0.28, 0.33, 0.30, 0.27, 0.32, 0.29, 0.30])


@pytest.fixture(scope="module")
def negative_sigma():
    result = fit(noise_model, Y, guide="normal", draws="fresh", max_steps=600, progress=False)
    return result, result.diagnose(N)


def test_nonfinite_losses_are_counted_and_their_cause_named(negative_sigma):
    result, diagnosis = negative_sigma
    bad = int(result.nonfinite_steps.sum())
    assert bad > 0 and result.faults.nonfinite_steps == bad and result.faults.stopped
    assert any(f"{bad} of" in n and "non-finite loss or gradient and were skipped" in n for n in result.notes())
    # The real cause is named (sigma below zero), not an ODE solver, and the advice is the prior's.
    assert "sigma is negative" in result.nonfinite_reason and "ODE" not in result.nonfinite_reason
    stopping = check(diagnosis.verdict, "stopping")
    assert stopping.level == dg.UNRELIABLE and "learning rate" not in stopping.advice
    assert "give sigma a prior on positive values" in stopping.advice
    density = check(diagnosis.verdict, "density")
    assert "sigma is negative" in density.message and "ODE" not in density.message
    assert diagnosis.verdict.level == dg.UNRELIABLE and "give sigma a prior" in diagnosis.verdict.advice
    # The draws of the posterior have positive sigma only.
    assert np.all(result.sample(1000)["sigma"] > 0)


# -- a collapsed guide scale -----------------------------------------------------------------------
def mean_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_a_collapsed_guide_scale_is_named_and_taken_with_care():
    # Started at sd 1e-12, Adam at lr 0.01 cannot bring the scale back in 200 steps.
    start = {"auto_loc": np.array([0.2]), "auto_scale_tril": np.array([[1e-12]])}
    result = fit(mean_model, Y, guide="normal", draws="fresh", lr=0.01, min_steps=100, max_steps=200,
                 init_params=start, progress=False)
    assert result.faults.scale_collapse == ("mu",)
    assert any("scale collapsed" in n and "mu" in n for n in result.notes())
    noted = check(result.diagnose(N).verdict, "numerical faults")
    assert noted.level == dg.CARE and "mu" in noted.message


# -- the checks agree with each other and with their numbers ---------------------------------------
def test_a_guide_far_wider_than_the_laplace_sd_is_not_called_a_match():
    u = np.random.default_rng(0).normal(size=(4000, 2)) * np.array([2550.0, 1.0])
    found = dg.check_curvature_flat(u, ["a", "b"], lambda x0, h: -np.eye(2), "multivariate_normal")
    assert found.level == dg.CARE
    assert "matches" not in found.message and "of a (unconstrained) is 2.5" in found.message


def test_psis_says_why_it_is_not_possible():
    n = 1000
    # The guide's density is infinite (a scale collapsed to zero), the model's finite: not "zero model density".
    message = dg.check_psis(np.zeros(n), np.full(n, np.inf), {"z": np.zeros(n)})[0].message
    assert "guide's own log density is not finite at 1000 of 1000 draws" in message
    assert "zero model density" not in message
    # Every draw has zero model density: PSIS and the density check say the same.
    log_p = np.full(n, -np.inf)
    psis_check = dg.check_psis(log_p, np.zeros(n), {"z": np.zeros(n)})[0]
    assert psis_check.level == dg.check_density(log_p).level == dg.UNRELIABLE
    assert "1000 of 1000 draws have zero model density" in psis_check.message


def test_khat_is_printed_on_the_side_of_the_threshold_it_is_on(monkeypatch):
    real = dg.psis
    monkeypatch.setattr(dg, "psis", lambda log_p, log_q: real(log_p, log_q)._replace(khat=0.7004))
    z = np.random.default_rng(1).normal(size=4000)
    message = dg.check_psis(-0.5 * z**2 / 1.44, -0.5 * z**2, {"z": z})[0].message
    assert "PSIS k-hat 0.7004 from 4000 draws is above 0.7" in message
    assert dg.khat_text(0.6996) == "0.70" and dg.khat_text(0.7) == "0.70"


# -- plain data: the record, the report, the draws -------------------------------------------------
def test_keep_finite_replaces_draws_of_zero_density_and_counts_them():
    n = 6
    pred = PredictiveDraws(
        latent={"k": np.array([1.0, np.inf, 2.0, 3.0, 4.0, 5.0]), fl.STATUS_SITE: np.array([0, 0, 1, 0, 0, 0])},
        log_joint=np.array([0.0, -np.inf, -np.inf, 0.0, 0.0, 0.0]),
        log_det_jacobian=np.zeros(n),
        log_likelihood={"obs": np.zeros((n, 2))},
        predictive={"obs": np.zeros((n, 2))},
    )
    kept, log_q, left_out = fl.keep_finite(pred, np.arange(n, dtype=float), seed=0)
    assert left_out == 2 and np.all(np.isfinite(kept.log_joint)) and np.all(np.isfinite(kept.latent["k"]))
    assert set(log_q) <= {0.0, 3.0, 4.0, 5.0} and kept.latent[fl.STATUS_SITE].max() == 0


def test_the_report_has_a_section_on_numerical_faults(stuck):
    _, diagnosis = stuck
    html = report._faults({"verdict_checks": diagnosis.verdict.checks_json()})
    assert 'id="section-faults"' in html and "Numerical faults" in html and "hit its step limit" in html
    assert report._faults({"verdict_checks": "[]"}) == ""


def test_faults_record_counts_and_levels():
    assert not fl.Faults().any and fl.Faults().check() is None
    many = fl.Faults(draws=100, zero_density=20, examined=20, overflow=20)
    assert many.level == dg.UNRELIABLE and "20 of 100 guide draws have zero model density" in many.notes()[0]
    few = fl.Faults(draws=1000, zero_density=20, examined=20, ode_failed=20)
    assert few.level == dg.CARE and "the ODE solve failed at 20 of them" in few.notes()[0]


def test_a_factor_is_named_where_no_observed_site_is_to_blame():
    latent, log_p, loglik = {"mu": np.full((3, 1), 3.0)}, np.full(3, -np.inf), {"y": np.zeros((3, 1))}
    found = fl.classify_draws(latent, log_p, loglik, sites=["mu"], factors=["wall"])
    assert found.other == 3 and "the factor 'wall' is -inf there" in found.cause
    # A kinetics model without a status site: its failed solve is still called one.
    found = fl.classify_draws(latent, log_p, loglik, sites=["mu"], factors=["ode_solve_failed"])
    assert "an ODE solve failed there" in found.cause and "--stiff" in found.advice


def test_an_experiment_model_records_its_solve_status_and_has_a_stiff_variant():
    """The real-experiments builder (observables): the same status site and stiff switch as a plain kinetics model."""
    from numpyro import handlers

    data = kinetics.Dataset.from_arrays(TIMES, STIFF_DATA)
    model = kinetics.model(
        STIFF, data, initial={"A": 1.0, "B": 0.0, "C": 0.0}, priors=STIFF_PRIORS, solver={"max_steps": 256},
        observables={"A": "A", "B": "B", "C": "C"},
    )
    assert type(model).__name__ == "ExperimentModel"
    at_median = {"k1": 1e4, "k2": 1e-2, "sigma": 0.01}
    trace = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=at_median)).get_trace()
    assert int(np.max(np.asarray(trace[fl.STATUS_SITE]["value"]))) == 1  # tsit5 at its step limit
    faults = fl.Faults(draws=10, ode_step_limit=10, zero_density=10, ode_failed=10)
    stiff, sentence = fl.stiff_variant(model, faults)
    assert stiff.solver.stiff and "refitted with the stiff solver kvaerno5" in sentence
    trace = handlers.trace(handlers.substitute(handlers.seed(stiff, 0), data=at_median)).get_trace()
    assert int(np.max(np.asarray(trace[fl.STATUS_SITE]["value"]))) == 0  # kvaerno5 solves it
    assert stiff.with_stiff_solver() is None

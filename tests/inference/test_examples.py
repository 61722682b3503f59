"""Every example runs at small size and gives a sensible answer."""

import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"



def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {
        "bod",
        "first_order_decay",
        "michaelis_menten",
        "verdict",
        "gradient_estimators",
        "choosing_a_guide",
        "engine_tour",
        "real_experiments",
        "many_experiments",
        "interrupt_and_resume",
        "funnel",
        # run by their own test files at small size:
        "well_measured_groups",  # tests/inference/test_centring.py
        "mixture_gumbel_softmax",  # tests/vi_models/test_relaxed.py
        "reactor_decision",  # tests/inference/test_decisions.py
        "vae_digits",  # tests/vi_models/test_vae.py
        "single_cell_phase",  # tests/vi_models/test_vae.py
        "ssa_surrogate",  # tests/vi_models/test_gillespie.py
    }


def test_interrupt_and_resume_example(tmp_path, load_example):
    out = load_example("interrupt_and_resume").main(small=True, folder=str(tmp_path))
    assert out["interrupted"] == "SIGINT" and 0 < out["stopped_steps"] < 8000
    assert out["stopped_level"] == "unreliable"
    assert out["resumed_steps"] == 8000 and out["bit_equal"]


def test_bod_example(load_example):
    out = load_example("bod").main(small=True)
    # Against the long NUTS reference (benchmarks/data/calibration/references.json, "bod"): medians
    # 0.479 and 19.72, log sds 0.77 and 0.31; the median of 1000 of the exact stage's draws has a
    # log within 5 standard errors (about 0.04 and 0.016).
    k05, k50, k95 = out["k"]
    assert abs(math.log(k50 / 0.479)) < 0.2 and abs(math.log(out["L0"][1] / 19.72)) < 0.08
    assert k05 < 0.25 and k95 > 1.0  # the heavy right tail is there (reference 0.132, 1.419)


def test_first_order_decay_example(load_example):
    # guide="auto" (the example's default) is run by the demo and the choosing_a_guide example.
    mean, sd = load_example("first_order_decay").main(small=True, guide="multivariate_normal")["k"]
    assert abs(mean - 0.35) < 4 * sd


def test_michaelis_menten_example_shows_mean_field_shrinkage(load_example):
    out = load_example("michaelis_menten").main(small=True)
    assert out["correlation"] > 0.5
    assert out["normal"] < 0.8 * out["multivariate_normal"]


def test_verdict_example_catches_the_mean_field_guide(tmp_path, load_example):
    out = load_example("verdict").main(small=True, out=tmp_path)
    assert out["normal"]["level"] == "unreliable"
    assert "Vmax" in out["normal"]["reason"] and "Km" in out["normal"]["reason"]
    # What the verdict predicted, measured against NUTS: the mean-field sds are too small (0.2 of
    # NUTS's when converged; about 0.6 after the short run's 2500 steps).
    assert out["normal"]["sd_ratio"]["Vmax"] < 0.8
    full = out["multivariate_normal"]
    if full["stop_reason"] == "max_steps":
        # The short run stops the full-rank fit before it converges: the verdict must not call it reliable.
        assert full["level"] != "reliable"
    else:
        assert full["sd_ratio"]["Vmax"] > 0.8
    html = out["report"].read_text(encoding="utf-8")
    assert 'id="plot-comparison"' in html and "unreliable" in html


def test_gradient_estimators_example_matches_the_closed_forms(load_example):
    out = load_example("gradient_estimators").main(small=True)
    for row in out["closed_forms"]:
        if row["f"] == "3 z":
            assert row["pathwise_var"] == 0.0
            # Score-function variance 9 (mu^2 + 2 sigma^2) / sigma^2; relative error of a variance
            # from 2000 draws is a few percent (heavier tails at small sigma): 20% is 4-5 se.
            assert row["score_var"] == pytest.approx(row["score_formula"], rel=0.2)
        else:
            assert row["pathwise_var"] == pytest.approx(row["pathwise_formula"], rel=0.15)
    score = [r["score_var"] for r in out["closed_forms"] if r["f"] == "z^2"]
    assert score[0] < score[1] < score[2]  # grows as sigma -> 0
    assert out["kinetics"].median_score_ratio > 100


def test_funnel_example_is_sampled_through_its_non_centring(load_example):
    out = load_example("funnel").main(small=True)
    assert "non-centres logk" in out["draws_from"] and out["verdict"] in ("reliable", "use with care")
    # The long NUTS reference (benchmarks/data/calibration/references.json, problem "funnel"): tau's
    # median 0.1215, log sd 1.01; with an ESS of at least 1000 the median's log is within 0.2 (5 se).
    median, q05, q95 = out["tau"]
    assert abs(math.log(median / 0.1215)) < 0.2
    assert q05 < 0.03 and q95 > 0.25  # the neck and the mouth are both sampled (reference 0.013, 0.305)


def test_choosing_a_guide_example_records_the_search(load_example):
    out = load_example("choosing_a_guide").main(small=True)
    guides = [a[0] for a in out["attempts"]]
    assert guides[0] == "laplace" and guides[1] == "multivariate_normal"
    assert out["chosen"] in guides[1:]
    assert abs(out["mean"]["Vmax"] - 1.213) < 0.02 and abs(out["mean"]["Km"] - 2.62) < 0.12  # NUTS: sds 0.018, 0.12
    # auto's sds against NUTS's (0.0183, 0.118); the mean-field sds are about 5x too small.
    assert 0.8 < out["sd"]["auto"]["Vmax"] / 0.0183 < 1.2
    assert out["sd"]["normal"]["Vmax"] < 0.5 * out["sd"]["auto"]["Vmax"]


def test_engine_tour_example_matches_the_closed_form(load_example):
    out = load_example("engine_tour").main(small=True)
    # A Gaussian posterior: the MAP and the Laplace covariance are exact to rounding.
    assert out["map_error"] < 1e-8 and out["laplace_error"] < 1e-8
    # DADVI on 16 moment-matched fixed draws is exact up to its stopping tolerance; with 16 plain
    # Monte Carlo draws the error would be about a quarter of an sd, so 1% of an sd tells them apart.
    sd = out["sd"].min()
    assert out["dadvi_mean_error"] < 0.01 * sd and out["dadvi_cov_error"] < 0.01 * sd**2
    assert out["grad_evals"] > 0 and out["grad_evals"] % 16 == 0  # whole batches of B = 16 points


def test_many_experiments_example_pools_the_wells(tmp_path, load_example):
    """1200 wells through guide='auto''s large-model path; the shrinkage plot is written."""
    out = load_example("many_experiments").main(small=True, out=str(tmp_path))
    assert out["attempts"] == ["map", "normal"] and out["guide"] == "normal"
    mu, mu_sd = out["mu"]
    assert abs(mu - math.log(0.35)) < 3 * mu_sd
    assert 0.85 < out["coverage90"] < 0.95 and out["rmse_pooled"] < out["rmse_alone"]
    assert Path(out["figure"]).stat().st_size > 10_000


def test_real_experiments_example_recovers_the_truth(tmp_path, load_example):
    out = load_example("real_experiments").main(small=True, out=tmp_path)
    for study, name, truth in [
        ("temperature", "k", 0.25),
        ("temperature", "Ea", 55e3),
        ("population", "ke_mu", -1.8971199848858813),  # log 0.15
        ("population", "V_mu", 2.0794415416798357),  # log 8
        ("absorbance", "base", 0.05),
    ]:
        mean, sd = out[study][name]
        assert abs(mean - truth) < 3 * sd, (study, name, mean, sd)
    assert out["figures"] == ["absorbance.png", "arrhenius.png", "shrinkage.png"]

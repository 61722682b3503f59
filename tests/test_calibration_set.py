"""The calibration set of the verdict (``benchmarks/calibration_problems.py``) and its NUTS references.

The references (``benchmarks/data/calibration/references.json``) must be there, cover at least 12
problems and have converged (every r_hat at most 1.01); every problem must build, and its log
density must be finite at the reference medians; the true error class (``benchmarks/calibration.py``)
must follow its definition exactly, boundaries included.
"""

import importlib.util
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

import inference  # noqa: F401  (float64 and the tests' compilation cache, as in the other tests)

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ROOT / "benchmarks" / "data" / "calibration" / "references.json"

# Problems whose latent sites are all compared scalars: the medians give every latent value.
FROM_MEDIANS = (
    "a",
    "b",
    "c",
    "bod",
    "heavy_tail_mm",
    "flip_flop",
    "two_compartment",
    "rate_near_zero",
    "correlated_arrhenius",
    "scale_product",
)


def _d_values(med):
    z = np.zeros(50)
    z[:2] = [(np.log(med[f"k[{i}]"]) - med["mu"]) / med["tau"] for i in (0, 1)]
    # The kinetics builder's names for the hierarchy of k (benchmarks/calibration_problems.py).
    return {"k_mu": med["mu"], "k_tau": med["tau"], "sigma": med["sigma"], "k_z": z}


def _funnel_values(med):
    logk = np.full(8, med["mu"])
    logk[:2] = [med["logk[0]"], med["logk[1]"]]
    return {"mu": med["mu"], "tau": med["tau"], "sigma": med["sigma"], "logk": logk}


def _population_values(med):
    return {**med, "ke_z": np.zeros(8), "V_z": np.zeros(8)}


# Problems with vector sites only partly compared: the other elements are set by hand (d: the
# other 48 z at 0; funnel: the other 6 log k at mu; population_small: every subject at the median).
PARTLY_COMPARED = {"d": _d_values, "funnel": _funnel_values, "population_small": _population_values}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cp():
    """``benchmarks/calibration_problems.py`` as a module."""
    return _load("calibration_problems")


@pytest.fixture(scope="module")
def calibration():
    """``benchmarks/calibration.py`` as a module."""
    return _load("calibration")


@pytest.fixture(scope="module")
def references():
    """The ``problems`` of references.json."""
    assert REFERENCES.exists(), "run `benchmarks/calibration.py references` to make the references"
    return json.loads(REFERENCES.read_text())["problems"]


def test_references_cover_the_set_and_converged(cp, references):
    """At least 12 problems, every problem of the set has a reference, every r_hat <= 1.01."""
    assert len(references) >= 12
    assert set(cp.PROBLEMS) <= set(references)
    for name, entry in references.items():
        n = entry["nuts"]
        assert n["num_chains"] >= 8 and n["num_samples"] >= 4000, name
        for param, stats in entry["params"].items():
            assert stats["r_hat"] <= 1.01, f"{name} {param}: r_hat {stats['r_hat']}"
            assert stats["sd"] > 0 and stats["q05"] <= stats["q50"] <= stats["q95"], f"{name} {param}"
            if stats["positive"]:
                assert stats["q05"] > 0 and stats["log_sd"] > 0, f"{name} {param}"


def test_every_reference_names_its_compared_quantities(cp, references):
    """Each reference lists its compared quantities, the positive ones among them, and the NUTS run."""
    for name in cp.PROBLEMS:
        assert cp.PROBLEMS[name].__doc__, name
        entry = references[name]
        assert set(entry["positive"]) <= set(entry["params"]), name
        assert {"seed", "seconds", "divergences", "target_accept"} <= set(entry["nuts"]), name
        assert entry["versions"]["jax"] and entry["versions"]["numpyro"], name


@pytest.mark.parametrize("name", [*FROM_MEDIANS, *PARTLY_COMPARED])
def test_log_density_is_finite_at_the_reference_medians(cp, references, name):
    """The problem builds, its info matches the reference, and its log density at the medians is finite."""
    model, args, kwargs, info = cp.build(name)
    entry = references[name]
    assert list(info["params"]) == list(entry["params"])
    assert set(info["positive"]) == set(entry["positive"])
    medians = {p: entry["params"][p]["q50"] for p in info["params"]}
    if name in PARTLY_COMPARED:
        medians = PARTLY_COMPARED[name](medians)
    values = {site: jnp.asarray(v) for site, v in medians.items()}
    lp = float(jax.jit(lambda v: log_density(model, args, kwargs, v)[0])(values))
    assert math.isfinite(lp)


def test_error_class_boundaries(calibration):
    """A: every |mean error| <= 0.1 and |sd ratio - 1| <= 0.1; B: <= 0.25; C: beyond or not finite."""
    cls = calibration.error_class
    assert cls([0.0], [1.0]) == "A"
    assert cls([0.1, -0.1], [0.9, 1.1]) == "A"  # the boundaries are inside
    assert cls([0.1000001], [1.0]) == "B"
    assert cls([0.0], [1.1000001]) == "B"
    assert cls([0.0], [0.8999999]) == "B"
    assert cls([0.25, -0.25], [0.75, 1.25]) == "B"
    assert cls([0.2500001], [1.0]) == "C"
    assert cls([0.0], [1.2500001]) == "C"
    assert cls([0.0, 0.05], [1.0, 0.7]) == "C"  # the worst quantity decides
    assert cls([float("nan")], [1.0]) == "C"
    assert cls([0.0], [float("inf")]) == "C"
    assert cls([], []) == "C"


def test_compare_to_reference_uses_the_log_scale_for_positive_quantities(calibration):
    """Mean error in reference sds and sd ratio, natural scale or log scale as declared."""
    x = np.array([1.0, 3.0])  # mean 2, sd 1 (population sd)
    reference = {
        "a": {"mean": 1.9, "sd": 1.0},
        "b": {"mean": 0.0, "sd": 2.0, "log_mean": float(np.mean(np.log(x))) - 0.2, "log_sd": float(np.std(np.log(x)))},
    }
    errors = calibration.compare_to_reference({"a": x, "b": x}, reference, {"b"})
    assert errors["a"]["scale"] == "natural" and errors["b"]["scale"] == "log"
    assert errors["a"]["mean_error"] == pytest.approx(0.1, abs=1e-12)
    assert errors["a"]["sd_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert errors["b"]["mean_error"] == pytest.approx(0.2 / np.std(np.log(x)), rel=1e-12)
    assert errors["b"]["sd_ratio"] == pytest.approx(1.0, rel=1e-12)
    worst_mean, worst_ratio, cls = calibration.worst(errors)
    assert worst_mean == pytest.approx(0.2 / np.std(np.log(x))) and cls == "C"
    # A positive quantity with a non-positive draw cannot be compared: class C.
    bad = calibration.compare_to_reference({"b": np.array([1.0, -1.0])}, {"b": reference["b"]}, {"b"})
    assert calibration.worst(bad)[2] == "C"


def test_weighted_reference_of_a_swapped_pair(calibration):
    """A draw and its swap with weights w and 1 - w give the moments of the weighted pooled draws."""
    rng = np.random.default_rng(0)
    x, s = rng.normal(size=(2, 50)), 3.0 + rng.normal(size=(2, 50))
    w = rng.uniform(size=(2, 50))
    stats = calibration.param_stats(x, False, swapped=s, weights=w)
    pooled = np.concatenate([x.ravel(), s.ravel()])
    weights = np.concatenate([w.ravel(), 1 - w.ravel()]) / w.size
    mean = float(np.sum(weights * pooled))
    assert stats["mean"] == pytest.approx(mean, rel=1e-12)
    assert stats["sd"] == pytest.approx(float(np.sqrt(np.sum(weights * (pooled - mean) ** 2))), rel=1e-12)
    # Equal weights and no swap: the plain moments.
    plain = calibration.param_stats(np.exp(x), True)
    assert plain["log_mean"] == pytest.approx(float(np.mean(x)), rel=1e-12)
    assert plain["log_sd"] == pytest.approx(float(np.std(x)), rel=1e-12)
    assert plain["q50"] == pytest.approx(float(np.median(np.exp(x))), rel=1e-12)

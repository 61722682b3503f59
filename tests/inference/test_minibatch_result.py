"""A minibatch fit's FitResult refuses the calls that would run the model on random minibatches.

Draws, the verdict's checks and the ArviZ groups all run the model; with a subsampled plate each
run sees other data points, so they would silently mix minibatches. What the fit computed (the
parameters, the loss trace) stays available.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference import diagnose, fit, to_arviz
from inference.engine.result import subsampled_plates

N, BATCH = 60, 12


def model(y, batch_size=None):
    """Normal observations around ``mu``, ``batch_size`` of them per run (all when ``None``)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", y.shape[0], subsample_size=batch_size) as idx:
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


@pytest.fixture(scope="module")
def y():
    """Sixty draws from N(2, 1)."""
    return jnp.asarray(np.random.default_rng(0).normal(2.0, 1.0, N))


@pytest.fixture(scope="module")
def minibatch_fit(y):
    """A mean-field fit on minibatches of 12 of the 60 points (300 steps)."""
    return fit(model, y, batch_size=BATCH, guide="normal", max_steps=300, min_steps=300, chunk_size=100, seed=0,
               progress=False)


def test_subsampled_plates_are_found_without_computing(y):
    assert subsampled_plates(model, (y,), {"batch_size": BATCH}) == {"data": (N, BATCH)}
    assert subsampled_plates(model, (y,), {"batch_size": None}) == {}
    assert subsampled_plates(model, (y,), {"batch_size": N}) == {}


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda r: r.to_arviz(verdict=False), "to_arviz"),
        (lambda r: to_arviz(r, verdict=False), "to_arviz"),
        (lambda r: r.verdict(num_samples=200), r"the verdict \(diagnose\)"),
        (lambda r: diagnose(r, 200), r"the verdict \(diagnose\)"),
        (lambda r: r.summary(verdict=False), "FitResult.summary"),
        (lambda r: r.sample(10), "FitResult.sample"),
        (lambda r: r.sample_psis(10), "FitResult.sample_psis"),
    ],
    ids=["FitResult.to_arviz", "inference.to_arviz", "verdict", "diagnose", "summary", "sample", "sample_psis"],
)
def test_minibatch_result_refuses_calls_that_would_mix_minibatches(minibatch_fit, call, name):
    with pytest.raises(ValueError, match=name) as info:
        call(minibatch_fit)
    message = str(info.value)
    assert f"plate 'data' draws a random minibatch of {BATCH} of its {N} points" in message
    assert "VAEFit.local_result" in message and "subsample_size=None" in message


def test_minibatch_result_keeps_what_the_fit_computed(minibatch_fit):
    r = minibatch_fit
    assert r.subsampled_plates == {"data": (N, BATCH)}
    assert r.losses.shape == (1, 300) and np.all(np.isfinite(r.losses))
    # The minibatch ELBO (scaled by N / BATCH) found the mean of the data.
    assert abs(float(r.params["mu_auto_loc"]) - 2.0) < 0.5
    assert r.num_steps == 300 and r.elbo < 0


def test_the_same_parameters_on_all_the_data_give_every_group(minibatch_fit):
    full = dataclasses.replace(minibatch_fit, model_kwargs={"batch_size": None}, _cache={})
    assert full.subsampled_plates == {}
    idata = full.to_arviz(num_samples=50, verdict=False)
    assert idata.log_likelihood["y"].shape == (1, 50, N)
    assert full.verdict(num_samples=500).level in ("reliable", "use with care", "unreliable")


def test_auto_fits_one_guide_on_minibatches_and_says_it_is_not_judged(y):
    """guide='auto' cannot escalate without a verdict: one mean-field fit, recorded as not judged."""
    result = fit(model, y, batch_size=BATCH, max_steps=200, min_steps=200, seed=0, progress=False)
    assert result.guide_name == "normal"
    assert [a.guide for a in result.attempts] == ["normal"]
    assert result.attempts[0].level == "not judged" and "'data'" in result.attempts[0].reason
    assert "subsamples its data" in result.settings["auto_note"]
    assert np.all(np.isfinite(result.losses))

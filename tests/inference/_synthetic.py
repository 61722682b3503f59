"""A hand-built vifit result (an ArviZ DataTree, no model fit), following docs/arviz.md, for plot and report tests.

The test suite imports test modules by path (``--import-mode=importlib``), so a test file loads
this helper by its path too::

    spec = importlib.util.spec_from_file_location("_synthetic", Path(__file__).with_name("_synthetic.py"))
"""

from __future__ import annotations

import json

import numpy as np

EXPERIMENTS = ["exp0", "exp1"]
SPECIES = ["A", "B"]
CHECKS = [
    {"check": "khat", "level": "reliable", "message": "k-hat 0.31 is below 0.5.", "advice": ""},
    {
        "check": "restarts",
        "level": "use with care",
        "message": "Restarts 0 and 1 disagree on k by 2 sd.",
        "advice": "Run more restarts or a richer guide.",
    },
]


def synthetic_idata(*, chains: int = 2, draws: int = 300, seed: int = 0, attrs: dict | None = None):
    """Build a first-order decay A -> B with two experiments, every group a vifit result has.

    Parameters
    ----------
    chains, draws : int
        Restarts and draws per restart of the posterior.
    seed : int
        Seed of the numpy generator.
    attrs : dict, optional
        Attributes that replace the default ones of the posterior group.

    Returns
    -------
    xarray.DataTree
    """
    import arviz_base
    import xarray as xr

    rng = np.random.default_rng(seed)
    E, T, S, F = len(EXPERIMENTS), 5, len(SPECIES), 30

    k = 0.5 + 0.05 * rng.standard_normal((chains, draws))
    L0 = np.array([1.0, 2.0]) + 0.1 * rng.standard_normal((chains, draws, E))
    sigma = np.exp(np.log(0.05) + 0.2 * rng.standard_normal((chains, draws)))
    prior = {
        "k": rng.lognormal(0.0, 1.0, (1, 500)),
        "L0": rng.lognormal(0.0, 1.0, (1, 500, E)),
        "sigma": rng.exponential(0.2, (1, 500)),
    }

    times = np.array([[0.0, 1.0, 2.0, 4.0, 8.0], [0.0, 0.5, 1.0, 3.0, 6.0]])
    true_a = np.array([1.0, 2.0])[:, None] * np.exp(-0.5 * times)
    true_b = np.array([1.0, 2.0])[:, None] - true_a
    obs = np.stack([true_a, true_b], axis=-1) + 0.05 * rng.standard_normal((E, T, S))
    obs[0, 2, 1] = np.nan
    obs[1, 4, :] = np.nan

    fine_times = np.stack([np.linspace(0, 8, F), np.linspace(0, 6, F)])
    kb = k[:1, :, None, None]
    L0b = L0[:1, :, :, None]
    a = L0b * np.exp(-kb * fine_times[None, None])
    curve = np.stack([a, L0b - a], axis=-1)
    predictive = curve + sigma[:1, :, None, None, None] * rng.standard_normal(curve.shape)

    log_q = -0.5 * rng.standard_normal((chains, draws)) ** 2 + 3.0
    log_p = log_q + 0.5 * rng.standard_normal((chains, draws)) - 10.0

    loss = 100.0 * np.exp(-np.arange(200) / 40.0)[None] + 5.0 + rng.standard_normal((chains, 200))
    loss[1] -= 1.0
    loss[0, 10] = np.nan

    coords = {"experiment": EXPERIMENTS, "species": SPECIES}
    idata = arviz_base.from_dict(
        {
            "posterior": {"k": k, "L0": L0, "sigma": sigma},
            "sample_stats": {"log_p": log_p, "log_q": log_q, "lp": log_p},
            "prior": prior,
            "observed_data": {"obs": obs},
            "constant_data": {"times": times},
            "predictions": {"curve": curve, "predictive": predictive},
            "predictions_constant_data": {"fine_times": fine_times},
        },
        coords=coords,
        dims={
            "L0": ["experiment"],
            "obs": ["experiment", "time", "species"],
            "times": ["experiment", "time"],
        },
        pred_coords=coords,
        pred_dims={
            "curve": ["experiment", "fine_time", "species"],
            "predictive": ["experiment", "fine_time", "species"],
            "fine_times": ["experiment", "fine_time"],
        },
    )
    optimization = xr.Dataset(
        {"loss": (("chain", "step"), loss)},
        coords={"chain": np.arange(chains), "step": np.arange(loss.shape[1])},
    )
    idata["optimization"] = xr.DataTree(optimization)
    default_attrs = {
        "inference_library": "vifit",
        "guide": "multivariate_normal",
        "objective": "trace",
        "stop_reason": "plateau",
        "num_steps": 200,
        "num_restarts": chains,
        "best_restart": 1,
        "elbo": -4.0,
        "seed": 0,
        "nonfinite_steps": 1,
        "init_s": 0.1,
        "compile_s": 1.5,
        "run_s": 2.0,
        "total_s": 3.6,
        "verdict": "use with care",
        "verdict_reason": "Restarts disagree on k.",
        "verdict_checks": json.dumps(CHECKS),
        "khat": 0.31,
        "khat_draws": draws,
        "title": "First-order decay",
        "mechanism": "A -> B : k",
        "noise": "normal",
        "time_unit": "h",
        "concentration_unit": "mM",
    }
    default_attrs.update(attrs or {})
    idata.posterior.attrs.update(default_attrs)
    return idata


def posterior_only(*, seed: int = 0):
    """Build a DataTree with nothing but a posterior group and no vifit attributes (a generic model)."""
    import arviz_base

    rng = np.random.default_rng(seed)
    return arviz_base.from_dict(
        {"posterior": {"mu": rng.standard_normal((2, 100)), "tau": rng.gamma(2.0, 1.0, (2, 100))}}
    )

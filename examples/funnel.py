"""A centred hierarchy with two measurements per group: the funnel, and how ``guide="auto"`` samples it.

Eight groups each measure a first-order decay twice (synthetic data, seed 505), with
``log k_g ~ Normal(mu, tau)`` written centred. With so few data per group the posterior is a
funnel in ``tau``: no guide family describes its neck and mouth at once, and NUTS on the model as
written diverges in the neck. ``guide="auto"`` ends in its exact stage: NUTS through the fitted
full-rank Gaussian's map, and, as those chains diverge, again through the non-centring
``log k_g = mu + tau z_g`` composed with an affine map; the draws keep the model's sites. With
``--nuts`` plain NUTS on the centred model runs too, for its divergent transitions.

Run ``python examples/funnel.py`` (``--small`` for a quick run, ``--nuts`` to add NUTS).
"""

import argparse

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from inference import fit, nuts

GROUPS, TIMES = 8, np.array([2.0, 6.0])
TRUTH = {"mu": float(np.log(0.2)), "tau": 0.15, "sigma": 0.05}


def data(seed: int = 505) -> np.ndarray:
    """Two noisy measurements of ``exp(-k_g t)`` per group, ``(GROUPS, 2)``."""
    rng = np.random.default_rng(seed)
    logk = TRUTH["mu"] + TRUTH["tau"] * rng.normal(size=GROUPS)
    return np.exp(-np.exp(logk)[:, None] * TIMES[None, :]) + TRUTH["sigma"] * rng.normal(size=(GROUPS, TIMES.size))


def model(y=None):
    """The centred hierarchy: ``log k_g ~ Normal(mu, tau)`` directly."""
    mu = numpyro.sample("mu", dist.Normal(np.log(0.2), 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(0.5))
    with numpyro.plate("group", GROUPS):
        logk = numpyro.sample("logk", dist.Normal(mu, tau))
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.1))
    mean = jnp.exp(-jnp.exp(logk)[:, None] * jnp.asarray(TIMES)[None, :])
    with numpyro.plate("group", GROUPS):
        numpyro.sample("obs", dist.Normal(mean, sigma).to_event(1), obs=y)


def main(small: bool = False, with_nuts: bool = False) -> dict:
    """Fit with ``guide="auto"`` (and plain NUTS with ``with_nuts``); return what each found."""
    y = jnp.asarray(data())
    # A quick run tries only the full-rank Gaussian before the exact stage (whose map it is anyway).
    options = {"ladder": ("multivariate_normal",)} if small else {}
    result = fit(model, y, seed=0, progress=not small, guide_options=options)
    print(result.summary(num_samples=1000 if small else 4000))
    draws = result.sample(4000)
    out = {
        "draws_from": result.settings["draws_from"],
        "verdict": result.verdict().level,
        "tau": (float(np.median(draws["tau"])), float(np.quantile(draws["tau"], 0.05)), float(np.quantile(draws["tau"], 0.95))),
        "attempts": [(a.guide, a.level) for a in result.attempts],
    }
    print(f"tau: median {out['tau'][0]:.3f}, 90% interval {out['tau'][1]:.3f} to {out['tau'][2]:.3f}")
    if with_nuts:
        reference = nuts(model, y, seed=0, progress=not small)
        out["nuts_divergences"] = reference.num_divergences
        print(f"plain NUTS on the centred model: {reference.num_divergences} divergent transitions of 4000")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a short run")
    parser.add_argument("--nuts", action="store_true", help="also run plain NUTS on the centred model")
    args = parser.parse_args()
    main(args.small, args.nuts)

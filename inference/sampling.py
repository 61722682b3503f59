"""Draws from a fitted guide, compiled once per guide and shape."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from numpyro.distributions.transforms import biject_to
from numpyro.infer import Predictive
from numpyro.infer.autoguide import AutoContinuous, AutoGuide

__all__ = ["sample_guide"]


def _static_supports(guide) -> bool:
    """Whether every latent support of the guide's model is known without running the model."""
    try:
        for site in guide.prototype_trace.values():
            if site["type"] == "sample" and not site["is_observed"]:
                biject_to(site["fn"].support)
        return all(
            not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(vars(site["fn"].support)))
            for site in guide.prototype_trace.values()
            if site["type"] == "sample" and not site["is_observed"]
        )
    except Exception:  # noqa: BLE001 - any failure means: take the general path
        return False


def _latent_names(guide):
    return [n for n, s in guide.prototype_trace.items() if s["type"] == "sample" and not s["is_observed"]]


@partial(jax.jit, static_argnums=(0, 3))
def _sample_continuous(guide, params, key, n):
    # Draw in the flat unconstrained space and map through each site's support bijection: no
    # model replay, so no ODE solve per draw.
    latent = guide.get_posterior(params).sample(key, (n,))
    unpacked = jax.vmap(guide._unpack_latent)(latent)
    return {
        name: biject_to(guide.prototype_trace[name]["fn"].support)(unpacked[name]) for name in _latent_names(guide)
    }


def sample_guide(guide, params, rng_key, num_samples: int, args=(), kwargs=None) -> dict:
    """Draw ``num_samples`` latent values from ``guide`` at ``params``.

    Returns
    -------
    dict of str to ndarray
        Each latent site of the model with shape ``(num_samples, *site_shape)``, constrained.
    """
    kwargs = kwargs or {}
    if isinstance(guide, AutoContinuous) and _static_supports(guide):
        out = _sample_continuous(guide, params, rng_key, num_samples)
    elif isinstance(guide, AutoGuide):
        names = _latent_names(guide)
        fn = jax.jit(lambda p, k: guide.sample_posterior(k, p, *args, sample_shape=(num_samples,), **kwargs))
        out = {name: v for name, v in fn(params, rng_key).items() if name in names}
    else:
        predictive = Predictive(guide, params=params, num_samples=num_samples)
        out = predictive(rng_key, *args, **kwargs)
    return {name: np.asarray(v) for name, v in out.items()}

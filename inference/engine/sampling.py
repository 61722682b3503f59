"""Draws from a fitted guide, compiled once per guide and shape."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import numpy as np
from numpyro.distributions.transforms import biject_to
from numpyro.infer import Predictive
from numpyro.infer.autoguide import AutoContinuous, AutoGuide

__all__ = ["sample_guide", "ModelDraws", "make_posterior_sampler", "draw_prior", "latent_sites"]


def latent_sites(trace: dict) -> list[str]:
    """Names of the latent sample sites of a NumPyro trace, in trace order."""
    return [name for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]]


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
    return latent_sites(guide.prototype_trace)


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


class ModelDraws(NamedTuple):
    """Draws of a model's latent sites with their densities, observations and predictions.

    Attributes
    ----------
    latent : dict of str to ndarray
        Latent sample sites (and deterministic sites), each ``(n, *site_shape)``.
    log_p : ndarray, shape (n,)
        Log joint density of the model, ``log p(x, z)``, at each draw (``-inf`` where the model
        gives the draw zero density, e.g. a failed ODE solve).
    log_q : ndarray, shape (n,)
        Log density of the guide at the draw (in the same, constrained space); zeros for prior
        draws.
    log_likelihood : dict of str to ndarray
        Pointwise log likelihood of each observed site, ``(n, *site_shape)``.
    predictive : dict of str to ndarray
        A new draw of each observed site given the latent draw, ``(n, *site_shape)``.
    """

    latent: dict
    log_p: np.ndarray
    log_q: np.ndarray
    log_likelihood: dict
    predictive: dict


def _is_factor(site) -> bool:
    from numpyro.distributions.distribution import Unit

    return isinstance(site["fn"], Unit)


def _model_pieces(model, values, key, args, kwargs):
    """Trace ``model`` (latent sites substituted by ``values`` when given) under seed ``key``.

    Returns ``(latent, log_p, log_likelihood, predictive, observed)``: latent and deterministic
    site values, the log joint, the pointwise log likelihood, a predictive draw and the observed
    values (masked entries NaN) of every observed site that is not a factor.
    """
    from numpyro import handlers
    from numpyro.distributions import MaskedDistribution

    k_model, k_pred = jax.random.split(key)
    run = handlers.seed(model, k_model)
    if values is not None:
        run = handlers.substitute(run, data=values)
    trace = handlers.trace(run).get_trace(*args, **kwargs)
    log_p = 0.0
    latent, loglik, predictive, observed = {}, {}, {}, {}
    for name, site in trace.items():
        if site["type"] == "deterministic":
            latent[name] = site["value"]
        if site["type"] != "sample":
            continue
        log_prob = site["fn"].log_prob(site["value"])
        scale = site.get("scale")
        if scale is not None:
            log_prob = scale * log_prob
        log_p = log_p + jax.numpy.sum(log_prob)
        if not site["is_observed"]:
            latent[name] = site["value"]
        elif not _is_factor(site):
            loglik[name] = log_prob
            k_pred, k_site = jax.random.split(k_pred)
            predictive[name] = site["fn"].sample(k_site)
            value, fn = site["value"], site["fn"]
            if isinstance(fn, MaskedDistribution) and not isinstance(fn._mask, bool):
                mask = jax.numpy.reshape(fn._mask, jax.numpy.shape(fn._mask) + (1,) * len(fn.event_shape))
                value = jax.numpy.where(mask, value, jax.numpy.nan)
            observed[name] = jax.numpy.broadcast_to(value, jax.numpy.shape(site["value"]))
    return latent, log_p, loglik, predictive, observed


def make_posterior_sampler(model, guide, latent_names, args=(), kwargs=None):
    """Return ``sampler(params, rng_key, num_samples) -> ModelDraws``, compiled once per shape.

    Each draw ``z ~ q(z; params)`` comes with ``log q(z)`` (the guide's log density, in the
    constrained space), ``log p(x, z)`` (the model's log joint), the pointwise log likelihood
    and a posterior predictive draw of each observed site. ``log p - log q`` are the importance
    log weights of the draws (Yao et al. 2018), the input of PSIS.
    """
    from numpyro import handlers
    from numpyro.infer.util import log_density

    kwargs = kwargs or {}
    names = tuple(latent_names)

    @jax.jit
    def run(params, keys):
        def one(key):
            k_guide, k_model = jax.random.split(key)
            log_q, guide_trace = log_density(handlers.seed(guide, k_guide), args, kwargs, params)
            values = {n: guide_trace[n]["value"] for n in names}
            latent, log_p, loglik, predictive, _ = _model_pieces(model, values, k_model, args, kwargs)
            return latent, log_p, log_q, loglik, predictive

        return jax.vmap(one)(keys)

    def sampler(params, rng_key, num_samples: int) -> ModelDraws:
        return _as_numpy(run(params, jax.random.split(rng_key, int(num_samples))))

    return sampler


def draw_prior(model, rng_key, num_samples: int, args=(), kwargs=None) -> ModelDraws:
    """Draw from the prior and simulate the observed sites (prior predictive); ``log_q`` is 0."""
    kwargs = kwargs or {}

    @jax.jit
    def run(keys):
        def one(key):
            latent, log_p, loglik, predictive, _ = _model_pieces(model, None, key, args, kwargs)
            return latent, log_p, jax.numpy.zeros(()), loglik, predictive

        return jax.vmap(one)(keys)

    return _as_numpy(run(jax.random.split(rng_key, int(num_samples))))


def _as_numpy(out) -> ModelDraws:
    latent, log_p, log_q, loglik, predictive = jax.device_get(out)
    to_np = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
    return ModelDraws(to_np(latent), np.asarray(log_p), np.asarray(log_q), to_np(loglik), to_np(predictive))

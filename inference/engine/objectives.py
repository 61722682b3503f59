"""Objectives by name: NumPyro's ELBO estimators, traced in a deterministic order.

``"elbo"`` (alias ``"trace_elbo"``)
    :class:`OrderedTrace_ELBO`, NumPyro's :class:`~numpyro.infer.Trace_ELBO` estimate of

    .. math:: \\mathrm{ELBO}(\\phi) = \\mathbb{E}_{\\epsilon}\\left[\\log p(x, z)
              - \\log q_\\phi(z)\\right], \\qquad z = g_\\phi(\\epsilon),

    averaged over ``num_particles`` reparameterized draws evaluated in one vectorized pass
    (Kingma & Welling 2014; Ranganath, Gerrish & Blei 2014).
``"meanfield_elbo"``
    :class:`numpyro.infer.TraceMeanField_ELBO`: the same bound with the KL term
    :math:`\\mathrm{KL}(q_\\phi(z_j) \\,\\|\\, p(z_j))` in closed form at every latent site where
    the guide and prior families have one; a lower-variance gradient of the same objective.
``"renyi"`` (or ``"renyi:<alpha>"``, e.g. ``"renyi:0.5"``)
    :class:`numpyro.infer.RenyiELBO`, the variational Renyi bound of Li & Turner (2016) of
    order :math:`\\alpha \\ne 1` (default :data:`RENYI_ALPHA` = 0.5), estimated with
    :math:`K` = ``num_particles`` draws :math:`z_i \\sim q_\\phi`:

    .. math:: \\mathcal L_\\alpha(\\phi) = \\frac{1}{1 - \\alpha}
              \\log \\frac{1}{K} \\sum_{i=1}^{K}
              \\left(\\frac{p(x, z_i)}{q_\\phi(z_i)}\\right)^{1 - \\alpha}.

    :math:`\\alpha \\to 1` recovers the ELBO; :math:`0 \\le \\alpha < 1` gives a tighter bound
    on :math:`\\log p(x)` whose optimum spreads the guide's mass wider (mass-covering rather
    than the ELBO's mode-seeking). With a finite :math:`K` the estimate is biased, and the bias
    shrinks as :math:`K` grows.
``"iwae"``
    The importance-weighted bound of Burda, Grosse & Salakhutdinov (2016), which is the Renyi
    bound at :math:`\\alpha = 0`:

    .. math:: \\mathcal L_K(\\phi) = \\mathbb{E}\\left[\\log \\frac{1}{K} \\sum_{i=1}^{K}
              \\frac{p(x, z_i)}{q_\\phi(z_i)}\\right]
              \\;\\ge\\; \\mathrm{ELBO}(\\phi),

    non-decreasing in :math:`K` and tending to :math:`\\log p(x)`. It needs
    ``num_particles > 1``: with one draw it is the ELBO.

Every objective evaluates its particles with ``jax.vmap`` (``vectorize_particles=True`` for
the ELBOs; :class:`~numpyro.infer.RenyiELBO` always vectorizes). Several particles cost little on
small models and reduce the gradient noise that otherwise biases the fitted scales low.

Deterministic tracing
---------------------
NumPyro's :class:`~numpyro.infer.Trace_ELBO` (0.22) forms ``log p - log q`` per site over
``set(model_log_probs).union(guide_log_probs)``, a Python ``set`` of site names whose iteration
order follows the string hash seed of the process (``PYTHONHASHSEED``, random by default). The
order of the subtractions and of the sum in the traced program, and so the compiled program's
cache key, then changes from one process to the next, and JAX's persistent compilation cache
(:mod:`inference._jax_setup`) never hits on a second run. :class:`OrderedTrace_ELBO` is the same
estimator with the sites taken in trace order (model sites in the order the model samples them,
then guide-only sites in guide order): the same value up to the rounding of a reordered sum,
and the same program in every process. The other objectives here iterate over traces (ordered
dictionaries) only and are deterministic as NumPyro ships them.

References
----------
Burda, Y., Grosse, R. and Salakhutdinov, R. (2016). Importance weighted autoencoders. ICLR.

Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Li, Y. and Turner, R. E. (2016). Renyi divergence variational inference. NeurIPS 29.

Ranganath, R., Gerrish, S. and Blei, D. M. (2014). Black box variational inference. AISTATS.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import random
from numpyro.handlers import replay, seed, substitute
from numpyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import compute_log_probs
from numpyro.util import _validate_model, check_model_guide_match

__all__ = ["OBJECTIVES", "RENYI_ALPHA", "OrderedTrace_ELBO", "make_objective", "parse_objective"]

RENYI_ALPHA = 0.5
"""Default order :math:`\\alpha` of the ``"renyi"`` objective."""


class OrderedTrace_ELBO(Trace_ELBO):
    """NumPyro's :class:`~numpyro.infer.Trace_ELBO` with the sites in trace order.

    The same estimator, arguments and results as :class:`numpyro.infer.Trace_ELBO`; only the
    order in which the per-site terms ``log p(x, z) - log q(z)`` are formed and summed is fixed
    (model trace order, then guide-only sites in guide trace order) instead of the iteration
    order of a Python ``set``, which varies with ``PYTHONHASHSEED``. The traced program, and so
    the persistent compilation cache key, is then the same in every process. See the module
    docstring.

    Parameters
    ----------
    num_particles : int
        Monte Carlo draws per estimate.
    vectorize_particles : bool or callable
        ``True`` evaluates the particles with ``jax.vmap``, ``False`` with ``jax.lax.map``.
    multi_sample_guide : bool
        Whether the guide proposes several samples at once (as in NumPyro).
    sum_sites : bool
        Sum the per-site terms (default) or return them as a dictionary.
    """

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        """Negative ELBO estimate and mutable state, as :meth:`numpyro.infer.Trace_ELBO.loss_with_mutable_state`."""

        def single_particle_elbo(rng_key):
            params = param_map.copy()
            model_seed, guide_seed = random.split(rng_key)
            seeded_guide = seed(guide, guide_seed)
            guide_log_probs, guide_trace = compute_log_probs(seeded_guide, args, kwargs, param_map)
            mutable_params = {name: site["value"] for name, site in guide_trace.items() if site["type"] == "mutable"}
            params.update(mutable_params)
            if self.multi_sample_guide:
                plates = {name: site["value"] for name, site in guide_trace.items() if site["type"] == "plate"}

                def compute_model_log_probs(key, latent):
                    with seed(rng_seed=key), substitute(data={**latent, **plates}):
                        model_log_probs, model_trace = compute_log_probs(model, args, kwargs, params)
                    _validate_model(model_trace, plate_warning="loose")
                    return model_log_probs

                num_guide_samples = None
                for site in guide_trace.values():
                    if site["type"] == "sample":
                        num_guide_samples = site["value"].shape[0]
                        break
                if num_guide_samples is None:
                    raise ValueError(
                        "the guide has no sample sites, and multi_sample_guide=True needs at least one; "
                        "add a sample site to the guide or set multi_sample_guide=False"
                    )
                seeds = random.split(model_seed, num_guide_samples)
                latents = {
                    name: site["value"]
                    for name, site in guide_trace.items()
                    if (site["type"] == "sample" and site["value"].size > 0) or (site["type"] == "deterministic")
                }
                model_log_probs = jax.vmap(compute_model_log_probs)(seeds, latents)
                model_log_probs = jax.tree.map(lambda x: jnp.sum(x, axis=0), model_log_probs)
            else:
                seeded_model = seed(model, model_seed)
                replay_model = replay(seeded_model, guide_trace)
                model_log_probs, model_trace = compute_log_probs(replay_model, args, kwargs, params)
                check_model_guide_match(model_trace, guide_trace)
                _validate_model(model_trace, plate_warning="loose")
                mutable_params.update(
                    {name: site["value"] for name, site in model_trace.items() if site["type"] == "mutable"}
                )

            # log p(z) - log q(z) per site, in trace order (NumPyro iterates over a set here).
            names = list(model_log_probs) + [name for name in guide_log_probs if name not in model_log_probs]
            zero = jnp.array(0.0)
            per_site = {
                name: model_log_probs.get(name, zero) - guide_log_probs.get(name, zero) for name in names
            }
            elbo_particle = sum(per_site.values(), start=jnp.array(0.0)) if self.sum_sites else per_site
            if mutable_params:
                if self.num_particles == 1:
                    return elbo_particle, mutable_params
                warnings.warn("mutable state is currently ignored when num_particles > 1.", stacklevel=2)
            return elbo_particle, None

        if self.num_particles == 1:
            elbo, mutable_state = single_particle_elbo(rng_key)
            return {"loss": jax.tree.map(jnp.negative, elbo), "mutable_state": mutable_state}
        rng_keys = random.split(rng_key, self.num_particles)
        elbos, mutable_state = self.vectorize_particles_fn(single_particle_elbo, rng_keys)
        return {"loss": jax.tree.map(lambda x: -jnp.mean(x), elbos), "mutable_state": mutable_state}


def _elbo(num_particles: int, alpha: float | None) -> ELBO:
    return OrderedTrace_ELBO(num_particles=num_particles, vectorize_particles=True)


def _meanfield(num_particles: int, alpha: float | None) -> ELBO:
    return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True)


def _renyi(num_particles: int, alpha: float | None) -> ELBO:
    alpha = RENYI_ALPHA if alpha is None else alpha
    if num_particles < 2:
        raise ValueError(
            f"objective 'renyi' with num_particles={num_particles} is the plain ELBO (the Renyi bound "
            "averages the importance weights of several draws); raise num_particles (e.g. "
            "num_particles=8) or use objective='elbo'"
        )
    return RenyiELBO(alpha=alpha, num_particles=num_particles)


def _iwae(num_particles: int, alpha: float | None) -> ELBO:
    if alpha is not None and alpha != 0:
        raise ValueError(
            f"objective 'iwae' is the Renyi bound at alpha = 0 and takes no other alpha (got {alpha}); "
            f"use objective='renyi' with alpha={alpha} instead"
        )
    if num_particles < 2:
        raise ValueError(
            f"objective 'iwae' with num_particles={num_particles} is the plain ELBO (the importance-weighted "
            "bound averages the weights of several draws); raise num_particles (e.g. num_particles=8)"
        )
    return RenyiELBO(alpha=0.0, num_particles=num_particles)


OBJECTIVES: dict[str, Callable[[int, float | None], ELBO]] = {
    "elbo": _elbo,
    "trace_elbo": _elbo,
    "meanfield_elbo": _meanfield,
    "renyi": _renyi,
    "iwae": _iwae,
}
"""Objective names and their factories ``factory(num_particles, alpha) -> ELBO``; see the module docstring."""


def parse_objective(objective: str) -> tuple[str, float | None]:
    """Split an objective name into its canonical key and an optional order ``alpha``.

    Parameters
    ----------
    objective : str
        A name from :data:`OBJECTIVES` (case and ``-``/``_`` insensitive), or ``"renyi:<alpha>"``.

    Returns
    -------
    key : str
        The key of :data:`OBJECTIVES`.
    alpha : float or None
        The order given after ``":"``, or None.

    Examples
    --------
    >>> parse_objective("Renyi:0.25")
    ('renyi', 0.25)
    >>> parse_objective("trace-elbo")
    ('trace_elbo', None)
    """
    name, sep, rest = objective.strip().partition(":")
    key = name.strip().lower().replace("-", "_")
    if key not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)} (or 'renyi:<alpha>')")
    if not sep:
        return key, None
    if key != "renyi":
        raise ValueError(
            f"objective {objective!r}: only 'renyi' takes an order after ':' (as in 'renyi:0.5'); "
            f"write {key!r} alone"
        )
    try:
        alpha = float(rest)
    except ValueError:
        raise ValueError(
            f"objective {objective!r}: the order after 'renyi:' must be a number, as in 'renyi:0.5'"
        ) from None
    return key, alpha


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha, the order of the Renyi bound, must be a finite number, got {alpha!r}")
    if alpha == 1:
        raise ValueError(
            "the Renyi bound of order alpha = 1 is the ordinary ELBO, which RenyiELBO cannot compute; "
            "use objective='elbo' (or another alpha, e.g. 0.5)"
        )
    return float(alpha)


def make_objective(objective: str | Any = "elbo", *, num_particles: int = 8, alpha: float | None = None) -> ELBO:
    """Return a NumPyro ELBO object.

    Parameters
    ----------
    objective : str or numpyro.infer.elbo.ELBO
        A name from :data:`OBJECTIVES` (``"elbo"``, ``"trace_elbo"``, ``"meanfield_elbo"``,
        ``"renyi"``, ``"iwae"``), ``"renyi:<alpha>"`` such as ``"renyi:0.5"``, or an ELBO object
        used as is.
    num_particles : int
        Monte Carlo draws per gradient step, vectorized. ``"renyi"`` and ``"iwae"`` need at
        least 2 (with one draw they are the ELBO).
    alpha : float, optional
        Order of the Renyi bound (``"renyi"`` only; default :data:`RENYI_ALPHA`). Not 1 (that
        is the ELBO). An order given in the name (``"renyi:0.25"``) and here must agree.

    Returns
    -------
    numpyro.infer.elbo.ELBO

    Raises
    ------
    ValueError
        For an unknown name, ``num_particles < 1``, ``alpha = 1``, ``alpha`` with an objective
        other than ``"renyi"``, or ``"renyi"``/``"iwae"`` with one particle.

    Examples
    --------
    >>> make_objective("renyi:0.25", num_particles=4).alpha
    0.25
    >>> type(make_objective("iwae", num_particles=4)).__name__, make_objective("iwae", num_particles=4).alpha
    ('RenyiELBO', 0.0)
    """
    if isinstance(objective, ELBO):
        if alpha is not None:
            raise ValueError("alpha sets the order of objective='renyi'; an ELBO object was given, so set it there")
        return objective
    if not isinstance(objective, str):
        raise TypeError(f"objective must be a name ({', '.join(OBJECTIVES)}) or a NumPyro ELBO, got {objective!r}")
    key, named_alpha = parse_objective(objective)
    if isinstance(num_particles, bool) or int(num_particles) != num_particles or int(num_particles) < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    num_particles = int(num_particles)
    if named_alpha is not None and alpha is not None and float(alpha) != named_alpha:
        raise ValueError(
            f"objective {objective!r} names the order {named_alpha} and alpha={alpha} was given as well; give one"
        )
    alpha = named_alpha if named_alpha is not None else alpha
    if alpha is not None:
        if key not in ("renyi", "iwae"):
            raise ValueError(
                f"alpha is the order of the Renyi bound and objective {objective!r} has none; use "
                f"objective='renyi' with alpha={alpha}, or leave alpha out"
            )
        alpha = _check_alpha(alpha)
    return OBJECTIVES[key](num_particles, alpha)

r"""Non-centring of hierarchical sites, as a fixed transport map for the exact stage.

A *centred* hierarchical site draws group values around parameters that are themselves latent,
:math:`\theta_g \sim \mathcal N(\mu, \tau)`. With few data per group the posterior is a funnel:
where :math:`\tau` is small the :math:`\theta_g` are squeezed together, and no single step size
of Hamiltonian Monte Carlo fits both the neck and the mouth (Neal 2003; Betancourt and Girolami
2015). The *non-centred* variable :math:`z_g = (\theta_g - \mu) / \tau` removes that dependence,

.. math::

    \theta_g = \mu + \tau\, z_g, \qquad
    \log\lvert\det \partial\theta / \partial z\rvert = \sum_g \log \tau ,

which is what NumPyro's :class:`~numpyro.infer.reparam.LocScaleReparam` with ``centered=0``
does to a model. Here the same bijection is a map on the flat unconstrained vector of the model
as written: the exact stage samples :math:`z` (and the other coordinates unchanged) and maps its
draws back, so the result keeps the model's own sites and names.

:func:`centred_sites` finds the sites (a latent ``Normal`` whose location or scale depends on
another latent site, found with :func:`numpyro.infer.inspect.get_dependencies`; sites whose
parents are themselves such sites are left alone), and :func:`non_centring` builds the map,
reading each site's location and scale from a run of the model that stops once the latents
are drawn (so the likelihood, an ODE solve say, is not part of it).

References
----------
Betancourt, M. and Girolami, M. (2015). Hamiltonian Monte Carlo for hierarchical models. In
Current Trends in Bayesian Methodology with Applications, 79-101. CRC Press.

Papaspiliopoulos, O., Roberts, G. O. and Sköld, M. (2007). A general framework for the
parametrization of hierarchical models. Statistical Science 22(1), 59-73.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NonCentring", "centred_sites", "non_centring"]


class NonCentring(NamedTuple):
    """The non-centring bijection of some sites on a model's flat unconstrained vector.

    Attributes
    ----------
    sites : tuple of str
        The centred sites the map non-centres.
    push : callable
        ``push(v (n, d)) -> (u (n, d), log_det (n,))``: from the non-centred vector ``v`` (the
        sites' slots hold ``z``) to the model's ``u``, with ``log|det du/dv|``. Traceable.
    pull : callable
        ``pull(u (n, d)) -> v (n, d)``: the inverse. Traceable.
    """

    sites: tuple
    push: Callable
    pull: Callable


def _base(fn):
    """The distribution under NumPyro's wrappers (expanded, independent, masked)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def centred_sites(target) -> tuple[str, ...]:
    """Latent ``Normal`` sites of ``target``'s model whose location or scale depends on another latent site.

    A site qualifies when none of the latent sites it depends on qualifies itself (nested
    hierarchies are left as they are). Found from NumPyro's dependency tracing of the model;
    where that tracing fails, no site is returned.
    """
    import numpyro.distributions as dist
    from numpyro.infer.inspect import get_dependencies

    latent = set(target.layout.names)
    candidates = []
    for name in target.layout.names:
        site = target.prototype_trace.get(name)
        if site is None or not isinstance(_base(site["fn"]), dist.Normal):
            continue
        candidates.append(name)
    if not candidates:
        return ()
    try:
        deps = get_dependencies(target.model, target.args, target.kwargs)["prior_dependencies"]
    except Exception:  # a model NumPyro's provenance tracing cannot follow: no site is non-centred
        return ()
    parents = {name: (set(deps.get(name, {})) & latent) - {name} for name in candidates}
    centred = {name for name in candidates if parents[name]}
    return tuple(name for name in candidates if name in centred and not (parents[name] & centred))


def non_centring(target, sites) -> NonCentring:
    """The non-centring map of ``sites`` on ``target``'s flat vector (see the module docstring)."""
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    from .target import _Cut, _latents_only

    layout = target.layout
    names = tuple(sites)
    slots = {}
    i = 0
    for name, shape in zip(layout.names, layout.shapes):
        n = int(np.prod(shape))
        slots[name] = (i, n, shape)
        i += n

    def loc_scale(u):
        """Location and scale of every site at the parents' values in ``u`` (one point)."""
        values = layout.unpack(u)

        def substitute(site):
            if site["name"] in values:
                return biject_to(site["fn"].support)(values[site["name"]])
            return None

        # A new cut each run: it remembers the sites it has seen.
        model = _latents_only(target.model, layout.names)
        run = handlers.trace(handlers.substitute(handlers.seed(model, 0), substitute_fn=substitute))
        try:
            run.get_trace(*target.args, **target.kwargs)
        except _Cut:
            pass
        out = {}
        for name in names:
            fn = _base(run.trace[name]["fn"])
            shape = slots[name][2]
            out[name] = (jnp.broadcast_to(fn.loc, shape).reshape(-1), jnp.broadcast_to(fn.scale, shape).reshape(-1))
        return out

    def push_one(v):
        ls = loc_scale(v)  # the parents are the same in v and u
        u, log_det = v, 0.0
        for name in names:
            start, n, _ = slots[name]
            loc, scale = ls[name]
            u = u.at[start : start + n].set(loc + scale * v[start : start + n])
            log_det = log_det + jnp.sum(jnp.log(scale))
        return u, log_det

    def pull_one(u):
        ls = loc_scale(u)
        v = u
        for name in names:
            start, n, _ = slots[name]
            loc, scale = ls[name]
            v = v.at[start : start + n].set((u[start : start + n] - loc) / scale)
        return v

    return NonCentring(names, jax.vmap(push_one), jax.vmap(pull_one))

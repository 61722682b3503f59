r"""Non-centring and partial centring of hierarchical sites, as fixed maps on the flat vector.

Two directions. A model written *centred* is non-centred for the exact stage
(:func:`centred_sites`, :func:`non_centring`, below). A model written *non-centred* whose groups
are well measured is partially centred for the guides (:func:`partial_centring`, with weights
from the Laplace approximation, :func:`centring_weights`, chosen by :func:`choose_centring`):
guide families are then fitted through the map (:func:`inference.engine.families.through_map`).

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

__all__ = [
    "NonCentring", "centred_sites", "non_centring", "noncentred_sites", "centring_weights", "partial_centring",
    "through_coordinates", "NON_CENTRED", "choose_centring", "laplace_elbo",
]

#: The ``infer`` key that marks a non-centred site: ``numpyro.sample(name, Normal(0, 1),
#: infer={NON_CENTRED: (loc, scale)})`` says the model uses ``theta = loc + scale * z``.
NON_CENTRED = "non_centred"


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
    weights: tuple = ()


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


def _slots(layout) -> dict:
    """``{site: (start, size, shape)}`` of each site in the flat vector."""
    slots, i = {}, 0
    for name, shape in zip(layout.names, layout.shapes):
        n = int(np.prod(shape))
        slots[name] = (i, n, shape)
        i += n
    return slots


def _loc_scale(target, names, slots, read):
    """``loc_scale(u)``: ``{site: (loc (n,), scale (n,))}`` at one flat point, ``read(site)`` giving them from its trace entry.

    The model runs under the values of ``u`` and stops once its latents are drawn (a new cut each
    run: it remembers the sites it has seen), so the likelihood is not part of it.
    """
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    from .target import _Cut, _latents_only

    layout = target.layout

    def loc_scale(u):
        values = layout.unpack(u)

        def substitute(site):
            if site["name"] in values:
                return biject_to(site["fn"].support)(values[site["name"]])
            return None

        run = handlers.trace(handlers.substitute(handlers.seed(_latents_only(target.model, layout.names), 0),
                                                 substitute_fn=substitute))
        try:
            run.get_trace(*target.args, **target.kwargs)
        except _Cut:
            pass
        out = {}
        for name in names:
            loc, scale = read(run.trace[name])
            shape = slots[name][2]
            out[name] = (jnp.broadcast_to(loc, shape).reshape(-1), jnp.broadcast_to(scale, shape).reshape(-1))
        return out

    return loc_scale


def non_centring(target, sites) -> NonCentring:
    """The non-centring map of ``sites`` on ``target``'s flat vector (see the module docstring)."""
    layout = target.layout
    names = tuple(sites)
    slots = _slots(layout)

    def read(site):
        fn = _base(site["fn"])
        return fn.loc, fn.scale

    loc_scale = _loc_scale(target, names, slots, read)

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


# -- partial centring of non-centred sites -----------------------------------------------------------
def noncentred_sites(target) -> tuple[str, ...]:
    """Latent sites of ``target``'s model marked as non-centred (``infer={NON_CENTRED: (loc, scale)}``).

    The kinetics builder marks the ``p_z`` sites of its hierarchies so; a hand-written model can
    mark a standard normal site the same way to say that it enters the model as ``loc + scale z``.
    """
    out = []
    for name in target.layout.names:
        site = target.prototype_trace.get(name) or {}
        if NON_CENTRED in (site.get("infer") or {}):
            out.append(name)
    return tuple(out)


#: Sites whose largest centring weight is below this keep the model's non-centred form.
CENTRING_MIN = 0.5


def centring_weights(target, loc: np.ndarray, scale_tril: np.ndarray, sites=None) -> dict | None:
    r"""How far to centre each non-centred site, from the Laplace approximation at the MAP.

    In the non-centred form :math:`\theta_g = m + s z_g` of a normal hierarchy the Hessian
    diagonal of :math:`-\log p` in :math:`z_g` is :math:`h_g = s^2 I_g + 1`, with :math:`I_g`
    the information the data give about :math:`\theta_g`; the centring weight

    .. math::

        \lambda_g = 1 - 1 / h_g = \frac{s^2 I_g}{s^2 I_g + 1} \in [0, 1)

    is the share of :math:`\theta_g`'s precision that comes from the data: near 1 (informative
    groups) the centred form :math:`\theta_g` is nearly independent of :math:`(m, s)` a
    posteriori and the non-centred :math:`z_g` is a curved function of :math:`s`; near 0 the
    reverse (Papaspiliopoulos et al. 2007; Gorinova et al. 2020 choose it by the ELBO, here it
    is read off the curvature).

    Parameters
    ----------
    target : Target
    loc : ndarray, shape (d,)
        The MAP (flat, unconstrained).
    scale_tril : ndarray, shape (d, d)
        Cholesky factor of the Laplace covariance (the inverse of the negative Hessian).
    sites : sequence of str, optional
        Default :func:`noncentred_sites`.

    Returns
    -------
    dict of str to ndarray, or None
        ``lambda`` of every element of each site, or None when no site has an element at or
        above :data:`CENTRING_MIN` (the model's own form is then the better one) or the Laplace
        approximation is not finite.
    """
    sites = noncentred_sites(target) if sites is None else tuple(sites)
    if not sites or not np.all(np.isfinite(scale_tril)):
        return None
    precision = np.linalg.inv(scale_tril @ scale_tril.T)
    h = np.diag(precision)
    out, i, top = {}, 0, 0.0
    for name, shape in zip(target.layout.names, target.layout.shapes):
        n = int(np.prod(shape))
        if name in sites:
            lam = np.clip(1.0 - 1.0 / np.maximum(h[i : i + n], 1e-12), 0.0, 1.0)
            out[name] = lam
            top = max(top, float(lam.max()))
        i += n
    return out if top >= CENTRING_MIN else None


def partial_centring(target, weights: dict) -> NonCentring:
    r"""The partial centring of non-centred sites (weights :math:`\lambda`), as a map on the flat vector.

    For a site with :math:`\theta = m + s z` (``infer={NON_CENTRED: (m, s)}``) the coordinate
    :math:`\tilde\theta = \lambda m + s^\lambda z` is sampled in place of :math:`z`
    (Gorinova, Moore and Hoffman 2020, "variationally inferred parameterisation"):
    :math:`\lambda = 0` is the model's non-centred form, :math:`\lambda = 1` the centred one.
    ``push`` maps that vector to the model's,

    .. math::

        z = (\tilde\theta - \lambda m) / s^\lambda, \qquad
        \log\lvert\det \partial z / \partial\tilde\theta\rvert = -\lambda \log s ,

    and ``pull`` back. :math:`m` and :math:`s` are read from a run of the model cut after the
    latents; they depend on other sites only, which the map leaves as they are.

    References
    ----------
    Gorinova, M. I., Moore, D. and Hoffman, M. D. (2020). Automatic reparameterisation of
    probabilistic programs. ICML.
    """
    layout = target.layout
    names = tuple(weights)
    slots = _slots(layout)
    lams = {name: jnp.asarray(np.broadcast_to(weights[name], (slots[name][1],)), dtype=jnp.float64) for name in names}
    loc_scale = _loc_scale(target, names, slots, lambda site: site["infer"][NON_CENTRED])

    def push_one(v):
        ls = loc_scale(v)  # the parents of the sites are the same in v and u
        u, log_det = v, 0.0
        for name in names:
            start, n, _ = slots[name]
            loc, scale = ls[name]
            lam = lams[name]
            u = u.at[start : start + n].set((v[start : start + n] - lam * loc) * scale ** (-lam))
            log_det = log_det - jnp.sum(lam * jnp.log(scale))
        return u, log_det

    def pull_one(u):
        ls = loc_scale(u)
        v = u
        for name in names:
            start, n, _ = slots[name]
            loc, scale = ls[name]
            lam = lams[name]
            v = v.at[start : start + n].set(lam * loc + scale**lam * u[start : start + n])
        return v

    return NonCentring(names, jax.vmap(push_one), jax.vmap(pull_one), tuple(np.asarray(weights[n]) for n in names))


def through_coordinates(bijection, loc: np.ndarray, scale_tril: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""A Gaussian ``N(loc, L L^T)`` in the model's flat space moved into ``bijection``'s coordinates.

    ``v* = pull(loc)`` and :math:`L_v` the Cholesky factor of :math:`J^{-1} L L^T J^{-T}`, with
    :math:`J = \partial u / \partial v` at ``v*`` (the linearization of the map).
    """
    v = np.asarray(_programs(bijection)[1](jnp.asarray(loc)[None]))[0]
    J = np.asarray(jax.jit(jax.jacfwd(lambda x: bijection.push(x[None])[0][0]))(jnp.asarray(v)))
    M = np.linalg.solve(J, scale_tril)
    cov = M @ M.T
    return v, np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-12 * np.eye(len(v)))


def curvature_inputs(target, family, u: np.ndarray):
    """Points and a Hessian for the curvature check, in the coordinates the guide family works in.

    ``(u, target.hessian)`` for a family on the model's flat vector; for a family fitted through a
    fixed map (``family.through``), the draws pulled back and the Hessian of the log density in
    those coordinates, ``log pi(push(v)) + log|det push'(v)|`` (central differences of its gradient).
    """
    through = getattr(family, "through", None)
    if through is None:
        return u, target.hessian
    from .guides import fd_points, fd_symmetric_hessian

    push, pull, gradient_v = _programs(through)

    def hessian(x0, h):
        x0, h = np.asarray(x0, dtype=float), np.asarray(h, dtype=float)
        points = fd_points(x0, h, np)
        u_pts = np.asarray(push(jnp.asarray(points))[0])
        _, g_u = target.log_density(u_pts, grad=True)
        g_v = np.asarray(gradient_v(jnp.asarray(points), jnp.asarray(g_u)))
        return fd_symmetric_hessian(g_v, h, np)

    v = np.asarray(pull(jnp.asarray(u))) if len(u) else u
    return v, hessian


_PROGRAMS: list = []


def _programs(bijection):
    """``(push, pull, gradient_v)`` of ``bijection``, jitted once per bijection (the last one kept).

    ``gradient_v(v, g_u)`` is the gradient in ``v`` of ``log pi(push(v)) + log|det push'(v)|``
    given ``g_u``, the gradient of ``log pi`` at ``push(v)``: ``J^T g_u + grad log|det J|``.
    """
    for entry in _PROGRAMS:
        if entry[0] is bijection:
            return entry[1]

    def gradient_v(v, g_u):
        _, vjp = jax.vjp(bijection.push, v)
        return vjp((g_u, jnp.ones(v.shape[0])))[0]

    fns = (jax.jit(bijection.push), jax.jit(bijection.pull), jax.jit(gradient_v))
    _PROGRAMS[:] = [(bijection, fns)]
    return fns


#: Centrings tried by :func:`choose_centring`: these fractions of the weights read off the MAP.
CENTRING_TRIALS = (0.0, 0.5, 1.0)


def laplace_elbo(target, loc: np.ndarray, scale_tril: np.ndarray, eps: np.ndarray, bijection=None) -> float:
    r"""ELBO of the Laplace approximation ``N(loc, L L^T)`` carried into ``bijection``'s coordinates.

    In the model's own coordinates (``bijection`` None) the Gaussian itself; else the Gaussian
    linearized into ``v`` (:func:`through_coordinates`) and pushed through the map, so that
    :math:`\log q(u) = \log N(v) - \log\lvert\det \partial u / \partial v\rvert`. The estimate
    :math:`\frac1n \sum_i \log p(u_i) - \log q(u_i)` uses the same noise ``eps`` (``(n, d)``)
    for every coordinate system, so differences are not blurred by independent Monte Carlo error.
    """
    if bijection is None:
        v_loc, v_tril = np.asarray(loc, dtype=float), np.asarray(scale_tril, dtype=float)
    else:
        v_loc, v_tril = through_coordinates(bijection, loc, scale_tril)
    x = v_loc + eps @ v_tril.T
    log_q = -0.5 * np.sum(eps**2, axis=1) - 0.5 * eps.shape[1] * np.log(2 * np.pi) - np.sum(np.log(np.diag(v_tril)))
    if bijection is None:
        u = x
    else:
        u, log_det = _programs(bijection)[0](jnp.asarray(x))
        u, log_q = np.asarray(u), log_q - np.asarray(log_det)
    log_p = target.log_density(u)
    return float(np.mean(log_p - log_q)) if np.all(np.isfinite(log_p)) else -np.inf


def choose_centring(target, loc: np.ndarray, scale_tril: np.ndarray, *, seed: int = 0, num_draws: int = 512):
    r"""The centring to fit the guides through: ``(bijection or None, note)``.

    The weights read off the MAP (:func:`centring_weights`) are a first guess: a joint MAP of a
    hierarchy can sit where its noise scale is too small, which overstates every group's
    information. So the Laplace approximation is carried into the coordinates of each fraction
    ``c`` in :data:`CENTRING_TRIALS` of those weights and its ELBO estimated on common draws
    (:func:`laplace_elbo`); the fraction with the highest ELBO wins, the smallest KL divergence
    of a Gaussian in those coordinates from the posterior (Gorinova et al. 2020 choose the
    parameterisation by the ELBO too, fitting it with the guide). ``c = 0`` (the model's own
    form) returns None.
    """
    weights = centring_weights(target, loc, scale_tril)
    if weights is None:
        return None, ""
    eps = np.random.default_rng(seed).standard_normal((int(num_draws), target.dim))
    trials = []
    for c in CENTRING_TRIALS:
        bijection = None if c == 0 else partial_centring(target, {k: c * w for k, w in weights.items()})
        try:
            elbo = laplace_elbo(target, loc, scale_tril, eps, bijection)
        except np.linalg.LinAlgError:
            elbo = -np.inf
        trials.append((elbo, c, bijection))
    best = max(trials, key=lambda t: (t[0], -t[1]))
    shown = ", ".join(f"{c:g}: {e:.1f}" if np.isfinite(e) else f"{c:g}: -inf" for e, c, _ in trials)
    if best[2] is None:
        return None, f"the model's own non-centred form kept (Laplace ELBO by centring fraction {shown})"
    parts = [f"{name} ({best[1] * float(np.min(w)):.2f} to {best[1] * float(np.max(w)):.2f})" for name, w in weights.items()]
    note = (
        f"the guides work in partially centred coordinates of {', '.join(parts)} (centring weights, 1 = centred; "
        f"Laplace ELBO by fraction of the MAP's weights {shown})"
    )
    return best[2], note

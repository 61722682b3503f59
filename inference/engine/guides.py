"""Guides by name: NumPyro's autoguides behind the names users type.

``"normal"`` (alias ``"mean_field"``)
    :class:`numpyro.infer.autoguide.AutoNormal`: independent normals in unconstrained space.
    Fast, but it cannot represent correlations: with correlated parameters (Vmax and Km of a
    Michaelis-Menten law, say) it reports standard deviations that are too small.
``"multivariate_normal"`` (alias ``"full_rank"``)
    :class:`numpyro.infer.autoguide.AutoMultivariateNormal`: a full-rank Gaussian in
    unconstrained space, ``z = mu + L eps`` with ``L`` lower triangular (``d (d + 3) / 2``
    parameters for ``d`` latent dimensions).
``"low_rank"``
    :class:`numpyro.infer.autoguide.AutoLowRankMultivariateNormal`: covariance
    ``W W^T + D`` with ``W`` of rank ``r`` (``round(sqrt(d))`` by default): correlations at
    ``O(d r)`` cost, for models with many parameters (hierarchical ones).
``"iaf"`` (alias ``"flow"``)
    An inverse autoregressive flow (Kingma et al. 2016) on top of a full-rank affine map,
    :class:`WhitenedIAF` (NumPyro's :class:`~numpyro.infer.autoguide.AutoIAFNormal` with the
    affine layer added): ``z = mu + L f(eps)``. Non-Gaussian shapes (skewed, heavy-tailed or
    curved posteriors) at the cost of a small neural network.
``"bnaf"``
    A block neural autoregressive flow (De Cao, Titov & Aziz 2019), likewise on top of a
    full-rank affine map (:class:`WhitenedBNAF`).
``"delta"`` (alias ``"map"``)
    :class:`numpyro.infer.autoguide.AutoDelta`: a point estimate, the maximum a posteriori
    value (no uncertainty).
``"laplace"``
    :class:`numpyro.infer.autoguide.AutoLaplaceApproximation`: the MAP in unconstrained space,
    then a Gaussian with the inverse Hessian of ``-log p(x, u)`` there as covariance. The
    Hessian is taken by central differences of the exact gradient (ODE solvers with custom
    gradients do not support forward-over-reverse differentiation); after the fit the guide is
    handed over as the equivalent full-rank Gaussian, so every tool that takes a guide takes it.

A guide object (any NumPyro guide, e.g. an ``AutoGuide`` instance built on the same model) is
used as given.

References
----------
Kingma, D. P., Salimans, T., Jozefowicz, R., Chen, X., Sutskever, I. and Welling, M. (2016).
Improved variational inference with inverse autoregressive flow. NeurIPS.

De Cao, N., Titov, I. and Aziz, W. (2019). Block neural autoregressive flow. UAI.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.example_libraries import stax
from numpyro.distributions import constraints
from numpyro.distributions.flows import BlockNeuralAutoregressiveTransform, InverseAutoregressiveTransform
from numpyro.distributions.transforms import LowerCholeskyAffine, PermuteTransform, biject_to
from numpyro.infer import autoguide, init_to_median
from numpyro.nn import AutoregressiveNN, BlockNeuralAutoregressiveNN

__all__ = [
    "GUIDES",
    "GUIDE_NAMES",
    "make_guide",
    "guide_name",
    "canonical_name",
    "SpreadInit",
    "WhitenedIAF",
    "WhitenedBNAF",
    "GUIDE_OPTIONS",
    "fd_hessian",
    "fd_points",
    "fd_symmetric_hessian",
    "laplace_to_multivariate_normal",
]


class SpreadInit:
    r"""Initial values for restarts: the prior median, moved part of the way to a prior draw.

    For a latent site with support bijection :math:`T`, draws :math:`u_1..u_m` of the prior
    mapped to the unconstrained space by :math:`T^{-1}` and one more independent draw
    :math:`u^*`, the initial value is

    .. math::

        T\big(\operatorname{median}(u_{1..m}) + s\,(u^* - \operatorname{median}(u_{1..m}))\big).

    With spread :math:`s = 0` this is NumPyro's ``init_to_median``; with :math:`s = 1/2`, each
    restart starts about half a prior sd away from the median in a random direction: diverse
    enough for restarts to find different optima, not so wild that an ODE solve blows up. The
    spread is set per restart while the guide is initialized (:meth:`spread`), so that restart 0
    starts at the median and the others are spread out, all in one vectorized initialization.

    Parameters
    ----------
    num_samples : int
        Prior draws for the median.
    values : dict, optional
        Starting values for some sites (e.g. initial concentrations read off the data); these
        sites start there (moved by the spread like the others) instead of at the prior median.
    """

    def __init__(self, num_samples: int = 15, values: dict | None = None):
        self.num_samples = int(num_samples)
        self.values = dict(values or {})
        self._spread = 0.0

    # NumPyro inspects init strategies as ``functools.partial`` objects (``.func``, ``.keywords``).
    @property
    def func(self):
        return type(self)

    @property
    def keywords(self) -> dict:
        return {"num_samples": self.num_samples, "values": self.values}

    @contextmanager
    def spread(self, value):
        """Use spread ``value`` (a number or a traced scalar) inside the block."""
        previous, self._spread = self._spread, value
        try:
            yield self
        finally:
            self._spread = previous

    def __call__(self, site=None):
        if site is None or site["type"] != "sample" or site["is_observed"] or site["fn"].support.is_discrete:
            return init_to_median(site, num_samples=self.num_samples) if site is not None else self
        if site["value"] is not None:
            return site["value"]
        rng_key = site["kwargs"].get("rng_key")
        sample_shape = site["kwargs"].get("sample_shape")
        try:
            k_median, k_draw = jax.random.split(rng_key)
            draws = site["fn"](sample_shape=(self.num_samples,) + sample_shape, rng_key=k_median)
            transform = biject_to(site["fn"].support)
            if site["name"] in self.values:
                shape = jnp.shape(draws)[1:]
                start = jnp.broadcast_to(jnp.asarray(self.values[site["name"]], dtype=draws.dtype), shape)
                median = transform.inv(start)
            else:
                median = jnp.median(transform.inv(draws), axis=0)
            target = transform.inv(site["fn"](sample_shape=sample_shape, rng_key=k_draw))
            return transform(median + self._spread * (target - median))
        except NotImplementedError:
            return init_to_median(site, num_samples=self.num_samples)


# -- flows on whitened coordinates ------------------------------------------------------------------
def _identity_module(name: str, nn: tuple, input_shape: tuple, last: Callable[[Any], Any]):
    """``numpyro.module`` whose network starts with its output layer set by ``last`` (e.g. zero)."""
    key = name + "$params"
    nn_init, nn_apply = nn
    params = numpyro.param(key)
    if params is None:
        _, params = nn_init(numpyro.prng_key(), input_shape)
        params = list(params)
        params[-1] = last(params[-1])
        params = numpyro.param(key, params)
    return lambda x: nn_apply(params, x)


class _Whitened:
    r"""A flow ``f`` followed by a full-rank affine map: ``z = \mu + L f(\epsilon)``.

    NumPyro's flow guides start from a standard normal at the origin of the unconstrained space,
    far from where the posterior of a kinetics model lives (``log k`` near ``-1``, ``log
    sigma`` near ``-4``) and at the wrong scale. Here the flow acts on whitened coordinates:
    the affine map (parameters ``auto_loc``, ``auto_scale_tril``) starts at the guide's initial
    location with scale ``init_scale`` (or at a given Gaussian, e.g. a full-rank fit, through
    ``init_params``), and the flow starts at the identity, so the guide starts as that Gaussian
    and learns only the departure from it.
    """

    scale_tril_constraint = constraints.scaled_unit_lower_cholesky

    def _affine(self):
        loc = numpyro.param(f"{self.prefix}_loc", self._init_latent)
        scale_tril = numpyro.param(
            f"{self.prefix}_scale_tril",
            jnp.identity(self.latent_dim) * self._init_scale,
            constraint=self.scale_tril_constraint,
        )
        return LowerCholeskyAffine(loc, scale_tril)

    def get_base_dist(self):
        return dist.Normal(jnp.zeros(self.latent_dim), 1).to_event(1)


class WhitenedIAF(_Whitened, autoguide.AutoIAFNormal):
    """Inverse autoregressive flow on whitened coordinates (see :class:`_Whitened`).

    Parameters
    ----------
    model : callable
    init_loc_fn : callable
        Initialization of the location (``SpreadInit`` for named guides).
    init_scale : float
        Initial scale of the affine map.
    num_flows : int
        IAF layers, with a reversing permutation between them.
    hidden_dims : list of int, optional
        Hidden layers of each autoregressive network; ``[max(8, 2 d)] * 2`` by default.
    """

    def __init__(self, model, *, prefix="auto", init_loc_fn=init_to_median, init_scale=0.1, num_flows=2, hidden_dims=None):
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self._init_scale = init_scale
        super().__init__(
            model, prefix=prefix, init_loc_fn=init_loc_fn, num_flows=num_flows, hidden_dims=hidden_dims, nonlinearity=stax.Elu
        )

    def _get_posterior(self):
        if self.latent_dim == 1:
            raise ValueError("the 'iaf' guide needs at least two latent dimensions; use 'multivariate_normal'")
        d = self.latent_dim
        hidden = [max(8, 2 * d)] * 2 if self._hidden_dims is None else list(self._hidden_dims)
        flows = []
        for i in range(self.num_flows):
            if i > 0:
                flows.append(PermuteTransform(jnp.arange(d)[::-1]))
            arn = AutoregressiveNN(d, hidden, permutation=jnp.arange(d), nonlinearity=self._nonlinearity)
            zero_last = lambda layer: tuple(jnp.zeros_like(p) for p in layer)  # noqa: E731 - identity start
            flows.append(InverseAutoregressiveTransform(_identity_module(f"{self.prefix}_arn__{i}", arn, (d,), zero_last)))
        flows.append(self._affine())
        return dist.TransformedDistribution(self.get_base_dist(), flows)


class WhitenedBNAF(_Whitened, autoguide.AutoBNAFNormal):
    """Block neural autoregressive flow on whitened coordinates (see :class:`_Whitened`).

    Parameters
    ----------
    model : callable
    init_loc_fn : callable
    init_scale : float
        Initial scale of the affine map.
    num_flows : int
    hidden_factors : list of int
        Hidden units per input dimension of each layer.
    """

    def __init__(self, model, *, prefix="auto", init_loc_fn=init_to_median, init_scale=0.1, num_flows=1, hidden_factors=(8, 8)):
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self._init_scale = init_scale
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, num_flows=num_flows, hidden_factors=list(hidden_factors))

    def _get_posterior(self):
        if self.latent_dim == 1:
            raise ValueError("the 'bnaf' guide needs at least two latent dimensions; use 'multivariate_normal'")
        d = self.latent_dim
        flows = []
        for i in range(self.num_flows):
            if i > 0:
                flows.append(PermuteTransform(jnp.arange(d)[::-1]))
            residual = "gated" if i < (self.num_flows - 1) else None
            arn = BlockNeuralAutoregressiveNN(d, self._hidden_factors, residual)
            arnn = numpyro.module(f"{self.prefix}_arn__{i}", arn, (d,))
            flows.append(BlockNeuralAutoregressiveTransform(arnn))
        flows.append(self._affine())
        return dist.TransformedDistribution(self.get_base_dist(), flows)


# -- Laplace ----------------------------------------------------------------------------------------
def fd_hessian(f: Callable, x: jax.Array, rel_step: float = 1e-4, steps: jax.Array | None = None) -> jax.Array:
    """Hessian of scalar ``f`` at ``x`` by central differences of its exact gradient.

    Column ``i`` is ``(grad f(x + h_i e_i) - grad f(x - h_i e_i)) / (2 h_i)`` with
    ``h_i = rel_step * max(1, |x_i|)`` (or the given ``steps``); the result is symmetrized. ``2 d``
    gradient evaluations, vectorized. Works where forward-over-reverse differentiation does not
    (custom gradients).
    """
    h = rel_step * jnp.maximum(1.0, jnp.abs(x)) if steps is None else steps
    grads = jax.vmap(jax.grad(f))(fd_points(x, h, jnp))
    return fd_symmetric_hessian(grads, h, jnp)


def fd_points(x, h, xp=jnp):
    """The ``2 d`` points ``x + h_i e_i`` then ``x - h_i e_i`` of a central-difference Hessian (``xp``: numpy or jax.numpy)."""
    eye = xp.diag(h)
    return xp.concatenate([x + eye, x - eye])


def fd_symmetric_hessian(grads, h, xp=jnp):
    """The symmetrized central-difference Hessian from the gradients at :func:`fd_points`."""
    d = h.shape[0]
    hess = (grads[:d] - grads[d:]) / (2 * h[:, None])
    return 0.5 * (hess + hess.T)


def laplace_to_multivariate_normal(guide, params: dict, model, args=(), kwargs=None, *, init_scale: float = 0.1):
    """The full-rank Gaussian equal to a fitted Laplace guide: ``(guide, params)``.

    Parameters
    ----------
    guide : numpyro.infer.autoguide.AutoLaplaceApproximation
        A fitted Laplace guide (its ``auto_loc`` is the MAP in unconstrained space).
    params : dict
        Its parameters (constrained), one restart.
    model : callable
    args, kwargs
        The model's arguments (the new guide traces the model once to learn its layout).

    Returns
    -------
    (AutoMultivariateNormal, dict)
        A guide for ``model`` with the same prototype, and parameters ``auto_loc`` (the MAP)
        and ``auto_scale_tril`` (the Cholesky factor of the inverse Hessian). Where the Hessian
        is not positive definite, a ``ValueError`` names the problem.
    """
    prefix = guide.prefix
    loc = jnp.asarray(params[f"{prefix}_loc"])
    transform = guide.get_transform({k: jnp.asarray(v) for k, v in params.items()})
    scale_tril = np.asarray(transform.scale_tril)
    if not np.all(np.isfinite(scale_tril)) or not np.all(np.diag(scale_tril) > 0):
        raise ValueError(
            "the Laplace approximation failed: the Hessian of -log p at the MAP is not positive definite "
            "(a flat or non-identifiable direction); use guide='multivariate_normal' or give a tighter prior"
        )
    mvn = autoguide.AutoMultivariateNormal(model, prefix=prefix, init_loc_fn=guide.init_loc_fn, init_scale=init_scale)
    numpyro.handlers.seed(mvn._setup_prototype, rng_seed=0)(*args, **(kwargs or {}))
    return mvn, {f"{prefix}_loc": np.asarray(loc), f"{prefix}_scale_tril": scale_tril}


# -- names ------------------------------------------------------------------------------------------
def _laplace(model, *, init_loc_fn, init_scale):
    return autoguide.AutoLaplaceApproximation(model, init_loc_fn=init_loc_fn, hessian_fn=fd_hessian)


def _delta(model, *, init_loc_fn, init_scale):
    return autoguide.AutoDelta(model, init_loc_fn=init_loc_fn)


def _low_rank(model, *, init_loc_fn, init_scale, rank=None):
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1):
        raise ValueError(f"rank of the low_rank guide must be a positive integer, got {rank!r}")
    return autoguide.AutoLowRankMultivariateNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale, rank=rank)


GUIDES: dict[str, Callable[..., Any]] = {
    "normal": autoguide.AutoNormal,
    "multivariate_normal": autoguide.AutoMultivariateNormal,
    "low_rank": _low_rank,
    "iaf": WhitenedIAF,
    "bnaf": WhitenedBNAF,
    "delta": _delta,
    "laplace": _laplace,
}
"""Guide constructors by canonical name; each takes ``(model, *, init_loc_fn, init_scale)``."""

ALIASES = {
    "mean_field": "normal",
    "meanfield": "normal",
    "full_rank": "multivariate_normal",
    "mvn": "multivariate_normal",
    "lowrank": "low_rank",
    "low_rank_multivariate_normal": "low_rank",
    "flow": "iaf",
    "map": "delta",
}

FLAT_ONLY_GUIDES = ("multivariate_t", "iaf_t")
"""Guides only the flat engine fits (Student-t bases; :mod:`inference.engine.families`)."""

GUIDE_NAMES = tuple(GUIDES) + FLAT_ONLY_GUIDES + ("auto",)
"""Every name ``fit`` accepts for ``guide``."""


def canonical_name(guide: str) -> str:
    """The canonical name of a guide name or alias; a sentence when it is unknown."""
    key = guide.lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in GUIDE_NAMES:
        import difflib

        close = difflib.get_close_matches(key, list(GUIDE_NAMES) + list(ALIASES), n=1)
        hint = f"did you mean {ALIASES.get(close[0], close[0])!r}? " if close else ""
        raise ValueError(
            f"unknown guide {guide!r}; {hint}use one of {', '.join(GUIDE_NAMES)} (aliases: {', '.join(ALIASES)}) "
            "or pass a NumPyro guide"
        )
    return key


GUIDE_OPTIONS = {
    "low_rank": ("rank",),
    "iaf": ("num_flows", "hidden_dims"),
    "iaf_t": ("num_flows", "hidden_dims", "df"),
    "multivariate_t": ("df",),
    "bnaf": ("num_flows", "hidden_factors"),
}
"""Options each named guide takes (``fit(..., guide_options={...})``)."""


def make_guide(
    guide: str | Callable[..., Any],
    model: Callable[..., Any],
    *,
    init_scale: float = 0.1,
    init_values: dict | None = None,
    **options: Any,
):
    """Return a NumPyro guide for ``model``.

    Parameters
    ----------
    guide : str or callable
        A name from :data:`GUIDES` (or an alias) or a guide object, used as is.
    model : callable
        The NumPyro model.
    init_scale : float
        Initial scale of the guide in unconstrained space (small scales keep the first steps
        away from wild draws).
    init_values : dict, optional
        Starting values of some latent sites (see :class:`SpreadInit`).
    **options
        Options of the named guide (:data:`GUIDE_OPTIONS`): ``rank`` of ``"low_rank"``,
        ``num_flows`` and ``hidden_dims`` of ``"iaf"``, ``num_flows`` and ``hidden_factors``
        of ``"bnaf"``.

    Returns
    -------
    callable
        The guide. Named guides start at the prior median of each latent site (restarts
        after the first are spread around it, see :class:`SpreadInit`), a starting point that
        is never far out in the tails.
    """
    if not isinstance(guide, str):
        if not callable(guide):
            raise TypeError(f"guide must be a name ({', '.join(GUIDE_NAMES)}) or a NumPyro guide, got {guide!r}")
        if options:
            raise ValueError("guide_options apply to named guides; configure a guide object when you build it")
        return guide
    key = canonical_name(guide)
    if key == "auto":
        raise ValueError("guide='auto' is a strategy, not one guide; call inference.fit(model, guide='auto')")
    if key in FLAT_ONLY_GUIDES:
        raise ValueError(
            f"the {key!r} guide is fitted on the flat engine only: use it with the plain ELBO, without a guide object, "
            "schedules, minibatch plates or discrete sites"
        )
    allowed = GUIDE_OPTIONS.get(key, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise ValueError(f"guide {key!r} has no option {unknown[0]!r}; {takes}")
    init = SpreadInit(num_samples=15, values=init_values)
    return GUIDES[key](model, init_loc_fn=init, init_scale=init_scale, **options)


def guide_name(guide: Any) -> str:
    """The name users see for ``guide``: the canonical name of a named guide, else its class."""
    names = {
        autoguide.AutoNormal: "normal",
        autoguide.AutoMultivariateNormal: "multivariate_normal",
        autoguide.AutoLowRankMultivariateNormal: "low_rank",
        WhitenedIAF: "iaf",
        WhitenedBNAF: "bnaf",
        autoguide.AutoDelta: "delta",
        autoguide.AutoLaplaceApproximation: "laplace",
    }
    return names.get(type(guide), type(guide).__name__)

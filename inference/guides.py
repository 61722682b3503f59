"""Guides by name: NumPyro's autoguides behind the names users type.

``"normal"`` (alias ``"mean_field"``)
    :class:`numpyro.infer.autoguide.AutoNormal`: independent normals in unconstrained space.
    Fast, but it cannot represent correlations: with correlated parameters (Vmax and Km of a
    Michaelis-Menten law, say) it reports standard deviations that are too small.
``"multivariate_normal"`` (alias ``"full_rank"``)
    :class:`numpyro.infer.autoguide.AutoMultivariateNormal`: a full-rank Gaussian in
    unconstrained space, ``z = mu + L eps`` with ``L`` lower triangular. The default for the
    small models of kinetics.

A guide object (any NumPyro guide, e.g. an ``AutoGuide`` instance built on the same model) is
used as given.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions.transforms import biject_to
from numpyro.infer import autoguide, init_to_median

__all__ = ["GUIDES", "make_guide", "guide_name", "SpreadInit"]


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
    """

    def __init__(self, num_samples: int = 15):
        self.num_samples = int(num_samples)
        self._spread = 0.0

    # NumPyro inspects init strategies as ``functools.partial`` objects (``.func``, ``.keywords``).
    @property
    def func(self):
        return type(self)

    @property
    def keywords(self) -> dict:
        return {"num_samples": self.num_samples}

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
            median = jnp.median(transform.inv(draws), axis=0)
            target = transform.inv(site["fn"](sample_shape=sample_shape, rng_key=k_draw))
            return transform(median + self._spread * (target - median))
        except NotImplementedError:
            return init_to_median(site, num_samples=self.num_samples)

GUIDES: dict[str, type] = {
    "normal": autoguide.AutoNormal,
    "mean_field": autoguide.AutoNormal,
    "multivariate_normal": autoguide.AutoMultivariateNormal,
    "full_rank": autoguide.AutoMultivariateNormal,
}


def make_guide(guide: str | Callable[..., Any], model: Callable[..., Any], *, init_scale: float = 0.1):
    """Return a NumPyro guide for ``model``.

    Parameters
    ----------
    guide : str or callable
        A name from :data:`GUIDES` or a guide object, used as is.
    model : callable
        The NumPyro model.
    init_scale : float
        Initial scale of the guide in unconstrained space (small scales keep the first steps
        away from wild draws).

    Returns
    -------
    callable
        The guide. Named guides start at the prior median of each latent site (restarts
        after the first are spread around it, see :class:`SpreadInit`), a starting point that
        is never far out in the tails.
    """
    if not isinstance(guide, str):
        if not callable(guide):
            raise TypeError(f"guide must be a name ({', '.join(GUIDES)}) or a NumPyro guide, got {guide!r}")
        return guide
    key = guide.lower().replace("-", "_")
    if key not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; use one of {', '.join(GUIDES)} or pass a NumPyro guide")
    return GUIDES[key](model, init_loc_fn=SpreadInit(num_samples=15), init_scale=init_scale)


def guide_name(guide: Any) -> str:
    """The name users see for ``guide``: the canonical name of a named guide, else its class."""
    for name in ("normal", "multivariate_normal"):
        if type(guide) is GUIDES[name]:
            return name
    return type(guide).__name__

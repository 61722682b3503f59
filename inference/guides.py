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
from typing import Any

from numpyro.infer import autoguide, init_to_median

__all__ = ["GUIDES", "make_guide", "guide_name"]

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
        The guide. Named guides start at the prior median of each latent site
        (``init_to_median``), a starting point that is never far out in the tails.
    """
    if not isinstance(guide, str):
        if not callable(guide):
            raise TypeError(f"guide must be a name ({', '.join(GUIDES)}) or a NumPyro guide, got {guide!r}")
        return guide
    key = guide.lower().replace("-", "_")
    if key not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; use one of {', '.join(GUIDES)} or pass a NumPyro guide")
    return GUIDES[key](model, init_loc_fn=init_to_median(num_samples=15), init_scale=init_scale)


def guide_name(guide: Any) -> str:
    """The name users see for ``guide``: the canonical name of a named guide, else its class."""
    for name in ("normal", "multivariate_normal"):
        if type(guide) is GUIDES[name]:
            return name
    return type(guide).__name__

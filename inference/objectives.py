"""Objectives by name: NumPyro's ELBO estimators.

``"elbo"`` (alias ``"trace_elbo"``)
    :class:`numpyro.infer.Trace_ELBO`, the reparameterized Monte Carlo estimate of

    .. math:: \\mathrm{ELBO}(\\phi) = \\mathbb{E}_{\\epsilon}\\left[\\log p(x, g_\\phi(\\epsilon))
              - \\log q_\\phi(g_\\phi(\\epsilon))\\right],

    averaged over ``num_particles`` draws evaluated in one vectorized pass.
``"meanfield_elbo"``
    :class:`numpyro.infer.TraceMeanField_ELBO`: the same with the KL term in closed form where
    the guide and prior sites are of matching families.

Several particles cost little on small models (they are vectorized) and reduce the gradient
noise that otherwise biases the fitted scales low.
"""

from __future__ import annotations

from typing import Any

from numpyro.infer import Trace_ELBO, TraceMeanField_ELBO
from numpyro.infer.elbo import ELBO

__all__ = ["OBJECTIVES", "make_objective"]

OBJECTIVES: dict[str, type] = {
    "elbo": Trace_ELBO,
    "trace_elbo": Trace_ELBO,
    "meanfield_elbo": TraceMeanField_ELBO,
}


def make_objective(objective: str | Any = "elbo", *, num_particles: int = 8) -> ELBO:
    """Return a NumPyro ELBO object.

    Parameters
    ----------
    objective : str or numpyro.infer.elbo.ELBO
        A name from :data:`OBJECTIVES`, or an ELBO object used as is.
    num_particles : int
        Monte Carlo draws per gradient step, vectorized.
    """
    if isinstance(objective, ELBO):
        return objective
    if not isinstance(objective, str):
        raise TypeError(f"objective must be a name ({', '.join(OBJECTIVES)}) or a NumPyro ELBO, got {objective!r}")
    key = objective.lower().replace("-", "_")
    if key not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    return OBJECTIVES[key](num_particles=int(num_particles), vectorize_particles=True)

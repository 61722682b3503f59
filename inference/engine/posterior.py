"""A fitted guide family over a target: draws, their densities, and the guide's parameters by name.

:class:`FlatPosterior` is what a fit on the flat engine hands to the result: the compiled
:class:`~inference.engine.target.Target`, the :class:`~inference.engine.families.Family` and its
parameters per restart. Draws come from a small compiled program of the family (no model); their
model densities from the target's one log-density program (the verdict, PSIS), and constrained
values, predictive draws and pointwise log likelihoods from the target's predictive program (the
ArviZ export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .families import Family
from .sampling import ModelDraws
from .target import Target

__all__ = ["FlatPosterior", "public_params"]

#: Draws per call of the compiled draw program.
DRAW_BATCH = 4096


def _softplus(x):
    return np.logaddexp(0.0, np.asarray(x, dtype=float))


def public_params(family: Family, params) -> dict:
    """The parameters of a family by the names of NumPyro's autoguides (constrained, NumPy).

    ``auto_loc`` and ``auto_scale_tril`` for the full-rank Gaussian (and the Gaussian under a
    flow, whose network weights follow as ``auto_flow_<i>_...``), ``auto_loc`` and ``auto_scale``
    for mean-field, ``auto_loc``, ``auto_cov_factor`` and ``auto_scale`` for low-rank. Leaves may
    carry a leading restart axis.
    """
    out = {"auto_loc": np.asarray(params["loc"])}
    if family.name == "normal":
        out["auto_scale"] = _softplus(params["scale"])
    elif family.name == "low_rank":
        out["auto_cov_factor"] = np.asarray(params["W"])
        out["auto_scale"] = _softplus(params["diag"])
    else:
        diag = _softplus(params["diag"])
        tril = np.tril(np.asarray(params["tril"]), -1)
        out["auto_scale_tril"] = tril + diag[..., :, None] * np.eye(diag.shape[-1])
    if "flows" in params:
        for path, leaf in jax.tree_util.tree_flatten_with_path(params["flows"])[0]:
            label = "auto_flow" + "".join(f"_{getattr(p, 'idx', getattr(p, 'key', p))}" for p in path)
            out[label] = np.asarray(leaf)
    return out


@dataclass(frozen=True, eq=False)
class FlatPosterior:
    """A guide family fitted over a target's flat unconstrained vector.

    Attributes
    ----------
    target : Target
    family : Family
    restart_params : pytree
        The family's parameters, each leaf with leading axis ``R`` (restarts).
    importance : (int, ndarray (n, d), ndarray (n,), ndarray (n,)) or None
        When set, ``(restart, u, log_q, log_weights)``: draws of that restart from the guide with
        their Pareto-smoothed importance log weights (Yao et al. 2018). The draws of that restart
        are then importance-resampled from them (:meth:`draw`); :meth:`draw_guide` still gives
        the guide's own draws.
    importance_source : str
        Where the importance draws came from (``"the guide"``, or a Student-t proposal around it).
    """

    target: Target
    family: Family
    restart_params: Any
    importance: tuple | None = None
    importance_source: str = ""
    _draw: dict = field(default_factory=dict, repr=False)

    @property
    def prototype_trace(self) -> dict:
        """The model's abstract trace (site shapes, distributions, plates)."""
        return self.target.prototype_trace

    @property
    def num_restarts(self) -> int:
        """Number of restarts ``R``."""
        return int(jax.tree.leaves(self.restart_params)[0].shape[0])

    def params(self, restart: int):
        """The family parameters of one restart (NumPy)."""
        return jax.tree.map(lambda v: np.asarray(v)[restart], self.restart_params)

    def _program(self):
        if "fn" not in self._draw:
            family = self.family

            def draw(params, seed, index):
                key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
                eps = jax.random.normal(key, (DRAW_BATCH, family.noise_dim))
                return family.sample(params, eps)

            params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), self.restart_params)
            scalar = jax.ShapeDtypeStruct((), jnp.int64)
            self._draw["fn"] = jax.jit(draw).lower(params, scalar, scalar).compile()
        return self._draw["fn"]

    def draw(self, restart: int, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` posterior draws ``u`` (``(n, d)``) of restart ``restart`` with their ``log q(u)`` (``(n,)``).

        The guide's draws, or, where :attr:`importance` is set for this restart, draws resampled
        with probability proportional to their smoothed importance weights (with replacement).
        """
        if self.importance is not None and self.importance[0] == restart:
            _, u, log_q, log_w = self.importance
            p = np.exp(log_w - np.max(log_w))
            idx = np.random.default_rng(seed).choice(p.size, size=int(n), replace=True, p=p / p.sum())
            return u[idx], log_q[idx]
        return self.draw_guide(restart, seed, n)

    def draw_guide(self, restart: int, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws ``u`` (``(n, d)``) from the guide of restart ``restart`` with ``log q(u)`` (``(n,)``)."""
        n = int(n)
        fn, params = self._program(), self.params(restart)
        parts = [jax.device_get(fn(params, np.int64(seed), np.int64(i))) for i in range(max(1, -(-n // DRAW_BATCH)))]
        u = np.concatenate([p[0] for p in parts])[:n]
        log_q = np.concatenate([p[1] for p in parts])[:n]
        return u, log_q

    def model_draws(self, restart: int, seed: int, n: int) -> ModelDraws:
        """Draws with constrained values, model and guide densities, predictions and log likelihoods.

        ``log_p`` is the model's log joint and ``log_q`` the guide's log density, both in the
        constrained space (``log q(u) - log|det J|``), as the NumPyro path reports them; their
        difference is the importance log weight. Draws where the model has zero density or whose
        values are not finite (a failed ODE solve, an overflow) are not posterior draws: each is
        replaced by one of the others (:func:`inference.engine.faults.keep_finite`); the verdict
        counts them.
        """
        from .faults import keep_finite

        u, log_q = self.draw(restart, seed, n)
        pred, log_q, _ = keep_finite(self.target.predict(u, seed=seed + 1), log_q, seed + 2)
        with np.errstate(invalid="ignore"):
            log_q_c = log_q - pred.log_det_jacobian
        return ModelDraws(pred.latent, pred.log_joint, log_q_c, pred.log_likelihood, pred.predictive)

    def numpyro_guide(self, restart: int):
        """The equal NumPyro autoguide and its parameters for one restart: ``(guide, params)``.

        For tools written against NumPyro guides (the gradient-estimator report, decisions). The
        Gaussian families are NumPyro's ``AutoDiagonalNormal``, ``AutoMultivariateNormal`` and
        ``AutoLowRankMultivariateNormal`` over the same flat layout, with the same parameter names;
        the flow has no NumPyro twin (a ValueError says so). Setting the guide up runs the model
        once, outside the fit.
        """
        from numpyro.infer import autoguide

        classes = {
            "normal": autoguide.AutoDiagonalNormal,
            "multivariate_normal": autoguide.AutoMultivariateNormal,
            "low_rank": autoguide.AutoLowRankMultivariateNormal,
        }
        if self.family.name not in classes:
            raise ValueError(
                f"the {self.family.name!r} guide of the flat engine has no NumPyro autoguide twin; fit with "
                "guide='multivariate_normal' for tools that need a NumPyro guide"
            )
        if self.family.through is not None:
            raise ValueError(
                f"this {self.family.name!r} guide was fitted in partially centred coordinates of "
                f"{', '.join(self.family.through.sites)}, so no NumPyro autoguide over the model's own sites equals it; "
                f"fit guide={self.family.name!r} directly for tools that need a NumPyro guide"
            )
        kwargs = {"rank": int(np.asarray(self.restart_params["W"]).shape[-1])} if self.family.name == "low_rank" else {}
        guide = classes[self.family.name](self.target.model, **kwargs)
        from numpyro import handlers

        with handlers.seed(rng_seed=0):
            guide._setup_prototype(*self.target.args, **self.target.kwargs)
        params = {k: jnp.asarray(v[restart]) for k, v in public_params(self.family, self.restart_params).items()}
        return guide, params

    def prior_draws(self, seed: int, n: int) -> tuple[ModelDraws, dict]:
        """``n`` prior draws through the target (prior and prior predictive), and the observed values.

        Returns ``(ModelDraws, observed)``; ``log_q`` of the prior draws is zero.
        """
        u = self.target.prior_draws(int(n), seed=seed)
        pred = self.target.predict(u, seed=seed + 1)
        draws = ModelDraws(pred.latent, pred.log_joint, np.zeros(len(u)), pred.log_likelihood, pred.predictive)
        return draws, pred.observed

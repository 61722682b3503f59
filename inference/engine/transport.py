r"""The exact last stage: NUTS through the fitted guide's transport map (NeuTra HMC).

A fitted guide family is a bijection :math:`u = T_\phi(x)` from a simple base variable
:math:`x` to the flat unconstrained parameters (an affine map for the Gaussian families, a flow
for ``iaf``; :attr:`Family.push <inference.engine.families.Family>`). Where the guide is close
to the posterior, the posterior pulled back through :math:`T_\phi`,

.. math::

    \tilde\pi(x) = \pi\big(T_\phi(x)\big)\,\big\lvert\det \partial T_\phi(x)/\partial x\big\rvert ,

is close to the base distribution: nearly isotropic and of unit scale, which is where
Hamiltonian Monte Carlo mixes fastest (Hoffman et al. 2019). NUTS (NumPyro) samples
:math:`\tilde\pi` with a diagonal mass matrix adapted in a short warmup, the chains start at
draws of the guide, and the draws are mapped back, :math:`u = T_\phi(x)`. The draws are exact
in the limit whatever the guide: the guide changes only how fast the chains mix. Convergence is
read from the split :math:`\hat R` and the bulk and tail effective sample sizes of every
coordinate (Vehtari et al. 2021), and from the divergent transitions.

The potential contains the model, so this stage compiles one more program that holds it (the
NUTS warmup and sampling loops, compiled once and run chain after chain); it runs only when the variational
answer is not reliable.

References
----------
Hoffman, M., Sountsov, P., Dillon, J. V., Langmore, I., Tran, D. and Vasudevan, S. (2019).
NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using neural transport. arXiv:1903.03704.

Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. and Bürkner, P.-C. (2021). Rank-normalization,
folding, and localization: an improved R-hat for assessing the convergence of MCMC. Bayesian
Analysis 16(2), 667-718.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TransportRun", "transport_nuts", "RHAT_OK", "ESS_OK", "ESS_TAIL_OK", "DIVERGENT_OK"]

#: Largest split R-hat, smallest bulk ESS (a mean then has a Monte Carlo error of at most 0.03 sd)
#: and smallest tail ESS of draws called converged.
RHAT_OK, ESS_OK, ESS_TAIL_OK = 1.01, 1000, 400

#: Largest share of divergent transitions of draws called converged (1 in 2000: a rare divergence in
#: a heavy tail, not a region the chains cannot enter).
DIVERGENT_OK = 5e-4


class TransportRun(NamedTuple):
    """Draws of NUTS through a guide's transport map.

    Attributes
    ----------
    u : ndarray, shape (chains * draws, d)
        Flat unconstrained draws (chain after chain).
    log_q : ndarray, shape (chains * draws,)
        The guide's log density at each draw (for reference; the draws are not weighted).
    rhat : ndarray, shape (d,)
        Split R-hat of each coordinate.
    ess_bulk, ess_tail : ndarray, shape (d,)
        Bulk and tail effective sample sizes of each coordinate.
    divergences : int
        Divergent transitions after warmup.
    num_chains, num_warmup, num_samples : int
    seconds : float
        Wall time, compiling included.
    """

    u: np.ndarray
    log_q: np.ndarray
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    divergences: int
    num_chains: int
    num_warmup: int
    num_samples: int
    seconds: float

    @property
    def converged(self) -> bool:
        """R-hat at most :data:`RHAT_OK`, bulk ESS at least :data:`ESS_OK`, tail ESS at least :data:`ESS_TAIL_OK`,
        divergent transitions at most :data:`DIVERGENT_OK` of all."""
        return bool(
            np.all(self.rhat <= RHAT_OK)
            and np.all(self.ess_bulk >= ESS_OK)
            and np.all(self.ess_tail >= ESS_TAIL_OK)
            and self.divergences <= DIVERGENT_OK * self.num_chains * self.num_samples
        )

    def summary(self) -> str:
        """One sentence: chains, draws, worst R-hat and ESS, divergences."""
        return (
            f"{self.num_chains} chains x {self.num_samples} draws (after {self.num_warmup} warmup), largest R-hat "
            f"{np.max(self.rhat):.3f}, smallest bulk / tail ESS {np.min(self.ess_bulk):.0f} / {np.min(self.ess_tail):.0f}, "
            f"{self.divergences} divergent transitions"
        )


def _ess_tail(x: np.ndarray) -> np.ndarray:
    """Tail ESS (Vehtari et al. 2021): the smaller ESS of the indicators of the 5% and 95% quantiles."""
    from numpyro.diagnostics import effective_sample_size

    out = []
    for j in range(x.shape[-1]):
        col = x[..., j]
        lo, hi = np.quantile(col, [0.05, 0.95])
        ess = [effective_sample_size((col <= q).astype(float)) for q in (lo, hi)]
        out.append(min(ess))
    return np.asarray(out)


def transport_nuts(
    target,
    family,
    params,
    *,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    max_samples: int | None = None,
    target_accept: float = 0.9,
    max_tree_depth: int = 8,
) -> TransportRun:
    """NUTS on the posterior pulled back through ``family``'s map at ``params`` (see the module docstring).

    Parameters
    ----------
    target : Target
        The model's compiled target (its traceable log density is rebuilt here for NUTS).
    family : Family
        A family with a transport map (``family.push`` not None).
    params : pytree
        The fitted parameters of one restart.
    seed : int
    num_chains, num_warmup, num_samples : int
        Chains (run one after the other by one compiled program), warmup and kept draws per chain.
    max_samples : int, optional
        While the chains have not converged (:attr:`TransportRun.converged`), they go on for
        as many draws again, up to this many per chain (default ``4 * num_samples``).
    target_accept : float
        NUTS's target acceptance probability.
    max_tree_depth : int
        Bounds every NUTS step at ``2**max_tree_depth`` leapfrog steps (no stage runs unbounded).
    """
    from numpyro.infer import MCMC, NUTS

    from .target import _log_density_fn

    if family.push is None:
        raise ValueError(f"the {family.name!r} guide has no transport map; the exact stage needs a full-rank guide or a flow")
    t0 = time.perf_counter()
    max_samples = 4 * num_samples if max_samples is None else max_samples
    d = target.dim
    _, density = _log_density_fn(target.model, target.args, target.kwargs, target.layout)
    params = jax.tree.map(jnp.asarray, params)

    def potential(x):
        u, log_det = family.push(params, x[None])
        value = density(u[0]) + log_det[0]
        return -jnp.where(jnp.isfinite(value), value, -jnp.inf)

    kernel = NUTS(potential_fn=potential, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    # The chains start at draws of the base distribution near its centre (the guide's bulk).
    init = 0.5 * np.random.default_rng(seed).standard_normal((num_chains, d))
    mcmc.run(jax.random.PRNGKey(seed), init_params=jnp.asarray(init), extra_fields=("diverging",))
    xs = [np.asarray(mcmc.get_samples(group_by_chain=True))]  # (chains, draws, d) per run
    diverging = [np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])]
    # Not converged yet: the chains go on from where they are (no new warmup), num_samples more
    # draws at a time, up to max_samples per chain.
    push_u = jax.jit(lambda x: family.push(params, x)[0])
    while sum(x.shape[1] for x in xs) < max_samples:
        u_so_far = np.asarray(push_u(jnp.asarray(np.concatenate(xs, axis=1).reshape(-1, d)))).reshape(num_chains, -1, d)
        if _converged(u_so_far, int(sum(np.sum(v) for v in diverging))):
            break
        mcmc.post_warmup_state = mcmc.last_state
        mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("diverging",))
        xs.append(np.asarray(mcmc.get_samples(group_by_chain=True)))
        diverging.append(np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"]))
    x = np.concatenate(xs, axis=1)
    divergences = int(sum(np.sum(v) for v in diverging))

    def pushed(x):
        u, log_det = family.push(params, x)
        if family.base == "student_t":
            df = family.noise_dim - d
            log_base = (
                jax.scipy.special.gammaln((df + d) / 2) - jax.scipy.special.gammaln(df / 2)
                - 0.5 * d * jnp.log(df * jnp.pi) - 0.5 * (df + d) * jnp.log1p(jnp.sum(x**2, axis=-1) / df)
            )
        else:
            log_base = -0.5 * jnp.sum(x**2, axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
        return u, log_base - log_det

    u_flat, log_q = (np.asarray(v) for v in jax.jit(pushed)(jnp.asarray(x.reshape(-1, d))))
    u = u_flat.reshape(x.shape)
    rhat, ess_bulk, ess_tail = _convergence(u)
    # The guide's own density at the draws comes along (the draws themselves are not weighted).
    return TransportRun(
        u_flat, log_q, rhat, ess_bulk, ess_tail, divergences, num_chains, num_warmup, x.shape[1], time.perf_counter() - t0
    )


def _convergence(u: np.ndarray):
    """Split R-hat, bulk ESS and tail ESS of every coordinate of ``u`` (``(chains, draws, d)``)."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    return np.asarray(split_gelman_rubin(u)), np.asarray(effective_sample_size(u)), _ess_tail(u)


def _converged(u: np.ndarray, divergences: int) -> bool:
    rhat, bulk, tail = _convergence(u)
    return bool(
        np.all(rhat <= RHAT_OK) and np.all(bulk >= ESS_OK) and np.all(tail >= ESS_TAIL_OK)
        and divergences <= DIVERGENT_OK * u.shape[0] * u.shape[1]
    )

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

The potential contains the model, so this stage compiles two more programs that hold it: the
chains' start, and a block of NUTS transitions of every chain, called for the warmup, the draws
and any draws added until the chains converge; it runs only when the variational answer is not
reliable.

References
----------
Hoffman, M., Sountsov, P., Dillon, J. V., Langmore, I., Tran, D. and Vasudevan, S. (2019).
NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using neural transport. arXiv:1903.03704.

Gelman, A. and Rubin, D. B. (1992). Inference from iterative simulation using multiple sequences.
Statistical Science 7(4), 457-472.

Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. and Bürkner, P.-C. (2021). Rank-normalization,
folding, and localization: an improved R-hat for assessing the convergence of MCMC. Bayesian
Analysis 16(2), 667-718.
"""

from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TransportMap", "TransportRun", "transport_nuts", "RHAT_OK", "ESS_OK", "ESS_TAIL_OK", "DIVERGENT_OK", "RHAT_CARE", "ESS_CARE",
    "DIVERGENT_CARE",
]

#: Largest split R-hat, smallest bulk ESS (a mean then has a Monte Carlo error of at most 0.03 sd)
#: and smallest tail ESS of draws called converged.
RHAT_OK, ESS_OK, ESS_TAIL_OK = 1.01, 1000, 400

#: Largest share of divergent transitions of draws called converged (1 in 2000: a rare divergence in
#: a heavy tail, not a region the chains cannot enter).
DIVERGENT_OK = 5e-4

#: The looser bounds of draws that are "use with care": R-hat, smallest bulk and tail ESS, share of
#: divergent transitions. Divergences bias the draws by an amount they do not show: on the centred
#: funnel of the calibration set, 0.26% of transitions divergent came with an sd of tau 29% short.
RHAT_CARE, ESS_CARE, DIVERGENT_CARE = 1.05, 100, 0.002


class TransportMap(NamedTuple):
    """A transport map that is not a guide family's (for example a non-centring composed with an affine map).

    Attributes
    ----------
    name : str
        What the map is, in a few words.
    push : callable
        ``push(params, x (n, d)) -> (u (n, d), log_det (n,))``, as :attr:`Family.push <inference.engine.families.Family>`.
    noise_dim : int
        ``d``.
    base : str
        ``"normal"``: the chains sample the pull-back of the posterior near a standard normal.
    pull : callable, optional
        ``pull(params, u (n, d)) -> x (n, d)``, the inverse of ``push`` (to start chains at given points).
    """

    name: str
    push: Callable
    noise_dim: int
    base: str = "normal"
    pull: Callable | None = None


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
    grad_evals : int
        Evaluations of the log density and its gradient (leapfrog steps, warmup included).
    chains_at_starts : int
        Chains that started at the given ``starts`` (chains 1 .. k) rather than near the guide's centre.
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
    grad_evals: int = 0
    chains_at_starts: int = 0

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
    num_warmup: int = 300,
    num_samples: int = 1000,
    max_samples: int | None = None,
    target_accept: float = 0.9,
    max_tree_depth: int = 8,
    block: int = 50,
    vectorized: bool | None = None,
    starts: np.ndarray | None = None,
) -> TransportRun:
    """NUTS on the posterior pulled back through ``family``'s map at ``params`` (see the module docstring).

    Two compiled programs hold the model: the chains' start (one potential and gradient each)
    and a block of ``block`` NUTS transitions of every chain (NumPyro's kernel, :func:`numpyro.infer.hmc.hmc`,
    whose state carries the warmup adaptation: Stan's windows, dual averaging of the step size, a
    diagonal mass matrix). Warmup and draws are calls of that one block program, and so are the
    draws added while the chains have not converged, so nothing is compiled again however long
    they run. The guide's parameters are arguments of both programs, not constants, so a later fit
    finds them in the persistent compilation cache.

    Parameters
    ----------
    target : Target
        The model's compiled target (its traceable log density is rebuilt here for NUTS).
    family : Family or TransportMap
        A family with a transport map (``family.push`` not None), or a :class:`TransportMap`.
    params : pytree
        The fitted parameters of one restart.
    seed : int
    num_chains, num_warmup, num_samples : int
        Chains, warmup transitions and kept draws per chain (warmup and draws rounded up to whole
        blocks).
    max_samples : int, optional
        While the chains have not converged (:attr:`TransportRun.converged`) they go on, up to this
        many draws per chain (default ``4 * num_samples``): as many more as the effective sample
        sizes so far say are needed, with a margin of 20% (as many again while an R-hat is above
        its bound or divergent transitions above :data:`DIVERGENT_OK`). They stop early when more
        draws cannot help: divergent transitions above :data:`DIVERGENT_CARE` already rule out
        "use with care".
    target_accept : float
        NUTS's target acceptance probability.
    max_tree_depth : int
        Bounds every NUTS step at ``2**max_tree_depth`` leapfrog steps (no stage runs unbounded).
    block : int
        Transitions per call of the block program.
    vectorized : bool, optional
        Run the chains in lockstep (``jax.vmap``) rather than one after another within a block
        (``jax.lax.map``). Default: vectorized unless the target evaluates its points one at a time
        (``target.chunk == 1``: a log density with a while loop, such as an adaptive ODE solve,
        which runs as slowly as its slowest lane when vectorized).
    starts : ndarray, shape (k, d), optional
        Unconstrained points (``k < num_chains``) where chains ``1 .. k`` start, such as optima
        other than the guide's that a search found: chains started apart that converge to one
        distribution (every R-hat at most 1.01) show that the posterior mass between them is
        one, which is the purpose of over-dispersed starts (Gelman and Rubin 1992). Used when
        the map has an exact inverse: an affine map (the Gaussian families) or a
        :class:`TransportMap` with ``pull``; otherwise ignored (:attr:`TransportRun.chains_at_starts`
        is then 0).
    """
    from numpyro.infer.hmc import hmc

    from .target import _log_density_fn

    if family.push is None:
        raise ValueError(f"the {family.name!r} guide has no transport map; the exact stage needs a full-rank guide or a flow")
    t0 = time.perf_counter()
    block = int(block)
    max_samples = 4 * num_samples if max_samples is None else max_samples
    warmup_blocks = max(1, math.ceil(num_warmup / block))
    num_warmup = warmup_blocks * block
    vectorized = getattr(target, "chunk", 1) > 1 if vectorized is None else bool(vectorized)
    d = target.dim
    _, density = _log_density_fn(target.model, target.args, target.kwargs, target.layout)
    params = jax.tree.map(jnp.asarray, params)

    def potential_of(p):
        def potential(x):
            u, log_det = family.push(p, x[None])
            value = density(u[0]) + log_det[0]
            return -jnp.where(jnp.isfinite(value), value, -jnp.inf)

        return potential

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_of, algo="NUTS")

    def init_one(x, key, p):
        return init_kernel(x, num_warmup, target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                           model_args=(p,), rng_key=key)

    def chain_block(state, p):
        def step(s, _):
            s = sample_kernel(s, model_args=(p,))
            return s, (s.z, s.diverging, s.num_steps)

        return jax.lax.scan(step, state, None, length=block)

    if vectorized:
        init_chains = jax.jit(jax.vmap(init_one, in_axes=(0, 0, None)))
        block_chains = jax.jit(jax.vmap(chain_block, in_axes=(0, None)))
    else:
        init_chains = jax.jit(lambda xs, keys, p: jax.lax.map(lambda a: init_one(a[0], a[1], p), (xs, keys)))
        block_chains = jax.jit(lambda states, p: jax.lax.map(lambda s: chain_block(s, p), states))

    # The chains start at draws of the base distribution near its centre (the guide's bulk); a
    # chain whose start has no finite density starts at the centre itself.
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)
    x0 = 0.5 * np.random.default_rng(seed).standard_normal((num_chains, d))
    at_starts = 0
    if starts is not None and len(starts):
        pull = getattr(family, "pull", None)
        inverse = (lambda u: np.asarray(pull(params, jnp.asarray(u)))) if pull is not None else _affine_inverse(family, params, d)
        through = getattr(family, "through", None)
        if pull is None and through is not None:
            # An affine map fitted through a fixed bijection: undo the bijection, then the affine part.
            inner = _affine_inverse(family._replace(push=lambda p, x: (through.pull(family.push(p, x)[0]), None)), params, d)
            inverse = None if inner is None else (lambda u: inner(np.asarray(through.pull(jnp.asarray(u)))))
        if inverse is not None:
            points = np.asarray(starts, dtype=float)[: num_chains - 1]
            x0[1 : 1 + len(points)] = inverse(points)
            at_starts = len(points)
    states = init_chains(jnp.asarray(x0), keys, params)
    bad = ~np.isfinite(np.asarray(states.potential_energy))
    if bad.any():
        x0[bad] = 0.0
        states = init_chains(jnp.asarray(x0), keys, params)
        at_starts = int(np.sum(~bad[1 : 1 + at_starts]))  # a given start with no finite density was replaced
    grad_evals = num_chains
    for _ in range(warmup_blocks):
        states, (_, _, steps) = block_chains(states, params)
        grad_evals += int(np.sum(steps))

    xs, diverging = [], 0

    def draw(n_blocks):
        nonlocal states, diverging, grad_evals
        for _ in range(n_blocks):
            states, (z, div, steps) = block_chains(states, params)
            xs.append(np.asarray(z))  # (chains, block, d)
            diverging += int(np.sum(div))
            grad_evals += int(np.sum(steps))

    push_u = jax.jit(lambda x: family.push(params, x)[0])
    draw(math.ceil(num_samples / block))
    while True:
        x = np.concatenate(xs, axis=1)
        n = x.shape[1]
        u = np.asarray(push_u(jnp.asarray(x.reshape(-1, d)))).reshape(num_chains, n, d)
        rhat, bulk, tail = _convergence(u)
        more = _draws_needed(rhat, bulk, tail, diverging, num_chains, n)
        if more == 0 or n >= max_samples:
            break
        draw(math.ceil(min(more, max_samples - n) / block))

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
    # The guide's own density at the draws comes along (the draws themselves are not weighted).
    return TransportRun(
        u_flat, log_q, rhat, bulk, tail, diverging, num_chains, num_warmup, n, time.perf_counter() - t0, grad_evals,
        at_starts,
    )


def _affine_inverse(family, params, d: int):
    """``u -> x`` of ``family``'s map when it is affine, ``u = c + M x`` (checked at a random point); else None."""
    eye = jnp.eye(d)
    c = np.asarray(family.push(params, jnp.zeros((1, d)))[0][0])
    M = (np.asarray(family.push(params, eye)[0]) - c).T  # column j is the image of e_j
    probe = np.random.default_rng(0).standard_normal((1, d))
    image = np.asarray(family.push(params, jnp.asarray(probe))[0][0])
    if not np.allclose(image, c + M @ probe[0], rtol=1e-8, atol=1e-8 * (1 + np.abs(image).max())):
        return None
    return lambda u: np.linalg.solve(M, (np.asarray(u) - c).T).T


def _draws_needed(rhat, bulk, tail, divergences: int, chains: int, n: int) -> int:
    """More draws per chain the chains need to meet the bounds (0: done, or more cannot help).

    The effective sample sizes grow in proportion to the draws, so the draws needed are scaled
    by the largest shortfall, with 20% to spare; an R-hat above its bound asks for at least as
    many draws again. Divergent transitions above :data:`DIVERGENT_CARE` of the draws end the run (the draws cannot
    be better than *unreliable*); a smaller share above :data:`DIVERGENT_OK` asks for as many
    draws again: a region where the integrator fails is a region the chains under-explore, and
    longer chains explore more of it and measure the share better.
    """
    draws = chains * n
    if divergences > DIVERGENT_CARE * draws:
        return 0
    shortfall = max(ESS_OK / max(np.min(bulk), 1.0), ESS_TAIL_OK / max(np.min(tail), 1.0))
    more = int(math.ceil(n * (1.2 * shortfall - 1))) if shortfall > 1 else 0
    if np.any(rhat > RHAT_OK) or divergences > DIVERGENT_OK * draws:
        more = max(more, n)
    return more


def _convergence(u: np.ndarray):
    """Split R-hat, bulk ESS and tail ESS of every coordinate of ``u`` (``(chains, draws, d)``)."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    return np.asarray(split_gelman_rubin(u)), np.asarray(effective_sample_size(u)), _ess_tail(u)

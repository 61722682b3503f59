"""``guide="auto"``: a robust start, the guide chosen by model size, escalation while the verdict is poor.

Everything runs on the model's one compiled :class:`~inference.engine.target.Target` (models the
flat engine cannot hold, such as minibatch plates or discrete latents, get one mean-field guide
through NumPyro's SVI). What :func:`fit_auto` does, in order:

1. **Robust start (MAP stage).** Batched L-BFGS (:func:`inference.engine.vi.find_map`) from
   ``map_starts`` points at once: the first at the prior median, the others spread around it
   (:class:`inference.engine.guides.SpreadInit`); where the model offers data-informed starting
   values (a kinetics model's ``initial_values()``: initial concentrations read off the data),
   the starts are centred on those. The start with the highest log density wins; its Laplace
   approximation (MAP and inverse Hessian by central differences of the exact gradient) is
   where the variational fits begin (or, when a separate optimum holds more Laplace mass, that
   one's: :func:`heaviest_optimum`). Separate optima found by other starts are weighed by their
   Laplace mass (:func:`check_modes`). Where the model has non-centred hierarchies (sites
   marked ``infer={"non_centred": (loc, scale)}``, as the kinetics builder's are), the guides
   may be fitted in partially centred coordinates of them, chosen by the Laplace ELBO
   (:func:`inference.engine.noncentring.choose_centring`).
2. **The guide ladder.** By the number ``d`` of unconstrained latent dimensions:
   ``d <= 30``: ``multivariate_normal``, then ``multivariate_t`` (the same on a Student-t base,
   for heavy tails), then ``iaf`` (a flow on top of the full-rank fit);
   ``30 < d <= 100``: ``multivariate_normal`` (then the exact stage);
   ``100 < d <= 300``: ``low_rank`` then ``multivariate_normal``; larger: ``normal`` then
   ``low_rank``. Gaussian families are fitted on fixed draws (DADVI), flows on fresh draws.
3. **Verdict and importance resampling.** After each fit the verdict is computed
   (:mod:`inference.checks.diagnostics`). Where importance weights have k-hat at most 0.7
   (:mod:`inference.engine.importance`) the reported draws are resampled from them and the
   verdict is made again for those draws (*reliable* needs k-hat at most 0.5). The proposals,
   in order: a mixture of Student-t components over the separate optima of the MAP stage when
   it found two or more that hold mass (each weighted by importance sampling: a fit of one mode
   cannot show the others), else the guide itself, else a Student-t around it. The fit is
   accepted when that verdict is *reliable*. Otherwise it is accepted as it is when
   its verdict is *reliable* and Pareto-smoothed importance weighting moves no mean by more than
   ``mean_shift`` (0.1) guide sds and no sd by more than ``sd_shift`` (10%). Otherwise the next
   guide is tried. The result is the
   attempt with the best verdict level, ties broken by the ELBO (estimated from the verdict's
   draws: a higher ELBO is a smaller KL divergence from the posterior).
4. **The exact stage.** When no attempt is *reliable*, NUTS runs through the transport map of
   a fit (:func:`exact_stage`, :mod:`inference.engine.transport`: NeuTra HMC; the map is a
   preconditioner, chosen for NUTS: a Gaussian base first, then the full-rank Gaussian's, then
   the best verdict), its chains going on until they converge or reach four
   times ``exact_draws``; its draws are exact in the limit, and its verdict rests on R-hat, the
   effective sample sizes and the divergent transitions. It replaces the variational answer
   when its verdict is at least as good. ``guide_options={"exact": False}`` leaves it out.

Every attempt is recorded (:class:`Attempt`, ``FitResult.attempts``) with its verdict, its
gradient evaluations and why the search moved on; ``FitResult.guide_name`` names the guide
that produced the posterior.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from ..checks.diagnostics import CARE, RELIABLE, UNRELIABLE, Check
from .faults import examine_draws, stiff_variant, with_stiff_switch
from .flat import fit_flat, flat_guide, target_for
from .importance import importance_resampled
from .noncentring import choose_centring, through_coordinates
from .result import FitResult, Timings
from .schedules import check_schedules
from .settings import FitSettings
from .stopping import StopReason
from .svi import run_svi

__all__ = ["Attempt", "fit_auto", "guide_ladder", "latent_dimension", "check_modes", "search_modes", "AUTO_OPTIONS"]

#: Options of ``guide="auto"`` (``fit(..., guide_options={...})``).
AUTO_OPTIONS = ("ladder", "map_starts", "map_spread", "khat_draws", "mean_shift", "sd_shift", "exact", "exact_draws")

_LEVEL_RANK = {RELIABLE: 2, CARE: 1, UNRELIABLE: 0}


@dataclass(frozen=True)
class Attempt:
    """One guide tried by ``guide="auto"``.

    Attributes
    ----------
    guide : str
        The guide's name (``"laplace"`` for the MAP stage).
    level : str
        Its verdict level (for the MAP stage: of its mode check; ``"not judged"`` for a minibatch fit,
        which has no verdict).
    reason : str
        The verdict's reason.
    elbo : float
        ELBO estimated from the verdict's draws (for the MAP stage: the log joint density at
        the MAP, in the unconstrained space).
    khat : float
        PSIS k-hat (NaN for the MAP stage).
    num_steps : int
        Optimization steps.
    seconds : float
        Wall time of the attempt, verdict included.
    outcome : str
        What happened next: ``"start"`` (the MAP stage), ``"accepted"``, ``"moved on: ..."``
        with the reason, or ``"failed: ..."``.
    grad_evals : int
        Points at which the model's log density and gradient were evaluated.
    """

    guide: str
    level: str
    reason: str
    elbo: float
    khat: float
    num_steps: int
    seconds: float
    outcome: str
    grad_evals: int = 0

    def as_dict(self) -> dict:
        """Plain data (for ``fit.json``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


def latent_dimension(model, args=(), kwargs=None, seed: int = 0) -> tuple[int, str | None]:
    """Number of unconstrained latent dimensions of ``model``, and why continuous guides cannot fit it.

    Returns
    -------
    (int, str or None)
        ``d``, and a sentence when the model has discrete latent sites, local latents in a
        subsampled plate (which the joint Gaussian and flow guides do not support) or any subsampled
        plate (minibatches: no MAP stage and no verdict to escalate on); else None.
    """
    trace = handlers.trace(handlers.seed(model, seed)).get_trace(*args, **(kwargs or {}))
    # A plate site's args are (size, subsample_size); subsample_size is None when not subsampling.
    subsampled = {
        name
        for name, site in trace.items()
        if site["type"] == "plate" and site["args"][1] is not None and site["args"][1] != site["args"][0]
    }
    d, problem = 0, None
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site["fn"].support.is_discrete:
            problem = f"latent site {name!r} is discrete"
            continue
        for frame in site["cond_indep_stack"]:
            if frame.name in subsampled:
                problem = f"latent site {name!r} sits in the subsampled plate {frame.name!r}"
        value = biject_to(site["fn"].support).inv(site["value"])
        d += int(np.size(value))
    if problem is None and subsampled:
        # Each run of the model sees another minibatch: the MAP stage's objective and the verdict
        # would both change from call to call.
        problem = f"the plate {sorted(subsampled)[0]!r} subsamples its data (minibatches)"
    return d, problem


def guide_ladder(d: int) -> tuple[str, ...]:
    """The guides ``auto`` tries, in order, for ``d`` unconstrained latent dimensions."""
    if d <= 1:
        return ("multivariate_normal", "multivariate_t")
    if d <= 30:
        return ("multivariate_normal", "multivariate_t", "iaf")
    if d <= 100:
        # A full-rank fit costs little here (d(d+1)/2 scale parameters), and the low-rank one,
        # which it contains, added a fit that was never the answer (53-dimensional hierarchies).
        # Nor was the Student-t one: on the 53-dimensional hierarchies (problem d, the 24-subject
        # population) what a Gaussian misses is the hierarchy's geometry, not heavy tails; it
        # cost 25-30 s there before the exact stage, which gave the answer.
        return ("multivariate_normal",)
    if d <= 300:
        return ("low_rank", "multivariate_normal")
    return ("normal", "low_rank")


def check_modes(locs: np.ndarray, losses: np.ndarray, scale_trils: np.ndarray, best: int) -> Check:
    r"""Whether the MAP starts found separate optima, and how much mass the others hold.

    Start ``r`` ended at ``u_r`` with ``-log p = L_r`` and Laplace factor ``S_r``. It found a
    separate optimum when its whitened distance from the best, ``|S_b^{-1}(u_r - u_b)|``, is
    above 4; that optimum's Laplace mass relative to the best is
    ``exp(L_b - L_r + log|S_r| - log|S_b|)``. A separate optimum with more than 1% of the best
    one's mass makes the posterior multimodal in a way one Gaussian or flow fit will not show.
    Optima with the same density (to 1e-6 nats) are named as a symmetry of the model (e.g. two
    rates that can swap, as in flip-flop kinetics), with the share of the mass of each. A start
    that stopped where the Hessian is not negative definite (a saddle, a ridge or a boundary) did
    not find an optimum: it is counted as such, never weighed and never given a number.

    Parameters
    ----------
    locs : ndarray, shape (R, d)
    losses : ndarray, shape (R,)
        Final ``-log p(x, u)`` of each start.
    scale_trils : ndarray, shape (R, d, d)
        NaN where the Hessian was not negative definite.
    best : int
    """
    R = locs.shape[0]
    if R == 1:
        return Check("modes", RELIABLE, "one MAP start, so separate optima were not looked for")
    L_b = scale_trils[best]
    if not np.all(np.isfinite(L_b)):
        return Check(
            "modes",
            CARE,
            "the best MAP optimum has no Laplace approximation (its Hessian is not negative definite: a ridge, a saddle "
            "or a boundary), so separate optima could not be weighed",
            "compare with inference.nuts (several chains)",
        )
    same, stuck, separate, distinct, log_mass = _optima(locs, losses, scale_trils, best)
    not_optimum = (
        f"; {len(stuck)} stopped where the Hessian is not negative definite (a saddle, a ridge or a boundary, "
        "not an optimum)"
        if stuck
        else ""
    )
    if not separate:
        return Check("modes", RELIABLE, f"{same} of {R} MAP starts reached the same optimum{not_optimum}")
    where = (
        f"{same} of {R} MAP starts reached the best optimum, {len(separate)} ended at {len(distinct)} separate "
        f"optima{not_optimum}"
    )
    symmetric = [r for r in distinct if abs(losses[r] - losses[best]) <= 1e-6 * (1 + abs(losses[best]))]
    if symmetric:
        masses = np.exp(np.array([0.0] + [log_mass[r] for r in symmetric]))
        shares = masses / masses.sum()
        return Check(
            "modes",
            UNRELIABLE,
            f"{where}; {len(symmetric) + 1} optima have the same density (a symmetry of the model, such as two rates "
            f"that can swap), with Laplace mass shares {', '.join(f'{s:.0%}' for s in shares)}; this fit describes "
            "the first of them",
            "if the symmetry is real, constrain the model (e.g. order the rates) or report every optimum; check with "
            "inference.nuts (several chains)",
        )
    top = max(distinct, key=lambda r: log_mass[r])
    share = float(np.exp(min(log_mass[top], 50.0)))
    if log_mass[top] > math.log(0.01):
        return Check(
            "modes",
            UNRELIABLE,
            f"{where}; the largest of those holds {_mass_ratio(share)} the best one's Laplace mass, so the "
            "posterior may have several modes and this fit describes one of them",
            "compare with inference.nuts (several chains), or give priors that rule the other mode out",
        )
    return Check(
        "modes",
        RELIABLE,
        f"{where}, each holding less than 1% of the best one's Laplace mass (largest {share:.1e})",
    )


#: Largest number of latent dimensions at which a single guide's fit also searches for other optima.
MODES_SEARCH_MAX_DIM = 30


def search_modes(target, seed: int = 0, starts: int = 8) -> Check | None:
    """The ``modes`` check for a single guide's fit: a multistart MAP search, weighed by :func:`check_modes`.

    ``auto`` runs this search as its MAP stage; a named guide's fit gets it too, so that a guide
    fitted to one of several modes is not passed by a verdict that sees only the guide's own
    draws (importance weights cannot show a mode the guide never reaches). Only up to
    :data:`MODES_SEARCH_MAX_DIM` dimensions, where the search costs a small share of a fit;
    None above that, or when no start has a finite density.
    """
    from .vi import find_map

    if target.dim > MODES_SEARCH_MAX_DIM:
        return None
    found = find_map(target, target.starts(starts, spread=1.0, seed=seed), gtol=1e-3, ftol=1e-8)
    if not np.isfinite(found.potential[found.best]):
        return None
    return check_modes(found.locs, found.potential, found.scale_trils, found.best)


def _mass_ratio(share: float) -> str:
    """``"about 93% of"`` or, for a heavier optimum, ``"about 1.7e+04 times"``."""
    if share < 2:
        return f"about {share:.0%} of"
    return f"about {share:.2g} times"


def _optima(locs, losses, scale_trils, best):
    """The MAP starts sorted out: ``(same, stuck, separate, distinct, log_mass)``.

    ``same`` counts the finite starts within whitened distance 4 of the best; ``stuck`` are the
    farther ones whose Hessian is not negative definite (not optima), ``separate`` the farther
    optima, ``distinct`` one start per separate optimum (starts within distance 4 of each other
    are one), and ``log_mass`` each distinct optimum's log Laplace mass relative to the best.
    """
    R = locs.shape[0]
    finite = np.isfinite(losses)
    L_b = scale_trils[best]
    dist = np.array([np.linalg.norm(np.linalg.solve(L_b, locs[r] - locs[best])) for r in range(R)])
    far = [r for r in range(R) if finite[r] and r != best and dist[r] > 4]
    # A start whose end point has no negative definite Hessian stopped at a saddle, a ridge or a
    # boundary: not an optimum, so not a mode; it is counted, never weighed.
    stuck = [r for r in far if not np.all(np.isfinite(scale_trils[r]))]
    separate = [r for r in far if r not in stuck]
    same = int(np.sum(finite & (dist <= 4)))
    distinct: list[int] = []
    for r in sorted(separate, key=lambda r: losses[r]):
        if all(np.linalg.norm(np.linalg.solve(L_b, locs[r] - locs[o])) > 4 for o in distinct):
            distinct.append(r)
    logdet = {r: float(np.sum(np.log(np.abs(np.diag(scale_trils[r]))))) for r in distinct + [best]}
    log_mass = {r: losses[best] - losses[r] + logdet[r] - logdet[best] for r in distinct}
    return same, stuck, separate, distinct, log_mass


def mixture_modes(found) -> list | None:
    """The optima worth a mixture: ``[(loc, scale_tril, log_mass), ...]`` (the best first), or None.

    The best optimum and every separate one holding at least 1% of its Laplace mass; None when
    that is the best alone (or the best has no Laplace approximation).
    """
    best = found.best
    if found.locs.shape[0] < 2 or not found.laplace_ok:
        return None
    _, _, _, distinct, log_mass = _optima(found.locs, found.potential, found.scale_trils, best)
    kept = [r for r in distinct if log_mass[r] > math.log(0.01)]
    if not kept:
        return None
    return [(found.locs[best], found.scale_trils[best], 0.0)] + [
        (found.locs[r], found.scale_trils[r], float(log_mass[r])) for r in kept
    ]


def heaviest_optimum(found) -> int:
    """The MAP start whose optimum holds the most Laplace mass (:func:`check_modes`'s weighing): the best one unless a separate optimum outweighs it."""
    best = found.best
    if found.locs.shape[0] < 2 or not found.laplace_ok:
        return best
    _, _, _, distinct, log_mass = _optima(found.locs, found.potential, found.scale_trils, best)
    heavier = [r for r in distinct if log_mass[r] > 0.0]
    return max(heavier, key=lambda r: log_mass[r]) if heavier else best


def chain_starts(found, k: int = 3) -> np.ndarray:
    """Up to ``k`` end points of the MAP stage's other starts, for chains of the exact stage: ``(k', d)``.

    The separate optima first (the most massive first), then starts that stopped where the Hessian
    is not negative definite; when the best optimum itself has no Laplace approximation (so no
    optimum could be weighed), the finite end points farthest from it.
    """
    R, d = found.locs.shape
    best = found.best
    if R < 2:
        return np.zeros((0, d))
    if found.laplace_ok:
        _, stuck, _, distinct, log_mass = _optima(found.locs, found.potential, found.scale_trils, best)
        order = sorted(distinct, key=lambda r: -log_mass[r]) + list(stuck)
    else:
        far = np.linalg.norm(found.locs - found.locs[best], axis=1)
        order = [int(r) for r in np.argsort(-far) if r != best and np.isfinite(found.potential[r]) and far[r] > 1e-6]
    return np.asarray([found.locs[r] for r in order[:k]]).reshape(-1, d)


def _run_level(run) -> tuple[str, str]:
    """The verdict level of an exact-stage run, and its advice."""
    from .transport import DIVERGENT_CARE, ESS_CARE, RHAT_CARE

    draws = run.num_chains * run.num_samples
    worst_ess = float(min(np.min(run.ess_bulk), np.min(run.ess_tail)))
    if run.converged:
        return RELIABLE, ""
    if np.max(run.rhat) <= RHAT_CARE and worst_ess >= ESS_CARE and run.divergences <= DIVERGENT_CARE * draws:
        return CARE, f"draw more (guide_options={{'exact_draws': {2 * run.num_samples}}}), or run inference.nuts"
    return UNRELIABLE, "the chains did not converge: run inference.nuts with more chains and draws, or reparameterize the model"


def _run_rank(run) -> tuple:
    """Order of exact-stage runs: verdict level, then fewer divergent transitions, then more effective draws."""
    draws = run.num_chains * run.num_samples
    return (_LEVEL_RANK[_run_level(run)[0]], -run.divergences / draws, float(min(np.min(run.ess_bulk), np.min(run.ess_tail))))


def _non_centred_run(target, run, *, seed: int, num_samples: int, starts=None):
    """NUTS again, through the non-centring of the model's centred sites and an affine map: ``(run, name)`` or None.

    The affine map is the first run's draws' mean and Cholesky factor of their covariance in the
    non-centred coordinates (regularized towards the identity as Stan's warmup does); None when
    the model has no centred hierarchical site (:func:`inference.engine.noncentring.centred_sites`).
    """
    import jax
    import jax.numpy as jnp

    from .noncentring import centred_sites, non_centring
    from .transport import TransportMap, transport_nuts

    sites = centred_sites(target)
    if not sites:
        return None
    nc = non_centring(target, sites)
    v = np.asarray(jax.jit(nc.pull)(jnp.asarray(run.u)))
    v = v[np.all(np.isfinite(v), axis=1)]
    n, d = v.shape
    if n <= d:
        return None
    cov = np.cov(v.T).reshape(d, d) * (n / (n + 5.0)) + 1e-3 * (5.0 / (n + 5.0)) * np.eye(d)
    params = {"loc": jnp.asarray(v.mean(axis=0)), "tril": jnp.asarray(np.linalg.cholesky(cov))}

    def push(p, x):
        u, log_det = nc.push(p["loc"] + x @ p["tril"].T)
        return u, log_det + jnp.sum(jnp.log(jnp.diag(p["tril"])))

    def pull(p, u):
        return jax.scipy.linalg.solve_triangular(p["tril"], (nc.pull(u) - p["loc"]).T, lower=True).T

    name = f"a map that non-centres {', '.join(sites)} (loc + scale z)"
    again = transport_nuts(target, TransportMap(name, push, d, pull=pull), params, seed=seed, num_samples=num_samples,
                           starts=starts)
    return again, name


def exact_stage(result, *, seed: int, num_samples: int = 1000, khat_draws: int = 16000, starts=None):
    """NUTS through the transport map of ``result``'s guide (:mod:`inference.engine.transport`): ``(FitResult, Diagnosis)``.

    The result draws from the chains (distinct draws, a random subset, up to their number); its verdict rests
    on the chains' convergence: *reliable* when every split R-hat is at most 1.01, every bulk ESS
    at least 1000 (a mean's Monte Carlo error at most 0.03 sd), every tail ESS at least 400 and
    at most 1 in 2000 transitions diverged; *use with care* up to R-hat 1.05, ESS 100
    and 1 in 500 divergent transitions; else *unreliable*.

    When the chains fall short of *reliable* and the model has centred hierarchical sites (a
    funnel, where one step size cannot fit the neck and the mouth), NUTS runs again through
    their non-centring composed with an affine map fitted to the first chains' draws
    (:mod:`inference.engine.noncentring`); the better run is kept (verdict level, then fewer
    divergent transitions, then more effective draws), and the draws keep the model's sites.

    Checks made while fitting are kept, except one: with ``starts`` (end points of the MAP stage's
    other starts, separate optima first, :func:`chain_starts`), chains 1 .. k start there, and when
    every chain converges to the same distribution those points are shown to lie in the one
    posterior the chains sampled, so the MAP stage's warning (several modes, or optima that could
    not be weighed) is answered and replaced by that finding.
    """
    from ..checks.diagnostics import Diagnosis, PsisResult, Verdict
    from .transport import DIVERGENT_OK, ESS_OK, ESS_TAIL_OK, RHAT_OK, transport_nuts

    posterior = result.posterior
    params = posterior.params(result.best_restart)
    run = transport_nuts(posterior.target, posterior.family, params, seed=seed + 11, num_samples=num_samples, starts=starts)
    name = f"the fitted {result.guide_name} guide's transport map"
    runs = [run]
    if _run_level(run)[0] != RELIABLE:
        again = _non_centred_run(posterior.target, run, seed=seed + 12, num_samples=num_samples, starts=starts)
        if again is not None:
            runs.append(again[0])
            if _run_rank(again[0]) > _run_rank(run):
                run, name = again
    n = run.u.shape[0]
    worst_ess = float(min(np.min(run.ess_bulk), np.min(run.ess_tail)))
    level, advice = _run_level(run)
    bounds = f"R-hat <= {RHAT_OK}, bulk ESS >= {ESS_OK}, tail ESS >= {ESS_TAIL_OK}, at most {DIVERGENT_OK:.2%} divergent"
    check = Check(
        "exact stage",
        level,
        f"the draws are NUTS's through {name} (NeuTra HMC): "
        f"{run.summary()} ({'within' if run.converged else 'outside'} {bounds})",
        advice,
    )
    source = f"NUTS through {name} (NeuTra HMC): {run.summary()}"
    new_posterior = replace(posterior, importance=(result.best_restart, run.u, run.log_q, np.zeros(n)), importance_source=source)
    # What the fit met (skipped steps, failed solves, a stiff switch) stays in the verdict.
    faults = result.faults.check() if result.faults is not None else None
    extra = tuple(result.extra_checks)
    if run.chains_at_starts and run.converged:
        k = run.chains_at_starts
        mixed = Check(
            "modes",
            RELIABLE,
            f"the MAP stage's warning answered: {'a chain' if k == 1 else f'{k} chains'} of the exact stage started "
            f"at {'the end point' if k == 1 else 'the end points'} of its other starts (separate optima first), and "
            f"every chain converged to the same distribution (largest R-hat {np.max(run.rhat):.3f}): one posterior",
        )
        extra = tuple(mixed if c.name == "modes" else c for c in extra)
    checks = ((faults,) if faults is not None else ()) + (check,) + extra
    verdict = Verdict.from_checks(checks, khat_draws=n, ess=worst_ess)
    labels = posterior.target.layout.labels()
    diagnosis = Diagnosis(
        verdict=verdict,
        draws={lab: run.u[:, j] for j, lab in enumerate(labels)},
        psis=PsisResult(np.full(n, -math.log(n)), float("nan"), float(n), 0),
        shift={},
        flat=(run.u, run.log_q),
    )
    new = replace(result, guide=new_posterior, posterior=new_posterior, _cache={})
    for key in (("diagnosis", khat_draws, None), ("diagnosis", 16000, None)):
        new._cache[key] = diagnosis
    new._cache["last_diagnosis"] = diagnosis
    new._cache["exact_run"] = run
    new._cache["exact_runs"] = tuple(runs)
    return new, diagnosis


def _bulk_shift(diagnosis) -> tuple[float, float]:
    """Largest PSIS move of a mean (in guide sds) and of an sd (|ratio - 1|)."""
    if not diagnosis.shift:
        return float("inf"), float("inf")
    means = [abs(m) for m, _ in diagnosis.shift.values()]
    sds = [abs(r - 1) for _, r in diagnosis.shift.values()]
    return max(means), max(sds)


def _gaussian_start(guide: str, loc: np.ndarray, scale_tril: np.ndarray) -> dict | None:
    """Guide parameters that start ``guide`` at the Gaussian ``N(loc, L L^T)`` (unconstrained)."""
    if guide in ("multivariate_normal", "multivariate_t", "iaf", "iaf_t", "bnaf"):
        return {"auto_loc": loc, "auto_scale_tril": scale_tril}
    if guide == "low_rank":
        return {"auto_loc": loc, "auto_scale": np.sqrt(np.sum(scale_tril**2, axis=1))}
    return None


def fit_auto(model, args: tuple, kwargs: dict, settings: FitSettings, *, control=None) -> FitResult:
    """Fit ``model`` with the guide chosen and escalated automatically (see the module docstring).

    Parameters
    ----------
    model : callable
    args : tuple
    kwargs : dict
        The model and its arguments.
    settings : FitSettings
        ``settings.guide_options`` holds the options of ``auto``: ``ladder`` (guide names to try,
        in order; default by model size, :func:`guide_ladder`), ``map_starts`` (MAP starting
        points, default 8; 0 skips the MAP stage), ``map_spread`` (how far they are spread,
        default 1.0), ``khat_draws`` (draws of each verdict, default 16000), ``mean_shift`` and
        ``sd_shift`` (largest PSIS moves of an accepted fit, default 0.1 and 0.1), ``exact``
        (run the exact stage when no fit is reliable, default True) and ``exact_draws`` (its
        draws per chain before it checks convergence, default 1000). The other
        settings apply to every variational attempt, except that without a stopping rule or step
        limits the attempts run 500 to 5000 steps (they start at the Laplace approximation).
    control : inference.engine.checkpoint.FitControl, optional
        The interrupt request and checkpoint: every stage (the MAP stage, each guide) is a stage
        of the checkpoint; after a requested stop no further stage starts, and the best fit so
        far is returned (the MAP's Laplace approximation when the stop came during the MAP stage).

    Returns
    -------
    FitResult
        The chosen attempt, with ``attempts`` (every :class:`Attempt`, the MAP stage first) and
        ``settings["guide"] == "auto"``; its verdict is already computed.
    """
    from .checkpoint import FitControl
    from .vi import find_map, map_result_arrays, map_result_restore

    t0 = time.perf_counter()
    control = control if control is not None else FitControl()
    options = dict(settings.guide_options)
    unknown = sorted(set(options) - set(AUTO_OPTIONS))
    if unknown:
        raise ValueError(f"guide='auto' has no option {unknown[0]!r}; it takes {', '.join(AUTO_OPTIONS)}")
    map_starts = int(options.get("map_starts", 8))
    map_spread = float(options.get("map_spread", 1.0))
    khat_draws = int(options.get("khat_draws", 16000))
    mean_tol = float(options.get("mean_shift", 0.1))
    sd_tol = float(options.get("sd_shift", 0.1))
    if map_starts < 0:
        raise ValueError(f"map_starts must be 0 (no MAP stage) or a positive number of starts, got {map_starts}")
    base = settings.with_(guide_options={})
    if settings.stopping is None and settings.min_steps is None and settings.max_steps is None:
        base = base.with_(min_steps=500, max_steps=5000)

    flat = flat_guide(base.with_(guide="multivariate_normal")) is not None
    if flat and not options.get("ladder"):
        from .large import fit_large, is_large

        if is_large(model, args, kwargs):  # many latent dimensions: see inference.engine.large
            return fit_large(model, args, kwargs, settings, control=control)
    target = target_for(model, args, kwargs, base) if flat else None
    t_target = time.perf_counter()
    problem = None
    if target is None:
        d, problem = latent_dimension(model, args, dict(kwargs, **{k: f(0) for k, f in check_schedules(settings.schedules, kwargs).items()}), settings.seed)
    else:
        d = target.dim
        control.open(target)
    if target is None and settings.checkpoint is not None:
        raise ValueError(
            f"checkpoint= works for fits on the flat engine; this model goes to NumPyro's SVI ({problem}), so leave "
            "checkpoint out"
        )
    ladder = tuple(options.get("ladder") or (guide_ladder(d) if problem is None else ("normal",)))
    data_values = {}
    initial_values = getattr(model, "initial_values", None)
    if callable(initial_values):
        data_values = dict(initial_values())

    attempts: list[Attempt] = []
    extra_checks: list[Check] = []
    start = None
    modes_found = None
    optima_starts = None
    through = None  # the partial centring of non-centred hierarchies the guides are fitted through
    mappable: list = []  # fits whose guide has a transport map, for the exact stage
    if target is not None and map_starts > 0:
        t = time.perf_counter()
        evals0 = target.num_grad_evals
        starts = target.starts(map_starts, spread=map_spread, seed=settings.seed, values=data_values)
        # The MAP stage only places the guides' start: a looser tolerance than find_map's default.
        stage = control.stage("map")
        done = stage.result()
        if done is not None:
            found = map_result_restore(done)
        else:
            found = find_map(target, starts, gtol=1e-3, ftol=1e-8, stage=stage)
            if not stage.halted:
                stage.finish(map_result_arrays(found))
        best = found.best
        if not np.isfinite(found.potential[best]) and not control.stopped:
            # No start has a finite density: where the explicit ODE solver hit its step limit there,
            # the whole fit is made again with the stiff solver (inference.engine.faults).
            stiff = stiff_variant(target.model, examine_draws(target, found.locs, -found.potential, where="MAP starts"))
            if stiff is not None:
                return with_stiff_switch(fit_auto(stiff[0], args, kwargs, settings, control=control), stiff[1], started=t0)
        if not np.isfinite(found.potential[best]):
            modes = Check(
                "modes",
                UNRELIABLE,
                f"none of the {map_starts} MAP starts had a finite log density",
                "check the priors and the model at the prior median (a failed ODE solve shows as -inf)",
            )
            outcome = "failed: no finite start; the guides start from the prior median"
        else:
            modes = check_modes(found.locs, found.potential, found.scale_trils, best)
            modes_found = mixture_modes(found)
            optima_starts = chain_starts(found) if modes.level != RELIABLE else None
            tril = found.scale_trils[best] if found.laplace_ok else np.eye(d) * settings.init_scale
            heavy = heaviest_optimum(found)
            # The guides start at the optimum with the most Laplace mass: in a hierarchy the densest
            # optimum can be a narrow spike (a group scale near zero) that holds little of the posterior.
            start = (found.locs[heavy], found.scale_trils[heavy]) if heavy != best else (found.locs[best], tril)
            outcome = "stopped: the optima so far" if stage.halted else "start" if found.laplace_ok else "start (Hessian not positive definite: the guides start at the MAP with a small scale)"
            if found.laplace_ok and not stage.halted:
                # Informative groups: the guides may work in (partially) centred coordinates of the hierarchy.
                through, note = choose_centring(target, start[0], start[1], seed=settings.seed)
                if through is not None:
                    start = through_coordinates(through, *start)
                outcome += f"; {note}" if note else ""
        extra_checks.append(modes)
        attempts.append(
            Attempt("laplace", modes.level, modes.message, float(-found.potential[best]), float("nan"),
                    int(found.iterations.max()), time.perf_counter() - t, outcome,
                    grad_evals=int(target.num_grad_evals - evals0))
        )

    chosen: FitResult | None = None
    chosen_key = None
    if control.stopped:
        if start is None:
            raise KeyboardInterrupt("the fit was stopped during the MAP stage, before any optimum was found")
        # Stopped during the MAP stage: what was learnt is the best optimum and its curvature.
        chosen = replace(fit_flat(target, base.with_(guide="laplace"), start=start), stop_reason=StopReason.INTERRUPTED)
        attempts.append(
            Attempt("laplace", UNRELIABLE, f"stopped by {control.interrupt.requested} during the MAP stage",
                    float(-found.potential[best]), float("nan"), 0, 0.0, "kept: the MAP's Laplace approximation")
        )
        ladder = ()
    for i, name in enumerate(ladder):
        t = time.perf_counter()
        evals0 = target.num_grad_evals if target is not None else 0
        attempt_settings = base.with_(guide=name)
        try:
            if target is not None and flat_guide(attempt_settings) is not None:
                result = fit_flat(target, attempt_settings, start=start, control=control, key=f"fit {i} {name}",
                                  through=through)
            else:
                result = run_svi(model, args, kwargs, attempt_settings, control=control)
        except ValueError as err:
            attempts.append(Attempt(name, UNRELIABLE, str(err), float("nan"), float("nan"), 0, time.perf_counter() - t, f"failed: {err}"))
            continue
        if extra_checks:
            result = replace(result, extra_checks=tuple(extra_checks))
        # The MAP stage is auto's search for other optima: the verdict of an attempt runs none of its own.
        result._cache["modes_search"] = None
        if result.subsampled_plates:
            # A minibatch fit has no verdict (every run of the model sees other data points), so
            # there is nothing to escalate on: the one guide fitted is the result.
            plate = next(iter(result.subsampled_plates))
            reason = f"not judged: the plate {plate!r} subsamples its data, so a minibatch fit has no verdict"
            attempts.append(
                Attempt(name, "not judged", reason, float("nan"), float("nan"), result.num_steps, time.perf_counter() - t, "kept: " + reason)
            )
            chosen = result
            break
        diagnosis = result.diagnose(khat_draws)
        verdict = diagnosis.verdict
        mean_move, sd_move = _bulk_shift(diagnosis)
        key = (_LEVEL_RANK[verdict.level], diagnosis.elbo)
        last = i == len(ladder) - 1
        raw_ok = verdict.level == RELIABLE and mean_move <= mean_tol and sd_move <= sd_tol
        # Where importance weights are usable, the resampled draws are the better estimate even of a
        # good guide (they remove what is left of its bias), so they are tried first.
        corrected = importance_resampled(result, diagnosis, modes=modes_found) if result.posterior is not None else None
        if corrected is not None and (corrected[1].verdict.level == RELIABLE or not raw_ok):
            result, diagnosis = corrected
            verdict = diagnosis.verdict
            key = (_LEVEL_RANK[verdict.level], diagnosis.elbo)
            if verdict.level == RELIABLE:
                outcome = f"accepted with importance-resampled draws ({result.posterior.importance_source})"
            elif last:
                outcome = "last guide of the ladder"
            else:
                outcome = f"moved on: {verdict.level} ({verdict.reason}); trying {ladder[i + 1]}"
        elif raw_ok:
            outcome = "accepted"
        elif last:
            outcome = "last guide of the ladder"
        elif verdict.level == RELIABLE:
            outcome = (
                f"moved on: reliable, but importance weighting still moves a mean by {mean_move:.2f} sd or an sd by "
                f"{sd_move:.0%}; trying {ladder[i + 1]}"
            )
        else:
            outcome = f"moved on: {verdict.level} ({verdict.reason}); trying {ladder[i + 1]}"
        evals = int(target.num_grad_evals - evals0) if target is not None else int(result.num_steps * (settings.num_particles or 8))
        attempts.append(
            Attempt(name, verdict.level, verdict.reason, diagnosis.elbo, verdict.khat, result.num_steps,
                    time.perf_counter() - t, outcome, grad_evals=evals)
        )
        if control.stopped:
            attempts[-1] = replace(attempts[-1], outcome=f"stopped by {control.interrupt.requested}: no further guide was tried")
        if chosen is None or key > chosen_key:
            chosen, chosen_key = result, key
        if result.posterior is not None and result.posterior.family.push is not None:
            gaussian_base = result.posterior.family.base != "student_t"
            mappable.append((gaussian_base, name == "multivariate_normal", key[0], -i, result))
        if outcome.startswith("accepted") or control.stopped:
            break
        if result.faults is not None and result.faults.stiff_switch and result.posterior is not None:
            target = result.posterior.target  # refitted with the stiff ODE solver: so are the next guides
        # The next guide starts from this fit when it is a full-rank Gaussian at least as good.
        if name == "multivariate_normal" and key >= chosen_key:
            start = (np.asarray(result.params["auto_loc"]), np.asarray(result.params["auto_scale_tril"]))
    if chosen is None:
        raise ValueError(
            "guide='auto' could not fit any guide: " + "; ".join(f"{a.guide}: {a.outcome}" for a in attempts)
        )
    if options.get("exact", True) and not control.stopped and chosen_key is not None and chosen_key[0] < _LEVEL_RANK[RELIABLE] and mappable:
        # The map is a preconditioner: the draws are exact whatever it is. A Gaussian base first
        # (through a Student-t base NUTS meets heavy tails again: on BOD the t map's draws had
        # log k's sd 0.89 of the reference's, the full-rank Gaussian map's 1.04, the flow's 0.95),
        # then the full-rank Gaussian's affine map (NUTS with the guide's covariance as its
        # metric, robust where a flow's tails are uncertain), then the best verdict.
        source = max(mappable, key=lambda m: m[:4])[4]
        t = time.perf_counter()
        # Chains also start at the MAP stage's other optima when its modes check warned of them.
        exact, exact_diagnosis = exact_stage(source, seed=settings.seed, num_samples=int(options.get("exact_draws", 1000)),
                                             khat_draws=khat_draws, starts=optima_starts)
        verdict = exact_diagnosis.verdict
        better = _LEVEL_RANK[verdict.level] >= chosen_key[0]
        attempts.append(
            Attempt("exact (" + (f"{source.guide_name} transport" if "non-centres" not in exact.exact_map else
                                 exact.exact_map.replace("a map that ", "").replace(" (loc + scale z)", "")) + ")", verdict.level, verdict.reason, float("nan"), float("nan"),
                    exact._cache["exact_run"].num_warmup + exact._cache["exact_run"].num_samples, time.perf_counter() - t,
                    "chosen: the variational answer was not reliable, so the draws are NUTS's through the guide's map"
                    if better else "not chosen: its verdict is worse than the variational answer's",
                    grad_evals=int(sum(r.grad_evals for r in exact._cache["exact_runs"])))
        )
        if better:
            chosen = exact
    kept = chosen.guide_name
    exact_chosen = chosen.exact_stage_draws

    def final(a: Attempt) -> str:
        if exact_chosen:  # the exact stage's NUTS draws are the answer; no variational attempt is
            return f"not chosen: the exact stage was (NUTS through the {kept} guide's transport map)"
        return ("chosen: " if a.guide == kept else "not chosen: ") + "the best verdict, then ELBO, of the attempts"

    attempts = [replace(a, outcome=final(a)) if a.outcome == "last guide of the ladder" else a for a in attempts]
    record = dict(chosen.settings, guide="auto", chosen_guide=kept, ladder=list(ladder), latent_dimension=d)
    if chosen.posterior is not None and chosen.posterior.importance is not None:
        source = chosen.posterior.importance_source
        record["draws_from"] = source if source.startswith("NUTS") else f"importance-resampled from {source}"
    record["attempts"] = [a.as_dict() for a in attempts]
    record["grad_evals"] = int(sum(a.grad_evals for a in attempts))
    if through is not None:
        record["centring"] = {name: [float(w.min()), float(w.max())] for name, w in zip(through.sites, through.weights)}
    if target is not None:
        record["density_evals"] = int(target.num_density_evals)
    if problem is not None:
        record["auto_note"] = f"{problem}, so guide='auto' used the mean-field guide"
    total = time.perf_counter() - t0
    if target is not None:
        # The whole of auto: building the one target (its compilation apart), then every stage.
        built = t_target - t0
        timings = Timings(init_s=max(built - target.compile_s, 0.0), compile_s=target.compile_s,
                          run_s=total - built, total_s=total)
    else:
        timings = chosen.timings._replace(total_s=total)
    return replace(chosen, attempts=tuple(attempts), settings=record, timings=timings)

r"""Importance resampling of a fitted guide: the reported posterior where the guide alone is not enough.

A Gaussian guide fitted by VI is often right in the bulk and light in the tails (the KL divergence
:math:`KL(q\,\|\,p)` it minimizes penalizes mass where the posterior has none, not the reverse).
With draws :math:`u_i \sim g` from a proposal :math:`g` and the target's log density, the
Pareto-smoothed importance weights :math:`w_i \propto \pi(u_i) / g(u_i)` (Vehtari et al. 2024)
correct means, sds and quantiles wherever the estimated Pareto shape :math:`\hat k` is at most
0.7 (Yao et al. 2018). :func:`importance_resampled` tries, in order,

1. the guide itself as the proposal (its verdict's draws are already weighted), then
2. a multivariate Student-t with the guide's mean and covariance and ``df`` degrees of freedom:
   heavier tails than the posterior's in every direction the guide knows, so the weights stay
   bounded where the guide's did not,

and returns the result whose draws are resampled from the first proposal with
:math:`\hat k \le 0.7` and an effective sample size of at least 400 and a quarter of the draws,
with its verdict made again for those draws. Every density evaluation is one call of the compiled target.

References
----------
Yao, Y., Vehtari, A., Simpson, D. and Gelman, A. (2018). Yes, but did it work?: Evaluating
variational inference. ICML.

Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed importance
sampling. JMLR 25(72), 1-58.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.special import gammaln

__all__ = ["student_t_proposal", "mixture_proposal", "importance_resampled", "MIN_ESS", "MIN_ESS_FRACTION"]

#: Smallest effective sample size of the weights for resampled draws to stand in for the guide,
#: and the smallest fraction of the draws it must be (a proposal far from the posterior wastes
#: most draws: a richer guide is the better answer then).
MIN_ESS, MIN_ESS_FRACTION = 400, 0.25

#: Largest k-hat of importance weights whose resampled draws are called reliable (0.7, the usual
#: bound, only makes them usable: between 0.5 and 0.7 the tails converge slowly).
KHAT_RELIABLE = 0.5

#: Degrees of freedom of the mixture over separate optima tried after the default 5: heavier tails
#: (on the flip-flop posterior df 5 left 15% of 16000 draws effective, df 3 29%, both k-hat below 0.5).
MIXTURE_DF = 3.0


def student_t_proposal(loc: np.ndarray, scale_tril: np.ndarray, df: float, n: int, seed: int):
    r"""``n`` draws of :math:`t_\nu(\mu, L L^T)` with their log densities: ``(u (n, d), log_q (n,))``.

    :math:`u = \mu + L z / \sqrt{w}` with :math:`z \sim N(0, I)` and :math:`w \sim \chi^2_\nu / \nu`.
    """
    rng = np.random.default_rng(seed)
    d = loc.size
    z = rng.standard_normal((n, d))
    w = rng.chisquare(df, size=n) / df
    u = loc + (z / np.sqrt(w)[:, None]) @ scale_tril.T
    maha = np.sum(np.linalg.solve(scale_tril, (u - loc).T) ** 2, axis=0)
    log_det = np.sum(np.log(np.abs(np.diag(scale_tril))))
    log_q = (
        gammaln((df + d) / 2)
        - gammaln(df / 2)
        - 0.5 * d * np.log(df * np.pi)
        - log_det
        - 0.5 * (df + d) * np.log1p(maha / df)
    )
    return u, log_q


def mixture_proposal(components, log_shares, df: float, n: int, seed: int):
    r"""``n`` draws of a mixture of Student-t components with their log densities: ``(u, log_q, which)``.

    ``components`` is a list of ``(loc (d,), scale_tril (d, d))``, ``log_shares`` their log
    mixture weights (normalized here); ``which`` (``(n,)``) is the component each draw came from.
    :math:`q(u) = \sum_m \pi_m\, t_\nu(u; \mu_m, L_m L_m^T)`.
    """
    rng = np.random.default_rng(seed)
    log_shares = np.asarray(log_shares, dtype=float)
    shares = np.exp(log_shares - np.max(log_shares))
    shares = shares / shares.sum()
    which = rng.choice(len(components), size=n, p=shares)
    d = components[0][0].size
    u = np.empty((n, d))
    for m, (loc, tril) in enumerate(components):
        idx = np.flatnonzero(which == m)
        if idx.size:
            u[idx] = student_t_proposal(loc, tril, df, idx.size, seed + 101 + m)[0]
    parts = [np.log(shares[m]) + _student_t_logpdf(u, loc, tril, df) for m, (loc, tril) in enumerate(components)]
    return u, np.logaddexp.reduce(np.stack(parts), axis=0), which


def _student_t_logpdf(u, loc, scale_tril, df):
    d = loc.size
    maha = np.sum(np.linalg.solve(scale_tril, (u - loc).T) ** 2, axis=0)
    log_det = np.sum(np.log(np.abs(np.diag(scale_tril))))
    return gammaln((df + d) / 2) - gammaln(df / 2) - 0.5 * d * np.log(df * np.pi) - log_det - 0.5 * (df + d) * np.log1p(maha / df)


def _acceptable(diagnosis, redone=("psis", "curvature")) -> bool:
    """Whether weights of this ``diagnosis`` are usable and no check that stays (not in ``redone``) is unreliable."""
    from ..checks.diagnostics import KHAT_OK, UNRELIABLE

    n = diagnosis.psis.log_weights.size
    if not diagnosis.psis.khat <= KHAT_OK or diagnosis.psis.ess < max(MIN_ESS, MIN_ESS_FRACTION * n):
        return False
    return all(c.level != UNRELIABLE for c in diagnosis.verdict.checks if c.name not in redone)


def _resampled_result(result, diagnosis, u, log_q, weights, shift, source: str, modes_found: int = 0):
    """The result drawing from ``(u, weights)``, with the PSIS and curvature checks made for those draws."""
    from ..checks.diagnostics import CARE, RELIABLE, Check, Verdict, check_curvature_flat

    posterior = replace(
        result.posterior,
        importance=(result.best_restart, u, log_q, weights.log_weights),
        importance_source=source,
    )
    target = posterior.target
    labels = target.layout.labels()
    resampled, _ = posterior.draw(result.best_restart, result.seed + 5, 4000)
    moves = [f"{lab}: mean {m:+.2f} sd, sd x{r:.2f}" for lab, (m, r) in shift.items()]
    # Below k-hat 0.5 the weights have a finite variance and the resampled moments converge at the
    # usual rate; from 0.5 to 0.7 they converge, slowly, and a heavy tail may still be short.
    level = RELIABLE if weights.khat <= KHAT_RELIABLE else CARE
    psis_check = Check(
        "psis",
        level,
        f"the draws are importance-resampled from {source} (PSIS k-hat {weights.khat:.2f} from {u.shape[0]} draws, "
        f"effective sample size {weights.ess:.0f}); relative to the proposal's draws the weights moved "
        f"{'; '.join(moves[:3])}"
        + ("" if level == RELIABLE else f"; k-hat above {KHAT_RELIABLE} leaves the tails uncertain"),
        "" if level == RELIABLE else "a richer guide or the exact stage (guide='auto' tries them) gives surer tails",
    )
    checks = []
    for check in diagnosis.verdict.checks:
        if check.name == "psis":
            checks.append(psis_check)
        elif check.name == "curvature":
            if modes_found:
                # Draws from several optima: curvature at one centre says nothing about them.
                checks.append(Check("curvature", RELIABLE, f"not applicable: the draws span {modes_found} optima"))
            else:
                from .noncentring import curvature_inputs

                x, hessian = curvature_inputs(target, result.posterior.family, resampled)
                checks.append(check_curvature_flat(x, labels, hessian, result.guide_name))
        elif check.name == "modes" and modes_found:
            checks.append(Check("modes", RELIABLE, f"the {modes_found} separate optima are all in the draws: {source}"))
        else:
            checks.append(check)
    verdict = Verdict.from_checks(checks, khat=weights.khat, khat_draws=u.shape[0], ess=weights.ess)
    corrected = replace(diagnosis, verdict=verdict, psis=weights, shift=shift)
    new = replace(result, guide=posterior, posterior=posterior, _cache={})
    new._cache[("diagnosis", diagnosis.flat[0].shape[0], None)] = corrected
    new._cache["last_diagnosis"] = corrected
    return new, corrected


def importance_resampled(result, diagnosis, *, df: float = 5.0, modes=None):
    """The result with importance-resampled draws, or None when no proposal gives usable weights.

    Parameters
    ----------
    result : FitResult
        A fit on the flat engine (``result.posterior`` set).
    diagnosis : Diagnosis
        Its verdict, computed on the flat engine (its draws and weights are reused).
    df : float
        Degrees of freedom of the Student-t proposal.
    modes : list of (ndarray (d,), ndarray (d, d), float), optional
        Separate optima of the posterior that hold non-negligible mass (location, Laplace factor,
        log Laplace mass), as the MAP stage found them. With two or more, a mixture of Student-t
        components over them (weighted by their Laplace masses) is tried first: a guide fitted
        to one mode cannot show the others, and its own weights cannot either.

    Returns
    -------
    (FitResult, Diagnosis) or None
    """
    from ..checks.diagnostics import check_psis

    if diagnosis.flat is None or result.posterior is None:
        return None
    u, log_q = diagnosis.flat
    labels = result.posterior.target.layout.labels()
    if modes is not None and len(modes) > 1:
        components = [(np.asarray(loc), np.asarray(tril)) for loc, tril, _ in modes]
        # The Laplace components are the optima's curvature only: where df's tails are too light
        # for the modes' (k-hat fine but most weights wasted), the heavier MIXTURE_DF are tried too.
        for mdf in dict.fromkeys((df, MIXTURE_DF)):
            m_u, m_log_q, which = mixture_proposal(components, [lm for _, _, lm in modes], mdf, u.shape[0], result.seed + 7)
            log_p = result.posterior.target.log_density(m_u)
            _, weights, shift = check_psis(log_p, m_log_q, {lab: m_u[:, j] for j, lab in enumerate(labels)}, labels)
            trial = replace(diagnosis, psis=weights, shift=shift)
            # The modes check is made again too: the mixture's draws hold every optimum.
            if _acceptable(trial, redone=("psis", "curvature", "modes")):
                w = np.exp(weights.log_weights)
                shares = np.array([w[which == m].sum() for m in range(len(modes))])
                source = (
                    f"a mixture of Student-t components (df {mdf:g}) over the {len(modes)} optima the MAP stage found, "
                    f"holding {', '.join(f'{s:.0%}' for s in shares / shares.sum())} of the posterior mass"
                )
                return _resampled_result(result, diagnosis, m_u, m_log_q, weights, shift, source, modes_found=len(modes))
        return None
    if _acceptable(diagnosis):
        return _resampled_result(result, diagnosis, u, log_q, diagnosis.psis, diagnosis.shift, "the guide")
    if result.posterior.family.name.startswith("iaf"):
        return None
    # A Student-t around the guide's Gaussian: the same bulk, heavier tails.
    weighted = np.exp(diagnosis.psis.log_weights) if np.isfinite(diagnosis.psis.khat) else None
    mean = u.mean(axis=0)
    cov = np.cov(u, rowvar=False).reshape(u.shape[1], u.shape[1])
    if weighted is not None and diagnosis.psis.khat <= 1.0:
        # Where the guide's own weights are usable at all, centre the proposal on their estimate.
        mean = weighted @ u
        cov = ((u - mean) * weighted[:, None]).T @ (u - mean)
    scale = np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-12 * np.eye(u.shape[1]))
    t_u, t_log_q = student_t_proposal(mean, scale, df, u.shape[0], result.seed + 6)
    log_p = result.posterior.target.log_density(t_u)
    check, weights, shift = check_psis(log_p, t_log_q, {lab: t_u[:, j] for j, lab in enumerate(labels)}, labels)
    trial = replace(diagnosis, psis=weights, shift=shift)
    if not _acceptable(trial):
        return None
    source = f"a Student-t proposal (df {df:g}) around the guide"
    return _resampled_result(result, diagnosis, t_u, t_log_q, weights, shift, source)

"""The verdict on a fit: can its posterior be trusted?

A variational fit always returns *a* posterior; :func:`diagnose` says whether to use it. It
combines five checks, each a :class:`Check` with a level, a sentence and what to do:

``stopping``
    Why the optimization stopped, and how many steps were skipped as non-finite.
``density``
    The fraction of guide draws at which the model has zero density (``log p = -inf``; for an
    ODE model, a failed solve).
``psis``
    Pareto-smoothed importance sampling of the guide against the model (Yao, Vehtari, Simpson &
    Gelman 2018). With draws :math:`z_s \\sim q` and log weights
    :math:`\\log w_s = \\log p(x, z_s) - \\log q(z_s)`, the shape :math:`\\hat k` of a generalized
    Pareto distribution fitted to the largest weights measures how much heavier the posterior's
    tails are than the guide's: :math:`\\hat k \\le 0.5` good, :math:`0.5 < \\hat k \\le 0.7`
    usable, :math:`\\hat k > 0.7` the guide misses posterior mass that importance weighting cannot
    recover (Vehtari, Simpson, Gelman, Yao & Gabry 2024). :math:`\\hat k` is noisy (from 16000
    draws of one fit it read 0.38 to 0.62, from 4000 draws up to 1.28), so it is estimated from
    16000 draws by default and read together with the *PSIS shift*: how far importance weighting
    moves each parameter's mean (in guide sds) and sd (as a ratio). At most 0.7 with shifts within
    0.1 sd and 10%: *reliable*; larger shifts: *use with care* (PSIS-corrected draws fix them).
    Above 0.7: *unreliable* when a mean moves by more than 0.5 sd or an sd by a factor beyond 1.5,
    else *use with care* (the tails are off, the bulk is close). arviz-stats' PSIS
    (``arviz_stats.base.array_stats.psislw``) does the smoothing.
``curvature``
    A Laplace check, independent of Monte Carlo noise: the Hessian :math:`H` of
    :math:`-\\log p(x, u)` in the unconstrained space :math:`u` at the centre of the guide
    (finite differences of the exact gradient) gives sds :math:`\\sqrt{(H^{-1})_{ii}}` and
    correlations. A guide whose sd is far below the Laplace sd in some direction is too narrow;
    the correlated partner of that parameter is named (this is how a mean-field guide fails on
    correlated parameters such as Vmax and Km).
``restarts``
    With several restarts: the spread of their final ELBOs against its Monte Carlo error, and
    R-hat across restarts (each restart a chain; Vehtari et al. 2021, via ArviZ).
``numerical faults``
    Only where the fit met one (:mod:`inference.engine.faults`): skipped non-finite steps,
    draws of zero density by cause (a failed ODE solve, the solver's step limit, values that
    overflow, another site named), a switch to the stiff solver, a collapsed guide scale. It
    comes first, so that when it is the worst check its sentence is the verdict's reason.

The verdict is the worst level among the checks: *reliable*, *use with care* or *unreliable*,
with the main reason and the advice of the worst check.

References
----------
Yao, Y., Vehtari, A., Simpson, D. and Gelman, A. (2018). Yes, but did it work?: Evaluating
variational inference. ICML.

Vehtari, A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed importance
sampling. JMLR 25(72), 1-58.

Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. and Burkner, P.-C. (2021). Rank-normalization,
folding, and localization: an improved R-hat for assessing convergence of MCMC. Bayesian Analysis.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.stopping import StopReason, final_window

__all__ = [
    "RELIABLE",
    "CARE",
    "UNRELIABLE",
    "LEVELS",
    "Check",
    "Verdict",
    "PsisResult",
    "psis",
    "shift_noise",
    "psis_resample",
    "check_stopping",
    "check_density",
    "check_psis",
    "check_curvature",
    "check_restarts",
    "diagnose",
    "flatten_draws",
    "Diagnosis",
]

RELIABLE = "reliable"
CARE = "use with care"
UNRELIABLE = "unreliable"
LEVELS = (RELIABLE, CARE, UNRELIABLE)

#: k-hat thresholds (Yao et al. 2018): good up to 0.5, usable up to 0.7.
KHAT_GOOD, KHAT_OK = 0.5, 0.7
#: A PSIS shift within these (mean in sds, relative sd) is small: the guide's bulk is right.
MEAN_SHIFT, SD_SHIFT = 0.1, 0.1
#: A PSIS shift beyond these (mean in sds, sd factor) is beyond "use with care": the guide is unreliable.
CARE_MEAN_SHIFT, CARE_SD_FACTOR = 0.25, 1.25
#: A PSIS shift beyond these is large: with k-hat above 0.7 the guide misses posterior mass.
LARGE_MEAN_SHIFT, LARGE_SD_FACTOR = 0.5, 1.5
#: Above this many coordinates a PSIS shift counts only beyond its Monte Carlo noise (see :func:`shift_noise`).
MANY_COORDINATES = 1000
#: A guide sd beyond this multiple of the Laplace sd at its centre is not vouched for by the curvature check.
WIDE_RATIO = 3.0


def khat_text(khat: float, threshold: float = KHAT_OK) -> str:
    """``khat`` with two decimals, or as many more as it takes to fall on its side of ``threshold``.

    ``0.7004`` prints as ``0.7004`` (not ``0.70``, which would read as at most 0.7); ``0.6996`` as
    ``0.70``, which is at most 0.7, as it is.

    Examples
    --------
    >>> khat_text(0.7004), khat_text(0.6996), khat_text(0.41)
    ('0.7004', '0.70', '0.41')
    """
    if not math.isfinite(khat):
        return str(khat)
    for digits in (2, 3, 4, 6, 9):
        text = f"{khat:.{digits}f}"
        if (float(text) > threshold) == (khat > threshold):
            return text
    return repr(float(khat))


class Check(NamedTuple):
    """One check of a fit.

    Attributes
    ----------
    name : str
        ``"stopping"``, ``"density"``, ``"psis"``, ``"curvature"`` or ``"restarts"``.
    level : str
        One of :data:`LEVELS`.
    message : str
        What was found, one sentence.
    advice : str
        What to do about it (empty when nothing needs doing).
    """

    name: str
    level: str
    message: str
    advice: str = ""


def _worst(levels) -> str:
    return max(levels, key=LEVELS.index, default=RELIABLE)


@dataclass(frozen=True)
class Verdict:
    """Whether a fit's posterior can be trusted, and why.

    Attributes
    ----------
    level : str
        ``"reliable"``, ``"use with care"`` or ``"unreliable"``.
    reason : str
        The main reason, one sentence.
    advice : str
        What to do (empty for a reliable fit with nothing to add).
    checks : tuple of Check
    khat : float
        PSIS k-hat of the best restart's guide (NaN when not computed).
    khat_draws : int
        Number of draws k-hat was estimated from.
    ess : float
        Importance-sampling effective sample size of those draws, :math:`1 / \\sum_s \\tilde w_s^2`
        with normalized smoothed weights.
    """

    level: str
    reason: str
    advice: str
    checks: tuple[Check, ...]
    khat: float = float("nan")
    khat_draws: int = 0
    ess: float = float("nan")

    def __str__(self) -> str:
        lines = [f"verdict: {self.level}: {self.reason}"]
        if self.advice:
            lines.append(f"what to do: {self.advice}")
        others = [c for c in self.checks if c.message != self.reason]
        lines += [f"  {c.name} ({c.level}): {c.message}" for c in others]
        return "\n".join(lines)

    def checks_json(self) -> str:
        """The checks as a JSON list of ``{"check", "level", "message", "advice"}``."""
        return json.dumps(
            [{"check": c.name, "level": c.level, "message": c.message, "advice": c.advice} for c in self.checks]
        )

    def to_dict(self) -> dict:
        """Plain data (for ``fit.json``)."""
        return {
            "level": self.level,
            "reason": self.reason,
            "advice": self.advice,
            "khat": _finite_or_none(self.khat),
            "khat_draws": self.khat_draws,
            "ess": _finite_or_none(self.ess),
            "checks": json.loads(self.checks_json()),
        }

    @classmethod
    def from_checks(cls, checks, **stats) -> Verdict:
        """Combine checks: the worst level decides; its first check gives the reason and advice."""
        checks = tuple(checks)
        level = _worst(c.level for c in checks)
        if level == RELIABLE:
            reason = "; ".join(c.message for c in checks if c.name in ("stopping", "psis", "curvature", "exact stage"))
            advice = ""
        else:
            # An interrupted fit says so first: every other finding is about an unfinished fit.
            worst = sorted((c for c in checks if c.level == level), key=lambda c: c.name != "interrupted")
            reason = worst[0].message
            advice = next((c.advice for c in worst if c.advice), "")
        return cls(level=level, reason=reason, advice=advice, checks=checks, **stats)


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


# -- draws as a table of scalar parameters -------------------------------------------------------
def flatten_draws(draws: dict, names=None) -> tuple[list[str], np.ndarray]:
    """Scalar columns of a dict of draws: labels ``name`` or ``name[i,j]`` and an ``(n, p)`` array."""
    labels, columns = [], []
    for name in names or draws:
        value = np.asarray(draws[name], dtype=float)
        n = value.shape[0]
        flat = value.reshape(n, -1)
        shape = value.shape[1:]
        for j in range(flat.shape[1]):
            labels.append(name if not shape else f"{name}[{','.join(map(str, np.unravel_index(j, shape)))}]")
            columns.append(flat[:, j])
    return labels, np.stack(columns, axis=1) if columns else np.zeros((0, 0))


# -- PSIS -----------------------------------------------------------------------------------------
class PsisResult(NamedTuple):
    """Pareto-smoothed importance weights of guide draws.

    Attributes
    ----------
    log_weights : ndarray, shape (n,)
        Smoothed, normalized log weights (``logsumexp`` = 0); ``-inf`` for zero-density draws.
    khat : float
        Estimated Pareto shape of the weights' tail.
    ess : float
        Effective sample size ``1 / sum(w**2)``.
    n_zero : int
        Draws with zero model density (weight 0).
    """

    log_weights: np.ndarray
    khat: float
    ess: float
    n_zero: int


def psis(log_p: np.ndarray, log_q: np.ndarray) -> PsisResult:
    """PSIS of draws from ``q`` with target ``p`` (arviz-stats' Pareto smoothing).

    Draws with ``log p = -inf`` get weight zero and are left out of the tail fit. The smoothing is
    ``arviz_stats.base.array_stats.psislw``, the array layer under :func:`arviz_stats.loo`; it takes
    the negated log ratios (the log likelihood of LOO), so it is given ``-(log p - log q)``.
    """
    from arviz_stats.base import array_stats

    raw = np.asarray(log_p, dtype=float) - np.asarray(log_q, dtype=float)
    finite = np.isfinite(raw)
    out = np.full(raw.shape, -np.inf)
    if finite.sum() < 10:
        return PsisResult(out, float("inf"), 0.0, int((~finite).sum()))
    if np.ptp(raw[finite]) < 1e-10:
        # Equal weights: the guide is the posterior up to a constant (ArviZ's tail fit degenerates).
        out[finite] = -np.log(finite.sum())
        return PsisResult(out, 0.0, float(finite.sum()), int((~finite).sum()))
    try:
        smoothed, khat = array_stats.psislw(-raw[finite], r_eff=1.0)
    except ValueError:  # equal values in the whole tail: no Pareto fit
        return PsisResult(out, float("inf"), 0.0, int((~finite).sum()))
    out[finite] = smoothed
    w = np.exp(out[finite])
    return PsisResult(out, float(khat), float(1.0 / np.sum(w**2)), int((~finite).sum()))


def psis_resample(draws: dict, log_weights: np.ndarray, num_samples: int, seed: int = 0) -> dict:
    """Importance resampling: ``num_samples`` draws chosen with probability ``exp(log_weights)``.

    Sampling-importance-resampling (Rubin 1988) with Pareto-smoothed weights; with replacement, so
    repeated draws are expected when the effective sample size is small.
    """
    p = np.exp(np.asarray(log_weights, dtype=float))
    p = p / p.sum()
    idx = np.random.default_rng(seed).choice(p.size, size=int(num_samples), replace=True, p=p)
    return {name: np.asarray(v)[idx] for name, v in draws.items()}


def _is_mean_field(guide_name: str) -> bool:
    return guide_name in ("normal", "mean_field", "AutoNormal", "AutoDiagonalNormal")


def shift_noise(ess: float, n: int, coordinates: int) -> tuple[float, float]:
    r"""The largest PSIS shifts that Monte Carlo noise alone gives over ``coordinates`` coordinates.

    Take ``n`` draws with normalized weights :math:`w` of effective sample size
    :math:`n_e = 1 / \sum w_i^2`, and a coordinate that the guide gets right, so that its draws
    :math:`x_i` (in guide sds) are standard normal and independent of the weights. Its weighted
    mean differs from the unweighted one by :math:`\sum_i (w_i - 1/n) x_i`, normal with sd
    :math:`\sqrt{1/n_e - 1/n}`; its weighted variance behaves like :math:`\chi^2_{n_e} / n_e`
    (heavier-tailed than normal when a few weights dominate). Over :math:`m` coordinates the
    largest shift stays below the quantile at :math:`1 - 0.025 / m` (Bonferroni) with
    probability 0.95.

    Returns
    -------
    (float, float)
        The noise bound of a mean shift (guide sds) and of ``|log(sd ratio)|``.
    """
    from scipy import stats

    tail = 0.025 / max(int(coordinates), 1)
    ess = max(float(ess), 1.0)
    var = max(1.0 / ess - 1.0 / max(int(n), 1), 0.0)
    mean_bound = float(stats.norm.isf(tail)) * math.sqrt(var)
    high = float(stats.chi2.isf(tail, ess)) / ess
    low = float(stats.chi2.ppf(tail, ess)) / ess
    log_sd_bound = 0.5 * max(math.log(high), -math.log(max(low, 1e-300)))
    return mean_bound, log_sd_bound


def check_psis(
    log_p, log_q, draws: dict, names=None, guide_name: str = "", *, allow_noise: bool = False
) -> tuple[Check, PsisResult, dict]:
    """The PSIS check; also returns the weights and the shift of each parameter.

    The shift of a parameter is ``(mean_w - mean) / sd`` and ``sd_w / sd``: how importance
    weighting moves its mean (in guide sds) and its sd.

    With ``allow_noise`` (the verdict of a model with more than :data:`MANY_COORDINATES`
    coordinates, judged from few draws of each) a shift counts only beyond the larger of its
    threshold and its Monte Carlo noise over every coordinate (:func:`shift_noise`): with 1000
    draws and an effective sample size of 300, one of 10,000 exact coordinates moves by up to
    0.22 sd by chance, beyond the 0.1 sd that would otherwise make the verdict "use with care".
    The check then says which shifts it cannot tell from noise.
    """
    res = psis(log_p, log_q)
    n = len(np.asarray(log_p))
    if not math.isfinite(res.khat):
        return _psis_impossible(log_p, log_q, res), res, {}
    labels, x = flatten_draws(draws, names)
    keep = np.isfinite(res.log_weights)
    w = np.exp(res.log_weights[keep])
    xs = x[keep]
    mean, sd = xs.mean(0), xs.std(0)
    mean_w = w @ xs
    sd_w = np.sqrt(w @ (xs - mean_w) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        dm = np.where(sd > 0, (mean_w - mean) / sd, 0.0)
        ratio = np.where(sd > 0, sd_w / sd, 1.0)
    shift = {lab: (float(a), float(b)) for lab, a, b in zip(labels, dm, ratio)}
    mean_small, log_sd_small = MEAN_SHIFT, math.log1p(SD_SHIFT)
    mean_care, log_sd_care = CARE_MEAN_SHIFT, math.log(CARE_SD_FACTOR)
    mean_large, log_sd_large = LARGE_MEAN_SHIFT, math.log(LARGE_SD_FACTOR)
    noise_note = ""
    if allow_noise:
        ess = 1.0 / float(np.sum(w**2)) if w.size else 1.0
        mean_noise, log_sd_noise = shift_noise(ess, int(w.size), len(labels))
        if mean_noise > mean_small or log_sd_noise > log_sd_small:
            noise_note = (
                f"; with an effective sample size of {ess:.0f} over {len(labels)} coordinates, Monte Carlo noise "
                f"alone moves one mean by up to {mean_noise:.2f} sd and one sd by a factor up to "
                f"{math.exp(log_sd_noise):.2f}, so smaller errors are not checked"
            )
        mean_small, log_sd_small = max(mean_small, mean_noise), max(log_sd_small, log_sd_noise)
        mean_care, log_sd_care = max(mean_care, mean_noise), max(log_sd_care, log_sd_noise)
        mean_large, log_sd_large = max(mean_large, mean_noise), max(log_sd_large, log_sd_noise)
    with np.errstate(divide="ignore"):
        log_ratio = np.abs(np.log(ratio))
    worst = int(np.argmax(np.maximum(np.abs(dm) / mean_small, log_ratio / log_sd_small)))
    k = res.khat
    head = f"PSIS k-hat {khat_text(k)} from {n} draws"
    move = (
        f"importance weighting moves the mean of {labels[worst]} by {dm[worst]:+.2f} sd and its sd by a "
        f"factor {ratio[worst]:.2f}{noise_note}"
    )

    def beyond(mean_bound, log_sd_bound) -> bool:
        return bool(np.any(np.abs(dm) > mean_bound) or np.any(log_ratio > log_sd_bound))

    if allow_noise:
        large = beyond(mean_large, log_sd_large)
    else:
        large = abs(dm[worst]) > LARGE_MEAN_SHIFT or abs(math.log(ratio[worst])) > math.log(LARGE_SD_FACTOR)
    nuts = " (inference.nuts, or --nuts on the command line)"
    if k > KHAT_OK and large:
        check = Check(
            "psis",
            UNRELIABLE,
            f"{head} is above {KHAT_OK}: the posterior has mass the guide does not reach ({move}, and the "
            "true change is likely larger: reweighting cannot recover what the guide misses)",
            (
                "use guide='multivariate_normal' (full-rank), and check with NUTS"
                if _is_mean_field(guide_name)
                else "the posterior is far from Gaussian (skewed or heavy-tailed): check it with NUTS"
            )
            + nuts,
        )
    elif k > KHAT_OK and not allow_noise:
        # Above 0.7 the weights cannot be trusted (Vehtari et al.), and in the calibration set such
        # guides had sds off by more than 25% even where the reweighting moved the bulk little.
        check = Check(
            "psis",
            UNRELIABLE,
            f"{head} is above {KHAT_OK}: the posterior's tails are heavier than the guide's ({move}); the "
            "importance weights cannot be trusted, and the guide's sds and intervals can be off by more than 25% "
            "even where its means are close",
            "use guide='auto' (when its guides fall short it draws exactly, with NUTS through the fitted guide), or "
            "check with NUTS" + nuts,
        )
    elif k > KHAT_OK:
        # Many coordinates: k-hat of the joint weights grows with the dimension even when every
        # marginal is close, and no shift is beyond its noise.
        check = Check(
            "psis",
            CARE,
            f"{head} is above {KHAT_OK} ({move}): over {len(labels)} coordinates the joint importance weights "
            "degenerate even when every marginal is close, so the joint tails are not checked; no mean or sd "
            "moves beyond its Monte Carlo noise",
            "check a subset with NUTS" + nuts + " before relying on intervals",
        )
    elif beyond(mean_care, log_sd_care):
        check = Check(
            "psis",
            UNRELIABLE,
            f"{head}, but {move}: the guide is off in the bulk of the posterior by more than "
            f"{CARE_MEAN_SHIFT} sd or {CARE_SD_FACTOR - 1:.0%} in an sd",
            "use the PSIS-corrected draws (result.sample_psis()), guide='auto', or a richer guide",
        )
    elif (beyond(mean_small, log_sd_small) if allow_noise else not _small(dm, ratio)):
        check = Check(
            "psis",
            CARE,
            f"{head}, but {move}: the guide is off in the bulk of the posterior",
            "use the PSIS-corrected draws (result.sample_psis()) or a richer guide",
        )
    else:
        extra = "; result.sample_psis() gives corrected draws" if k > KHAT_GOOD else ""
        check = Check("psis", RELIABLE, f"{head} is at most {KHAT_OK} and {move}{extra}")
    return check, res, shift


def _psis_impossible(log_p, log_q, res: PsisResult) -> Check:
    """The PSIS check where no Pareto shape could be estimated, saying why."""
    log_p, log_q = np.asarray(log_p, dtype=float), np.asarray(log_q, dtype=float)
    n = log_p.size
    zero = int(np.sum(~np.isfinite(log_p)))
    guide_bad = int(np.sum(np.isfinite(log_p) & ~np.isfinite(log_q)))
    usable = n - zero - guide_bad
    if usable < 10:
        parts = []
        if zero:
            parts.append(f"{zero} of {n} draws have zero model density")
        if guide_bad:
            parts.append(
                f"the guide's own log density is not finite at {guide_bad} of {n} draws (its scale collapsed to zero "
                "or overflowed)"
            )
        return Check(
            "psis",
            UNRELIABLE,
            f"PSIS is not possible: only {usable} of {n} draws have finite importance weights (" + "; ".join(parts) + ")",
            "see the numerical faults check; change the priors or the model so that it is defined where the guide "
            "puts mass",
        )
    return Check(
        "psis",
        UNRELIABLE,
        f"PSIS is not possible: the largest importance weights of the {usable} draws with finite weights are all "
        "equal, so no Pareto tail can be fitted to them",
        "check the model and the guide (a guide that puts its mass on a few points gives such weights); check with "
        "NUTS (inference.nuts)",
    )


def _small(dm, ratio) -> bool:
    return bool(np.all(np.abs(dm) <= MEAN_SHIFT) and np.all(np.abs(ratio - 1) <= SD_SHIFT))


# -- curvature (Laplace) --------------------------------------------------------------------------
def _latent_transforms(model, draws: dict, args, kwargs):
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    first = {k: jnp.asarray(v[0]) for k, v in draws.items()}
    trace = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=first)).get_trace(*args, **kwargs)
    return {name: biject_to(trace[name]["fn"].support) for name in draws}


def check_curvature(model, draws: dict, guide_name: str, args=(), kwargs=None, *, max_dim: int = 200) -> Check:
    """Compare the guide's spread with the Laplace approximation at the guide's centre.

    The model-based form, for fits through NumPyro's SVI (draws of constrained sites); fits on the
    flat engine call :func:`check_curvature_flat` with the target's Hessian.

    Parameters
    ----------
    model : callable
    draws : dict of str to ndarray
        Guide draws of every latent site, ``(n, *shape)``, constrained.
    guide_name : str
        For the advice ("normal" guides are told to go full-rank).
    max_dim : int
        Skip the check above this many unconstrained dimensions (the Hessian costs ``2 d``
        gradient evaluations).
    """
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    from ..engine.guides import fd_hessian

    kwargs = kwargs or {}
    transforms = _latent_transforms(model, draws, args, kwargs)
    unconstrained = {name: np.asarray(transforms[name].inv(jnp.asarray(v))) for name, v in draws.items()}
    # ravel_pytree orders sites by name: the flat layout of the engine.
    order = sorted(unconstrained)
    labels, u = flatten_draws(unconstrained, order)
    if u.shape[1] > max_dim:
        return Check("curvature", RELIABLE, f"curvature check skipped: {u.shape[1]} dimensions (more than {max_dim})")
    center = {name: np.median(v, axis=0) for name, v in unconstrained.items()}
    _, unravel = ravel_pytree({k: jnp.asarray(v) for k, v in center.items()})

    def hessian(x0, steps):
        def log_density(x):
            return -potential_energy(model, args, kwargs, unravel(x))

        return np.asarray(jax.jit(lambda x, h: fd_hessian(log_density, x, steps=h))(jnp.asarray(x0), jnp.asarray(steps)))

    return check_curvature_flat(u, labels, hessian, guide_name, max_dim=max_dim)


def check_curvature_flat(u: np.ndarray, labels, hessian, guide_name: str, *, max_dim: int = 200) -> Check:
    """Compare the guide's spread with the Laplace approximation at the guide's centre (flat draws).

    Parameters
    ----------
    u : ndarray, shape (n, d)
        Guide draws in the flat unconstrained space (finite-density draws only).
    labels : list of str
        The label of each coordinate.
    hessian : callable
        ``hessian(x0, h) -> (d, d)``: the Hessian of the log density at ``x0`` by central
        differences with steps ``h`` (``h`` is ``1e-2`` guide sds).
    guide_name : str
    max_dim : int
    """
    u = np.asarray(u, dtype=float)
    u = u.reshape(u.shape[0], -1) if u.ndim != 2 else u
    d = u.shape[1]
    if d > max_dim:
        return Check("curvature", RELIABLE, f"curvature check skipped: {d} dimensions (more than {max_dim})")
    u = u[np.all(np.isfinite(u), axis=1)]
    if u.shape[0] == 0:
        return Check(
            "curvature",
            UNRELIABLE,
            "curvature check not possible: no guide draw has a finite model density",
            "see the density and numerical faults checks",
        )
    if u.shape[0] < d + 2:
        return Check(
            "curvature",
            CARE,
            f"curvature check not possible: only {u.shape[0]} guide draws have a finite model density, too few for "
            f"the spread of {d} dimensions",
            "see the density and numerical faults checks",
        )
    sd_q = u.std(0)
    if not np.all(sd_q > 0):
        return Check("curvature", RELIABLE, "curvature check skipped: the guide has no spread (a point estimate)")
    x0 = np.median(u, axis=0)
    hess = -np.asarray(hessian(x0, 1e-2 * sd_q), dtype=float)
    if not np.all(np.isfinite(hess)):
        return Check(
            "curvature",
            CARE,
            "curvature check not possible: the gradient is not finite near the guide's centre",
            "see the numerical faults check; check with NUTS (inference.nuts)",
        )
    eig = np.linalg.eigvalsh(hess)
    if eig.min() <= 0:
        return Check(
            "curvature",
            RELIABLE,
            "curvature check skipped: the log density is not concave at the guide's centre (no Laplace approximation)",
        )
    cov = np.linalg.inv(hess)
    sd_l = np.sqrt(np.diag(cov))
    corr_l = cov / np.outer(sd_l, sd_l)
    corr_q = np.corrcoef(u, rowvar=False) if d > 1 else np.ones((1, 1))
    ratio = sd_q / sd_l
    i = int(np.argmin(ratio))
    narrow = (
        f"the guide's sd of {labels[i]} (unconstrained) is {ratio[i]:{'.2f' if ratio[i] >= 0.01 else '.2g'}} of the Laplace "
        "sd at the posterior centre"
    )
    partner = ""
    if d > 1:
        off = np.abs(corr_l[i]).copy()
        off[i] = 0
        j = int(np.argmax(off))
        partner = (
            f": {labels[i]} and {labels[j]} are correlated (rho = {corr_l[i, j]:.2f}) and the guide gives them "
            f"rho = {corr_q[i, j]:.2f}"
        )
        partner = partner if off[j] > 0.5 else ""
    advice = (
        "use guide='multivariate_normal' (full-rank), which represents correlations"
        if _is_mean_field(guide_name) and partner
        else "check with NUTS (inference.nuts, or --nuts on the command line)"
    )
    if ratio[i] < 0.5:
        return Check("curvature", UNRELIABLE, narrow + partner, advice)
    if ratio[i] < 0.8:
        return Check("curvature", CARE, narrow + partner, advice)
    # Correlations the guide misses, even with the right marginal spread.
    if d > 1:
        miss = np.abs(corr_l - corr_q)
        np.fill_diagonal(miss, 0)
        a, b = np.unravel_index(int(np.argmax(miss)), miss.shape)
        if abs(corr_l[a, b]) > 0.8 and miss[a, b] > 0.5:
            return Check(
                "curvature",
                CARE,
                f"{labels[a]} and {labels[b]} are correlated (rho = {corr_l[a, b]:.2f} at the posterior centre) "
                f"but the guide gives them rho = {corr_q[a, b]:.2f}",
                advice,
            )
    w = int(np.argmax(ratio))
    if ratio[w] > WIDE_RATIO:
        return Check(
            "curvature",
            CARE,
            f"the guide's sd of {labels[w]} (unconstrained) is {ratio[w]:.3g} times the Laplace sd at the guide's "
            f"centre (sd ratios {ratio.min():.2f} to {ratio[w]:.3g}): the log density is far more sharply curved "
            "there than the guide is wide (a spike, a ridge, a far from Gaussian posterior, or a fit that did not "
            "converge), so the Laplace check cannot vouch for the spread",
            "check with NUTS (inference.nuts, or --nuts on the command line)",
        )
    if ratio[w] > 1.5:
        return Check(
            "curvature",
            RELIABLE,
            f"the guide is no narrower than the Laplace approximation (sd ratios {ratio.min():.2f} to "
            f"{ratio[w]:.2f}; wider than it where the posterior is not Gaussian, e.g. skewed)",
        )
    return Check(
        "curvature",
        RELIABLE,
        f"the guide's spread matches the Laplace approximation (sd ratios {ratio.min():.2f} to {ratio.max():.2f})",
    )


# -- restarts -------------------------------------------------------------------------------------
def _final_elbo(trace: np.ndarray) -> tuple[float, float]:
    """Mean ELBO over the last 10% of steps (at least 50) and its standard error (batch means)."""
    tail = -final_window(trace)
    tail = tail[np.isfinite(tail)]
    if tail.size < 10:
        return float("nan"), float("inf")
    batches = np.array_split(tail, 10)
    means = np.array([b.mean() for b in batches])
    return float(tail.mean()), float(means.std(ddof=1) / math.sqrt(len(means)))


def check_restarts(losses: np.ndarray, restart_draws: dict | None = None) -> Check:
    """Agreement of restarts: spread of final ELBOs and R-hat across restarts.

    Parameters
    ----------
    losses : ndarray, shape (R, num_steps)
    restart_draws : dict of str to ndarray, each ``(R, n, *shape)``, optional
        Guide draws per restart, for R-hat (each restart one chain).
    """
    R = losses.shape[0]
    if R == 1:
        return Check(
            "restarts",
            RELIABLE,
            "one restart, so agreement between restarts was not checked",
            "fit(..., restarts=4) checks that independent starts find the same optimum",
        )
    finals = [_final_elbo(t) for t in losses]
    elbo = np.array([f[0] for f in finals])
    se = np.array([f[1] for f in finals])
    ok = np.isfinite(elbo)
    if not ok.any():
        return Check("restarts", UNRELIABLE, "no restart reached a finite ELBO", "see the stopping check")
    best = int(np.nanargmax(np.where(ok, elbo, -np.inf)))
    gap = elbo[best] - elbo
    tol = np.maximum(1.0, 4 * np.sqrt(se[best] ** 2 + se**2))
    behind = [r for r in range(R) if not ok[r] or gap[r] > tol[r]]
    rhat_text, rhat_max = "", 1.0
    if restart_draws:
        from arviz_stats.base import array_stats

        labels, _ = flatten_draws({k: v[0] for k, v in restart_draws.items()})
        stacked = np.stack([flatten_draws({k: v[r] for k, v in restart_draws.items()})[1] for r in range(R)])
        # Rank-normalized split R-hat of each coordinate, restarts as chains: (R, n, d) -> (d,).
        rhats = np.asarray(array_stats.rhat(np.moveaxis(stacked, 2, 0), chain_axis=-2, draw_axis=-1), dtype=float)
        j = int(np.nanargmax(rhats))
        rhat_max = float(rhats[j])
        rhat_text = f"R-hat across restarts at most {rhat_max:.3f} ({labels[j]})"
    if behind or rhat_max > 1.05:
        parts = []
        lost = [r for r in behind if not ok[r]]
        lower = [r for r in behind if ok[r]]
        if lower:
            parts.append(
                f"{len(lower)} of {R} restarts ended with an ELBO more than its noise below the best "
                f"(gaps up to {max(gap[r] for r in lower):.3g} nats)"
            )
        if lost:
            parts.append(f"{len(lost)} of {R} restarts ended without a finite ELBO")
        if rhat_max > 1.05:
            parts.append(rhat_text.replace("at most", "is"))
        return Check(
            "restarts",
            CARE,
            "restarts disagree: " + "; ".join(parts) + f"; the best one (restart {best}) is used",
            "the posterior may have several modes or the fits did not converge: look at the ELBO trace per "
            "restart, raise max_steps, or check with NUTS (inference.nuts)",
        )
    return Check("restarts", RELIABLE, f"{R} restarts agree: final ELBOs within their noise; {rhat_text}".rstrip("; "))


# -- stopping and density -------------------------------------------------------------------------
def check_stopping(stop_reason, num_steps: int, nonfinite_steps: int, num_restarts: int = 1, nonfinite_reason=None,
                   advice: str | None = None) -> Check:
    """Why the fit stopped, and the steps skipped as non-finite.

    ``advice`` (from the cause of the non-finite steps, :mod:`inference.engine.faults`) replaces
    the general advice about non-finite steps.
    """
    general = "give the priors less mass where the model breaks down (huge rates, zero noise) or lower the learning rate"
    total = max(1, num_steps * num_restarts)
    bad = f"; {nonfinite_steps} of {total} steps were skipped as non-finite" if nonfinite_steps else ""
    reason = StopReason(stop_reason)
    if reason == StopReason.NONFINITE:
        return Check(
            "stopping",
            UNRELIABLE,
            f"the fit stopped because too many steps were non-finite ({nonfinite_reason or 'no site named'})",
            advice or general,
        )
    if reason == StopReason.MAX_STEPS:
        return Check(
            "stopping",
            CARE,
            f"the ELBO was still moving when the fit reached max_steps={num_steps}{bad}",
            "raise max_steps or the learning rate",
        )
    if reason == StopReason.INTERRUPTED:
        return Check("stopping", CARE, f"the fit was interrupted after {num_steps} steps{bad}", "run the fit to the end")
    if nonfinite_steps > 0.01 * total:
        return Check(
            "stopping",
            CARE,
            f"the ELBO levelled off after {num_steps} steps{bad} ({nonfinite_reason})",
            advice or "give the priors less mass where the model breaks down, or lower the learning rate",
        )
    return Check("stopping", RELIABLE, f"the ELBO levelled off after {num_steps} steps{bad}")


def check_density(log_p: np.ndarray, cause: str = "", advice: str = "") -> Check:
    """Guide draws at which the model has zero density.

    ``cause`` and ``advice`` say why (:func:`inference.engine.faults.examine_draws`: a failed ODE
    solve, the step limit, an overflow, another site named); without them the message says that
    the cause was not looked for.
    """
    log_p = np.asarray(log_p)
    n = log_p.size
    zero = int(np.sum(~np.isfinite(log_p)))
    frac = zero / max(n, 1)
    what = f"{zero} of {n} guide draws have zero model density" + (
        f": {cause}" if cause else " (a failed ODE solve, or a site whose log density is not finite there)"
    )
    advice = advice or "check the model where its log density is not finite (see the numerical faults check)"
    if frac > 0.1:
        return Check("density", UNRELIABLE, what, advice)
    if frac > 0.01:
        return Check("density", CARE, what, advice)
    if zero:
        return Check("density", RELIABLE, what)
    return Check("density", RELIABLE, f"the model has positive density at all {n} guide draws")


# -- everything -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Diagnosis:
    """A verdict with the draws it was computed from (kept for PSIS resampling)."""

    verdict: Verdict
    draws: dict = field(repr=False)
    psis: PsisResult = field(repr=False)
    shift: dict = field(repr=False)
    elbo: float = float("nan")
    elbo_se: float = float("nan")
    flat: tuple | None = field(default=None, repr=False)
    faults: object = None


def _fit_faults(result):
    """The faults the fit met (``result.faults``), or those its fields tell (a fit through NumPyro's SVI)."""
    from ..engine.faults import Faults

    faults = getattr(result, "faults", None)
    if faults is not None:
        return faults
    return Faults(
        nonfinite_steps=int(np.sum(result.nonfinite_steps)),
        steps=int(result.num_steps) * int(result.num_restarts),
        stopped=StopReason(result.stop_reason) == StopReason.NONFINITE,
        step_cause=result.nonfinite_reason or "",
    )


def _stop_and_density_checks(result, log_p, faults=None) -> list:
    """The checks every verdict starts with: numerical faults (if any), why the fit stopped, zero-density draws."""
    checks = []
    if faults is not None and faults.check() is not None:
        checks.append(faults.check())
    checks += [
        check_stopping(
            result.stop_reason,
            result.num_steps,
            int(np.sum(result.nonfinite_steps)),
            result.num_restarts,
            result.nonfinite_reason,
            advice=(faults.step_advice or None) if faults is not None else None,
        ),
        check_density(log_p, *((faults.cause, faults.advice) if faults is not None else ())),
    ]
    return checks


def diagnose(result, num_samples: int = 16000, *, seed: int | None = None, curvature: bool = True) -> Diagnosis:
    """Run every check on a :class:`FitResult` and combine them into a :class:`Verdict`.

    Parameters
    ----------
    result : FitResult
    num_samples : int
        Guide draws of the best restart for PSIS (16000 by default: k-hat from fewer draws is noisy).
    seed : int, optional
        Seed of the draws; the fit's seed plus two by default.
    curvature : bool
        Run the Laplace (curvature) check.

    Raises
    ------
    ValueError
        When the model subsamples its data (a minibatch fit): the checks need the model's
        density at fixed data points (see :meth:`FitResult.require_full_data`).
    """
    result.require_full_data("the verdict (diagnose)")
    if getattr(result, "posterior", None) is not None:
        return _diagnose_flat(result, num_samples, seed=seed, curvature=curvature)
    key = jax.random.PRNGKey(result.seed + 2 if seed is None else seed)
    sampler = result._posterior_sampler()
    draws = sampler(result.params, key, num_samples)
    names = [n for n in result.latent_sites if n in draws.latent]
    latent = {n: draws.latent[n] for n in names}
    faults = _fit_faults(result).with_draws(
        _svi_draw_faults(draws, names, getattr(result.guide, "prototype_trace", None))
    )
    checks = _stop_and_density_checks(result, draws.log_p, faults)
    if result.guide_name == "delta":
        checks.append(
            Check(
                "spread",
                UNRELIABLE,
                "the guide is a point estimate (MAP): it carries no posterior uncertainty",
                "use guide='laplace' for a Gaussian around this point, or guide='auto'",
            )
        )
    psis_check, weights, shift = check_psis(draws.log_p, draws.log_q, latent, names, result.guide_name)
    if curvature:
        finite = np.isfinite(draws.log_p)
        for v in latent.values():
            finite &= np.all(np.isfinite(np.asarray(v, dtype=float).reshape(finite.size, -1)), axis=1)
        if not finite.any():
            checks.append(check_curvature_flat(np.zeros((0, 1)), [], None, result.guide_name))
        else:
            try:
                checks.append(
                    check_curvature(
                        result.model,
                        {n: v[finite] for n, v in latent.items()},
                        result.guide_name,
                        result.model_args,
                        result.model_kwargs,
                    )
                )
            except _CURVATURE_ERRORS as err:
                checks.append(Check("curvature", CARE, f"curvature check not possible: {err}"))
    # The curvature check comes before PSIS: it is free of Monte Carlo noise and names the cause.
    checks.append(psis_check)
    restart_draws = result.sample_restarts(1000, seed=result.seed + 3) if result.num_restarts > 1 else None
    checks.append(check_restarts(result.losses, restart_draws))
    checks.extend(getattr(result, "extra_checks", ()))
    verdict = Verdict.from_checks(checks, khat=weights.khat, khat_draws=int(num_samples), ess=weights.ess)
    with np.errstate(invalid="ignore"):
        log_w = np.asarray(draws.log_p, dtype=float) - np.asarray(draws.log_q, dtype=float)
    elbo = float(np.mean(log_w)) if np.all(np.isfinite(log_w)) else float("-inf")
    elbo_se = float(np.std(log_w) / np.sqrt(log_w.size)) if math.isfinite(elbo) else float("nan")
    return Diagnosis(verdict=verdict, draws=latent, psis=weights, shift=shift, elbo=elbo, elbo_se=elbo_se,
                     faults=faults)


#: What a curvature check may raise on a model it cannot handle; the verdict goes on without it.
_CURVATURE_ERRORS = (ValueError, TypeError, NotImplementedError, IndexError, ArithmeticError, np.linalg.LinAlgError)


def _svi_draw_faults(draws, names, trace=None):
    """Draw counts of the numerical faults, from a NumPyro-path sampler's draws (which hold every site)."""
    from ..engine.faults import Faults, classify_draws, factor_sites

    log_p = np.asarray(draws.log_p, dtype=float)
    n = log_p.size
    bad = ~np.isfinite(log_p)
    if not bad.any():
        return Faults(draws=n)
    good = {k: np.asarray(v)[~bad] for k, v in draws.latent.items() if k in names and np.asarray(v)[0].size == 1}
    counts = classify_draws(
        {k: np.asarray(v)[bad] for k, v in draws.latent.items()},
        log_p[bad],
        {k: np.asarray(v)[bad] for k, v in draws.log_likelihood.items()},
        sites=names,
        good=good,
        factors=factor_sites(trace) if trace else (),
    )
    return Faults(
        draws=n,
        zero_density=int(bad.sum()),
        examined=counts.examined,
        ode_failed=counts.step_limit + counts.ode_nonfinite + counts.ode_other,
        ode_step_limit=counts.step_limit,
        overflow=counts.value_overflow + counts.ode_nonfinite,
        cause=counts.cause,
        advice=counts.advice,
    )


def _diagnose_flat(result, num_samples: int, *, seed: int | None, curvature: bool) -> Diagnosis:
    """:func:`diagnose` for a fit on the flat engine: every model density from the one compiled target.

    The draws, their log densities and the shifts are in the flat unconstrained space (positive
    parameters on the log scale), where a Gaussian guide is fitted and where moments of positive
    parameters are best compared.
    """
    posterior = result.posterior
    target = posterior.target
    labels = target.layout.labels()
    seed = result.seed + 2 if seed is None else int(seed)
    u, log_q = posterior.draw_guide(result.best_restart, seed, int(num_samples))
    log_p = target.log_density(u)
    from ..engine.faults import examine_draws

    faults = _fit_faults(result).with_draws(examine_draws(target, u, log_p, seed=seed))
    latent = {label: u[:, j] for j, label in enumerate(labels)}
    checks = _stop_and_density_checks(result, log_p, faults)
    psis_check, weights, shift = check_psis(log_p, log_q, latent, labels, result.guide_name,
                                            allow_noise=len(labels) > MANY_COORDINATES)
    if curvature:
        finite = np.isfinite(log_p)
        try:
            from ..engine.noncentring import curvature_inputs

            x, hessian = curvature_inputs(target, posterior.family, u[finite])
            checks.append(check_curvature_flat(x, labels, hessian, result.guide_name))
        except _CURVATURE_ERRORS as err:
            checks.append(Check("curvature", CARE, f"curvature check not possible: {err}"))
    checks.append(psis_check)
    restart_draws = None
    if result.num_restarts > 1:
        parts = [posterior.draw_guide(r, result.seed + 3, 1000)[0] for r in range(result.num_restarts)]
        restart_draws = {label: np.stack([p[:, j] for p in parts]) for j, label in enumerate(labels)}
    checks.append(check_restarts(result.losses, restart_draws))
    extra = tuple(getattr(result, "extra_checks", ()))
    checks.extend(extra)
    if result.settings.get("guide") not in ("auto", "laplace") and not any(c.name == "modes" for c in extra):
        # A named guide's fit: other optima, which its own draws cannot show (searched once per result).
        if "modes_search" not in result._cache:
            from ..engine.auto import search_modes

            result._cache["modes_search"] = search_modes(target, result.seed)
        if result._cache["modes_search"] is not None:
            checks.append(result._cache["modes_search"])
    verdict = Verdict.from_checks(checks, khat=weights.khat, khat_draws=int(num_samples), ess=weights.ess)
    with np.errstate(invalid="ignore"):
        log_w = log_p - log_q
    elbo = float(np.mean(log_w)) if np.all(np.isfinite(log_w)) else float("-inf")
    elbo_se = float(np.std(log_w) / np.sqrt(log_w.size)) if math.isfinite(elbo) else float("nan")
    return Diagnosis(verdict=verdict, draws=latent, psis=weights, shift=shift, elbo=elbo, elbo_se=elbo_se,
                     flat=(u, log_q), faults=faults)

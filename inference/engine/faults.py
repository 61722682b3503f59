"""Numerical faults of a fit: detected, counted, handled and reported, as plain data.

A fit can run into five kinds of numerical trouble. Each is detected where it happens, counted in
a :class:`Faults` record and handled; the record is reported in ``FitResult.notes()``, in the
verdict (the check ``numerical faults``), in ``fit.json`` and in ``report.html``.
``FitResult.faults`` holds what the fit met; ``Diagnosis.faults`` (what the verdict uses) adds
the verdict's own draws.

Non-finite losses
    An optimization step whose loss or gradient is not finite is skipped and counted
    (``nonfinite_steps``; too many stop the fit). At the end of the fit the cause is looked for at
    ``8 B`` guide draws (:func:`fit_faults`), and named in ``step_cause``.
Failed ODE solves and the step limit
    A kinetics model records why each solve failed in its deterministic site ``_ode_status``
    (:mod:`vi_models.kinetics.ode`: 1 step limit, 2 non-finite state, 3 another failure). The
    draws of zero model density are classified (:func:`examine_draws`) through the target's
    predictive program, compiled once per fit and used by the ArviZ export as well, so looking
    compiles nothing new: a failed solve (``ode_failed``), at the step limit
    (``ode_step_limit``), or another site whose log density is not finite, named in ``cause``.
A stiff system under an explicit solver
    Where the step limit is reached under an explicit solver and the model offers
    ``with_stiff_solver()`` (a kinetics model does), the model is rebuilt with the stiff solver
    and refitted once (:func:`refit_if_stiff`, :func:`stiff_variant`); ``stiff_switch`` and
    ``stiff_note`` say so. A solve that cannot take a step at all is bounded too: every solve
    has ``max_steps``, every optimizer loop a step or iteration limit.
A collapsed guide scale
    After the fit the guide's sd of each unconstrained coordinate is compared with the prior's;
    below :data:`COLLAPSE` (``1e-8``) of it, the coordinate is named in ``scale_collapse``.
Priors so wide that values overflow
    A draw whose values are not finite (a parameter beyond double precision, an ODE state that
    overflows) has zero density; such draws are counted (``overflow``) and the posterior's
    draws leave them out (:func:`keep_finite`).

More than :data:`TOO_MANY` (10%) of the verdict's draws with zero density, or with values that
are not finite, make the ``numerical faults`` check *unreliable*; more than :data:`SOME` (1%),
or a collapsed scale, *use with care*.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

__all__ = [
    "Faults",
    "DrawCounts",
    "STATUS_SITE",
    "COLLAPSE",
    "TOO_MANY",
    "SOME",
    "examine_draws",
    "factor_sites",
    "classify_draws",
    "fit_faults",
    "collapsed_dimensions",
    "keep_finite",
    "stiff_variant",
    "refit_if_stiff",
    "with_stiff_switch",
]

#: The deterministic site where a model records the status of its ODE solves (0 solved).
STATUS_SITE = "_ode_status"
#: Status codes of :mod:`vi_models.kinetics.ode` (kept here so that the engine needs no model package).
_STEP_LIMIT, _NONFINITE, _FAILED = 1, 2, 3
#: A guide sd below this fraction of the prior's (unconstrained) is a collapsed scale.
COLLAPSE = 1e-8
#: Fractions of the verdict's draws with zero density (or non-finite values): unreliable, with care.
TOO_MANY, SOME = 0.1, 0.01
#: Most zero-density draws classified through the predictive program (a random subset beyond).
EXAMINE = 1024
#: Share of the examined draws at the step limit that switches to the stiff solver.
STIFF_SHARE = 0.01


def _count(k: int, n: int) -> str:
    return f"{k} of {n}"


@dataclass(frozen=True)
class Faults:
    """The numerical faults of a fit, counted (see the module docstring).

    Attributes
    ----------
    nonfinite_steps : int
        Optimization steps skipped for a non-finite loss or gradient (all restarts).
    steps : int
        Optimization steps taken (all restarts).
    stopped : bool
        The fit stopped because too many steps were non-finite.
    step_cause, step_advice : str
        Why steps were non-finite, and what to do (empty when none were).
    draws : int
        Draws examined: the verdict's guide draws (``Diagnosis.faults``), or the guide draws at
        the end of the fit (``FitResult.faults``, only where steps were non-finite).
    where : str
        What those draws are, for the sentences.
    zero_density : int
        Of ``draws``, those at which the model's log density (or, at the end of the fit, its
        gradient) is not finite.
    examined : int
        Of those, how many were classified through the predictive program; the counts below
        are scaled up from them when fewer than ``zero_density`` (:data:`EXAMINE` at most).
    ode_failed : int
        Draws where an ODE solve failed (the step limit included).
    ode_step_limit : int
        Draws where an ODE solve reached its step limit with mostly accepted steps (stiffness).
    overflow : int
        Draws with values that are not finite: a parameter beyond double precision, or an ODE
        state that overflowed. The posterior's draws leave them out.
    cause, advice : str
        Why the draws have zero density (the site is named), and what to do.
    stiff_switch : bool
        The explicit solver reached its step limit and the model was refitted with a stiff one.
    stiff_note : str
        A sentence saying so.
    scale_collapse : tuple of str
        Unconstrained coordinates whose guide sd is below :data:`COLLAPSE` of the prior's.
    """

    nonfinite_steps: int = 0
    steps: int = 0
    stopped: bool = False
    step_cause: str = ""
    step_advice: str = ""
    draws: int = 0
    where: str = "guide draws"
    zero_density: int = 0
    examined: int = 0
    ode_failed: int = 0
    ode_step_limit: int = 0
    overflow: int = 0
    cause: str = ""
    advice: str = ""
    stiff_switch: bool = False
    stiff_note: str = ""
    scale_collapse: tuple = field(default_factory=tuple)

    @property
    def any(self) -> bool:
        """Whether any fault was met."""
        return bool(
            self.nonfinite_steps or self.stopped or self.zero_density or self.overflow or self.stiff_switch
            or self.scale_collapse
        )

    def share(self, count: int) -> float:
        """``count`` as a fraction of the draws examined (0 when there were none)."""
        return count / self.draws if self.draws else 0.0

    @property
    def level(self) -> str:
        """``"unreliable"`` when the posterior is affected, ``"use with care"``, else ``"reliable"``."""
        from ..checks.diagnostics import CARE, RELIABLE, UNRELIABLE

        if self.stopped or self.share(self.zero_density) > TOO_MANY or self.share(self.overflow) > TOO_MANY:
            return UNRELIABLE
        if self.draws and self.zero_density == self.draws:
            return UNRELIABLE
        if (
            self.share(self.zero_density) > SOME
            or self.share(self.overflow) > SOME
            or self.scale_collapse
            or self.nonfinite_steps > SOME * max(self.steps, 1)
        ):
            return CARE
        return RELIABLE

    def draw_sentence(self) -> str:
        """What failed at the draws of zero density, one sentence (empty when there were none)."""
        if not self.zero_density:
            return ""
        estimated = self.examined < self.zero_density
        about = "about " if estimated else ""
        parts = []
        if self.ode_failed and self.ode_step_limit == self.ode_failed:
            parts.append(f"the ODE solve hit its step limit at {about}{self.ode_step_limit} of them")
        elif self.ode_failed:
            limit = f" ({self.ode_step_limit} at its step limit)" if self.ode_step_limit else ""
            parts.append(f"the ODE solve failed at {about}{self.ode_failed} of them{limit}")
        if self.overflow:
            parts.append(f"values are beyond double precision (an overflow) at {about}{self.overflow} of them")
        what = "a non-finite log density or gradient" if "end of the fit" in self.where else "zero model density"
        head = f"{_count(self.zero_density, self.draws)} {self.where} have {what}"
        if estimated:
            head += f" ({self.examined} of them examined)"
        return head + "".join(f"; {p}" for p in parts) + (f"; cause: {self.cause}" if self.cause else "")

    def notes(self) -> list[str]:
        """Plain sentences, one per fault met."""
        out = []
        if self.stiff_note:
            out.append(self.stiff_note)
        # The cause of the skipped steps is said once: with the draws where it is the same.
        step_cause = self.step_cause if self.step_cause and self.step_cause != self.cause else ""
        if self.nonfinite_steps:
            text = (
                f"{_count(self.nonfinite_steps, max(self.steps, self.nonfinite_steps))} optimization steps had a "
                "non-finite loss or gradient and were skipped"
            )
            if self.stopped:
                text += "; the fit stopped because there were too many (do not use this posterior)"
            out.append(text + (f": {step_cause}" if step_cause else ""))
        elif self.stopped:
            out.append(
                "the fit stopped because too many steps were non-finite (do not use this posterior)"
                + (f": {step_cause}" if step_cause else "")
            )
        draw = self.draw_sentence()
        if draw:
            out.append(draw + ("; the posterior's draws leave them out" if self.zero_density < self.draws else ""))
        if self.scale_collapse:
            names = ", ".join(self.scale_collapse[:4]) + (" and others" if len(self.scale_collapse) > 4 else "")
            out.append(
                f"the guide's scale collapsed: its sd of {names} (unconstrained) is below {COLLAPSE:g} of the prior's, "
                "so it carries no uncertainty there"
            )
        return out

    def check(self):
        """The verdict's ``numerical faults`` check, or None when no fault was met."""
        from ..checks.diagnostics import RELIABLE, Check

        if not self.any:
            return None
        level = self.level
        advice = ""
        if level != RELIABLE:
            if self.zero_density and self.advice:
                advice = self.advice
            elif self.nonfinite_steps and self.step_advice:
                advice = self.step_advice
            elif self.scale_collapse:
                advice = (
                    "check the model for a parameter the data determine exactly or a noise scale that went to "
                    "zero; fit with guide='multivariate_normal' from the MAP (guide='auto')"
                )
            else:
                advice = self.advice or self.step_advice
        return Check("numerical faults", level, "; ".join(self.notes()), advice)

    def with_draws(self, other: Faults) -> Faults:
        """Return this record (the fit's) with the draw counts of ``other`` (the verdict's draws)."""
        return replace(
            self,
            draws=other.draws,
            where=other.where,
            zero_density=other.zero_density,
            examined=other.examined,
            ode_failed=other.ode_failed,
            ode_step_limit=other.ode_step_limit,
            overflow=other.overflow,
            cause=other.cause,
            advice=other.advice,
        )

    def as_dict(self) -> dict:
        """Plain data (for ``fit.json``), with the notes."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        out["notes"] = self.notes()
        return out


# -- classifying draws of zero density ---------------------------------------------------------------
class DrawCounts(NamedTuple):
    """What :func:`classify_draws` found at draws of zero density (counts among those examined)."""

    examined: int
    step_limit: int
    ode_nonfinite: int
    ode_other: int
    value_overflow: int
    gradient_only: int
    other: int
    cause: str
    advice: str


def _flat_rows(value, n: int) -> np.ndarray:
    a = np.asarray(value)
    return a.reshape(n, -1) if a.size else np.zeros((n, 0))


def _describe_prior(fn) -> str:
    name = type(fn).__name__ if fn is not None else ""
    return f" (its prior, {name}, allows negative values)" if name else ""


def classify_draws(latent: dict, log_joint, log_likelihood: dict, *, sites=(), observed: dict | None = None,
                   good: dict | None = None, priors: dict | None = None, factors=()) -> DrawCounts:
    """Classify draws of zero density by what failed there.

    Parameters
    ----------
    latent : dict of str to ndarray
        Constrained values of the latent and deterministic sites at the ``n`` draws, each
        ``(n, *shape)`` (``_ode_status`` among them for a kinetics model).
    log_joint : ndarray, shape (n,)
        The model's log joint density there.
    log_likelihood : dict of str to ndarray
        Pointwise log likelihood of each observed site, ``(n, *shape)``.
    sites : sequence of str
        The latent sample sites (the others in ``latent`` are deterministic).
    observed : dict of str to ndarray, optional
        Observed values, for the scale of the data.
    good : dict of str to ndarray, optional
        Values of the scalar latent sites at draws of finite density, to tell which parameter
        separates the failing draws from the others.
    priors : dict of str to Distribution, optional
        Each latent site's prior, named in the sentence.
    factors : sequence of str
        The model's factor sites (``numpyro.factor``), named where no observed site is to blame.

    Returns
    -------
    DrawCounts
        Counts per cause (a draw counts once, under the first that applies: values not finite,
        an ODE solve, a finite density with a non-finite gradient, another site), with the
        sentence of the most frequent cause and its advice.
    """
    log_joint = np.asarray(log_joint, dtype=float)
    n = log_joint.size
    if n == 0:
        return DrawCounts(0, 0, 0, 0, 0, 0, 0, "", "")
    sites = list(sites) or [k for k in latent if k != STATUS_SITE]
    values_bad = np.zeros(n, bool)
    overflowing = []
    for name in sites:
        if name not in latent:
            continue
        rows = _flat_rows(latent[name], n).astype(float)
        bad = ~np.all(np.isfinite(rows), axis=1)
        if _positive((priors or {}).get(name)):
            bad |= np.any(rows == 0, axis=1)  # exp(u) underflowed to 0, where the prior has no density
        if bad.any():
            overflowing.append(name)
        values_bad |= bad
    status = np.zeros(n, int)
    if STATUS_SITE in latent:
        status = np.max(_flat_rows(latent[STATUS_SITE], n), axis=1, initial=0).astype(int)
    status = np.where(values_bad, 0, status)
    step_limit = status == _STEP_LIMIT
    ode_nonfinite = status == _NONFINITE
    ode_other = status == _FAILED
    rest = ~values_bad & (status == 0)
    gradient_only = rest & np.isfinite(log_joint)
    other = rest & ~np.isfinite(log_joint)
    counts = {
        "step": int(step_limit.sum()),
        "nonfinite": int(ode_nonfinite.sum()),
        "ode": int(ode_other.sum()),
        "values": int(values_bad.sum()),
        "gradient": int(gradient_only.sum()),
        "other": int(other.sum()),
    }
    sentences = {
        "step": (
            "the ODE solve reached its step limit with steps far shorter than the time span of the data: the system "
            "is stiff for the explicit solver",
            "use the stiff solver: stiff=True (kinetics.model(..., solver={'stiff': True}), [solver] stiff = true, "
            "or --stiff on the command line); or raise the solver's max_steps",
        ),
        "nonfinite": (
            "the ODE solution is not finite (it overflows double precision, or the system blows up)",
            "narrow the priors of the rate constants: their draws reach rates whose solution overflows",
        ),
        "ode": (
            "the ODE solver reported a failure",
            "try the stiff solver (stiff=True, --stiff) or looser tolerances (rtol, atol)",
        ),
        "values": (
            f"the values of {', '.join(overflowing[:3]) or 'a parameter'} are beyond double precision (they overflow "
            "to infinity or underflow to zero): the prior is so wide that its draws do",
            f"narrow the prior of {', '.join(overflowing[:3]) or 'that parameter'}",
        ),
        "gradient": (
            "the log density is finite but its gradient is not (values so large or small that products and squares "
            "overflow or underflow double precision)",
            "rescale the data (a unit in which values are near 1) or narrow the priors",
        ),
        "other": _other_cause(latent, log_likelihood, other, sites, good, priors, STATUS_SITE in latent, factors),
    }
    scale = _data_scale(observed)
    if scale is not None and (counts["gradient"] or counts["other"]):
        key = "gradient" if counts["gradient"] >= counts["other"] else "other"
        sentences[key] = (
            f"the data are of order {scale:.0e}, where squares and products of values underflow or overflow double "
            "precision, so the likelihood (or its gradient) is not finite",
            "rescale the data to a unit in which values are near 1 (e.g. another concentration unit)",
        )
    present = [k for k in sorted(counts, key=lambda k: -counts[k]) if counts[k]]
    cause = "; ".join(f"{sentences[k][0]} ({_count(counts[k], n)})" for k in present) if len(present) > 1 else (
        sentences[present[0]][0] if present else ""
    )
    advice = sentences[present[0]][1] if present else ""
    return DrawCounts(n, counts["step"], counts["nonfinite"], counts["ode"], counts["values"], counts["gradient"],
                      counts["other"], cause, advice)


def _data_scale(observed: dict | None) -> float | None:
    """The largest observed magnitude where it is beyond 1e-100 .. 1e100 (else None)."""
    if not observed:
        return None
    values = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in observed.values()])
    values = np.abs(values[np.isfinite(values)])
    if not values.size or values.max() == 0:
        return None
    top = float(values.max())
    return top if top < 1e-100 or top > 1e100 else None


def _positive(fn) -> bool:
    """Whether the support of distribution ``fn`` holds positive numbers only."""
    from numpyro.distributions import constraints

    support = getattr(fn, "support", None)
    return support is constraints.positive or isinstance(support, type(constraints.positive))


def _other_cause(latent, log_likelihood, other, sites, good, priors, ode: bool, factors=()) -> tuple[str, str]:
    """The sentence for draws where a site other than an ODE solve has a non-finite log density."""
    if not other.any():
        return "", ""
    n = other.size
    named = [name for name, v in log_likelihood.items() if not np.all(np.isfinite(_flat_rows(v, n)[other]))]
    solved = " where every ODE solve succeeded" if ode else ""
    # With a status site, the ODE's own factor is zero at these draws: the others are to blame.
    factors = [f for f in factors if not (ode and f == "ode_solve_failed")]
    if named:
        where = f"the log likelihood of {', '.join(repr(x) for x in named[:3])} is not finite{solved}"
    elif factors == ["ode_solve_failed"]:
        # A kinetics model without a status site (its solves' failures are not told apart).
        where = "an ODE solve failed there (the factor 'ode_solve_failed' is -inf)"
        advice = "try the stiff solver (stiff=True, --stiff), raise the solver's max_steps, or narrow the rate priors"
    elif factors:
        which = f"the factor {factors[0]!r}" if len(factors) == 1 else f"one of the factors {', '.join(map(repr, factors[:4]))}"
        where = f"{which} is -inf there (every observed site's log likelihood is finite): the model rules those draws out"
        advice = "give the priors no mass where the model rules draws out (or make the constraint soft)"
    else:
        where = (
            "the model's log density is not finite there, though every observed site's is (a prior at the boundary "
            "of its support)"
        )
    # A scalar parameter that is negative at every such draw and positive elsewhere is the cause,
    # e.g. a noise scale under a prior on the whole real line.
    for name in sites:
        if name not in latent or (good is not None and name not in good):
            continue
        rows = _flat_rows(latent[name], n)
        if rows.shape[1] != 1:
            continue
        here = rows[other, 0].astype(float)
        elsewhere = np.asarray(good[name], dtype=float).ravel() if good is not None else np.zeros(0)
        if here.size and np.all(here < 0) and elsewhere.size and np.mean(elsewhere > 0) > 0.99:
            prior = _describe_prior((priors or {}).get(name))
            return (
                f"{where}: at every such draw {name} is negative{prior}, outside the support it needs there "
                "(a scale must be positive)",
                f"give {name} a prior on positive values (e.g. HalfNormal or LogNormal)",
            )
    if not named and factors:
        return where, advice
    return where, "give the priors no mass where the model is undefined (check the support of each prior)"


def examine_draws(target, u: np.ndarray, log_p: np.ndarray, *, seed: int = 0, where: str = "guide draws",
                  limit: int = EXAMINE) -> Faults:
    """Count and classify the draws ``u`` (``(n, d)``, flat) whose log density ``log_p`` is not finite.

    The draws of zero density (at most ``limit``, a random subset beyond) go through the target's
    predictive program (``target.predict``): constrained values, the ODE status site and the
    pointwise log likelihoods tell what failed there (:func:`classify_draws`). Nothing is
    evaluated where every draw is finite.

    Returns
    -------
    Faults
        Only the draw counts set.
    """
    u = np.asarray(u, dtype=float)
    log_p = np.asarray(log_p, dtype=float)
    n = u.shape[0]
    bad = ~np.isfinite(log_p)
    if not bad.any():
        return Faults(draws=n, where=where)
    idx = np.flatnonzero(bad)
    if idx.size > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    nan_rows = ~np.all(np.isfinite(u[idx]), axis=1)
    counts = None
    looked = idx[~nan_rows]
    if looked.size:
        try:
            pred = target.predict(u[looked], seed=seed)
            good_rows = np.flatnonzero(~bad)[:4096]
            good = _identity_values(target, u[good_rows]) if good_rows.size else None
            priors = {k: s.get("fn") for k, s in target.prototype_trace.items() if s.get("type") == "sample"}
            counts = classify_draws(pred.latent, pred.log_joint, pred.log_likelihood, sites=target.layout.names,
                                    observed=pred.observed, good=good, priors=priors,
                                    factors=factor_sites(target.prototype_trace))
        except Exception as err:  # noqa: BLE001 - the count must never cost the fit
            counts = DrawCounts(looked.size, 0, 0, 0, 0, 0, looked.size, f"the draws could not be examined ({err})", "")
    examined = int(idx.size)
    scale = bad.sum() / examined

    def up(k: int) -> int:
        return int(round(k * scale))

    c = counts or DrawCounts(0, 0, 0, 0, 0, 0, 0, "", "")
    value_bad = int(nan_rows.sum()) + c.value_overflow
    cause, advice = c.cause, c.advice
    if nan_rows.any():
        text = f"the guide's draws themselves are not finite at {_count(int(nan_rows.sum()), examined)} examined"
        cause = text + (f"; {cause}" if cause else "")
        advice = advice or "the guide's parameters are not finite: refit, e.g. with guide='auto'"
    return Faults(
        draws=n,
        where=where,
        zero_density=int(bad.sum()),
        examined=examined,
        ode_failed=up(c.step_limit + c.ode_nonfinite + c.ode_other),
        ode_step_limit=up(c.step_limit),
        overflow=up(value_bad + c.ode_nonfinite),
        cause=cause,
        advice=advice,
    )


def factor_sites(trace: dict) -> list[str]:
    """Names of the factor sites (``numpyro.factor``) of a model trace."""
    from numpyro.distributions.distribution import Unit

    return [
        name for name, site in trace.items()
        if site.get("type") == "sample" and site.get("is_observed") and isinstance(site.get("fn"), Unit)
    ]


def _identity_values(target, u: np.ndarray) -> dict:
    """Values of the scalar latent sites whose unconstrained value is the value itself (support: real)."""
    from numpyro.distributions import constraints

    out, i = {}, 0
    for name, shape in zip(target.layout.names, target.layout.shapes):
        size = int(np.prod(shape))
        fn = target.prototype_trace.get(name, {}).get("fn")
        if size == 1 and fn is not None and fn.support is constraints.real:
            out[name] = u[:, i]
        i += size
    return out


# -- after a fit ------------------------------------------------------------------------------------
def collapsed_dimensions(target, u_guide: np.ndarray, *, seed: int = 0, threshold: float = COLLAPSE) -> tuple[str, ...]:
    """Labels of the coordinates where the guide's sd (of draws ``u_guide``) is below ``threshold`` of the prior's."""
    u_guide = np.asarray(u_guide, dtype=float)
    rows = np.all(np.isfinite(u_guide), axis=1)
    if rows.sum() < 2:
        return ()
    sd_q = u_guide[rows].std(axis=0)
    prior = target.prior_draws(max(4 * target.batch_size, 256), seed=seed)
    prior = prior[np.all(np.isfinite(prior), axis=1)]
    if prior.shape[0] < 2:
        return ()
    sd_p = prior.std(axis=0)
    labels = target.layout.labels()
    with np.errstate(invalid="ignore"):
        small = np.isfinite(sd_p) & (sd_p > 0) & (sd_q < threshold * sd_p)
    return tuple(labels[j] for j in np.flatnonzero(small))


def fit_faults(posterior, restart: int, seed: int, nonfinite_steps, num_steps: int, stop_reason) -> Faults:
    """The faults a flat fit met: skipped steps (with their cause) and a collapsed scale.

    ``8 B`` draws of the fitted guide are compared with the prior (:func:`collapsed_dimensions`);
    where steps were skipped, the log density and gradient at those draws are examined
    (:func:`examine_draws`) to name the cause.
    """
    from .stopping import StopReason

    target = posterior.target
    nonfinite_steps = np.asarray(nonfinite_steps)
    bad_steps = int(nonfinite_steps.sum())
    stopped = StopReason(stop_reason) == StopReason.NONFINITE
    u, _ = posterior.draw_guide(restart, seed + 7, target.batch_size * 8)
    faults = Faults(
        nonfinite_steps=bad_steps,
        steps=int(num_steps) * int(nonfinite_steps.size),
        stopped=stopped,
        scale_collapse=collapsed_dimensions(target, u, seed=seed + 8),
    )
    if not (bad_steps or stopped):
        return faults
    log_p, _ = target.log_density(u, grad=True)  # a step fails where the value or the gradient does
    found = examine_draws(target, u, log_p, seed=seed, where="guide draws at the end of the fit")
    if found.zero_density:
        step_cause = found.cause or (
            f"the log density or its gradient is not finite at {_count(found.zero_density, found.draws)} guide draws "
            "at the end of the fit"
        )
        step_advice = found.advice
    else:
        step_cause = (
            "the log density or its gradient was not finite at some steps, but at none of "
            f"{found.draws} guide draws at the end of the fit (the optimizer passed through a region where the "
            "model is undefined)"
        )
        step_advice = "give the priors less mass where the model is undefined, or lower the learning rate (lr)"
    return replace(faults.with_draws(found), step_cause=step_cause, step_advice=step_advice)


def keep_finite(pred, log_q: np.ndarray, seed: int):
    """Leave draws with zero density or non-finite values out of predictive draws ``pred``.

    Each left-out draw is replaced by one of the good draws chosen at random (the guide restricted
    to where the model has a density: importance weights 0 or 1). Where no draw is good, draws
    with finite values are kept the same way; where none has, ``pred`` is returned as it is.

    Returns
    -------
    (PredictiveDraws, ndarray, int)
        The draws, their ``log_q`` and the number left out.
    """
    n = int(np.asarray(pred.log_joint).size)
    finite_values = np.ones(n, bool)
    for value in pred.latent.values():
        a = np.asarray(value)
        if a.dtype.kind == "f":
            finite_values &= np.all(np.isfinite(a.reshape(n, -1)), axis=1)
    ok = finite_values & np.isfinite(np.asarray(pred.log_joint, dtype=float))
    if not ok.any():
        ok = finite_values
    if ok.all() or not ok.any():
        return pred, log_q, 0
    idx = np.arange(n)
    bad = np.flatnonzero(~ok)
    idx[bad] = np.random.default_rng(seed).choice(np.flatnonzero(ok), size=bad.size)

    def take(d):
        return {k: np.asarray(v)[idx] for k, v in d.items()}

    pred = pred._replace(
        latent=take(pred.latent),
        log_joint=np.asarray(pred.log_joint)[idx],
        log_det_jacobian=np.asarray(pred.log_det_jacobian)[idx],
        log_likelihood=take(pred.log_likelihood),
        predictive=take(pred.predictive),
    )
    return pred, np.asarray(log_q)[idx], int(bad.size)


# -- the stiff switch ------------------------------------------------------------------------------
def _solver_name(model) -> str:
    options = getattr(model, "solver", None)
    name = getattr(options, "solver", None)
    if getattr(options, "stiff", False):
        return "kvaerno5"
    return str(name) if isinstance(name, str) else "the explicit solver"


def stiff_variant(model, faults: Faults):
    """``(stiff model, sentence)`` where ``faults`` show the step limit and the model has a stiff variant, else None.

    The step limit must have been reached at more than :data:`STIFF_SHARE` of the draws examined
    (and at least one); the model must offer ``with_stiff_solver()`` returning a new model (a
    kinetics model on an explicit solver does).
    """
    if not faults.ode_step_limit or faults.ode_step_limit < STIFF_SHARE * max(faults.draws, 1):
        return None
    make = getattr(model, "with_stiff_solver", None)
    stiff = make() if callable(make) else None
    if stiff is None:
        return None
    sentence = (
        f"the ODE solve hit its step limit at {_count(faults.ode_step_limit, faults.draws)} {faults.where} under "
        f"{_solver_name(model)}: the system is stiff; it was refitted with the stiff solver {_solver_name(stiff)}"
    )
    return stiff, sentence


def with_stiff_switch(result, sentence: str, *, started: float | None = None):
    """``result`` marked as refitted with the stiff solver: its faults, record and any verdict already made say so.

    ``started`` (a ``time.perf_counter()`` reading) makes the total time run from there, so that
    it includes the fit with the explicit solver.
    """
    from ..checks.diagnostics import Diagnosis

    faults = replace(result.faults or Faults(), stiff_switch=True, stiff_note=sentence)
    cache = {}
    for key, value in result._cache.items():
        if isinstance(value, Diagnosis):
            value = refresh_diagnosis(value, faults)
        cache[key] = value
    settings = dict(result.settings, stiff_switch=sentence)
    timings = result.timings
    if started is not None:
        timings = timings._replace(total_s=time.perf_counter() - started)
    return replace(result, faults=faults, settings=settings, timings=timings, _cache=cache)


def refresh_diagnosis(diagnosis, fit: Faults):
    """``diagnosis`` with its faults (and its verdict's ``numerical faults`` check) made from ``fit`` and its draws."""
    from ..checks.diagnostics import Verdict

    merged = fit.with_draws(diagnosis.faults) if diagnosis.faults is not None else fit
    v = diagnosis.verdict
    checks = [c for c in v.checks if c.name != "numerical faults"]
    check = merged.check()
    if check is not None:
        checks.insert(0, check)
    verdict = Verdict.from_checks(checks, khat=v.khat, khat_draws=v.khat_draws, ess=v.ess)
    return replace(diagnosis, verdict=verdict, faults=merged)


def refit_if_stiff(result, refit):
    """Refit once with the stiff solver where the fit's draws hit the ODE step limit (see :func:`stiff_variant`).

    Parameters
    ----------
    result : FitResult
        A fit on the flat engine; its ``faults`` hold the draws examined at the end of the fit.
    refit : callable
        ``refit(target) -> FitResult``: the same fit on another target.

    Returns
    -------
    FitResult
        ``result`` itself, or the refit with the stiff solver (:func:`with_stiff_switch`).
    """
    from .target import make_target

    if result.faults is None or result.posterior is None:
        return result
    target = result.posterior.target
    found = stiff_variant(target.model, result.faults)
    if found is None:
        return result
    stiff, sentence = found
    started = time.perf_counter() - result.timings.total_s
    stiff_target = make_target(stiff, target.args, target.kwargs, batch_size=target.batch_size)
    new = refit(stiff_target)
    # Both fits, and compiling the stiff model, are this fit's time.
    t = new.timings
    new = replace(new, timings=t._replace(compile_s=t.compile_s + stiff_target.compile_s + result.timings.compile_s))
    return with_stiff_switch(new, sentence, started=started)

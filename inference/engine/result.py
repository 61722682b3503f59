"""The result of a fit, as data: :class:`FitResult`, :class:`Timings` and :class:`Summary`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np

from .settings import positive_int
from .stopping import StopReason, final_window

__all__ = ["FitResult", "Timings", "Summary", "subsampled_plates"]


def _seed(seed):
    """``seed`` as an int (or None); a sentence when it is not a whole number."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer (or None for the fit's seed plus one), got {seed!r}")
    return int(seed)


def subsampled_plates(model, args=(), kwargs=None) -> dict:
    """Plates of ``model`` that draw a random subsample of their points on each run.

    The model is traced abstractly (``jax.eval_shape``: shapes only, nothing is computed).

    Parameters
    ----------
    model : callable
        A NumPyro model.
    args : tuple
    kwargs : dict, optional
        The model's arguments.

    Returns
    -------
    dict of str to (int, int)
        ``{plate name: (size, subsample_size)}`` for every ``numpyro.plate`` whose
        ``subsample_size`` is smaller than its ``size``; empty when the model sees all its data.
    """
    from numpyro import handlers

    found = {}

    def run():
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **(kwargs or {}))
        for name, site in trace.items():
            if site["type"] == "plate":
                size, subsample_size = site["args"]
                if subsample_size is not None and subsample_size != size:
                    found[name] = (int(size), int(subsample_size))
        return 0

    try:
        jax.eval_shape(run)
    except Exception:  # noqa: BLE001 - a model that needs concrete values: trace it for real
        found.clear()
        run()
    return found


class Timings(NamedTuple):
    """Wall-clock seconds of the phases of a fit.

    Attributes
    ----------
    init_s : float
        Guide set-up and initial parameters (compiled).
    compile_s : float
        Compiling the optimization chunk.
    run_s : float
        Running the optimization.
    total_s : float
        The whole ``fit`` call.
    """

    init_s: float
    compile_s: float
    run_s: float
    total_s: float


@dataclass(frozen=True)
class Summary:
    """Posterior table and fit status, printable.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scalar parameter: ``mean``, ``sd``, ``hdi_3%``, ``hdi_97%`` (the 94% HDI).
    guide, objective : str
    stop_reason : str
    num_steps : int
    elbo : float
        ELBO of the best restart, averaged over its last 10% of steps (at least 50).
    notes : tuple of str
        Sentences about the fit a reader should see (skipped steps, failures).
    verdict : Verdict or None
        Whether to trust the posterior (see :mod:`inference.checks.diagnostics`).
    attempts : tuple of inference.engine.auto.Attempt
        With ``guide="auto"``: every guide tried and why the search moved on.
    draws_from : str
        Empty when the table comes from the guide's draws; for the exact stage of
        ``guide="auto"``, where the draws come from, e.g. ``"NUTS through the multivariate_t
        guide's transport map (exact stage of auto) | 4 chains x 3000 draws ..."``. The first line
        then names the draws, and the second the guide whose map NUTS ran through.
    """

    table: Any
    guide: str
    objective: str
    stop_reason: str
    num_steps: int
    elbo: float
    notes: tuple[str, ...] = ()
    verdict: Any = None
    attempts: tuple = ()
    draws_from: str = ""

    def __str__(self) -> str:
        fit = (
            f"objective: {self.objective} | stopped: {self.stop_reason} after {self.num_steps} steps | "
            f"ELBO {self.elbo:.3f}"
        )
        if self.draws_from:
            lines = [f"draws: {self.draws_from}", f"transport map: the {self.guide} guide | {fit}"]
        else:
            lines = [f"guide: {self.guide} | {fit}"]
        if self.attempts:
            lines += ["", "guide='auto' tried:"] + [
                f"  {a.guide}: {a.outcome} [{a.level}; {a.num_steps} steps, {a.seconds:.1f} s]" for a in self.attempts
            ]

        def cell(value) -> str:
            # Significant figures, not decimals: 1.2e-4 prints as 0.00012, 0.005123 as 0.005123.
            if isinstance(value, (float, np.floating)):
                return f"{float(value):.4g}"
            return str(value)

        lines += ["", self.table.map(cell).to_string()]
        lines += [""] + [f"note: {n}" for n in self.notes] if self.notes else []
        if self.verdict is not None:
            lines += ["", str(self.verdict)]
        return "\n".join(lines)

    def to_csv(self, path) -> None:
        """Write the table as CSV (one row per parameter), every number at full precision.

        Numbers are written as the shortest text that reads back as the same float (Python's
        ``repr``), so a rate of 1.2e-4 is not rounded away; only the printed table is shortened.
        """
        self.table.to_csv(path, index_label="parameter", float_format=None)


@dataclass(frozen=True, eq=False)
class FitResult:
    """Everything a fit produced. Arrays are NumPy; shapes are documented per field.

    Attributes
    ----------
    model, guide : callable
        The NumPyro model and the fitted guide.
    guide_name, objective_name : str
    model_args : tuple
    model_kwargs : dict
    params : dict of str to ndarray
        Constrained guide parameters of the best restart, averaged over the last window of steps
        (iterate averaging).
    restart_params : dict of str to ndarray
        The same for every restart, each with leading axis ``R``.
    losses : ndarray, shape (R, num_steps)
        Loss (negative ELBO) per restart and step; NaN where a step was skipped.
    best_restart : int
        Index of the restart with the highest final ELBO.
    stop_reason : StopReason
    num_steps : int
    nonfinite_steps : ndarray, shape (R,)
        Steps skipped because the loss or gradient was not finite.
    nonfinite_reason : str or None
        A sentence naming the site or parameter of the most recent non-finite step.
    timings : Timings
    seed : int
    settings : dict
        The settings of the fit (plain data, for ``fit.json``).
    attempts : tuple of inference.engine.auto.Attempt
        With ``guide="auto"``: every guide tried, in order (the MAP stage first), with its
        verdict and why the search moved on. Empty for a named guide.
    extra_checks : tuple of Check
        Checks computed while fitting that the verdict includes (``guide="auto"``: whether the
        MAP starts found separate optima).
    posterior : FlatPosterior or None
        For a fit on the flat engine: the compiled target, the guide family and its parameters
        per restart (draws and densities come from it); None for a fit through NumPyro's SVI.
    faults : inference.engine.faults.Faults or None
        The numerical faults the fit met (skipped steps and their cause, a collapsed guide
        scale, a switch to the stiff ODE solver); the verdict adds its draws' counts
        (``diagnose().faults``). None for a fit through NumPyro's SVI.
    """

    model: Any
    guide: Any
    guide_name: str
    objective_name: str
    model_args: tuple
    model_kwargs: dict
    params: dict
    restart_params: dict
    losses: np.ndarray
    best_restart: int
    stop_reason: StopReason
    num_steps: int
    nonfinite_steps: np.ndarray
    nonfinite_reason: str | None
    timings: Timings
    seed: int
    settings: dict
    attempts: tuple = ()
    extra_checks: tuple = ()
    posterior: Any = None
    faults: Any = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_restarts(self) -> int:
        """Number of restarts ``R``."""
        return self.losses.shape[0]

    @property
    def elbo(self) -> float:
        """ELBO of the best restart: its final value on fixed draws, else averaged over its last 10% of steps (at least 50)."""
        trace = self.losses[self.best_restart]
        if self.settings.get("draws") == "fixed":
            finite = trace[np.isfinite(trace)]
            return float(-finite[-1]) if finite.size else float("nan")
        tail = final_window(trace)
        tail = tail[np.isfinite(tail)]
        return float(-tail.mean()) if tail.size else float("nan")

    @property
    def exact_stage_draws(self) -> bool:
        """Whether the draws are NUTS's through the guide's transport map (the exact stage of ``guide="auto"``).

        Such a result keeps its guide's name, parameters, loss trace and ELBO (the guide's map is
        what NUTS ran through), but :meth:`sample`, :meth:`summary` and :meth:`to_arviz` give the
        NUTS draws of the best restart, and its verdict rests on the chains' R-hat and ESS.
        """
        p = self.posterior
        return p is not None and p.importance is not None and str(p.importance_source).startswith("NUTS")

    @property
    def draws_label(self) -> str:
        """Where the draws come from, in a few words, for labels: the guide's name, or for the exact stage

        ``"NUTS through the multivariate_t guide's transport map (exact stage of auto)"``.
        """
        if self.exact_stage_draws:
            return f"NUTS through {self.exact_map} (exact stage of auto)"
        return self.guide_name

    @property
    def exact_map(self) -> str:
        """The map the exact stage's NUTS ran through, in words (``"the multivariate_normal guide's transport map"``,
        or a map that non-centres a funnel's sites); empty when the draws are not the exact stage's."""
        if not self.exact_stage_draws:
            return ""
        source = str(self.posterior.importance_source)
        if "non-centres" in source:
            return source.split("NUTS through ", 1)[1].split(" (NeuTra", 1)[0]
        return f"the {self.guide_name} guide's transport map"

    def _exact_run_text(self) -> str:
        """The exact stage's chains in one sentence (chains, draws, R-hat, ESS, divergences); empty otherwise."""
        if not self.exact_stage_draws:
            return ""
        source = str(self.posterior.importance_source)
        return source.split(": ", 1)[1] if ": " in source else ""

    def _exact_model_draws(self, seed: int, n: int):
        """``n`` of the exact stage's NUTS draws with their densities (:meth:`FlatPosterior.model_draws`'s fields).

        Distinct draws (a random subset, without replacement) when ``n`` is at most the number of
        NUTS draws ``N``; beyond that every draw ``n // N`` or ``n // N + 1`` times.
        """
        from .faults import keep_finite
        from .posterior import ModelDraws

        _, u, log_q, _ = self.posterior.importance
        total = u.shape[0]
        rng = np.random.default_rng(seed)
        whole, rest = divmod(int(n), total)
        idx = np.concatenate([rng.permutation(total) for _ in range(whole)] + [rng.choice(total, rest, replace=False)])
        if whole:
            rng.shuffle(idx)
        pred, log_q, _ = keep_finite(self.posterior.target.predict(u[idx], seed=seed + 1), log_q[idx], seed + 2)
        with np.errstate(invalid="ignore"):
            log_q_c = log_q - pred.log_det_jacobian
        return ModelDraws(pred.latent, pred.log_joint, log_q_c, pred.log_likelihood, pred.predictive)

    def _flat_model_draws(self, restart: int, seed: int, n: int):
        """Draws of one restart on the flat engine; the exact stage's restart gives its NUTS draws (see :meth:`sample`)."""
        if self.exact_stage_draws and self.posterior.importance[0] == restart:
            return self._exact_model_draws(seed, n)
        return self.posterior.model_draws(restart, seed, n)

    @property
    def subsampled_plates(self) -> dict:
        """Plates of the model that draw a random minibatch on each run: ``{name: (size, subsample_size)}``.

        Empty for a model that sees all its data. See :func:`subsampled_plates`.
        """
        if self.posterior is not None:
            return {}  # the flat engine refuses subsampled plates
        if "subsampled_plates" not in self._cache:
            self._cache["subsampled_plates"] = subsampled_plates(self.model, self.model_args, self.model_kwargs)
        return self._cache["subsampled_plates"]

    def require_full_data(self, what: str) -> None:
        """Raise ValueError if the model subsamples its data (draws from it would mix minibatches).

        Draws from the guide, their model densities, the verdict's checks and the ArviZ groups all
        run the model; with a subsampled plate each run sees another random minibatch, so the
        draws would belong to different data points. ``what`` names the call in the message.
        """
        if not self.subsampled_plates:
            return
        name, (size, subsample_size) = next(iter(self.subsampled_plates.items()))
        raise ValueError(
            f"{what} cannot use this fit: its model's plate {name!r} draws a random minibatch of {subsample_size} "
            f"of its {size} points on every run, so each draw would belong to other data points; condition on a "
            "fixed set of points instead (for a VAE: VAEFit.local_result(data, points)), or give the fitted "
            "parameters to a model that sees all its data (subsample_size=None, for a VAE batch_size=None). The "
            "fitted parameters and the loss history are still here (result.params, result.losses)"
        )

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Names of the model's latent sample sites, in model order."""
        if "latent_sites" not in self._cache and self.posterior is not None:
            self._cache["latent_sites"] = tuple(self.posterior.target.layout.model_order)
        if "latent_sites" not in self._cache:
            trace = getattr(self.guide, "prototype_trace", None)
            if trace is not None:
                from .sampling import latent_sites

                names = tuple(latent_sites(trace))
            else:
                names = tuple(self.sample(2, seed=0))
            self._cache["latent_sites"] = names
        return self._cache["latent_sites"]

    def sample(self, num_samples: int = 1000, *, seed: int | None = None, restart: int | None = None) -> dict:
        """Draw from the fitted guide (or, for the exact stage of ``guide="auto"``, from its NUTS draws).

        Where the fit's draws are importance-resampled (``settings["draws_from"]``), the best
        restart's draws are resampled from them with replacement. Where they are the exact stage's
        NUTS draws (:attr:`exact_stage_draws`), ``n`` at most their number ``N`` gives ``n``
        distinct NUTS draws (a random subset, without replacement, so ``n = N`` gives every draw
        once); a larger ``n`` repeats draws: every draw ``n // N`` or ``n // N + 1`` times, which
        adds no information (``N`` is in ``settings["draws_from"]``: chains x draws).

        Parameters
        ----------
        num_samples : int
            Number of draws ``n``.
        seed : int, optional
            Random seed; defaults to the fit's seed plus one.
        restart : int, optional
            Which restart to draw from; the best one by default.

        Returns
        -------
        dict of str to ndarray
            Each latent site with shape ``(n, *site_shape)``, in constrained space.

        Raises
        ------
        ValueError
            When the model subsamples its data (see :meth:`require_full_data`).
        """
        from .sampling import sample_guide

        self.require_full_data("FitResult.sample")
        num_samples = positive_int("num_samples", num_samples)
        seed = _seed(seed)
        r = self.best_restart if restart is None else self._restart(restart)
        if self.posterior is not None:
            draws = self._flat_model_draws(r, self.seed + 1 if seed is None else int(seed), num_samples)
            return {name: draws.latent[name] for name in self.latent_sites}
        params = jax.tree.map(lambda v: v[r], self.restart_params)
        key = jax.random.PRNGKey(self.seed + 1 if seed is None else seed)
        return sample_guide(self.guide, params, key, int(num_samples), self.model_args, self.model_kwargs)

    def _restart(self, restart) -> int:
        """``restart`` as the index of a restart; a sentence when it is not one."""
        if isinstance(restart, bool) or not isinstance(restart, (int, np.integer)):
            raise TypeError(f"restart must be the index of a restart (an int), got {restart!r}")
        if not 0 <= restart < self.num_restarts:
            raise ValueError(
                f"restart={restart} is out of range: this fit has {self.num_restarts} restart"
                f"{'s' if self.num_restarts != 1 else ''}, numbered 0 to {self.num_restarts - 1}"
            )
        return int(restart)

    def sample_restarts(self, num_samples: int = 1000, *, seed: int | None = None) -> dict:
        """Draw ``num_samples`` from every restart: each site with shape ``(R, n, *site_shape)``."""
        draws = [self.sample(num_samples, seed=seed, restart=r) for r in range(self.num_restarts)]
        return {name: np.stack([d[name] for d in draws]) for name in draws[0]}

    def to_arviz(self, num_samples: int = 1000, *, seed: int | None = None, verdict: bool = True):
        """The posterior as an ArviZ :class:`xarray.DataTree` (see :func:`inference.to_arviz`)."""
        from ..outputs.arviz_export import to_arviz

        return to_arviz(self, num_samples=num_samples, seed=seed, verdict=verdict)

    def _posterior_sampler(self):
        """Compiled draws with model and guide densities for a fit through NumPyro's SVI (:func:`inference.engine.sampling.make_posterior_sampler`); a flat fit draws through ``posterior``."""
        if "posterior_sampler" not in self._cache:
            from .sampling import make_posterior_sampler

            self._cache["posterior_sampler"] = make_posterior_sampler(
                self.model, self.guide, self.latent_sites, self.model_args, self.model_kwargs
            )
        return self._cache["posterior_sampler"]

    def diagnose(self, num_samples: int = 16000, *, seed: int | None = None):
        """Every check of the fit, with the draws they used (cached; see :func:`inference.diagnose`)."""
        from ..checks.diagnostics import diagnose

        num_samples = positive_int("num_samples", num_samples)
        seed = _seed(seed)
        key = ("diagnosis", num_samples, seed)
        if key not in self._cache:
            self._cache[key] = diagnose(self, num_samples, seed=seed)
            self._cache["last_diagnosis"] = self._cache[key]
        return self._cache[key]

    def verdict(self, num_samples: int = 16000, *, seed: int | None = None):
        """Whether to trust this posterior: *reliable*, *use with care* or *unreliable*, and why.

        See :mod:`inference.checks.diagnostics` for the checks (PSIS k-hat, a Laplace curvature check,
        restart agreement, the stop reason and zero-density draws).

        Returns
        -------
        Verdict
        """
        return self.diagnose(num_samples, seed=seed).verdict

    def sample_psis(self, num_samples: int = 1000, *, seed: int | None = None) -> dict:
        """PSIS-corrected draws: guide draws importance-resampled with Pareto-smoothed weights.

        Available when the PSIS k-hat is at most 0.7 (Yao et al. 2018); above that, importance
        weighting cannot be trusted and a ``ValueError`` says what to do instead.

        Returns
        -------
        dict of str to ndarray
            Each latent site with shape ``(num_samples, *site_shape)``.

        Raises
        ------
        ValueError
            When k-hat is above 0.7; and for the exact stage of ``guide="auto"``
            (:attr:`exact_stage_draws`), whose draws are NUTS's, not importance-weighted guide
            draws: they need no correction, and :meth:`sample` gives them.
        """
        from ..checks.diagnostics import KHAT_OK, khat_text, psis_resample

        self.require_full_data("FitResult.sample_psis")
        num_samples = positive_int("num_samples", num_samples)
        seed = _seed(seed)
        if self.exact_stage_draws:
            raise ValueError(
                f"this fit's draws are already exact: they are NUTS's through the {self.guide_name} guide's transport "
                f"map (the exact stage of guide='auto': {self._exact_run_text()}), not importance-weighted guide draws, "
                f"so there is nothing for PSIS to correct; use result.sample({num_samples}) for them"
            )
        diagnosis = self._cache.get("last_diagnosis") or self.diagnose()
        khat = diagnosis.psis.khat
        if not khat <= KHAT_OK:
            raise ValueError(
                f"PSIS-corrected draws need k-hat at most {KHAT_OK}, and this fit has k-hat {khat_text(khat)}: the guide "
                "misses posterior mass that reweighting cannot recover; fit a richer guide or run inference.nuts"
            )
        rng_seed = self.seed + 4 if seed is None else seed
        if self.posterior is not None and diagnosis.flat is not None:
            # The flat verdict's draws are unconstrained coordinates: resample them, then constrain.
            u = psis_resample({"u": diagnosis.flat[0]}, diagnosis.psis.log_weights, num_samples, seed=rng_seed)["u"]
            latent = self.posterior.target.constrain(u)
            return {name: latent[name] for name in self.latent_sites}
        return psis_resample(diagnosis.draws, diagnosis.psis.log_weights, num_samples, seed=rng_seed)

    def summary(self, num_samples: int = 2000, *, seed: int | None = None, verdict: bool = True) -> Summary:
        """Posterior mean, sd and 94% HDI of every parameter, with the fit's status and verdict.

        The table is :func:`arviz_stats.summary` of draws from the guide of the best restart
        (``kind="stats"``, 94% HDI, unrounded; see
        :func:`inference.outputs.arviz_export.summary_table`), or of the exact stage's NUTS draws
        (:meth:`sample`), which the printed header then names; ``verdict=False`` skips the checks.
        """
        from ..outputs.arviz_export import summary_table

        self.require_full_data("FitResult.summary")
        num_samples = positive_int("num_samples", num_samples)
        seed = _seed(seed)

        key = ("summary", num_samples, seed, verdict)
        if key not in self._cache:
            draws = self.sample(num_samples, seed=seed)
            # The best restart only: pooling restarts that disagree would blur the table.
            table = summary_table(draws, kind="stats", hdi_prob=0.94, var_names=list(self.latent_sites))
            self._cache[key] = Summary(
                table=table,
                guide=self.guide_name + (" (auto)" if self.attempts and not self.exact_stage_draws else ""),
                objective=self.objective_name,
                stop_reason=str(self.stop_reason),
                num_steps=self.num_steps,
                elbo=self.elbo,
                notes=tuple(self.notes()),
                verdict=self.verdict() if verdict else None,
                attempts=tuple(self.attempts),
                draws_from=f"{self.draws_label} | {self._exact_run_text()}" if self.exact_stage_draws else "",
            )
        return self._cache[key]

    def notes(self) -> list[str]:
        """Plain sentences about what a reader of the result should know."""
        notes = []
        if self.stop_reason == StopReason.MAX_STEPS:
            notes.append(
                f"the fit reached max_steps={self.num_steps} before the ELBO levelled off; the posterior "
                "may not be converged: raise max_steps or the learning rate"
            )
        if self.stop_reason == StopReason.INTERRUPTED:
            notes.append(f"the fit was interrupted after {self.num_steps} steps; results are from that point")
        total_bad = int(self.nonfinite_steps.sum())
        if total_bad and self.faults is None:
            notes.append(
                f"{total_bad} of {self.num_steps * self.num_restarts} steps were skipped for a non-finite "
                f"loss or gradient: {self.nonfinite_reason}"
            )
        if self.stop_reason == StopReason.NONFINITE and self.faults is None:
            notes.append("the fit stopped because too many steps were non-finite; do not use this posterior")
        if self.faults is not None:
            notes.extend(self.faults.notes())
        return notes

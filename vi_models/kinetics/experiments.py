"""One mechanism fitted globally across real experiments: observables, conditions, doses, hierarchy.

:func:`vi_models.kinetics.model` builds an :class:`ExperimentModel` whenever one of its
arguments ``observables``, ``conditions``, ``hierarchy``, ``doses`` or a per-observable
``noise`` is given, or the mechanism uses ``arrhenius``/``eyring``. The generative model,
for experiment ``e`` (in group ``g(e)`` of each hierarchy) and measured column ``j``::

    theta_p           ~ prior_p                                 shared parameter p
    log theta_p,g     = mu_p + beta_p . x_g + tau_p z_p,g       hierarchical p (positive):
    z_p,g             ~ Normal(0, 1)                            non-centred (default)
    k_e               = rate constants of experiment e           (arrhenius / eyring at T_e)
    y_e(t)            = solution of dy/dt = f(y, k_e), y(0) = y0_e, plus every dose
                        d: y(t_d) += amount_d at its time
    m_e,j(t)          = observable_j(y_e(t), theta_e, conditions_e)
    obs[e, i, j]      ~ Noise_j(m_e,j(t_i), sigma_j)

Site names: a shared parameter ``p``; a hierarchical ``p`` gives ``p_mu`` (mean of
``log p``, or of ``p`` for a parameter that may be negative), ``p_tau`` (its spread),
``p_z`` (non-centred, one per group; ``p_u`` = the group's ``log p`` when centred),
``p_beta_<x>`` (effect of covariate ``x`` on ``log p``, per unit of ``x``, ``x`` centred on
its mean) and the deterministic ``p`` (one value per group). Noise: ``sigma`` when all
columns share one noise model, ``sigma_<column>`` each when ``noise`` is a mapping.

Per-experiment solves are one ``vmap`` over experiments (different time grids are padded,
as in :class:`~vi_models.kinetics.Dataset`); doses split each solve into segments (the
mechanism is autonomous, so each segment starts at time 0), a fixed number per experiment.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from .arguments import check_builder_arguments
from .conditions import (
    Conditions,
    TemperatureLaw,
    expand_temperature_laws,
    mean_temperature,
    read_csv,
    resolve_doses,
    split_conditions,
    temperature_rate,
)
from .dataset import Dataset
from .expressions import Expression
from .mechanism import Mechanism
from .model import (
    _OBSERVED,
    FAILED_SITE,
    STATUS_SITE,
    NOISE_MODELS,
    Trajectories,
    _noise_scale_estimate,
    _prior_median,
    initial_value,
)
from .ode import SolverOptions, make_solver
from .priors import as_prior, describe_prior

__all__ = ["ExperimentModel", "Level", "build"]

HIERARCHY_KEYS = ("group", "covariates", "centered")


@dataclass(frozen=True)
class Level:
    """How one parameter varies across groups.

    Attributes
    ----------
    group : str
        The grouping column (``"experiment"``, or a condition such as ``"subject"``).
    index : ndarray of int, shape (E,)
        Group of each experiment.
    labels : tuple of str
        The groups.
    covariates : Mapping of str to ndarray (G,)
        Group-level covariates, centred on their mean.
    centered : bool
        Centred parameterization (``p_u ~ Normal(mu, tau)``) instead of non-centred.
    log : bool
        Whether the parameter is positive and pooled on the log scale.
    """

    group: str
    index: np.ndarray
    labels: tuple[str, ...]
    covariates: Mapping[str, np.ndarray]
    centered: bool
    log: bool


@dataclass(frozen=True, eq=False)
class ExperimentModel:
    """A NumPyro model of one mechanism across experiments (see the module docstring).

    Call it with no arguments to condition on the data, with ``values=None`` to simulate.
    Build it with :func:`vi_models.kinetics.model`.
    """

    mechanism: Mechanism
    dataset: Dataset
    conditions: Conditions
    priors: Mapping[str, Any]
    noise: Mapping[str, str]
    shared_sigma: bool
    observables: Mapping[str, Expression]
    parameters: tuple[str, ...]
    hierarchy: Mapping[str, Level]
    laws: tuple[TemperatureLaw, ...]
    T_ref: float | None
    temperature: str
    known_initial: np.ndarray
    initial_columns: Mapping[str, str]
    inferred_initial: tuple[str, ...]
    doses: Any
    solver: SolverOptions
    gradient: str
    _solve_one: Any = field(repr=False)
    _atol: float = field(default=1e-8, repr=False)

    # -- names -------------------------------------------------------------------------------
    @property
    def rate_constants(self) -> tuple[str, ...]:
        """Names of the model's parameters (rate constants, temperature-law and observable parameters)."""
        return self.parameters

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Every latent sample site: the sites with a prior, and ``p_u`` of each centred hierarchy."""
        out = list(self.priors)
        for p, level in self.hierarchy.items():
            if level.centered:
                last = [f"{p}_tau"] + [f"{p}_beta_{x}" for x in level.covariates]
                out.insert(out.index(last[-1]) + 1, f"{p}_u")
        return tuple(out)

    @property
    def sigma_sites(self) -> tuple[str, ...]:
        if self.shared_sigma:
            return ("sigma",)
        return tuple(f"sigma_{c}" for c in self.dataset.species)

    @property
    def coords(self) -> dict[str, tuple]:
        out = {
            "experiment": self.dataset.experiments,
            "time": tuple(range(self.dataset.times.shape[1])),
            "species": self.dataset.species,
            "initial_species": self.mechanism.species,
        }
        for level in self.hierarchy.values():
            out[level.group] = level.labels
        return out

    # -- the generative parts ----------------------------------------------------------------
    def _parameter_values(self) -> dict[str, Any]:
        """Sample every parameter; return per-experiment values ``(E,)`` by name."""
        E = self.dataset.n_experiments
        values = {}
        for p in self.parameters:
            level = self.hierarchy.get(p)
            if level is None:
                values[p] = jnp.broadcast_to(numpyro.sample(p, self.priors[p]), (E,))
                continue
            mu = numpyro.sample(f"{p}_mu", self.priors[f"{p}_mu"])
            tau = numpyro.sample(f"{p}_tau", self.priors[f"{p}_tau"])
            eta = mu
            for x, col in level.covariates.items():
                beta = numpyro.sample(f"{p}_beta_{x}", self.priors[f"{p}_beta_{x}"])
                eta = eta + beta * jnp.asarray(col)
            with numpyro.plate(level.group, len(level.labels), dim=-1):
                if level.centered:
                    u = numpyro.sample(f"{p}_u", dist.Normal(eta, tau))
                else:
                    # Marked as the non-centred form of Normal(eta, tau): the fit may centre it in part.
                    z = numpyro.sample(f"{p}_z", self.priors[f"{p}_z"], infer={"non_centred": (eta, tau)})
                    u = eta + tau * z
            group_values = numpyro.deterministic(p, jnp.exp(u) if level.log else u)
            values[p] = jnp.asarray(group_values)[np.asarray(level.index)]
        return values

    def _initial_values_sampled(self) -> dict[str, Any]:
        E = self.dataset.n_experiments
        sampled = {}
        for sp in self.inferred_initial:
            site = f"{sp}0"
            if E > 1:
                with numpyro.plate("experiment", E, dim=-1):
                    sampled[sp] = numpyro.sample(site, self.priors[site])
            else:
                sampled[sp] = jnp.broadcast_to(numpyro.sample(site, self.priors[site]), (1,))
        return sampled

    def _sample_sites(self):
        """All latent sites; returns (parameters by name (E,), inferred initial values, sigma (S,))."""
        values = self._parameter_values()
        sampled = self._initial_values_sampled()
        sig = [numpyro.sample(name, self.priors[name]) for name in self.sigma_sites]
        sigma = jnp.broadcast_to(jnp.stack(sig), (self.dataset.n_species,))
        return values, sampled, sigma

    def _y0(self, sampled):
        y0 = jnp.asarray(np.nan_to_num(self.known_initial, nan=0.0))
        for sp, value in sampled.items():
            y0 = y0.at[:, self.mechanism.species.index(sp)].set(value)
        return y0

    def _rates(self, values):
        """Rate constants ``(E, n_parameters)`` of the (rewritten) mechanism."""
        laws = {law.name: law for law in self.laws}
        cols = []
        for name in self.mechanism.parameters:
            if name in laws:
                T = jnp.asarray(self.conditions.numeric(self.temperature, what="a temperature law"))
                cols.append(temperature_rate(laws[name], values, T, self.T_ref))
            else:
                cols.append(values[name])
        return jnp.stack(cols, axis=-1)

    def with_stiff_solver(self) -> ExperimentModel | None:
        """The same model solved with the stiff solver (``kvaerno5``), or None where that changes nothing.

        None for a mechanism solved exactly (linear, by the matrix exponential), a model already
        on the stiff solver, or a diffrax solver object given by the user. :func:`inference.fit`
        refits with it once when the explicit solver reaches its step limit (see
        :mod:`inference.engine.faults`).
        """
        options = self.solver
        if self.gradient == "expm" or not isinstance(options.solver, str):
            return None
        if options.stiff or options.solver.lower() == "kvaerno5":
            return None
        stiff = replace(options, solver="tsit5", stiff=True)
        return replace(
            self, solver=stiff, gradient=stiff.gradient_method(self.mechanism),
            _solve_one=make_solver(self.mechanism, stiff, atol=self._atol, status=True),
        )

    def _solve(self, y0, times, k):
        """Solve every experiment (vmapped), doses included; ``(E, T, S)`` and the solve status ``(E,)`` (0: solved)."""
        if self.doses is None:
            return jax.vmap(self._solve_one)(y0, times, k)
        d_times, d_amounts, d_index = (jnp.asarray(x) for x in self.doses)
        n_species = len(self.mechanism.species)
        solve_one = self._solve_one

        def one(y0_e, t_e, k_e, dt, da, di):
            bounds = jnp.concatenate([jnp.zeros(1), dt, jnp.full(1, jnp.inf)])
            t_last = t_e[-1]
            out = jnp.zeros(t_e.shape + (n_species,))
            status = jnp.zeros((), jnp.int32)
            y = y0_e
            for j in range(dt.shape[0] + 1):
                start = bounds[j]
                end = jnp.minimum(bounds[j + 1], t_last)
                local = jnp.clip(t_e - start, 0.0, end - start)
                ys, f = solve_one(y, jnp.concatenate([local, (end - start)[None]]), k_e)
                inside = (t_e >= start) & (t_e < bounds[j + 1])
                out = jnp.where(inside[:, None], ys[:-1], out)
                status = jnp.maximum(status, f)
                y = ys[-1]
                if j < dt.shape[0]:
                    y = y + jnp.zeros(n_species).at[di[j]].add(da[j])
            return out, status

        return jax.vmap(one)(y0, times, k, d_times, d_amounts, d_index)

    def _observe(self, ys, values):
        """Noise-free measured columns ``(E, T, n_columns)``."""
        env: dict[str, Any] = {sp: ys[..., j] for j, sp in enumerate(self.mechanism.species)}
        for p in self.parameters:
            env[p] = values[p][:, None]
        for name, col in self.conditions.values.items():
            if col.dtype.kind in "fiu":
                env[name] = jnp.asarray(col, dtype=float)[:, None]
        shape = ys.shape[:-1]
        return jnp.stack(
            [jnp.broadcast_to(self.observables[c].evaluate(env), shape) for c in self.dataset.species], -1
        )

    def _predict(self, values, sampled, times):
        y0 = self._y0(sampled)
        ys, failed = self._solve(y0, times, self._rates(values))
        return ys, failed, self._observe(ys, values)

    def _scale(self, j: int) -> float:
        data = self.dataset
        v = np.abs(np.asarray(data.values[..., j])[np.asarray(data.mask[..., j])])
        s = float(v.max()) if v.size else 1.0
        return s if s > 0 and math.isfinite(s) else 1.0

    def _noise_distributions(self, mu, sigma):
        """``{kind: distribution over (E, T, S)}`` for each noise model in use."""
        out = {}
        floors = jnp.asarray([0.01 * self._scale(j) for j in range(self.dataset.n_species)])
        for kind in sorted(set(self.noise.values())):
            if kind == "normal":
                out[kind] = dist.Normal(mu, sigma)
            elif kind == "lognormal":
                out[kind] = dist.LogNormal(jnp.log(jnp.maximum(mu, 1e-300)), sigma)
            else:
                out[kind] = dist.Normal(mu, sigma * jnp.abs(mu) + floors)
        return out

    def __call__(self, values=_OBSERVED):
        """Run the model; ``values=None`` simulates measurements instead of conditioning."""
        data = self.dataset
        params, sampled, sigma = self._sample_sites()
        ys, status, mu = self._predict(params, sampled, jnp.asarray(data.times))
        # Why each experiment's solve failed (0: it did not), for the engine's fault report.
        numpyro.deterministic(STATUS_SITE, status)
        numpyro.factor(FAILED_SITE, jnp.where(jnp.any(status != 0), -jnp.inf, 0.0))
        mask = np.asarray(data.mask)
        if values is _OBSERVED:
            obs = jnp.where(mask, jnp.nan_to_num(jnp.asarray(data.values), nan=1.0), 1.0)
        elif values is None:
            obs = None
        else:
            obs = jnp.asarray(values, dtype=float)
        kinds = self._noise_distributions(mu, sigma)
        for kind, noise_dist in kinds.items():
            column = np.array([self.noise[c] == kind for c in data.species])
            site = "obs" if len(kinds) == 1 else f"obs_{kind}"
            with (
                numpyro.plate("experiment", data.n_experiments, dim=-3),
                numpyro.plate("time", data.times.shape[1], dim=-2),
                numpyro.plate("species", data.n_species, dim=-1),
            ):
                numpyro.sample(site, noise_dist.mask(jnp.asarray(mask & column)), obs=obs)

    # -- starting values, simulation, export -------------------------------------------------
    def initial_values(self) -> dict[str, Any]:
        """Starting values: noise scales from the data, group offsets at 0, inferred ``y0`` at the prior median."""
        data = self.dataset
        out: dict[str, Any] = {}
        for sp in self.inferred_initial:
            site = f"{sp}0"
            v = _prior_median(self.priors[site])
            out[site] = np.full(data.n_experiments, v) if data.n_experiments > 1 else v
        for p, level in self.hierarchy.items():
            if not level.centered:
                out[f"{p}_z"] = np.zeros(len(level.labels))
        kinds = set(self.noise.values())
        if self.shared_sigma:
            out["sigma"] = _noise_scale_estimate(data, kinds.pop())
        else:
            for j, c in enumerate(data.species):
                one = Dataset(
                    species=(c,),
                    experiments=data.experiments,
                    times=data.times,
                    values=data.values[..., j : j + 1],
                    mask=np.asarray(data.mask[..., j : j + 1]),
                    n_times=data.n_times,
                )
                out[f"sigma_{c}"] = _noise_scale_estimate(one, self.noise[c])
        return out

    def synthetic(self, truth: Mapping[str, Any], *, seed: int = 0) -> Dataset:
        """A data set like this one (same times, same observed cells) drawn from the model at ``truth``.

        ``truth`` gives every latent site (e.g. ``{"k": 0.5, "sigma": 0.01}``); the result is for
        checking that a fit recovers known values.
        """
        missing = [s for s in self.latent_sites if s not in truth]
        if missing:
            raise ValueError(f"truth has no value for {', '.join(missing)}")
        fixed = {k: jnp.asarray(v, dtype=float) for k, v in truth.items()}

        def measurements(fixed):
            with handlers.seed(rng_seed=seed), handlers.substitute(data=fixed):
                tr = handlers.trace(self).get_trace(None)
            return {
                name: site["value"] for name, site in tr.items()
                if site["type"] == "sample" and site["is_observed"] is False and name.startswith("obs")
            }

        # One compiled program (the solves of every experiment), not the model run op by op.
        drawn = jax.jit(measurements)(fixed)
        data = self.dataset
        mask = np.asarray(data.mask)
        values = np.zeros(mask.shape)
        for name, value in drawn.items():
            kinds = name[4:] or None
            column = np.array([kinds is None or self.noise[c] == kinds for c in data.species])
            values = np.where(column, np.asarray(value), values)
        values = np.where(mask, values, np.nan)
        return Dataset(
            species=data.species,
            experiments=data.experiments,
            times=data.times,
            values=values,
            mask=mask,
            n_times=data.n_times,
            initial=dict(data.initial),
            source="synthetic",
            time_unit=data.time_unit,
            concentration_unit=data.concentration_unit,
        )

    def parameter_values(self, samples: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Per-experiment parameter values ``(n_draws, E)`` by name, from draws of the latent sites."""
        n = int(np.shape(next(iter(samples.values())))[0])

        def one(draw):
            with handlers.seed(rng_seed=0), handlers.substitute(data=draw):
                values, _, _ = self._sample_sites()
            return values

        draws = {k: jnp.asarray(v) for k, v in samples.items() if k in self.latent_sites}
        out = jax.vmap(one)(draws)
        return {k: np.asarray(v).reshape(n, -1) for k, v in out.items()}

    def simulate(self, samples: Mapping[str, Any], *, n_points: int = 120, seed: int = 0) -> Trajectories:
        """Solve for each draw on a fine grid per experiment (see ``KineticsModel.simulate``)."""
        data = self.dataset
        E = data.n_experiments
        t_end = np.array([data.times[e, data.n_times[e] - 1] for e in range(E)])
        grid = np.linspace(0.0, 1.0, n_points)[None, :] * t_end[:, None]
        draws = {k: jnp.asarray(v, dtype=float) for k, v in samples.items() if k in self.latent_sites}
        n = int(np.shape(next(iter(draws.values())))[0])

        @jax.jit
        def run(draws, key):
            def one(draw, key):
                with handlers.seed(rng_seed=0), handlers.substitute(data=draw):
                    values, sampled, sigma = self._sample_sites()
                ys, failed, mu = self._predict(values, sampled, jnp.asarray(grid))
                noisy = {k: d.sample(key) for k, d in self._noise_distributions(mu, sigma).items()}
                kinds = np.array([self.noise[c] for c in data.species])
                pred = mu
                for kind, x in noisy.items():
                    pred = jnp.where(jnp.asarray(kinds == kind), x, pred)
                return ys, failed, mu, pred

            return jax.vmap(one)(draws, jax.random.split(key, n))

        ys, failed, mu, pred = run(draws, jax.random.PRNGKey(seed))
        failed = np.asarray(failed) != 0
        return Trajectories(
            grid,
            np.asarray(ys),
            self.mechanism.species,
            data.experiments,
            failed,
            np.asarray(mu),
            np.where(failed[..., None, None], np.nan, np.asarray(pred)),
        )

    def arviz_constant_data(self):
        data = self.dataset
        padded = np.arange(data.times.shape[1])[None, :] >= np.asarray(data.n_times)[:, None]
        out = {
            "times": (["experiment", "time"], np.where(padded, np.nan, data.times).astype(float)),
            "initial": (["experiment", "initial_species"], np.asarray(self.known_initial, dtype=float)),
        }
        for name, col in self.conditions.values.items():
            if col.dtype.kind in "fiu":
                out[f"condition_{name}"] = (["experiment"], np.asarray(col, dtype=float))
        return out

    def arviz_predictions(self, samples, seed: int = 0, n_points: int = 120):
        traj = self.simulate(samples, n_points=n_points, seed=seed)
        dims = ["experiment", "fine_time", "species"]
        curve = np.where(traj.failed[..., None, None], np.nan, traj.observed)
        return {"curve": (dims, curve), "predictive": (dims, traj.predictive)}, {
            "fine_times": (["experiment", "fine_time"], traj.times)
        }

    def arviz_attrs(self) -> dict[str, str]:
        data = self.dataset
        return {
            "mechanism": str(self.mechanism),
            "noise": ", ".join(f"{c}: {k}" for c, k in self.noise.items()),
            "observables": "; ".join(f"{c} = {e}" for c, e in self.observables.items()),
            "time_unit": data.time_unit or "",
            "concentration_unit": data.concentration_unit or "",
            "data_source": str(data.source or ""),
        }

    def describe(self) -> dict[str, Any]:
        """The model's settings as plain data (for reports and ``fit.json``)."""
        return {
            "mechanism": str(self.mechanism),
            "temperature_laws": {law.name: f"{law.law}({', '.join(law.parameters)})" for law in self.laws},
            "T_ref": self.T_ref,
            "species": list(self.mechanism.species),
            "observables": {c: str(e) for c, e in self.observables.items()},
            "parameters": list(self.parameters),
            "hierarchy": {
                p: {"group": lv.group, "groups": len(lv.labels), "covariates": list(lv.covariates),
                    "centered": lv.centered, "scale": "log" if lv.log else "linear"}
                for p, lv in self.hierarchy.items()
            },
            "conditions": {k: [v.item() if hasattr(v, "item") else v for v in col] for k, col in self.conditions.values.items()},
            "doses": None if self.doses is None else {"times": self.doses[0].tolist(), "amounts": self.doses[1].tolist()},
            "priors": {name: describe_prior(p) for name, p in self.priors.items()},
            "noise": dict(self.noise),
            "inferred_initial": list(self.inferred_initial),
            "solver": {"gradient": self.gradient, "rtol": self.solver.rtol, "max_steps": self.solver.max_steps},
            "data": self.dataset.describe(),
        }


# -- building ---------------------------------------------------------------------------------


def _conditions(dataset, conditions, time_unit=None, concentration_unit=None) -> tuple[Dataset, Conditions]:
    if isinstance(conditions, Conditions):
        data = dataset if isinstance(dataset, Dataset) else Dataset.from_csv(dataset)
        return data, conditions
    if isinstance(conditions, Mapping):
        data = dataset if isinstance(dataset, Dataset) else Dataset.from_csv(dataset)
        return data, Conditions.from_mapping(conditions, data.experiments)
    names = [conditions] if isinstance(conditions, str) else list(conditions or ())
    if isinstance(dataset, Dataset):
        return split_conditions(dataset, names) if names else (dataset, Conditions(dataset.experiments, {}))
    return read_csv(dataset, names)


def _positive(prior) -> bool:
    try:
        return bool(np.asarray(prior.support(jnp.asarray(-1.0)))) is False and bool(
            np.asarray(prior.support(jnp.asarray(1.0)))
        )
    except Exception:  # noqa: BLE001
        return False


def _level_priors(p: str, prior, level_log: bool, given: Mapping[str, Any]) -> dict[str, Any]:
    """Priors of ``p_mu`` and ``p_tau`` from the prior of ``p`` (LogNormal -> Normal on log p)."""
    out = {}
    if level_log:
        if isinstance(prior, dist.LogNormal):
            out[f"{p}_mu"] = dist.Normal(prior.loc, prior.scale)
        else:
            if p in given:
                raise ValueError(
                    f"{p!r} varies by group on the log scale, so its prior must be a LogNormal (it becomes "
                    f"the prior of the mean of log {p}); or give priors for {p + '_mu'!r} and {p + '_tau'!r}"
                )
            out[f"{p}_mu"] = dist.Normal(math.log(_prior_median(prior)), 2.0)
        out[f"{p}_tau"] = dist.HalfNormal(0.5)
    else:
        out[f"{p}_mu"] = prior
        scale = float(getattr(prior, "scale", 1.0)) if isinstance(prior, dist.Normal) else 1.0
        out[f"{p}_tau"] = dist.HalfNormal(scale)
    out[f"{p}_z"] = dist.Normal(0.0, 1.0)
    return out


def _hierarchy(spec, parameters, priors, conditions: Conditions, given) -> tuple[dict, dict]:
    levels: dict[str, Level] = {}
    site_priors: dict[str, Any] = {}
    for p, entry in (spec or {}).items():
        if p not in parameters:
            close = difflib.get_close_matches(p, parameters, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"hierarchy names {p!r}, which is not a parameter of this model (the parameters are "
                f"{', '.join(parameters)}){hint}"
            )
        if isinstance(entry, str):
            entry = {"group": entry}
        if not isinstance(entry, Mapping):
            raise ValueError(f"hierarchy of {p!r} must be a grouping column name or a table with 'group', got {entry!r}")
        for key in entry:
            if key not in HIERARCHY_KEYS:
                close = difflib.get_close_matches(str(key), HIERARCHY_KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the keys are {', '.join(HIERARCHY_KEYS)}"
                raise ValueError(f"unknown key {key!r} in the hierarchy of {p!r}{hint}")
        if "group" not in entry:
            raise ValueError(f"the hierarchy of {p!r} needs a 'group' (a grouping column, or 'experiment')")
        group = str(entry["group"])
        index, labels = conditions.groups(group)
        if len(labels) < 2:
            raise ValueError(
                f"{p!r} varies by {group!r}, but the data have one group only ({labels[0]!r}); partial pooling "
                f"needs at least two groups: share {p!r} (leave it out of the hierarchy) or group by another column"
            )
        covs = {}
        for x in entry.get("covariates", ()) or ():
            col = conditions.numeric(x, what=f"the covariate of {p!r}")
            per_group = np.zeros(len(labels))
            for g in range(len(labels)):
                vals = col[index == g]
                if np.ptp(vals) > 0:
                    raise ValueError(
                        f"covariate {x!r} of {p!r} differs within the {group} {labels[g]!r} "
                        f"({vals.min():g} to {vals.max():g}); a covariate of a group is one value per group"
                    )
                per_group[g] = vals[0]
            sd = float(np.std(per_group))
            if sd == 0:
                raise ValueError(f"covariate {x!r} of {p!r} is the same in every {group}; it cannot explain a difference")
            covs[x] = per_group - per_group.mean()
            site_priors[f"{p}_beta_{x}"] = dist.Normal(0.0, 1.0 / sd)
        log = _positive(priors[p])
        levels[p] = Level(group, index, labels, covs, bool(entry.get("centered", False)), log)
        lp = _level_priors(p, priors[p], log, given)
        if levels[p].centered:
            lp.pop(f"{p}_z")
        site_priors.update(lp)
    return levels, site_priors


def _initial(mech, data, conditions, initial, c) -> tuple[np.ndarray, dict, dict]:
    E, species = data.n_experiments, mech.species
    initial = dict(initial or {})
    unknown = sorted(set(initial) - set(species))
    if unknown:
        raise ValueError(
            f"initial concentrations given for {', '.join(map(repr, unknown))}, which the mechanism does not "
            f"have (species: {', '.join(species)}); check the spelling"
        )
    known = np.zeros((E, len(species)))
    inferred, columns = {}, {}
    for j, sp in enumerate(species):
        spec = initial.get(sp, data.initial.get(sp, 0.0))
        if isinstance(spec, str) and spec in conditions.values:
            known[:, j] = conditions.numeric(spec, what=f"the initial concentration of {sp!r}")
            columns[sp] = spec
            continue
        value = initial_value(sp, spec, E, scale=c, also="the name of a condition column")
        if isinstance(value, np.ndarray):
            known[:, j] = value
        else:
            inferred[f"{sp}0"] = value
            known[:, j] = np.nan
    return known, inferred, columns


def build(
    mechanism,
    dataset,
    *,
    priors=None,
    noise="normal",
    initial=None,
    solver=None,
    observables=None,
    conditions=None,
    hierarchy=None,
    doses=None,
    T_ref=None,
    temperature="T",
) -> ExperimentModel:
    """Build an :class:`ExperimentModel`; the arguments are those of :func:`vi_models.kinetics.model`."""
    check_builder_arguments(
        dataset=dataset, priors=priors, initial=initial, solver=solver, noise=noise, conditions=conditions
    )
    for name, value in (("observables", observables), ("hierarchy", hierarchy)):
        if value is not None and not isinstance(value, Mapping):
            example = "{'A280': 'eps_A * A + base'}" if name == "observables" else "{'k': 'subject'}"
            raise TypeError(f"{name} must be a mapping, e.g. {name}={example}, got {type(value).__name__} {value!r}")
    if T_ref is not None and (
        isinstance(T_ref, bool) or not isinstance(T_ref, (int, float, np.integer, np.floating))
        or not (math.isfinite(T_ref) and T_ref > 0)
    ):
        raise ValueError(f"T_ref is the reference temperature in kelvin, a positive number such as 298.15; got {T_ref!r}")
    if not isinstance(temperature, str):
        raise TypeError(f"temperature names the condition column that holds the temperature (text, e.g. 'T'), got {temperature!r}")
    if not isinstance(mechanism, (Mechanism, str)):
        raise TypeError(f"a mechanism must be given as text, a built-in name or a Mechanism, got {type(mechanism).__name__}")
    # The mechanism, with temperature laws rewritten into mass-action constants.
    if isinstance(mechanism, Mechanism):
        mech, laws = mechanism, ()
    else:
        text, laws = expand_temperature_laws(mechanism)
        mech = Mechanism.from_text_or_name(text)
    data, conds = _conditions(dataset if isinstance(dataset, Dataset) else Path(dataset), conditions)
    T_value = None
    if laws:
        T = conds.numeric(temperature, what=f"the rate law {laws[0].law}({', '.join(laws[0].parameters)})")
        if np.any(T <= 0):
            raise ValueError(f"temperature {temperature!r} must be in kelvin (positive); got {T.min():g}")
        T_value = float(T_ref) if T_ref is not None else mean_temperature(T)
    law_names = {law.name for law in laws}
    law_params = [q for law in laws for q in law.parameters]
    clash = sorted(set(law_params) & set(mech.species))
    if clash:
        raise ValueError(f"{clash[0]!r} is a species and a temperature-law parameter; rename one")

    # Observables: every measured column is a species (default) or an expression.
    observables = dict(observables or {})
    exprs: dict[str, Expression] = {}
    for col, text in observables.items():
        if col not in data.species:
            close = difflib.get_close_matches(col, data.species, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"observable {col!r} is not a measured column of the data (the columns are "
                f"{', '.join(data.species)}){hint}"
            )
        exprs[col] = text if isinstance(text, Expression) else Expression.parse(text, what=f"observable {col!r}")
    for col in data.species:
        if col in exprs:
            continue
        if col not in mech.species:
            close = difflib.get_close_matches(col, list(mech.species) + list(conds.values), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"the measured column {col!r} is neither a species of the mechanism ({', '.join(mech.species)}) "
                f"nor an observable{hint}; write what it measures, e.g. observables={{{col!r}: 'eps * A + base'}}, "
                f"or name it as a condition in conditions=[...]"
            )
        exprs[col] = Expression.parse(col)
    given = dict(priors or {})
    rate_params = [p for p in mech.parameters if p not in law_names or any(
        law.name == p and law.law == "arrhenius" for law in laws)]
    model_params = list(dict.fromkeys(rate_params + law_params))
    numeric_conditions = [n for n, col in conds.values.items() if col.dtype.kind in "fiu"]
    known_names = {sp: "species" for sp in mech.species}
    known_names.update({p: "parameters" for p in model_params})
    known_names.update({n: "conditions" for n in numeric_conditions})
    obs_params = []
    for col, e in exprs.items():
        for name in e.names:
            if name not in known_names and name in given:
                obs_params.append(name)
                known_names[name] = "parameters"
        e.check_names(known_names, what=f"observable {col!r}", suggest=given)
    parameters = tuple(dict.fromkeys(model_params + obs_params))

    # Scales for default priors: concentrations from species columns, initial values and doses.
    species_cols = [j for j, s in enumerate(data.species) if s in mech.species and exprs[s].names == (s,)]
    seen = [np.abs(data.values[..., j][data.mask[..., j]]) for j in species_cols]
    c_candidates = [float(v.max()) for v in seen if v.size]
    c_pre = max(c_candidates, default=0.0)
    known0, _, _ = _initial(mech, data, conds, {k: v for k, v in (initial or {}).items()}, c_pre or 1.0)
    dose_arrays = resolve_doses(doses, mech.species, conds, data)
    c = max([c_pre, float(np.nanmax(known0)) if np.isfinite(known0).any() else 0.0]
            + ([float(np.max(dose_arrays[1]))] if dose_arrays is not None else []))
    c = c if c > 0 and math.isfinite(c) else 1.0
    known, inferred, columns = _initial(mech, data, conds, initial, c)
    T_scale = float(data.t_max) if data.t_max > 0 else 1.0

    # Noise.
    if isinstance(noise, str):
        kinds = {col: noise for col in data.species}
        shared = True
    elif isinstance(noise, Mapping):
        for col in noise:
            if col not in data.species:
                close = [c for c in data.species if c.lower() == str(col).lower()]
                close += difflib.get_close_matches(str(col), data.species, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"noise given for {col!r}, which is not a measured column ({', '.join(data.species)}){hint}"
                )
        kinds = {col: str(noise.get(col, "normal")) for col in data.species}
        shared = False
    else:
        raise ValueError(f"noise must be a noise model name or a mapping of column to name, got {noise!r}")
    for col, kind in kinds.items():
        if kind not in NOISE_MODELS:
            raise ValueError(f"unknown noise model {kind!r} for {col!r}; use one of {', '.join(NOISE_MODELS)}")
        j = data.species.index(col)
        if kind == "lognormal":
            data.require_positive(
                [col], why=f"noise 'lognormal' for {col!r}", fix="use noise 'normal' or 'proportional' for it"
            )

    # Priors: defaults, then the user's.
    resolved: dict[str, Any] = {}
    units = mech.parameter_units()
    for p in parameters:
        if p in units and p in mech.parameters:
            a, b = units[p]
            resolved[p] = dist.LogNormal(math.log(c**a * T_scale**b), 2.0)
    for law in laws:
        if law.law == "arrhenius":
            resolved.setdefault(law.parameters[1], dist.LogNormal(math.log(5e4), 1.0))
        else:
            resolved.setdefault(law.parameters[0], dist.Normal(8e4, 4e4))
            resolved.setdefault(law.parameters[1], dist.Normal(0.0, 100.0))
    for site, spec in given.items():
        if site in parameters:
            # Rate constants are positive; temperature-law and observable parameters may be negative.
            resolved[site] = as_prior(spec, name=site, positive=site in rate_params)
    levels, level_priors = _hierarchy(hierarchy, parameters, resolved, conds, given)
    ordered: dict[str, Any] = {}
    for p in parameters:
        if p in levels:
            names = [f"{p}_mu", f"{p}_tau"] + [f"{p}_beta_{x}" for x in levels[p].covariates] + [f"{p}_z"]
            for site in names:
                if site in level_priors:
                    ordered[site] = level_priors[site]
        else:
            ordered[p] = resolved[p]
    for site in sorted(inferred):
        ordered[site] = inferred[site]
    if shared:
        scale = 0.5 * max(_col_scale(data, j) for j in range(data.n_species)) if kinds[data.species[0]] == "normal" else 0.5
        ordered["sigma"] = dist.HalfNormal(scale)
    else:
        for j, col in enumerate(data.species):
            ordered[f"sigma_{col}"] = dist.HalfNormal(0.5 * _col_scale(data, j) if kinds[col] == "normal" else 0.5)
    for site, spec in given.items():
        if site in parameters and site not in levels:
            continue
        if site in levels:
            continue  # turned into the prior of the mean above
        if site not in ordered:
            close = difflib.get_close_matches(site, list(ordered), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"prior given for {site!r}, which is not a parameter of this model; the parameters are "
                f"{', '.join(ordered)}{hint}"
            )
        # Noise scales, initial concentrations and the spreads of hierarchies are positive.
        positive = site == "sigma" or site.startswith("sigma_") or site in inferred or site.endswith("_tau")
        ordered[site] = as_prior(spec, name=site, positive=positive)

    if isinstance(solver, str):
        options = SolverOptions(solver=solver)
    elif isinstance(solver, Mapping):
        options = SolverOptions(**solver)
    else:
        options = solver or SolverOptions()
    gradient = options.gradient_method(mech)
    return ExperimentModel(
        mechanism=mech,
        dataset=data,
        conditions=conds,
        priors=ordered,
        noise=kinds,
        shared_sigma=shared,
        observables=exprs,
        parameters=parameters,
        hierarchy=levels,
        laws=tuple(laws),
        T_ref=T_value,
        temperature=temperature,
        known_initial=known,
        initial_columns=columns,
        inferred_initial=tuple(site[:-1] for site in sorted(inferred)),
        doses=dose_arrays,
        solver=options,
        gradient=gradient,
        _solve_one=make_solver(mech, options, atol=1e-8 * c, status=True),
        _atol=1e-8 * c,
    )


def _col_scale(data: Dataset, j: int) -> float:
    v = np.abs(np.asarray(data.values[..., j])[np.asarray(data.mask[..., j])])
    s = float(v.max()) if v.size else 1.0
    return s if s > 0 and math.isfinite(s) else 1.0


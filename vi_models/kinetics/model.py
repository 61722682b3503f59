"""A NumPyro model from a mechanism and a data set.

The generative model, for experiment ``e``, observed species ``s`` and time ``t_i``::

    k_j      ~ prior_j                         (rate constants, positive)
    y0_e     = known, or ~ prior               (initial concentrations)
    y_e(t)   = solution of dy/dt = f(t, y, k),  y(0) = y0_e
    obs[e,i,s] ~ Noise(y_e(t_i)[s], sigma)

Noise models (``noise=``):

``"normal"`` (additive)
    ``obs ~ Normal(y, sigma)``.
``"lognormal"`` (multiplicative)
    ``obs ~ LogNormal(log y, sigma)``; measurements must be positive.
``"proportional"``
    ``obs ~ Normal(y, sigma |y| + floor)`` with ``floor = 0.01 c_max``, so that a zero prediction
    (a product at t = 0) does not claim an exact measurement.

Default priors are weakly informative and scaled to the data by the units of each parameter:
with ``c`` the largest observed concentration and ``T`` the last time, a parameter with units
``concentration^a time^b`` gets ``LogNormal(log(c^a T^b), 2)``: its prior median is the value
that makes the reaction run on the time scale of the experiment, and 95% of its mass lies
within a factor of 50 of it. The noise scale gets ``HalfNormal(0.5 c)`` (additive) or
``HalfNormal(0.5)`` (relative noise models); an inferred initial concentration gets
``LogNormal(log c, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .dataset import Dataset
from .mechanism import Mechanism
from .ode import ODE_NONFINITE, ODE_OK, SolverOptions, make_grid_solver, make_solver
from .priors import as_prior, describe_prior

__all__ = ["NOISE_MODELS", "KineticsModel", "Trajectories", "default_priors", "model"]

NOISE_MODELS = ("normal", "lognormal", "proportional")

NOISE_SITE = "sigma"
OBS_SITE = "obs"
FAILED_SITE = "ode_solve_failed"
#: Deterministic site: the solve status of each experiment (0 solved, 1 step limit, 2 non-finite
#: state, 3 another failure; :mod:`vi_models.kinetics.ode`), read by the verdict's fault counts.
STATUS_SITE = "_ode_status"

_OBSERVED = object()  # sentinel: condition on the data set's values


class Trajectories(NamedTuple):
    """Solutions of the ODE on a time grid, for plotting posterior bands.

    Attributes
    ----------
    times : ndarray, shape (E, T)
        Time grid of each experiment, from 0 to its last measured time.
    ys : ndarray, shape (n_draws, E, T, n_species)
        Concentrations of every species of the mechanism, one trajectory per draw.
    species : tuple of str
        Names of the last axis of ``ys``.
    experiments : tuple of str
        Labels of the experiments.
    failed : ndarray, shape (n_draws, E)
        Whether the solve failed (``ys`` is zero there).
    observed : ndarray, shape (n_draws, E, T, n_observed)
        Noise-free curves of the observed species (the data set's species order).
    predictive : ndarray, shape (n_draws, E, T, n_observed), or None
        New measurements drawn from the noise model around ``observed`` (posterior
        predictive), when the draws include the noise scale.
    """

    times: np.ndarray
    ys: np.ndarray
    species: tuple[str, ...]
    experiments: tuple[str, ...]
    failed: np.ndarray
    observed: np.ndarray
    predictive: np.ndarray | None


def _initial_site(species: str) -> str:
    return f"{species}0"


@dataclass(frozen=True, eq=False)
class KineticsModel:
    """A NumPyro model of a reaction mechanism observed with noise.

    Call it with no arguments to condition on the data set (what :func:`inference.fit` does),
    or with ``values=None`` to simulate new measurements. Build it with :func:`model`.

    Attributes
    ----------
    mechanism : Mechanism
    dataset : Dataset
    priors : Mapping[str, numpyro.distributions.Distribution]
        Prior of every latent site: rate constants by name, ``"sigma"``, and ``"<species>0"``
        for each inferred initial concentration.
    noise : str
        One of :data:`NOISE_MODELS`.
    known_initial : ndarray, shape (E, n_species)
        Known initial concentrations; NaN where the initial concentration is inferred.
    inferred_initial : tuple of str
        Species whose initial concentration is a latent site.
    solver : SolverOptions
    gradient : str
        The gradient method in use (``"expm"``, ``"forward"``, ``"reverse"`` or ``"adjoint"``).
    """

    mechanism: Mechanism
    dataset: Dataset
    priors: Mapping[str, Any]
    noise: str
    known_initial: np.ndarray
    inferred_initial: tuple[str, ...]
    solver: SolverOptions
    gradient: str
    _solve_one: Any = field(repr=False)
    _observed_index: np.ndarray = field(repr=False)
    _solve_data: Any = field(default=None, repr=False)

    @property
    def rate_constants(self) -> tuple[str, ...]:
        """Names of the rate constants, in mechanism order."""
        return self.mechanism.parameters

    @property
    def coords(self) -> dict[str, tuple]:
        """Labels of the model's plate dimensions (``experiment``, ``time``, ``species``)."""
        return {
            "experiment": self.dataset.experiments,
            "time": tuple(range(self.dataset.times.shape[1])),
            "species": self.dataset.species,
            "initial_species": self.mechanism.species,
        }

    # -- what the ArviZ export adds for this model (see inference.outputs.arviz_export) --------------
    def arviz_constant_data(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """``times`` (experiment, time): measured times; ``initial`` (experiment, initial_species):
        known initial concentrations, NaN where inferred."""
        data = self.dataset
        padded = np.arange(data.times.shape[1])[None, :] >= np.asarray(data.n_times)[:, None]
        times = np.where(padded, np.nan, data.times)
        return {
            "times": (["experiment", "time"], np.asarray(times, dtype=float)),
            "initial": (["experiment", "initial_species"], np.asarray(self.known_initial, dtype=float)),
        }

    def arviz_predictions(self, samples: Mapping[str, Any], seed: int = 0, n_points: int = 120):
        """Noise-free curves (``curve``) and new measurements (``predictive``) on a fine grid.

        Returns
        -------
        predictions : dict
            ``{name: (dims, array)}`` with arrays ``(n_draws, E, n_points, S)``.
        constant : dict
            ``{"fine_times": (["experiment", "fine_time"], array (E, n_points))}``.
        """
        traj = self.simulate(samples, n_points=n_points, seed=seed)
        dims = ["experiment", "fine_time", "species"]
        curve = np.where(traj.failed[..., None, None], np.nan, traj.observed)
        out = {"curve": (dims, curve)}
        if traj.predictive is not None:
            out["predictive"] = (dims, traj.predictive)
        return out, {"fine_times": (["experiment", "fine_time"], traj.times)}

    def arviz_attrs(self) -> dict[str, str]:
        """Mechanism, noise model, units and data source (netCDF-safe strings)."""
        data = self.dataset
        return {
            "mechanism": str(self.mechanism),
            "noise": self.noise,
            "time_unit": data.time_unit or "",
            "concentration_unit": data.concentration_unit or "",
            "data_source": str(data.source or ""),
        }

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Names of every latent sample site."""
        return tuple(self.priors)

    def initial_values(self) -> dict[str, float | np.ndarray]:
        """Data-informed starting values of the latent sites, for a robust initialization.

        Rate constants are left out (start them from the prior). The values:

        ``"<species>0"`` (each inferred initial concentration)
            The measurement of that species nearest to ``t = 0`` in each experiment (the mean
            of replicates at that time). Where the species is not measured in an experiment,
            or the value lies outside the prior's support (a zero or negative reading under a
            log-normal prior), the prior median. Shape as the site: ``(E,)`` with several
            experiments, a scalar with one.
        ``"sigma"``
            A difference-based estimate of the noise scale (see Notes), in the units of the
            noise model: concentration for ``"normal"``, relative for ``"lognormal"`` and
            ``"proportional"``. A scalar.

        Returns
        -------
        dict of str to float or numpy.ndarray
            Values by site name, in the constrained space of each site.

        Notes
        -----
        Each interior measurement ``y_i`` is compared with the straight line through its
        neighbours, ``r_i = (y_i - a y_{i-1} - b y_{i+1}) / sqrt(1 + a^2 + b^2)`` with
        ``a = (t_{i+1} - t_i) / (t_{i+1} - t_{i-1})`` and ``b = 1 - a``. Where the curve is
        locally linear, ``r_i`` is pure noise of standard deviation ``sigma``; its median absolute
        value times 1.4826 (the normal-consistent MAD) ignores the few points where curvature
        (the fast phase of a reaction) dominates (Rice 1984; Gasser, Sroka & Jennen-Steinmetz
        1986). A fraction of the data range would instead tie ``sigma`` to the signal and not to
        the noise. For the relative noise models the residuals are those of ``log y``
        (``"lognormal"``) or are divided by ``|y_i|`` (``"proportional"``). With fewer than three
        residuals it falls back to 5% of the largest concentration (relative: 0.05). The
        estimate is floored at ``1e-3`` of that scale, so that noise-free data do not start the
        fit at a degenerate ``sigma = 0``.

        References
        ----------
        Gasser, T., Sroka, L. and Jennen-Steinmetz, C. (1986). Residual variance and residual
        pattern in nonlinear regression. Biometrika 73(3), 625-633.

        Rice, J. (1984). Bandwidth choice for nonparametric regression. Annals of Statistics
        12(4), 1215-1230.

        Examples
        --------
        >>> from vi_models import kinetics
        >>> data = kinetics.Dataset.from_arrays([0.0, 1.0, 2.0, 3.0], {"A": [0.98, 0.62, 0.36, 0.23]})
        >>> m = kinetics.model("A -> B : k", data, initial={"A": "infer"})
        >>> sorted(m.initial_values())
        ['A0', 'sigma']
        >>> float(m.initial_values()["A0"])
        0.98
        """
        data = self.dataset
        E = data.n_experiments
        out: dict[str, float | np.ndarray] = {}
        for sp in self.inferred_initial:
            site = _initial_site(sp)
            prior = self.priors[site]
            fallback = _prior_median(prior)
            values = np.full(E, fallback)
            if sp in data.species:
                j = data.species.index(sp)
                for e in range(E):
                    n = int(data.n_times[e])
                    seen = np.asarray(data.mask[e, :n, j])
                    if not seen.any():
                        continue
                    t = np.asarray(data.times[e, :n])[seen]
                    y = np.asarray(data.values[e, :n, j])[seen]
                    nearest = np.abs(t) == np.min(np.abs(t))
                    value = float(np.mean(y[nearest]))
                    if math.isfinite(value) and bool(np.all(np.asarray(prior.support(jnp.asarray(value))))):
                        values[e] = value
            out[site] = values if E > 1 else float(values[0])
        out[NOISE_SITE] = _noise_scale_estimate(data, self.noise)
        return out

    # -- the NumPyro model -------------------------------------------------------------------
    def __call__(self, values=_OBSERVED):
        """Run the model; ``values=None`` simulates measurements instead of conditioning."""
        data = self.dataset
        E = data.n_experiments
        k = jnp.stack([numpyro.sample(name, self.priors[name]) for name in self.rate_constants])
        sampled = {}
        for sp in self.inferred_initial:
            site = _initial_site(sp)
            if E > 1:
                with numpyro.plate("experiment", E, dim=-1):
                    sampled[sp] = numpyro.sample(site, self.priors[site])
            else:
                sampled[sp] = jnp.broadcast_to(numpyro.sample(site, self.priors[site]), (1,))
        y0 = self._initial_matrix(sampled)
        if self._solve_data is not None:  # linear mechanism: exact, one expm per distinct step
            ys, failed = self._solve_data(y0, k)
            status = jnp.where(failed, ODE_NONFINITE, ODE_OK).astype(jnp.int32)
        else:
            ys, status = jax.vmap(self._solve_one, in_axes=(0, 0, None))(y0, jnp.asarray(data.times), k)
            failed = status != ODE_OK
        # A failed solve is an impossible draw, never an exception inside the fit; why it failed
        # is recorded (not part of the density) for the verdict's count of numerical faults.
        numpyro.deterministic(STATUS_SITE, status)
        numpyro.factor(FAILED_SITE, jnp.where(jnp.any(failed), -jnp.inf, 0.0))
        mu = ys[..., self._observed_index]
        sigma = numpyro.sample(NOISE_SITE, self.priors[NOISE_SITE])
        noise_dist = self._noise_distribution(mu, sigma)
        mask = jnp.asarray(data.mask)
        if values is _OBSERVED:
            obs = jnp.where(mask, jnp.nan_to_num(jnp.asarray(data.values), nan=1.0), 1.0)
        elif values is None:
            obs = None
        else:
            obs = jnp.asarray(values, dtype=float)
        with (
            numpyro.plate("experiment", E, dim=-3),
            numpyro.plate("time", data.times.shape[1], dim=-2),
            numpyro.plate("species", data.n_species, dim=-1),
        ):
            numpyro.sample(OBS_SITE, noise_dist.mask(mask), obs=obs)

    def _initial_matrix(self, sampled: Mapping[str, Any]):
        y0 = jnp.asarray(np.nan_to_num(self.known_initial, nan=0.0))
        for sp, value in sampled.items():
            j = self.mechanism.species.index(sp)
            y0 = y0.at[:, j].set(value)
        return y0

    def _noise_distribution(self, mu, sigma):
        if self.noise == "normal":
            return dist.Normal(mu, sigma)
        if self.noise == "lognormal":
            return dist.LogNormal(jnp.log(jnp.maximum(mu, 1e-300)), sigma)
        floor = 0.01 * _concentration_scale(self.dataset)
        return dist.Normal(mu, sigma * jnp.abs(mu) + floor)

    # -- simulation for plots and checks -----------------------------------------------------
    def simulate(self, samples: Mapping[str, Any], *, n_points: int = 120, seed: int = 0) -> Trajectories:
        """Solve the ODE for each posterior (or prior) draw on a fine time grid.

        Parameters
        ----------
        samples : mapping of str to array, each with leading dimension ``n_draws``
            Draws of the rate constants and inferred initial concentrations, as returned by
            ``FitResult.sample``.
        n_points : int
            Number of grid points per experiment, from 0 to its last measured time.
        seed : int
            Seed of the measurement noise of the predictive draws.

        Returns
        -------
        Trajectories
        """
        data = self.dataset
        E = data.n_experiments
        t_end = np.array([data.times[e, data.n_times[e] - 1] for e in range(E)])
        grid = np.linspace(0.0, 1.0, n_points)[None, :] * t_end[:, None]
        k = jnp.stack([jnp.asarray(samples[name], dtype=float) for name in self.rate_constants], -1)
        n = k.shape[0]
        inferred = {
            sp: jnp.broadcast_to(
                jnp.reshape(jnp.asarray(samples[_initial_site(sp)], dtype=float), (n, -1)), (n, E)
            )
            for sp in self.inferred_initial
        }

        solve_grid = make_grid_solver(self.mechanism, grid) if self._solve_data is not None else None

        @jax.jit
        def run(k, inferred):
            def one(k_i, inferred_i):
                y0 = self._initial_matrix(inferred_i)
                if solve_grid is not None:
                    return solve_grid(y0, k_i)
                ys, status = jax.vmap(self._solve_one, in_axes=(0, 0, None))(y0, jnp.asarray(grid), k_i)
                return ys, status != ODE_OK

            return jax.vmap(one)(k, inferred)

        ys, failed = run(k, inferred)
        observed = ys[..., self._observed_index]
        predictive = None
        if NOISE_SITE in samples:
            sigma = jnp.reshape(jnp.asarray(samples[NOISE_SITE], dtype=float), (n, 1, 1, 1))
            noisy = self._noise_distribution(observed, sigma).sample(jax.random.PRNGKey(seed))
            predictive = np.where(np.asarray(failed)[..., None, None], np.nan, np.asarray(noisy))
        return Trajectories(
            grid,
            np.asarray(ys),
            self.mechanism.species,
            data.experiments,
            np.asarray(failed),
            np.asarray(observed),
            predictive,
        )

    def with_stiff_solver(self) -> KineticsModel | None:
        """The same model solved with the stiff solver (``kvaerno5``), or None where that changes nothing.

        None for a linear mechanism (solved exactly, without time steps), a model already on
        the stiff solver, or a diffrax solver object given by the user. Tolerances, step limit
        and gradient method are kept. :func:`inference.fit` refits with it once when the
        explicit solver reaches its step limit (see :mod:`inference.engine.faults`).

        Examples
        --------
        >>> from vi_models import kinetics
        >>> data = kinetics.Dataset.from_arrays([0.0, 1.0, 2.0], {"A": [1.0, 0.5, 0.3]})
        >>> m = kinetics.model("2 A -> B : k", data, initial={"A": 1.0})
        >>> m.with_stiff_solver().solver.stiff, m.with_stiff_solver().with_stiff_solver()
        (True, None)
        """
        options = self.solver
        if self._solve_data is not None or not isinstance(options.solver, str):
            return None
        if options.stiff or options.solver.lower() == "kvaerno5":
            return None
        stiff = replace(options, solver="tsit5", stiff=True)
        c = _concentration_scale(self.dataset)
        return replace(
            self, solver=stiff, gradient=stiff.gradient_method(self.mechanism),
            _solve_one=make_solver(self.mechanism, stiff, atol=1e-8 * c, status=True),
        )

    def describe(self) -> dict[str, Any]:
        """The model's settings as plain data (for reports and ``fit.json``)."""
        initial = {}
        for j, sp in enumerate(self.mechanism.species):
            if sp in self.inferred_initial:
                initial[sp] = "inferred: " + describe_prior(self.priors[_initial_site(sp)])
            else:
                col = self.known_initial[:, j]
                initial[sp] = float(col[0]) if np.all(col == col[0]) else [float(v) for v in col]
        return {
            "mechanism": str(self.mechanism),
            "species": list(self.mechanism.species),
            "observed_species": list(self.dataset.species),
            "rate_constants": list(self.rate_constants),
            "priors": {name: describe_prior(p) for name, p in self.priors.items()},
            "noise": self.noise,
            "initial": initial,
            "solver": {
                "solver": self.solver.solver if isinstance(self.solver.solver, str) else repr(self.solver.solver),
                "stiff": self.solver.stiff,
                "rtol": self.solver.rtol,
                "atol": self.solver.atol,
                "max_steps": self.solver.max_steps,
                "gradient": self.gradient,
            },
            "data": self.dataset.describe(),
        }


def _concentration_scale(data: Dataset) -> float:
    c = float(data.c_max) if data.n_observations else 1.0
    return c if c > 0 and math.isfinite(c) else 1.0


def _prior_median(prior) -> float:
    """Median of a scalar prior: its inverse CDF at 1/2, else the median of 4001 fixed draws."""
    try:
        value = float(np.asarray(prior.icdf(jnp.asarray(0.5))))
        if math.isfinite(value):
            return value
    except (NotImplementedError, AttributeError, TypeError, ValueError):
        pass
    draws = np.asarray(prior.sample(jax.random.PRNGKey(0), (4001,)), dtype=float)
    return float(np.median(draws.reshape(4001, -1)[:, 0]))


def _noise_scale_estimate(data: Dataset, noise: str) -> float:
    """Difference-based noise scale of the data (see :meth:`KineticsModel.initial_values`)."""
    relative = noise in ("lognormal", "proportional")
    scale = 1.0 if relative else _concentration_scale(data)
    residuals = []
    for e in range(data.n_experiments):
        n = int(data.n_times[e])
        for j in range(data.n_species):
            seen = np.asarray(data.mask[e, :n, j])
            t = np.asarray(data.times[e, :n], dtype=float)[seen]
            y = np.asarray(data.values[e, :n, j], dtype=float)[seen]
            if noise == "lognormal":
                keep = y > 0
                t, y = t[keep], np.log(y[keep])
            if t.size < 3:
                continue
            t0, t1, t2 = t[:-2], t[1:-1], t[2:]
            y0, y1, y2 = y[:-2], y[1:-1], y[2:]
            span = t2 - t0
            ok = span > 0
            a = np.where(ok, (t2 - t1) / np.where(ok, span, 1.0), 0.5)
            b = 1.0 - a
            r = (y1 - a * y0 - b * y2) / np.sqrt(1.0 + a**2 + b**2)
            if noise == "proportional":
                size = np.abs(y1)
                ok &= size > 1e-3 * _concentration_scale(data)
                r = r / np.where(size > 0, size, 1.0)
            r = r[ok & np.isfinite(r)]
            residuals.append(r)
    r = np.concatenate(residuals) if residuals else np.zeros(0)
    if r.size < 3:
        return 0.05 * scale
    sigma = 1.4826 * float(np.median(np.abs(r)))
    return max(sigma, 1e-3 * scale) if math.isfinite(sigma) else 0.05 * scale


def _time_scale(data: Dataset) -> float:
    t = float(data.t_max)
    return t if t > 0 and math.isfinite(t) else 1.0


def default_priors(mechanism: Mechanism, dataset: Dataset, noise: str) -> dict[str, Any]:
    """The documented default priors, scaled to the data (see the module docstring)."""
    c, T = _concentration_scale(dataset), _time_scale(dataset)
    priors = {}
    for name, (a, b) in mechanism.parameter_units().items():
        priors[name] = dist.LogNormal(math.log(c**a * T**b), 2.0)
    priors[NOISE_SITE] = dist.HalfNormal(0.5 * c if noise == "normal" else 0.5)
    return priors


def initial_value(species: str, spec, n_experiments: int, *, scale: float, also: str = ""):
    """One species' initial concentration: an array ``(E,)`` of known values, or the prior of an inferred one.

    ``spec`` is a number, one number per experiment, ``"infer"`` (a LogNormal prior around
    ``scale``), prior text such as ``"LogNormal(0, 1)"``, or a NumPyro distribution. ``also``
    names other accepted forms in the error sentence (e.g. a condition column).
    """
    if isinstance(spec, str) and spec.strip().lower() == "infer":
        return dist.LogNormal(math.log(scale), 1.0)
    if isinstance(spec, str):
        try:
            spec = float(spec)
        except ValueError:
            return as_prior(spec, name=_initial_site(species))
    if isinstance(spec, dist.Distribution):
        return spec
    arr = np.asarray(spec, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n_experiments, float(arr))
    if arr.shape != (n_experiments,):
        count = f"{n_experiments} value{'s' if n_experiments != 1 else ''}"
        forms = f"one number, one per experiment ({count})" + (f", or {also}" if also else "")
        raise ValueError(f"initial concentration of {species!r} has shape {arr.shape}; give {forms}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"initial concentration of {species!r} must be finite and non-negative, got {arr}")
    return arr


def _resolve_initial(mechanism: Mechanism, dataset: Dataset, initial) -> tuple[np.ndarray, dict]:
    """Split ``initial`` into known values (E, S) and priors of inferred initial sites."""
    E, species = dataset.n_experiments, mechanism.species
    initial = dict(initial or {})
    unknown = sorted(set(initial) - set(species))
    if unknown:
        raise ValueError(
            f"initial concentrations given for {', '.join(map(repr, unknown))}, which the mechanism "
            f"does not have (species: {', '.join(species)}); check the spelling"
        )
    known = np.zeros((E, len(species)))
    inferred: dict[str, Any] = {}
    for j, sp in enumerate(species):
        if sp in initial:
            spec = initial[sp]
        elif sp in dataset.initial:
            spec = dataset.initial[sp]
        elif sp in dataset.species:
            raise ValueError(
                f"the initial concentration of the observed species {sp!r} is not given; give it "
                f"if it is known (Python: initial={{{sp!r}: 1.0}}; command line: --initial {sp}=1.0; "
                f"TOML: [initial] {sp} = 1.0), or infer it (initial={{{sp!r}: 'infer'}}, "
                f"--initial {sp}=infer)"
            )
        else:
            spec = 0.0  # a species that is neither observed nor given starts at zero
        value = initial_value(sp, spec, E, scale=_concentration_scale(dataset))
        if isinstance(value, np.ndarray):
            known[:, j] = value
        else:
            inferred[_initial_site(sp)] = value
            known[:, j] = np.nan
    return known, inferred


def model(
    mechanism: Mechanism | str,
    dataset: Dataset | str | Path,
    *,
    priors: Mapping[str, Any] | None = None,
    noise: str = "normal",
    initial: Mapping[str, Any] | None = None,
    solver: SolverOptions | Mapping[str, Any] | str | None = None,
    observables: Mapping[str, str] | None = None,
    conditions: Any = None,
    hierarchy: Mapping[str, Any] | None = None,
    doses: Any = None,
    T_ref: float | None = None,
    temperature: str = "T",
):
    """Build a NumPyro model of ``mechanism`` observed in ``dataset``.

    Parameters
    ----------
    mechanism : Mechanism or str
        A parsed mechanism, mechanism text (``"A -> B : k"``) or a built-in name.
    dataset : Dataset, str or Path
        The measurements, or the path of a CSV file.
    priors : mapping, optional
        Priors by site name (rate constants, ``"sigma"``, ``"<species>0"``), as NumPyro
        distributions or text such as ``"LogNormal(log(0.5), 1)"``. Sites not named get the
        documented defaults (module docstring).
    noise : {"normal", "lognormal", "proportional"}
        Measurement noise model.
    initial : mapping, optional
        Initial concentration per species: a number (known, every experiment), a sequence of
        one number per experiment, a prior (text or distribution) to infer it, or ``"infer"``
        for the default prior ``LogNormal(log c, 1)``. Species
        that are neither observed nor named start at 0; an observed species must be given here
        or in ``dataset.initial``.
    solver : SolverOptions, mapping, or str, optional
        ODE options; a string is a solver name (``"kvaerno5"`` for stiff systems).
    observables : mapping of str to str, optional
        What a measured column is, as an expression of species, parameters and numeric
        conditions: ``{"A280": "eps_A * A + eps_B * B + base", "C": "Central / V"}``. A name
        that is neither a species nor a condition is a parameter and needs a prior in
        ``priors``. Columns not named here must be species (measured directly).
    conditions : list of str, mapping or Conditions, optional
        Per-experiment conditions: names of CSV columns (one value per experiment; with a
        Dataset, names of its numeric columns), or ``{name: one value per experiment}``.
        Numeric conditions can appear in observables, initial concentrations
        (``initial={"A": "A0"}``), doses and, as ``T`` in kelvin, in the rate laws
        ``arrhenius(k, Ea)`` and ``eyring(dH, dS)``.
    hierarchy : mapping, optional
        Parameters that vary by group, with partial pooling: ``{"k": "subject"}`` or
        ``{"CL": {"group": "subject", "covariates": ["weight"], "centered": False}}``;
        ``"experiment"`` groups by experiment. See :mod:`vi_models.kinetics.experiments`.
    doses : sequence of Dose or mapping, optional
        Boluses: ``[{"species": "Central", "amount": "dose", "time": 0}]``; amount and time
        are numbers, condition names or one number per experiment.
    T_ref : float, optional
        Reference temperature of ``arrhenius`` (K); default the mean temperature of the data.
    temperature : str
        The condition that holds the temperature in kelvin (``"T"``).

    Returns
    -------
    KineticsModel or ExperimentModel
        A callable NumPyro model: ``fit(model)`` conditions on the data. With any of
        ``observables``, ``conditions``, ``hierarchy``, ``doses``, a per-column ``noise``
        mapping or a temperature law in the mechanism, an
        :class:`~vi_models.kinetics.experiments.ExperimentModel`.

    Examples
    --------
    >>> from vi_models import kinetics
    >>> data = kinetics.Dataset.from_arrays([0.0, 1.0, 2.0], {"A": [1.0, 0.61, 0.37]})
    >>> m = kinetics.model("A -> B : k", data, initial={"A": 1.0})
    >>> m.latent_sites
    ('k', 'sigma')
    """
    from .arguments import check_builder_arguments

    # Argument kinds first (a list of priors, a boolean concentration, a misspelt solver option):
    # a sentence naming the argument, not an error from deep inside the builder.
    check_builder_arguments(
        dataset=dataset, priors=priors, initial=initial, solver=solver, noise=noise, conditions=conditions
    )
    uses_laws = isinstance(mechanism, str) and ("arrhenius" in mechanism or "eyring" in mechanism)
    if observables or conditions or hierarchy or doses or uses_laws or isinstance(noise, Mapping):
        from .experiments import build

        return build(
            mechanism,
            dataset,
            priors=priors,
            noise=noise,
            initial=initial,
            solver=solver,
            observables=observables,
            conditions=conditions,
            hierarchy=hierarchy,
            doses=doses,
            T_ref=T_ref,
            temperature=temperature,
        )
    mech = mechanism if isinstance(mechanism, Mechanism) else Mechanism.from_text_or_name(mechanism)
    data = dataset if isinstance(dataset, Dataset) else Dataset.from_csv(dataset)
    data.check_species(mech.species)
    if noise not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {noise!r}; use one of {', '.join(NOISE_MODELS)}")
    if NOISE_SITE in mech.parameters:
        raise ValueError(
            f"the rate constant name {NOISE_SITE!r} is reserved for the noise scale; rename it in the mechanism"
        )
    if noise == "lognormal":
        data.require_positive(why="noise='lognormal'", fix="use noise='normal' or 'proportional'")
    clashes = [sp for sp in mech.species if _initial_site(sp) in mech.parameters]
    if clashes:
        raise ValueError(
            f"rate constant {_initial_site(clashes[0])!r} has the name of the initial concentration "
            f"of {clashes[0]!r}; rename the rate constant"
        )
    if isinstance(solver, str):
        options = SolverOptions(solver=solver)
    elif isinstance(solver, Mapping):
        options = SolverOptions(**solver)
    else:
        options = solver or SolverOptions()
    known, inferred = _resolve_initial(mech, data, initial)
    resolved = default_priors(mech, data, noise)
    c = _concentration_scale(data)
    for site in inferred:
        resolved[site] = inferred[site]
    for site, spec in (priors or {}).items():
        if site not in resolved:
            raise ValueError(
                f"prior given for {site!r}, which is not a parameter of this model; the parameters "
                f"are {', '.join(resolved)}"
            )
        resolved[site] = as_prior(spec, name=site)
    order = list(mech.parameters) + sorted(inferred) + [NOISE_SITE]
    resolved = {site: resolved[site] for site in order}
    observed_index = np.array([mech.species.index(sp) for sp in data.species], dtype=int)
    solve_one = make_solver(mech, options, atol=1e-8 * c, status=True)
    return KineticsModel(
        mechanism=mech,
        dataset=data,
        priors=resolved,
        noise=noise,
        known_initial=known,
        inferred_initial=tuple(site[:-1] for site in sorted(inferred)),
        solver=options,
        gradient=options.gradient_method(mech),
        _solve_one=solve_one,
        _observed_index=observed_index,
        _solve_data=make_grid_solver(mech, data.times) if options.gradient_method(mech) == "expm" else None,
    )

"""Many experiments as one hierarchical model: a plate of wells, read fast, fitted on minibatches or devices.

A kinetic assay comes by the plate: hundreds to tens of thousands of wells, each a short time
course, sharing one mechanism and a population of rate constants. This module holds such a
plate as arrays and builds the hierarchical NumPyro model over it, written so that the
experiment axis can be **subsampled** (NumPyro's ``plate(..., subsample_size=...)``) and
**sharded** across devices (:func:`inference.fit` with ``devices=``):

* :class:`PlateData` -- the measurements on a padded grid, ``times (E, T)``, ``values`` and
  ``mask (E, T, S)``, registered as a JAX pytree (the arrays are its leaves, the labels are
  static), so that it is passed to the model as an argument: ``fit(model, data)``.
* :func:`read_plate` -- the long CSV with an experiment column (or Parquet, through
  ``pyarrow``), read with pandas' C reader and grouped with NumPy: no Python loop over rows.
* :func:`plate_model` -- the model. For experiment ``e`` and a hierarchical parameter ``p``::

      p_mu ~ prior,  p_tau ~ prior                        population of log p
      log p_e = p_u[e] ~ Normal(p_mu, p_tau)             centred (default), or
      log p_e = p_mu + p_tau p_z[e],  p_z[e] ~ Normal(0, 1)   non-centred
      y_e(t) = solution of dy/dt = f(y, k_e), y(0) = y0
      obs[e, i, j] ~ Normal(y_e,j(t_i), sigma)            observed species j, masked cells skipped

  Shared parameters have one prior each; ``sigma`` is shared. The deterministic site ``p``
  holds the per-experiment values ``exp(log p_e)``. The observed site ``obs`` has shape
  ``(E, T, S)``, or ``(E, T)`` when one species is measured.

Centred is the default because wells of a plate are usually informative on their own: then the
posterior of ``p_u[e]`` hardly depends on the population, the mean-field guide that large plates
need is close to exact, and the MAP has no funnel. With a few points per well and a wide
population, ``centered=False`` is the better geometry.

First-order decays of species that are not produced (``A -> B : k``, parallel decays
``A -> B : k1; A -> C : k2``) are solved in closed form; other linear (first-order) mechanisms
exactly by matrix exponentials, one per experiment and distinct time step (a shared, evenly spaced
grid has one step), chained by a parallel prefix product; other mechanisms by
:func:`vi_models.kinetics.make_solver` per experiment.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .mechanism import Mechanism
from .model import FAILED_SITE
from .ode import expm_small, make_solver
from .priors import as_prior

__all__ = ["PlateData", "PlateModel", "read_plate", "plate_model", "increments", "EXPERIMENT_COLUMNS", "TIME_COLUMNS"]

#: Accepted names (lower case) of the experiment column.
EXPERIMENT_COLUMNS = ("experiment", "exp", "run", "well")
#: Accepted names (lower case) of the time column.
TIME_COLUMNS = ("time", "t")


@dataclass(frozen=True, eq=False)
class PlateData:
    """Measurements of many experiments on a padded grid (a JAX pytree: arrays are leaves).

    Experiment ``e`` has ``n_times[e]`` points; the rest of its row repeats its last time and is
    never observed (``mask`` False).

    Attributes
    ----------
    times : ndarray, shape (E, T)
        Non-decreasing times of each experiment, from ``t = 0`` (the initial state).
    values : ndarray, shape (E, T, S)
        Measured values; 0 where not observed.
    mask : ndarray of bool, shape (E, T, S)
        Which cells were measured.
    step_index : ndarray of int32, shape (E, T)
        Index into :attr:`steps` of each time increment (for the exact linear solver).
    experiments : tuple of str
        Experiment labels, in order of first appearance in the file (static).
    species : tuple of str
        Measured columns (static).
    steps : tuple of float
        The distinct time increments (static) when there are at most ``T`` of them (a shared or
        regular grid), else empty (every experiment its own times); see :func:`increments`.
    source : str
        Where the data came from.
    read_seconds : float
        Seconds spent reading and arranging the file (0 for arrays).
    complete : bool
        Every cell is measured (no padding, no gaps), so the likelihood needs no mask (static).
    """

    times: Any
    values: Any
    mask: Any
    step_index: Any
    experiments: tuple = field(default=())
    species: tuple = field(default=())
    steps: tuple = field(default=())
    source: str = ""
    read_seconds: float = 0.0
    complete: bool = False

    @property
    def n_experiments(self) -> int:
        """Number of experiments ``E``."""
        return int(np.shape(self.times)[0])

    @property
    def n_observations(self) -> int:
        """Number of measured cells."""
        return int(np.sum(np.asarray(self.mask)))

    @property
    def n_times(self) -> np.ndarray:
        """Measured time points per experiment, ``(E,)``."""
        return np.asarray(np.any(np.asarray(self.mask), axis=-1).sum(axis=1))

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the memory the data take on one device)."""
        return int(sum(np.asarray(x).nbytes for x in (self.times, self.values, self.mask, self.step_index)))

    def describe(self) -> str:
        """One line: experiments, points, species and memory."""
        grid = (
            "times differ between experiments" if not self.steps
            else "one time grid" if len(self.steps) <= 2 else f"{len(self.steps)} distinct time steps"
        )
        read = f", read in {self.read_seconds:.2f} s" if self.read_seconds else ""
        return (
            f"{self.n_experiments} experiments x up to {np.shape(self.times)[1]} times, species "
            f"{', '.join(self.species)}; {self.n_observations} measured values, {grid}; "
            f"{self.nbytes / 2**20:.1f} MiB of arrays{read}"
        )

    def take(self, index) -> PlateData:
        """The experiments at ``index`` (a traced array inside a model is fine)."""
        pick = lambda x: None if x is None else jnp.asarray(x)[index]  # noqa: E731
        return PlateData(
            pick(self.times), pick(self.values), pick(self.mask), pick(self.step_index),
            self.experiments, self.species, self.steps, self.source, self.read_seconds, self.complete,
        )

    def head(self, n: int) -> PlateData:
        """The first ``n`` experiments, as a new plate (NumPy arrays)."""
        sl = slice(0, int(n))
        times = np.asarray(self.times)[sl]
        steps, index = increments(times)
        return PlateData(
            times, np.asarray(self.values)[sl], np.asarray(self.mask)[sl], index,
            tuple(self.experiments[sl]), self.species, steps, self.source,
            complete=bool(np.all(np.asarray(self.mask)[sl])),
        )

    @classmethod
    def grid(cls, n_experiments: int, times, *, species: Sequence[str] = ("A",)) -> PlateData:
        """An unmeasured plate: ``n_experiments`` experiments at ``times`` (``(T,)`` or ``(E, T)``), every cell to be measured.

        For simulation (:meth:`PlateModel.synthetic`) and benchmarks.
        """
        times = np.asarray(times, dtype=float)
        T = times.shape[-1]
        values = np.zeros((int(n_experiments), T, len(species)))
        return cls.from_arrays(times, values, species=species, source="grid")

    @classmethod
    def from_arrays(cls, times, values, mask=None, *, species: Sequence[str] = ("A",), experiments=None,
                    source: str = "arrays") -> PlateData:
        """A plate from arrays: ``times`` ``(E, T)`` (or ``(T,)`` shared), ``values`` ``(E, T)`` or ``(E, T, S)``.

        NaN values are unobserved; ``mask`` (same shape as ``values``) marks measured cells.
        """
        values = np.asarray(values, dtype=float)
        if values.ndim == 2:
            values = values[..., None]
        if values.ndim != 3:
            raise ValueError(f"values must have shape (E, T) or (E, T, S), got {values.shape}")
        E, T, S = values.shape
        times = np.asarray(times, dtype=float)
        times = np.broadcast_to(times, (E, T)).copy() if times.ndim == 1 else times.copy()
        if times.shape != (E, T):
            raise ValueError(f"times must have shape ({T},) or ({E}, {T}), got {times.shape}")
        if len(species) != S:
            raise ValueError(f"{S} measured columns but {len(species)} species names")
        observed = np.isfinite(values) if mask is None else np.asarray(mask, dtype=bool) & np.isfinite(values)
        return _assemble(times, values, observed, tuple(species), experiments, source, 0.0)

    def tree_flatten(self):
        return (self.times, self.values, self.mask, self.step_index), (
            self.experiments, self.species, self.steps, self.source, self.read_seconds, self.complete,
        )

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)


jax.tree_util.register_pytree_node(PlateData, PlateData.tree_flatten, PlateData.tree_unflatten)


def increments(times: np.ndarray, *, rtol: float = 1e-9) -> tuple[tuple, np.ndarray]:
    """The distinct time increments of a plate and the index of each, vectorized.

    ``t_i - t_(i-1)`` (from ``t = 0``) agreeing to ``rtol`` times the largest time are one step
    (their mean). When there are more distinct steps than times per experiment (every experiment
    its own times) the steps are not kept: ``((), zeros)``.

    Returns
    -------
    (tuple of float, ndarray of int32 (E, T))
    """
    times = np.asarray(times, dtype=float)
    deltas = np.diff(times, axis=-1, prepend=0.0)
    scale = max(float(np.max(np.abs(times))) if times.size else 1.0, 1e-300) * rtol
    unique, index = np.unique(np.round(deltas / scale), return_inverse=True)
    if unique.size > times.shape[-1]:
        return (), np.zeros(times.shape, np.int32)
    index = index.reshape(deltas.shape)
    means = np.bincount(index.ravel(), weights=deltas.ravel()) / np.bincount(index.ravel())
    return tuple(float(x) for x in means), index.astype(np.int32)


def _assemble(times, values, observed, species, experiments, source, seconds) -> PlateData:
    """Check and finish a plate: times non-decreasing from 0, padding, step index."""
    E, T, _ = values.shape
    if not np.all(np.isfinite(times)):
        raise ValueError(f"{source}: times must be finite numbers")
    if np.any(times < 0):
        raise ValueError(f"{source}: times must be at or after 0 (the initial state)")
    if T > 1 and np.any(np.diff(times, axis=1) < 0):
        e = int(np.flatnonzero(np.any(np.diff(times, axis=1) < 0, axis=1))[0])
        raise ValueError(f"{source}: the times of experiment {e} decrease; sort them")
    labels = tuple(str(e) for e in range(E)) if experiments is None else tuple(str(x) for x in experiments)
    if len(labels) != E:
        raise ValueError(f"{E} experiments but {len(labels)} labels")
    steps, index = increments(times)
    return PlateData(
        times=times,
        values=np.where(observed, values, 0.0),
        mask=observed,
        step_index=index,
        experiments=labels,
        species=species,
        steps=steps,
        source=source,
        read_seconds=seconds,
        complete=bool(np.all(observed)),
    )


# -- reading ----------------------------------------------------------------------------------------
def _column(columns, wanted: Sequence[str], given: str | None, what: str, source: str) -> str:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{source}: no column {given!r} ({what}); the columns are {', '.join(map(str, columns))}")
        return given
    lower = {str(c).strip().lower(): c for c in columns}
    for name in wanted:
        if name in lower:
            return lower[name]
    raise ValueError(
        f"{source}: no {what} column; name one of {', '.join(repr(w) for w in wanted)} or pass "
        f"{'experiment' if what == 'experiment' else 'time'}='column name'"
    )


def read_plate(
    path,
    *,
    experiment: str | None = None,
    time: str | None = None,
    species: Sequence[str] | None = None,
    format: str | None = None,
) -> PlateData:
    """Read a plate from a long CSV or Parquet file, without a Python loop over rows.

    Two layouts, told apart by the columns (names matched without regard to case):

    * one row per experiment and time, one column per measured species
      (``experiment, time, A[, B...]``), as ``d_hier.csv`` (``exp, t, A``);
    * one row per measurement: ``experiment, time, species, value`` (a species not measured at a
      time has no row; rows with the same experiment, time and species are replicates).

    The experiment column is ``experiment``, ``exp``, ``run`` or ``well`` (or ``experiment=``);
    the time column ``time`` or ``t`` (or ``time=``). Experiments keep the order of their first
    row; within an experiment rows are sorted by time. Empty cells are unobserved.

    Parameters
    ----------
    path : str or path
        ``.csv`` (pandas' C reader) or ``.parquet`` / ``.pq`` (``pyarrow``; install
        ``vifit[parquet]``).
    experiment, time : str, optional
        Column names, when not one of the accepted names.
    species : sequence of str, optional
        The measured columns to keep (wide layout) or species to keep (long layout); default all.
    format : {"csv", "parquet"}, optional
        Default from the file name.

    Returns
    -------
    PlateData
        With ``read_seconds`` set; :meth:`PlateData.describe` gives the memory the arrays take.
    """
    import pandas as pd

    t0 = time_module()
    source = os.fspath(path)
    fmt = format or ("parquet" if source.lower().endswith((".parquet", ".pq")) else "csv")
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise ImportError(
                "reading Parquet needs pyarrow: pip install 'vifit[parquet]' (or pip install pyarrow)"
            ) from err
        frame = pd.read_parquet(source, engine="pyarrow")
    elif fmt == "csv":
        frame = pd.read_csv(source, comment="#", skipinitialspace=True, engine="c")
    else:
        raise ValueError(f"format must be 'csv' or 'parquet', got {format!r}")
    frame.columns = [str(c).strip() for c in frame.columns]
    exp_col = _column(frame.columns, EXPERIMENT_COLUMNS, experiment, "experiment", source)
    time_col = _column(frame.columns, TIME_COLUMNS, time, "time", source)
    lower = {c.lower(): c for c in frame.columns}
    long = "species" in lower and "value" in lower
    codes, labels = pd.factorize(frame[exp_col], sort=False)
    if np.any(codes < 0):
        raise ValueError(f"{source}: {int(np.sum(codes < 0))} rows have no experiment label")
    t = pd.to_numeric(frame[time_col], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(t)):
        row = int(np.flatnonzero(~np.isfinite(t))[0])
        raise ValueError(f"{source}: row {row + 1} has no numeric time in column {time_col!r}")
    if long:
        sp_codes, sp_names = pd.factorize(frame[lower["species"]].astype(str).str.strip(), sort=False)
        names = [str(s) for s in sp_names]
        v = pd.to_numeric(frame[lower["value"]], errors="coerce").to_numpy(dtype=float)
        if species is not None:
            keep = np.isin(np.asarray(names), list(species))
            wanted = [s for s in species if s in names]
            missing = [s for s in species if s not in names]
            if missing:
                raise ValueError(f"{source}: no rows of species {', '.join(missing)}")
            remap = np.full(len(names), -1)
            remap[[names.index(s) for s in wanted]] = np.arange(len(wanted))
            rows = keep[sp_codes]
            codes, t, v, sp_codes, names = codes[rows], t[rows], v[rows], remap[sp_codes[rows]], wanted
        # One grid point per distinct (experiment, time); species fill its columns.
        key_order = np.lexsort((t, codes))
        codes_s, t_s = codes[key_order], t[key_order]
        new = np.ones(codes_s.size, dtype=bool)
        new[1:] = (codes_s[1:] != codes_s[:-1]) | (t_s[1:] != t_s[:-1])
        point = np.cumsum(new) - 1  # grid point of each sorted row
        p_codes, p_times = codes_s[new], t_s[new]
        cells = np.full((p_codes.size, len(names)), np.nan)
        cells[point, sp_codes[key_order]] = v[key_order]
        # Replicates of one cell: each is its own grid point (same time), so none is lost.
        dup = np.zeros(codes_s.size, dtype=bool)
        flat = point * len(names) + sp_codes[key_order]
        _, first = np.unique(flat, return_index=True)
        dup[np.setdiff1d(np.arange(flat.size), first)] = True
        if dup.any():
            extra_codes, extra_t = codes_s[dup], t_s[dup]
            extra = np.full((int(dup.sum()), len(names)), np.nan)
            extra[np.arange(extra.shape[0]), sp_codes[key_order][dup]] = v[key_order][dup]
            p_codes = np.concatenate([p_codes, extra_codes])
            p_times = np.concatenate([p_times, extra_t])
            cells = np.concatenate([cells, extra])
        row_codes, row_times, row_values, names = p_codes, p_times, cells, tuple(names)
    else:
        names = [c for c in frame.columns if c not in (exp_col, time_col)]
        if species is not None:
            missing = [s for s in species if s not in names]
            if missing:
                raise ValueError(f"{source}: no column {', '.join(map(repr, missing))}; the columns are {', '.join(names)}")
            names = list(species)
        if not names:
            raise ValueError(f"{source}: no measured columns besides {exp_col!r} and {time_col!r}")
        row_values = frame[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        row_codes, row_times, names = codes, t, tuple(names)
    order = np.lexsort((row_times, row_codes))
    row_codes, row_times, row_values = row_codes[order], row_times[order], row_values[order]
    E = len(labels)
    counts = np.bincount(row_codes, minlength=E)
    T = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(row_codes.size) - starts[row_codes]
    times = np.zeros((E, T))
    times[row_codes, pos] = row_times
    # Padding repeats each experiment's last time (never observed).
    last = row_times[starts + counts - 1]
    padded = np.arange(T)[None, :] >= counts[:, None]
    times = np.where(padded, last[:, None], times)
    values = np.full((E, T, len(names)), np.nan)
    values[row_codes, pos] = row_values
    observed = np.isfinite(values)
    return _assemble(times, values, observed, names, [str(x) for x in labels], source, time_module() - t0)


def time_module() -> float:
    return time.perf_counter()


# -- the model --------------------------------------------------------------------------------------
def _linear_plate_solver(mechanism: Mechanism):
    """``solve(y0 (S,), k (b, P), data) -> (ys (b, T, S), failed (b,))`` for a linear mechanism.

    One matrix exponential per experiment and distinct time step (:attr:`PlateData.steps`),
    chained over each experiment's times by a parallel prefix product.
    """
    n = len(mechanism.species)

    def solve(y0, k, data: PlateData):
        steps = jnp.asarray(data.steps, dtype=float)

        def generator(k_e):
            K, b = mechanism.linear_system(k_e)
            M = jnp.zeros((n + 1, n + 1), dtype=jnp.result_type(float))
            return M.at[:n, :n].set(K).at[:n, n].set(b)

        M = jax.vmap(generator)(k)  # (b, n+1, n+1)
        if 0 < steps.shape[0] <= data.times.shape[1]:
            step_maps = jax.vmap(lambda m: jax.vmap(lambda h: expm_small(h * m))(steps))(M)  # (b, U, ...)
            maps = jnp.take_along_axis(step_maps, data.step_index[:, :, None, None], axis=1)  # (b, T, ...)
        else:
            # Many distinct steps (irregular times in every well): one exponential per time increment.
            deltas = jnp.diff(data.times, axis=1, prepend=0.0)
            maps = jax.vmap(lambda m, dt: jax.vmap(lambda h: expm_small(h * m))(dt))(M, deltas)
        cumulative = jax.lax.associative_scan(lambda a, c: c @ a, maps, axis=1)
        z0 = jnp.concatenate([jnp.asarray(y0, dtype=M.dtype), jnp.ones((1,), dtype=M.dtype)])
        ys = jnp.einsum("btij,j->bti", cumulative, z0)[..., :n]
        failed = ~jnp.all(jnp.isfinite(ys), axis=(-2, -1))
        return jnp.where(failed[:, None, None], 0.0, ys), failed

    return solve


def _is_decay(mechanism: Mechanism) -> bool:
    """Whether every species either only decays (first order, not produced) or is only produced."""
    if not mechanism.is_linear:
        return False
    probe = 0.37 + 0.29 * np.arange(len(mechanism.parameters))
    K, b = (np.asarray(x, dtype=float) for x in mechanism.linear_system(probe))
    if np.any(b != 0):
        return False
    decaying = np.diag(K) != 0
    off = K - np.diag(np.diag(K))
    # A decaying species has no inflow; a product does not decay and feeds nothing.
    return bool(np.all(off[decaying] == 0) and np.all(off[:, ~decaying] == 0))


def _decay_plate_solver(mechanism: Mechanism, observed: Sequence[int]):
    """Closed form for first-order decays of species that are not produced (``A -> B : k`` and the like).

    A decaying species ``i`` follows ``y_i(t) = y_i(0) exp(-a_i t)`` with ``a_i = -K_ii``; a
    product ``j`` gains ``K_ji / a_i y_i(0) (1 - exp(-a_i t))`` from each. ``K`` is linear in the
    rate constants, so its entries are fixed combinations of them, found once here. Only the
    measured species are computed: one exponential per decaying species and time point.
    """
    P, n = len(mechanism.parameters), len(mechanism.species)
    units = [np.asarray(mechanism.linear_system(np.eye(P)[p])[0], dtype=float) for p in range(P)]
    rate = np.stack([-np.diag(K) for K in units])  # (P, n): a = k @ rate
    flow = np.stack(units)  # (P, n, n): off-diagonal K = k @ flow
    decaying = [i for i in range(n) if np.any(rate[:, i] != 0)]

    def solve(y0, k, data: PlateData):
        y0 = np.asarray(y0, dtype=float)  # known initial values: constants of the model
        t = data.times  # (b, T)
        a = k @ jnp.asarray(rate)  # (b, n)
        cols = []
        for j in observed:
            if j in decaying:
                cols.append(y0[j] * jnp.exp(-a[:, j, None] * t))
                continue
            col = jnp.full(t.shape, y0[j])
            for i in decaying:
                coeff = flow[:, j, i]
                if np.any(coeff != 0) and y0[i] != 0:
                    gain = (k @ jnp.asarray(coeff)) / a[:, i] * y0[i]
                    col = col + gain[:, None] * -jnp.expm1(-a[:, i, None] * t)
            cols.append(col)
        ys = jnp.stack(cols, axis=-1)  # (b, T, observed)
        failed = ~jnp.all(jnp.isfinite(ys), axis=(-2, -1))
        return jnp.where(failed[:, None, None], 0.0, ys), failed

    return solve


def _ode_plate_solver(mechanism: Mechanism):
    solve_one = make_solver(mechanism)

    def solve(y0, k, data: PlateData):
        return jax.vmap(solve_one, in_axes=(None, 0, 0))(jnp.asarray(y0, dtype=float), data.times, k)

    return solve


@dataclass(frozen=True, eq=False)
class PlateModel:
    """The hierarchical model of a plate (see the module docstring); build it with :func:`plate_model`.

    Call it as a NumPyro model with the data: ``model(data)``, or ``model(data, subsample_size=b)``
    for minibatches of ``b`` experiments (the likelihood and the per-experiment priors are
    scaled by ``E / b``, so the ELBO and its gradient stay unbiased).

    Attributes
    ----------
    mechanism : Mechanism
    hierarchical : tuple of str
        Parameters that vary by experiment.
    shared : tuple of str
        Parameters shared by every experiment.
    priors : dict of str to Distribution
        By site name: ``p_mu``, ``p_tau`` for hierarchical ``p``, ``p`` for shared ones, ``sigma``.
    y0 : ndarray, shape (n_species,)
        Known initial concentrations (every experiment).
    observed : tuple of int
        Index in the mechanism's species of each measured column.
    centered : bool
    """

    mechanism: Mechanism
    hierarchical: tuple
    shared: tuple
    priors: Mapping[str, Any]
    y0: np.ndarray
    observed: tuple
    species: tuple
    centered: bool = True
    measured_only: bool = False
    _solve: Any = field(default=None, repr=False)

    @property
    def local_sites(self) -> tuple[str, ...]:
        """The per-experiment latent sites (``p_u`` centred, ``p_z`` non-centred)."""
        return tuple(f"{p}_{'u' if self.centered else 'z'}" for p in self.hierarchical)

    @property
    def global_sites(self) -> tuple[str, ...]:
        """The latent sites shared by the whole plate."""
        out = []
        for p in self.mechanism.parameters:
            out += [f"{p}_mu", f"{p}_tau"] if p in self.hierarchical else [p]
        return tuple(out) + ("sigma",)

    def __call__(self, data: PlateData, subsample_size: int | None = None):
        E = data.times.shape[0]
        values = {}
        population = {}
        for p in self.mechanism.parameters:
            if p in self.hierarchical:
                population[p] = (numpyro.sample(f"{p}_mu", self.priors[f"{p}_mu"]),
                                 numpyro.sample(f"{p}_tau", self.priors[f"{p}_tau"]))
            else:
                values[p] = numpyro.sample(p, self.priors[p])
        sigma = numpyro.sample("sigma", self.priors["sigma"])
        with numpyro.plate("experiment", E, subsample_size=subsample_size, dim=-1) as idx:
            batch = data if subsample_size is None or subsample_size == E else data.take(idx)
            b = batch.times.shape[0]
            for p, (mu, tau) in population.items():
                if self.centered:
                    log_p = numpyro.sample(f"{p}_u", dist.Normal(mu, tau))
                else:
                    log_p = mu + tau * numpyro.sample(f"{p}_z", dist.Normal(0.0, 1.0))
                values[p] = numpyro.deterministic(p, jnp.exp(log_p))
            k = jnp.stack([jnp.broadcast_to(values[p], (b,)) for p in self.mechanism.parameters], axis=-1)
            ys, failed = self._solve(self.y0, k, batch)
            mean = ys if self.measured_only else ys[..., jnp.asarray(self.observed)]
            values, mask, event = batch.values, batch.mask, 2
            if mean.shape[-1] == 1:
                # One measured species: the site is (E, T). A trailing axis of length 1 makes the
                # compiled CPU program about 2.5 times slower per experiment.
                mean, mask, event = mean[..., 0], mask[..., 0], 1
                values = None if values is None else values[..., 0]
            noise = dist.Normal(mean, sigma)
            numpyro.sample(
                "obs",
                (noise if batch.complete else noise.mask(mask)).to_event(event),
                obs=values,  # None simulates (see synthetic)
            )
        # A failed solve is an impossible draw (as in every kinetics model of vifit).
        numpyro.factor(FAILED_SITE, jnp.where(jnp.any(failed), -jnp.inf, 0.0))

    def synthetic(self, data: PlateData, truth: Mapping[str, Any], *, seed: int = 0) -> PlateData:
        """A plate like ``data`` (same times and measured cells) drawn from the model at ``truth``.

        ``truth`` gives every latent site: the global sites and, per experiment, ``p_u`` (centred;
        ``log p_e``) or ``p_z``.
        """
        from numpyro import handlers

        fixed = {k: jnp.asarray(v, dtype=float) for k, v in truth.items()}
        blank = PlateData(jnp.asarray(data.times), None, jnp.asarray(data.mask), jnp.asarray(data.step_index),
                          data.experiments, data.species, data.steps, complete=data.complete)
        with handlers.seed(rng_seed=seed), handlers.substitute(data=fixed):
            trace = handlers.trace(self).get_trace(blank)
        obs = np.asarray(trace["obs"]["value"])
        obs = obs[..., None] if obs.ndim == 2 else obs  # one measured species: the site is (E, T)
        mask = np.asarray(data.mask)
        return PlateData(
            np.asarray(data.times), np.where(mask, obs, 0.0), mask, np.asarray(data.step_index),
            data.experiments, data.species, data.steps, "synthetic", complete=data.complete,
        )

    def initial_values(self) -> dict:
        """Data-informed starting values: none (the MAP stage starts at the prior median)."""
        return {}


def plate_model(
    mechanism: str | Mechanism,
    data: PlateData,
    *,
    initial: Mapping[str, float],
    hierarchical: str | Sequence[str] = (),
    priors: Mapping[str, Any] | None = None,
    centered: bool = True,
) -> PlateModel:
    """The hierarchical model of a plate of experiments sharing ``mechanism``.

    Parameters
    ----------
    mechanism : str or Mechanism
        E.g. ``"A -> B : k"``.
    data : PlateData
        The plate (only its species and scales are read here; the model is called with the data).
    initial : mapping of str to float
        Known initial concentration of every species (the same in every experiment).
    hierarchical : str or sequence of str
        Parameters that vary by experiment (log-normal population); the others are shared.
    priors : mapping, optional
        Priors by site name (NumPyro distributions or prior text): ``p_mu`` (default
        ``Normal(log 0.5, 1)``), ``p_tau`` (``HalfNormal(0.5)``), a shared ``p``
        (``LogNormal(log 0.5, 1)``), ``sigma`` (``HalfNormal(0.1)``).
    centered : bool
        Centred (``p_u``, default) or non-centred (``p_z``) per-experiment parameters.

    Returns
    -------
    PlateModel
    """
    mech = mechanism if isinstance(mechanism, Mechanism) else Mechanism.parse(mechanism)
    hier = (hierarchical,) if isinstance(hierarchical, str) else tuple(hierarchical)
    unknown = [p for p in hier if p not in mech.parameters]
    if unknown:
        raise ValueError(f"hierarchical names {', '.join(unknown)}, which the mechanism does not have "
                         f"(its parameters: {', '.join(mech.parameters)})")
    missing = [s for s in data.species if s not in mech.species]
    if missing:
        raise ValueError(f"the plate measures {', '.join(missing)}, which the mechanism does not have "
                         f"(its species: {', '.join(mech.species)})")
    absent = [s for s in mech.species if s not in initial]
    if absent:
        raise ValueError(f"initial has no concentration for {', '.join(absent)}; give one number per species")
    given = dict(priors or {})
    out: dict[str, Any] = {}
    for p in mech.parameters:
        if p in hier:
            out[f"{p}_mu"] = as_prior(given.pop(f"{p}_mu", dist.Normal(math.log(0.5), 1.0)), name=f"{p}_mu", positive=False)
            out[f"{p}_tau"] = as_prior(given.pop(f"{p}_tau", dist.HalfNormal(0.5)), name=f"{p}_tau")
        else:
            out[p] = as_prior(given.pop(p, dist.LogNormal(math.log(0.5), 1.0)), name=p)
    out["sigma"] = as_prior(given.pop("sigma", dist.HalfNormal(0.1)), name="sigma")
    if given:
        raise ValueError(f"priors names {', '.join(sorted(given))}, which the model does not have "
                         f"(its sites: {', '.join(out)})")
    observed = tuple(mech.species.index(s) for s in data.species)
    if _is_decay(mech):
        solve = _decay_plate_solver(mech, observed)
    elif mech.is_linear:
        solve = _linear_plate_solver(mech)
    else:
        solve = _ode_plate_solver(mech)
    return PlateModel(
        mechanism=mech,
        hierarchical=hier,
        shared=tuple(p for p in mech.parameters if p not in hier),
        priors=out,
        y0=np.array([float(initial[s]) for s in mech.species]),
        observed=observed,
        measured_only=_is_decay(mech),
        species=tuple(data.species),
        centered=bool(centered),
        _solve=solve,
    )

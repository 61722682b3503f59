"""Experimental conditions: per-experiment covariates, temperature-dependent rate laws, doses.

Conditions
    Values that describe an experiment rather than a measurement: temperature, pH, dose,
    subject. In a CSV file they are columns, constant within each experiment;
    :func:`read_csv` separates them from the measured columns. Numeric conditions can be
    used in rate laws, observables, initial concentrations and doses; any condition can
    group experiments for a hierarchy.

Temperature-dependent rate laws
    In a mechanism, ``arrhenius(k, Ea)`` and ``eyring(dH, dS)`` stand for a mass-action rate
    constant that depends on the condition ``T`` (kelvin)::

        A -> B : arrhenius(k1, Ea1)       # k1(T) = k1 * exp(-Ea1/R * (1/T - 1/T_ref))
        B -> C : eyring(dH2, dS2)         # k(T) = kB T / h * exp(dS2/R - dH2/(R T))

    ``arrhenius`` is written in the reference-temperature form: the fitted ``k1`` is the
    rate constant at ``T_ref`` (the mean temperature of the experiments unless given), which
    keeps it nearly uncorrelated with ``Ea1`` (Schwaab & Pinto 2007); the pre-exponential
    factor is ``A = k1 * exp(Ea1 / (R T_ref))``. Energies are in J/mol and entropies in
    J/(mol K) (``R = 8.314462618``). The Eyring rate constant ``kB T / h`` is in 1/s, so an
    ``eyring`` reaction needs times in seconds.

Doses
    A :class:`Dose` adds an amount to a species at a time (a bolus); the state jumps and the
    solve continues from there.

References
----------
Schwaab, M. and Pinto, J. C. (2007). Optimum reference temperature for reparameterization of
the Arrhenius equation. Part 1. Chemical Engineering Science 62(10), 2750-2764.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import (
    EXPERIMENT_COLUMNS,
    MISSING_CELLS,
    DataError,
    Dataset,
    _Layout,
    _pack,
    _parse_long,
    _parse_wide,
    _read_csv,
)

__all__ = ["Conditions", "Dose", "TEMPERATURE_LAWS", "read_csv", "R_GAS", "K_BOLTZMANN", "H_PLANCK"]

R_GAS = 8.314462618
"""Gas constant, J/(mol K)."""
K_BOLTZMANN = 1.380649e-23
"""Boltzmann constant, J/K."""
H_PLANCK = 6.62607015e-34
"""Planck constant, J s."""

TEMPERATURE_LAWS = {
    "arrhenius": "arrhenius(k, Ea): k(T) = k * exp(-Ea/R (1/T - 1/T_ref)), k the rate constant at T_ref",
    "eyring": "eyring(dH, dS): k(T) = kB T / h * exp(dS/R - dH/(R T)), in 1/s",
}

_LAW_RE = re.compile(r"\b(arrhenius|eyring)\s*\(\s*([A-Za-z_]\w*)\s*,\s*([A-Za-z_]\w*)\s*\)")


@dataclass(frozen=True)
class Conditions:
    """Per-experiment conditions: a column of values for each name, one value per experiment.

    Attributes
    ----------
    experiments : tuple of str
        Experiment labels, in the order of the data set.
    values : Mapping of str to numpy.ndarray
        ``(E,)`` arrays: float for numeric conditions, str (object) for labels.
    """

    experiments: tuple[str, ...]
    values: Mapping[str, np.ndarray]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def numeric(self, name: str, *, what: str) -> np.ndarray:
        """The ``(E,)`` float values of ``name``; a sentence if it is missing or not numeric."""
        if name not in self.values:
            raise ValueError(
                f"{what} uses the condition {name!r}, which the data do not have; the conditions are "
                f"{', '.join(self.values) or 'none'}. Name it in conditions=[...] (TOML: conditions = [...])"
            )
        col = self.values[name]
        if col.dtype.kind not in "fiu":
            raise ValueError(f"{what} needs the condition {name!r} as numbers, but it holds labels such as {col[0]!r}")
        return np.asarray(col, dtype=float)

    def groups(self, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """Group index ``(E,)`` and labels (order of first appearance) of a grouping column."""
        if name == "experiment":
            return np.arange(len(self.experiments)), self.experiments
        if name not in self.values:
            raise ValueError(
                f"hierarchy groups by {name!r}, which is not a condition of the data; the conditions "
                f"are {', '.join(self.values) or 'none'} (and 'experiment'). Name the grouping column "
                f"in conditions=[...]"
            )
        labels: list[str] = []
        index = []
        for v in self.values[name]:
            key = _label(v)
            if key not in labels:
                labels.append(key)
            index.append(labels.index(key))
        return np.asarray(index, dtype=int), tuple(labels)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], experiments: Sequence[str]) -> Conditions:
        """Conditions from ``{name: one value per experiment}`` (or ``{name: {label: value}}``)."""
        E = len(experiments)
        out = {}
        for name, col in values.items():
            if isinstance(col, Mapping):
                missing = [x for x in experiments if x not in {str(k) for k in col}]
                if missing:
                    raise ValueError(
                        f"condition {name!r} has no value for experiment{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing[:5]))}; give one value for each experiment"
                    )
                lookup = {str(k): v for k, v in col.items()}
                col = [lookup[x] for x in experiments]
            arr = np.asarray(col)
            if arr.ndim == 0:
                arr = np.full(E, arr.item())
            if arr.shape != (E,):
                raise ValueError(
                    f"condition {name!r} has {arr.size} values, but the data have {E} experiments; give "
                    "one value per experiment"
                )
            out[name] = _typed(list(arr), name, "the conditions")
        return cls(tuple(experiments), out)


def _label(v) -> str:
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    return str(v)


def _typed(cells: list, name: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray([float(c) for c in cells], dtype=float)
    except (TypeError, ValueError):
        return np.asarray([str(c) for c in cells], dtype=object)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"condition {name!r} in {where} has a missing or non-finite value; give every experiment a value")
    return arr


def read_csv(
    path: str | os.PathLike,
    conditions: Sequence[str] = (),
    *,
    time_unit: str | None = None,
    concentration_unit: str | None = None,
) -> tuple[Dataset, Conditions]:
    """Read measurements and per-experiment conditions from one CSV file.

    Parameters
    ----------
    path : str or os.PathLike
        A wide or long file (see :mod:`vi_models.kinetics.dataset`).
    conditions : sequence of str
        Columns that hold conditions (temperature, dose, subject, ...) rather than
        measurements. Each must have a value on every row, the same on every row of an
        experiment.
    time_unit, concentration_unit : str, optional
        Units, for labels.

    Returns
    -------
    (Dataset, Conditions)

    Raises
    ------
    DataError
        A condition column that is not in the file, that is empty on some rows (the lines
        are named) or that changes within an experiment.
    """
    source = os.fspath(path)
    header_line, header, rows = _read_csv(source)
    conditions = list(conditions)
    lower = [h.lower() for h in header]
    exp_col = next((i for i, h in enumerate(lower) if h in EXPERIMENT_COLUMNS), None)
    where: dict[str, int] = {}
    for name in conditions:
        if name not in header:
            import difflib

            close = difflib.get_close_matches(name, header, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"{source}, line {header_line}: there is no condition column {name!r}; the columns are "
                f"{', '.join(header)}{hint}",
                source=source,
                line=header_line,
            )
        where[name] = header.index(name)
    keep = [i for i in range(len(header)) if i not in where.values()]
    sub_header = [header[i] for i in keep]
    sub_rows = [(line, [cells[i] if i < len(cells) else "" for i in keep]) for line, cells in rows]
    layout = _Layout.from_header(sub_header, header_line, source)
    parse = _parse_long if layout.long else _parse_wide
    labels, per_exp = parse(sub_rows, layout, source)
    times, values, mask, n_times = _pack(per_exp, len(layout.species))
    data = Dataset(
        species=tuple(layout.species),
        experiments=tuple(labels),
        times=times,
        values=values,
        mask=mask,
        n_times=n_times,
        initial={},
        source=source,
        time_unit=time_unit,
        concentration_unit=concentration_unit,
    )
    out = {}
    for name, col in where.items():
        per: dict[str, tuple[str, int]] = {}
        missing: list[int] = []
        for line, cells in rows:
            label = cells[exp_col].strip() if exp_col is not None and exp_col < len(cells) else "0"
            cell = cells[col].strip() if col < len(cells) else ""
            if cell.lower() in MISSING_CELLS:
                missing.append(line)
                continue
            if label in per and per[label][0] != cell:
                raise DataError(
                    f"{source}, line {line}, column {name!r}: the condition {name!r} is {cell!r} here but "
                    f"{per[label][0]!r} on line {per[label][1]} of the same experiment {label!r}; a condition "
                    "is one value per experiment (split the experiment, or make it a measured column)",
                    source=source,
                    line=line,
                    column=name,
                )
            per.setdefault(label, (cell, line))
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DataError(
                f"{source}, column {name!r}: the condition is missing on {len(missing)} row"
                f"{'s' if len(missing) > 1 else ''} (line{'s' if len(missing) > 1 else ''} {shown}); give "
                "every row its experiment's value",
                source=source,
                line=missing[0],
                column=name,
            )
        out[name] = _typed([per[label][0] for label in data.experiments], name, source)
    return data, Conditions(data.experiments, out)


def split_conditions(data: Dataset, names: Sequence[str]) -> tuple[Dataset, Conditions]:
    """Take numeric condition columns out of a Dataset's measured columns."""
    values = {}
    for name in names:
        if name not in data.species:
            raise DataError(
                f"there is no condition column {name!r} in the data; its columns are {', '.join(data.species)}"
            )
        j = data.species.index(name)
        col = []
        for e, label in enumerate(data.experiments):
            n = int(data.n_times[e])
            seen = data.mask[e, :n, j]
            if not seen.all():
                times = ", ".join(f"{t:g}" for t in data.times[e, :n][~seen][:5])
                raise DataError(
                    f"the condition {name!r} is missing on {int((~seen).sum())} row(s) of experiment "
                    f"{label!r} (t = {times}); give every row its experiment's value"
                )
            v = data.values[e, :n, j]
            if np.ptp(v) > 0:
                raise DataError(
                    f"the condition {name!r} changes within experiment {label!r} ({v.min():g} to {v.max():g}); "
                    "a condition is one value per experiment"
                )
            col.append(float(v[0]))
        values[name] = np.asarray(col)
    keep = [j for j, s in enumerate(data.species) if s not in names]
    rest = Dataset(
        species=tuple(data.species[j] for j in keep),
        experiments=data.experiments,
        times=data.times,
        values=data.values[..., keep],
        mask=np.asarray(data.mask[..., keep]),
        n_times=data.n_times,
        initial=dict(data.initial),
        source=data.source,
        time_unit=data.time_unit,
        concentration_unit=data.concentration_unit,
    )
    return rest, Conditions(data.experiments, values)


@dataclass(frozen=True)
class TemperatureLaw:
    """A rate constant ``name`` of the parsed mechanism that depends on temperature."""

    name: str  # the mass-action constant in the rewritten mechanism
    law: str  # "arrhenius" or "eyring"
    parameters: tuple[str, str]  # (k_ref, Ea) or (dH, dS)


def expand_temperature_laws(text: str) -> tuple[str, tuple[TemperatureLaw, ...]]:
    """Rewrite ``arrhenius(k, Ea)`` / ``eyring(dH, dS)`` into mass-action constants.

    ``arrhenius(k1, Ea1)`` becomes the constant ``k1`` (its value at ``T_ref``);
    ``eyring(dH, dS)`` becomes ``k_<dH>``. Returns the rewritten text and the laws.
    """
    laws: list[TemperatureLaw] = []

    def replace(m: re.Match) -> str:
        law, a, b = m.group(1), m.group(2), m.group(3)
        name = a if law == "arrhenius" else f"k_{a}"
        for seen in laws:
            if seen.name == name and seen.parameters != (a, b):
                raise ValueError(
                    f"{name!r} is used by two temperature laws with different parameters "
                    f"({seen.law}{seen.parameters} and {law}({a}, {b})); give each its own names"
                )
        if all(seen.name != name for seen in laws):
            laws.append(TemperatureLaw(name, law, (a, b)))
        return name

    return _LAW_RE.sub(replace, text), tuple(laws)


def temperature_rate(law: TemperatureLaw, p: Mapping[str, Any], T, T_ref: float):
    """The rate constant of ``law`` at temperature ``T`` from parameter values ``p``."""
    import jax.numpy as jnp

    a, b = (p[n] for n in law.parameters)
    if law.law == "arrhenius":
        return a * jnp.exp(-b / R_GAS * (1.0 / T - 1.0 / T_ref))
    return K_BOLTZMANN * T / H_PLANCK * jnp.exp(b / R_GAS - a / (R_GAS * T))


@dataclass(frozen=True)
class Dose:
    """An amount added to a species at a time (a bolus).

    Parameters
    ----------
    species : str
        The species that receives the amount (in its own units: a concentration, or an
        amount where an observable divides by a volume).
    amount : float, str or sequence
        A number, the name of a numeric condition (one amount per experiment), or one
        number per experiment.
    time : float, str or sequence
        When, on the data's time axis: a number, a condition name or one per experiment.
        It must lie within each experiment's measured times (from 0 to the last time).
    """

    species: str
    amount: Any
    time: Any = 0.0

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> Dose:
        import difflib

        allowed = ("species", "amount", "time")
        for key in spec:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the keys are {', '.join(allowed)}"
                raise ValueError(f"unknown key {key!r} in a dose{hint}")
        for key in ("species", "amount"):
            if key not in spec:
                raise ValueError(f"a dose needs {key!r}, e.g. {{species = \"Central\", amount = 100, time = 0}}")
        return cls(str(spec["species"]), spec["amount"], spec.get("time", 0.0))


def resolve_doses(doses, species: Sequence[str], conditions: Conditions, data: Dataset):
    """Per-experiment dose times, amounts and species indices, ``(E, D)`` each, sorted by time."""
    items = []
    for d in doses or ():
        if isinstance(d, Mapping):
            d = Dose.from_mapping(d)
        if not isinstance(d, Dose):
            raise TypeError(f"a dose must be a Dose or a mapping with species, amount and time, got {d!r}")
        items.append(d)
    E = data.n_experiments
    if not items:
        return None
    t_end = np.array([data.times[e, data.n_times[e] - 1] for e in range(E)])

    def per_experiment(value, what: str) -> np.ndarray:
        if isinstance(value, str):
            try:
                return np.full(E, float(value))
            except ValueError:
                return conditions.numeric(value, what=what)
        items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        for x in items:
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
                raise TypeError(
                    f"{what} is {value!r}; give a number, the name of a numeric condition, or one number "
                    f"per experiment ({E})"
                )
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 0:
            return np.full(E, float(arr))
        if arr.shape != (E,):
            raise ValueError(f"{what} has {arr.size} values; give one number, a condition name, or one per experiment ({E})")
        return arr

    times, amounts, index = [], [], []
    for d in items:
        what = f"the dose of {d.species!r}"
        if d.species not in species:
            raise ValueError(f"{what}: the mechanism has no species {d.species!r}; its species are {', '.join(species)}")
        t = per_experiment(d.time, what + " (time)")
        a = per_experiment(d.amount, what + " (amount)")
        bad = np.flatnonzero((t < 0) | (t > t_end) | ~np.isfinite(t))
        if bad.size:
            e = int(bad[0])
            raise ValueError(
                f"{what} is given at t = {t[e]:g} in experiment {data.experiments[e]!r}, outside its measured "
                f"times (0 to {t_end[e]:g}); a dose after the last measurement changes nothing and one before "
                "t = 0 is an initial concentration: move it into the data's time range"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what} has a missing amount; give every experiment a number")
        if np.any(a < 0):
            e = int(np.flatnonzero(a < 0)[0])
            raise ValueError(
                f"{what} has the negative amount {a[e]:g} in experiment {data.experiments[e]!r}; a dose adds an "
                "amount, so give a number at least 0"
            )
        times.append(t)
        amounts.append(a)
        index.append(np.full(E, species.index(d.species)))
    times, amounts, index = (np.stack(x, axis=1) for x in (times, amounts, index))
    order = np.argsort(times, axis=1, kind="stable")
    take = lambda x: np.take_along_axis(x, order, axis=1)  # noqa: E731
    return take(times), take(amounts), take(index).astype(int)


def mean_temperature(T: np.ndarray) -> float:
    """The default reference temperature: the mean over experiments."""
    value = float(np.mean(T))
    if not math.isfinite(value) or value <= 0:
        raise ValueError("temperatures must be positive numbers in kelvin")
    return value

"""Concentration-versus-time measurements for kinetic fits, read and validated.

A :class:`Dataset` holds the measured concentrations of one or more species in one or
more experiments, on a padded rectangular grid that a vectorised likelihood can use
directly: ``times`` is ``(E, T)``, ``values`` and ``mask`` are ``(E, T, S)``.
Experiment ``e`` has ``n_times[e]`` time points; the rest of its row is padding that
repeats its last time and is never observed.

Two comma-separated file layouts are read by :meth:`Dataset.from_csv`, told apart by
the header:

*wide*
    A time column (``time`` or ``t``), one column per species and, optionally, an
    experiment column (``experiment``, ``exp`` or ``run``)::

        exp,t,A,B
        1,0,1.00,0.00
        1,0.5,0.61,0.38

*long*
    Columns time, ``species`` and ``value`` (and optionally an experiment column);
    a species not measured at a time simply has no row there, and several rows at
    the same time and species are replicates::

        t,species,value
        0,A,1.00
        0.5,A,0.61
        0.5,B,0.38

Column names are matched without regard to case or surrounding whitespace; species
names keep their case. Lines starting with ``#`` are comments. Every problem found
is raised as a :class:`DataError` whose message names the file, the line (counted in
the file, 1-based), the column and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import math
import os
import pathlib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DataError", "Dataset", "bundled_path"]

#: Accepted names (lower case) of the time column.
TIME_COLUMNS = ("time", "t")
#: Accepted names (lower case) of the experiment column.
EXPERIMENT_COLUMNS = ("experiment", "exp", "run")
#: Cells (lower case, stripped) that mean "no value".
MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "null"})

_MAX_LINES_LISTED = 5


class DataError(ValueError):
    """A data file or data array that cannot be used as it is.

    The message is one or more sentences naming where the problem is (file, line,
    column or argument) and how to fix it.

    Parameters
    ----------
    message : str
        The explanation shown to the user.
    source : str, optional
        The file or argument the problem is in.
    line : int, optional
        The 1-based line number in the file.
    column : str, optional
        The column name as written in the file's header.

    Attributes
    ----------
    source, line, column
        As given, for programs that want to point at the problem themselves.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: str | None = None,
    ):
        super().__init__(message)
        self.source = source
        self.line = line
        self.column = column


# ---------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------


def _names(items: Sequence[str], limit: int = 20) -> str:
    """Quote and join names for a message, shortening long lists."""
    quoted = [repr(str(x)) for x in items]
    if len(quoted) > limit:
        quoted = quoted[:limit] + [f"... ({len(items) - limit} more)"]
    return ", ".join(quoted) if quoted else "none"


def _lines(lines: Sequence[int]) -> str:
    """Format up to five line numbers, e.g. ``lines 4, 9, 17`` or ``line 4``."""
    shown = ", ".join(str(n) for n in lines[:_MAX_LINES_LISTED])
    more = ", ..." if len(lines) > _MAX_LINES_LISTED else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def _fmt(x: float) -> str:
    """Format a number for a message, short but exact enough to find it."""
    return f"{x:.10g}"


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _nondecreasing_violation(t: np.ndarray) -> int | None:
    """Return the first index ``i`` with ``t[i] < t[i - 1]``, or None."""
    bad = np.flatnonzero(np.diff(t) < 0)
    return int(bad[0]) + 1 if bad.size else None


# ---------------------------------------------------------------------------------
# The Dataset
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Measured concentrations of species over time in one or more experiments.

    Build one with :meth:`from_csv` or :meth:`from_arrays`; the constructor itself
    takes the padded arrays and checks that they are consistent. All arrays are
    copied and made read-only, and ``initial`` becomes a read-only mapping.

    Parameters
    ----------
    species : tuple of str
        Observed species, in column order (wide files), order of first appearance
        (long files) or as given (arrays).
    experiments : tuple of str
        Experiment labels, in order of first appearance. A file without an
        experiment column is one experiment labelled ``"0"``.
    times : numpy.ndarray
        ``(E, T)`` float64. Experiment ``e``'s times are in its first
        ``n_times[e]`` entries, in non-decreasing order (repeated times are
        replicates); the rest repeats its last time.
    values : numpy.ndarray
        ``(E, T, S)`` float64, NaN where not observed, padding included. Entries
        where ``mask`` is False are set to NaN.
    mask : numpy.ndarray
        ``(E, T, S)`` bool, True where a value was observed.
    n_times : numpy.ndarray
        ``(E,)`` int, the number of time points of each experiment.
    initial : Mapping of str to numpy.ndarray, optional
        Known initial concentrations: species (observed or not) to an ``(E,)``
        array, one value per experiment. A scalar is used for every experiment.
    source : str, optional
        The file path, or a description of where the data came from.
    time_unit : str, optional
        Unit of ``times``, for labels only.
    concentration_unit : str, optional
        Unit of ``values`` and ``initial``, for labels only.

    Raises
    ------
    DataError
        If the arrays do not fit together (shapes, padding, ordering, a mask that
        marks a missing value as observed, a species never observed).

    See Also
    --------
    from_csv, from_arrays
    """

    species: tuple[str, ...]
    experiments: tuple[str, ...]
    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    n_times: np.ndarray
    initial: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str | None = None
    time_unit: str | None = None
    concentration_unit: str | None = None

    # -- construction and invariants --------------------------------------------

    def __post_init__(self) -> None:
        where = f"Dataset from {self.source}" if self.source else "Dataset"
        species = tuple(self.species)
        for s in species:
            if not isinstance(s, str) or not s.strip():
                raise DataError(
                    f"{where}: species names must be non-empty strings, got {s!r}; "
                    "name every species."
                )
        if not species:
            raise DataError(f"{where}: there are no species; observe at least one.")
        dup = sorted({s for s in species if species.count(s) > 1})
        if dup:
            raise DataError(
                f"{where}: species {_names(dup)} appear more than once; "
                "give each species one column or one name."
            )
        experiments = tuple(str(x) for x in self.experiments)
        if not experiments:
            raise DataError(f"{where}: there are no experiments; give at least one.")
        dup = sorted({x for x in experiments if experiments.count(x) > 1})
        if dup:
            raise DataError(
                f"{where}: experiment labels {_names(dup)} appear more than once; "
                "give each experiment its own label."
            )

        times = np.array(self.times, dtype=np.float64)
        values = np.array(self.values, dtype=np.float64)
        mask_in = np.asarray(self.mask)
        if mask_in.dtype != np.bool_:
            raise DataError(
                f"{where}: mask has dtype {mask_in.dtype} but must be bool "
                "(True where a value was observed)."
            )
        mask = np.array(mask_in, dtype=bool)
        n_in = np.asarray(self.n_times)
        if n_in.dtype.kind not in "iu":
            raise DataError(
                f"{where}: n_times has dtype {n_in.dtype} but must be integer."
            )
        n_times = np.array(n_in, dtype=np.int64)

        n_exp, n_sp = len(experiments), len(species)
        if times.ndim != 2 or times.shape[0] != n_exp or times.shape[1] < 1:
            raise DataError(
                f"{where}: times has shape {times.shape} but must be "
                f"(experiments, times) = ({n_exp}, T) with T >= 1."
            )
        n_t = times.shape[1]
        for name, arr in (("values", values), ("mask", mask)):
            if arr.shape != (n_exp, n_t, n_sp):
                raise DataError(
                    f"{where}: {name} has shape {arr.shape} but must be "
                    f"(experiments, times, species) = ({n_exp}, {n_t}, {n_sp})."
                )
        if n_times.shape != (n_exp,):
            raise DataError(
                f"{where}: n_times has shape {n_times.shape} but must be ({n_exp},), "
                "one count per experiment."
            )
        for e, label in enumerate(experiments):
            n = int(n_times[e])
            if not 1 <= n <= n_t:
                raise DataError(
                    f"{where}: n_times[{e}] is {n} but must be between 1 and {n_t} "
                    f"(experiment {label!r})."
                )
            t = times[e]
            if not np.all(np.isfinite(t[:n])):
                raise DataError(
                    f"{where}: experiment {label!r} has a time that is NaN or "
                    "infinite; every time point needs a finite time."
                )
            if np.any(t[:n] < 0):
                raise DataError(
                    f"{where}: experiment {label!r} has a negative time "
                    f"({_fmt(float(t[:n].min()))}); times are measured from the start "
                    "of each experiment, t = 0."
                )
            i = _nondecreasing_violation(t[:n])
            if i is not None:
                raise DataError(
                    f"{where}: in experiment {label!r} the time decreases from "
                    f"{_fmt(t[i - 1])} to {_fmt(t[i])} at index {i}; sort the time "
                    "points by time."
                )
            if np.any(t[n:] != t[n - 1]):
                raise DataError(
                    f"{where}: experiment {label!r} has {n} time points but its "
                    "padding does not repeat its last time; pad with the last time."
                )
            if np.any(mask[e, n:]):
                raise DataError(
                    f"{where}: experiment {label!r} has {n} time points but the mask "
                    "marks padding entries as observed; set mask to False there."
                )
        bad = mask & ~np.isfinite(values)
        if np.any(bad):
            e, j, s = (int(k) for k in np.argwhere(bad)[0])
            raise DataError(
                f"{where}: mask marks experiment {experiments[e]!r}, time index {j}, "
                f"species {species[s]!r} as observed but the value is "
                f"{values[e, j, s]}; "
                "observed values must be finite."
            )
        values[~mask] = np.nan
        never = [species[s] for s in range(n_sp) if not mask[..., s].any()]
        if never:
            raise DataError(
                f"{where}: species {_names(never)} have no observed value in any "
                "experiment; drop them from the data (known initial concentrations "
                "go in `initial`)."
            )
        # -0.0 would make equal-looking times compare unequal in hashes and prints.
        times = times + 0.0

        initial = _normalise_initial(self.initial, n_exp, prefix=where)

        object.__setattr__(self, "species", species)
        object.__setattr__(self, "experiments", experiments)
        object.__setattr__(self, "times", _readonly(times))
        object.__setattr__(self, "values", _readonly(values))
        object.__setattr__(self, "mask", _readonly(mask))
        object.__setattr__(self, "n_times", _readonly(n_times))
        object.__setattr__(self, "initial", types.MappingProxyType(initial))
        for name in ("source", "time_unit", "concentration_unit"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(
                    self, name, os.fspath(v) if name == "source" else str(v)
                )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dataset):
            return NotImplemented
        return (
            self.species == other.species
            and self.experiments == other.experiments
            and self.source == other.source
            and self.time_unit == other.time_unit
            and self.concentration_unit == other.concentration_unit
            and self.times.shape == other.times.shape
            and np.array_equal(self.n_times, other.n_times)
            and np.array_equal(self.times, other.times)
            and np.array_equal(self.mask, other.mask)
            and np.array_equal(self.values, other.values, equal_nan=True)
            and self.initial.keys() == other.initial.keys()
            and all(
                np.array_equal(v, other.initial[k]) for k, v in self.initial.items()
            )
        )

    def __hash__(self) -> int:
        key = (self.species, self.experiments, self.n_times.tobytes())
        return hash(key + (self.times.tobytes(),))

    def __repr__(self) -> str:
        return (
            f"Dataset(species={self.species!r}, experiments={self.n_experiments}, "
            f"n_times={self.n_times.tolist() if self.n_experiments <= 5 else '...'}, "
            f"observations={self.n_observations}, source={self.source!r})"
        )

    def __reduce__(self):
        # MappingProxyType does not pickle; rebuild through the constructor instead.
        return (
            type(self),
            (
                self.species,
                self.experiments,
                self.times,
                self.values,
                self.mask,
                self.n_times,
                dict(self.initial),
                self.source,
                self.time_unit,
                self.concentration_unit,
            ),
        )

    # -- properties -------------------------------------------------------------

    @property
    def n_experiments(self) -> int:
        """Number of experiments, ``E``."""
        return len(self.experiments)

    @property
    def n_species(self) -> int:
        """Number of observed species, ``S``."""
        return len(self.species)

    @property
    def n_observations(self) -> int:
        """Number of observed values (True entries of ``mask``)."""
        return int(self.mask.sum())

    @property
    def t_max(self) -> float:
        """Latest time in any experiment."""
        return float(self.times.max())

    @property
    def c_max(self) -> float:
        """Largest absolute observed value."""
        return float(np.abs(self.values[self.mask]).max())

    # -- readers ----------------------------------------------------------------

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        *,
        time_unit: str | None = None,
        concentration_unit: str | None = None,
    ) -> Dataset:
        """Read a wide or long comma-separated file.

        Parameters
        ----------
        path : str or os.PathLike
            The file. Its layout (wide or long) is taken from the header; see the
            module documentation.
        time_unit, concentration_unit : str, optional
            Units, stored for labels.

        Returns
        -------
        Dataset
            Experiments in order of first appearance, each with its rows in file
            order. ``initial`` is empty (a file holds measurements only).

        Raises
        ------
        DataError
            For a missing, empty or malformed file; the message names the line and
            column and says how to fix it.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise DataError(
                f"the data must be the path of a CSV file (str or pathlib.Path) or a Dataset, "
                f"got {type(path).__name__}; for arrays in memory use "
                "Dataset.from_arrays(times, {'A': values})."
            )
        source = os.fspath(path)
        if isinstance(source, bytes):
            source = os.fsdecode(source)
        header_line, header, rows = _read_csv(source)
        layout = _Layout.from_header(header, header_line, source)
        parse = _parse_long if layout.long else _parse_wide
        labels, per_exp = parse(rows, layout, source)
        times, values, mask, n_times = _pack(per_exp, len(layout.species))
        return cls(
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

    @classmethod
    def from_arrays(
        cls,
        times: Any,
        values: Any,
        *,
        species: Sequence[str] | None = None,
        experiments: Sequence[Any] | None = None,
        initial: Mapping[str, Any] | None = None,
        source: str | None = None,
        time_unit: str | None = None,
        concentration_unit: str | None = None,
    ) -> Dataset:
        """Build a dataset from arrays, one experiment or several.

        Parameters
        ----------
        times : array_like or list of array_like
            A 1-D array of times (one experiment), or a list of 1-D arrays, one per
            experiment. Times must be finite, non-negative and non-decreasing
            (repeated times are replicates).
        values : dict, 2-D array_like, or a list of either
            For one experiment: a dict ``species -> 1-D array`` or a ``(T, S)``
            array with ``species=`` naming its columns (with one species a 1-D
            array is also accepted). For several experiments: a list of those, one
            per experiment. NaN means not observed. With dicts an experiment may
            leave out a species; it is then unobserved there.
        species : sequence of str, optional
            Column names of array values (required for them). With dicts it sets
            the species order and must name exactly the species in the dicts.
        experiments : sequence, optional
            Experiment labels (converted to str); default ``"0"``, ``"1"``, ...
        initial : mapping, optional
            Known initial concentrations: species -> a float (every experiment) or
            a sequence with one value per experiment.
        source, time_unit, concentration_unit : str, optional
            Stored as given.

        Returns
        -------
        Dataset

        Raises
        ------
        DataError
            If shapes do not match; the message names the argument and shapes.
        """
        time_list, multi = _split_times(times)
        n_exp = len(time_list)
        value_list = _split_values(values, multi, n_exp)

        names: list[str]
        if all(isinstance(v, Mapping) for v in value_list):
            seen: dict[str, None] = {}
            for v in value_list:
                for k in v:
                    if not isinstance(k, str):
                        raise DataError(
                            f"values: species names must be strings, got {k!r}."
                        )
                    seen.setdefault(k, None)
            names = list(seen)
            if species is not None:
                given = [str(s) for s in species]
                if sorted(set(given)) != sorted(names) or len(given) != len(set(given)):
                    raise DataError(
                        f"species= names {_names(given)} but the values dicts hold "
                        f"{_names(names)}; list each species in the dicts once, or "
                        "leave species= out."
                    )
                names = given
        elif any(isinstance(v, Mapping) for v in value_list):
            raise DataError(
                "values mixes dicts and arrays across experiments; use one kind "
                "for every experiment."
            )
        else:
            if species is None:
                raise DataError(
                    "values is an array, so species= must name its columns, e.g. "
                    "species=['A', 'B']; or pass values as a dict species -> array."
                )
            names = [str(s) for s in species]

        def where(e: int) -> str:
            return f"values[{e}]" if multi else "values"

        def twhere(e: int) -> str:
            return f"times[{e}]" if multi else "times"

        per_exp = []
        for e, (t, v) in enumerate(zip(time_list, value_list)):
            n = t.shape[0]
            vals = np.full((n, len(names)), np.nan)
            if isinstance(v, Mapping):
                for s, col in v.items():
                    col = _as_float(col, f"{where(e)}[{s!r}]")
                    if col.shape != (n,):
                        raise DataError(
                            f"{where(e)}[{s!r}] has shape {col.shape} but "
                            f"{twhere(e)} has shape ({n},); give one value per time "
                            "(NaN where not measured)."
                        )
                    vals[:, names.index(s)] = col
            else:
                arr = _as_float(v, where(e))
                if arr.ndim == 1 and len(names) == 1:
                    arr = arr[:, None]
                if arr.shape != (n, len(names)):
                    raise DataError(
                        f"{where(e)} has shape {arr.shape} but must be (times, "
                        f"species) = ({n}, {len(names)}) to match {twhere(e)} "
                        f"(shape ({n},)) and species= ({len(names)} names)."
                    )
                vals[:] = arr
            if np.any(np.isinf(vals)):
                raise DataError(
                    f"{where(e)} has an infinite value; use finite numbers, or NaN "
                    "where a species was not measured."
                )
            per_exp.append((t, vals, ~np.isnan(vals)))

        if experiments is None:
            labels = [str(e) for e in range(n_exp)]
        else:
            labels = [str(x) for x in experiments]
            if len(labels) != n_exp:
                raise DataError(
                    f"experiments= has {len(labels)} labels but times holds "
                    f"{n_exp} experiment{'s' if n_exp != 1 else ''}; give one label "
                    "per experiment."
                )
        arr_t, arr_v, arr_m, n_times = _pack(per_exp, len(names))
        return cls(
            species=tuple(names),
            experiments=tuple(labels),
            times=arr_t,
            values=arr_v,
            mask=arr_m,
            n_times=n_times,
            initial=dict(initial) if initial is not None else {},
            source=source,
            time_unit=time_unit,
            concentration_unit=concentration_unit,
        )

    # -- queries ----------------------------------------------------------------

    def check_species(
        self, known: Sequence[str], *, what: str = "the mechanism"
    ) -> None:
        """Check that every species in the data is one of ``known``.

        Both observed species and species with a known initial concentration are
        checked.

        Parameters
        ----------
        known : sequence of str
            The species the data will be matched against.
        what : str, optional
            What ``known`` comes from, for the message.

        Raises
        ------
        DataError
            Naming the unknown species, listing the known ones and saying how to
            fix it.
        """
        known_set = set(known)
        unknown = [s for s in self.species if s not in known_set]
        unknown_init = [s for s in self.initial if s not in known_set]
        if not unknown and not unknown_init:
            return
        parts = []
        src = f" ({self.source})" if self.source else ""
        if unknown:
            parts.append(
                f"The data{src} has species {_names(unknown)} that {what} does not "
                f"have; {what} has {_names(list(known))}. Rename the "
                f"column{'s' if len(unknown) > 1 else ''} to species of {what} "
                f"or add {_names(unknown)} to {what}."
            )
        if unknown_init:
            parts.append(
                f"The data{src} gives initial concentrations for "
                f"{_names(unknown_init)}, which {what} does not have; {what} has "
                f"{_names(list(known))}. Rename them or add them to {what}."
            )
        raise DataError(" ".join(parts), source=self.source)

    def require_positive(
        self, species: Sequence[str] | None = None, *, why: str, fix: str
    ) -> None:
        """Refuse a zero or negative observed value of ``species`` (all by default).

        Parameters
        ----------
        species : sequence of str, optional
            The columns that must be positive.
        why : str
            What needs positive values, e.g. ``"noise 'lognormal'"``.
        fix : str
            What to do instead, e.g. ``"use noise 'normal' or 'proportional'"``.

        Raises
        ------
        DataError
            Naming the first such value: file, line and column for data read from
            a file, else experiment, time and species.
        """
        names = list(self.species if species is None else species)
        cols = [self.species.index(s) for s in names if s in self.species]
        bad = np.zeros(self.mask.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            bad[..., cols] = self.mask[..., cols] & (self.values[..., cols] <= 0)
        if not bad.any():
            return
        found = _find_nonpositive_cell(self.source, [self.species[j] for j in cols])
        if found is not None:
            line, column, cell = found
            raise DataError(
                f"{self.source}, line {line}, column {column!r}: the value {cell} is not positive, "
                f"and {why} needs positive measurements; {fix}.",
                source=self.source,
                line=line,
                column=column,
            )
        e, i, j = (int(k) for k in np.argwhere(bad)[0])
        src = f" of {self.source}" if self.source else ""
        raise DataError(
            f"the value {_fmt(float(self.values[e, i, j]))} of species {self.species[j]!r} at time "
            f"{_fmt(float(self.times[e, i]))} in experiment {self.experiments[e]!r}{src} is not "
            f"positive, and {why} needs positive measurements; {fix}.",
            source=self.source,
            column=self.species[j],
        )

    def experiment(self, e: int | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return one experiment's data without padding.

        Parameters
        ----------
        e : int or str
            Index (negative counts from the end) or label.

        Returns
        -------
        times : numpy.ndarray
            ``(n_e,)``.
        values : numpy.ndarray
            ``(n_e, S)``, NaN where not observed.
        mask : numpy.ndarray
            ``(n_e, S)`` bool.

        Raises
        ------
        KeyError
            For a label that is not an experiment.
        IndexError
            For an index out of range.
        """
        if isinstance(e, str):
            try:
                i = self.experiments.index(e)
            except ValueError:
                raise KeyError(
                    f"There is no experiment {e!r}; the experiments are "
                    f"{_names(self.experiments)}."
                ) from None
        elif isinstance(e, (int, np.integer)) and not isinstance(e, bool):
            i = int(e)
            if not -self.n_experiments <= i < self.n_experiments:
                raise IndexError(
                    f"Experiment index {i} is out of range; there are "
                    f"{self.n_experiments} experiments."
                )
            i %= self.n_experiments
        else:
            raise TypeError(
                f"An experiment is chosen by index (int) or label (str), not {e!r}."
            )
        n = int(self.n_times[i])
        return self.times[i, :n], self.values[i, :n], self.mask[i, :n]

    def describe(self) -> str:
        """Summarise the data in one short paragraph.

        Returns
        -------
        str
            Species, experiments, number of points and the time range.
        """
        tu = f" {self.time_unit}" if self.time_unit else ""
        cu = f" {self.concentration_unit}" if self.concentration_unit else ""
        e = self.n_experiments
        exp = (
            "1 experiment"
            if e == 1
            else f"{e} experiments ({_names(self.experiments, limit=5)})"
        )
        n = self.n_observations
        t_min = float(min(self.times[i, 0] for i in range(e)))
        text = (
            f"{self.n_species} species ({_names(self.species, limit=10)}) observed in "
            f"{exp}: {n} observed value{'s' if n != 1 else ''} at "
            f"{int(self.n_times.sum())} time points, times {_fmt(t_min)} to "
            f"{_fmt(self.t_max)}{tu}, largest |value| {_fmt(self.c_max)}{cu}."
        )
        if self.initial:
            text += f" Known initial concentrations: {_names(list(self.initial))}."
        if self.source:
            text += f" Source: {self.source}."
        return text


# ---------------------------------------------------------------------------------
# Initial concentrations
# ---------------------------------------------------------------------------------


def _normalise_initial(
    initial: Mapping[str, Any] | None, n_exp: int, *, prefix: str
) -> dict[str, np.ndarray]:
    """Check known initial concentrations and broadcast them to ``(E,)`` arrays."""
    where = "initial"
    if initial is None:
        return {}
    if not isinstance(initial, Mapping):
        raise DataError(
            f"{prefix}: {where} must be a mapping species -> concentration, got "
            f"{type(initial).__name__}."
        )
    out = {}
    for s, v in initial.items():
        if not isinstance(s, str) or not s.strip():
            raise DataError(f"{prefix}: {where} keys must be species names, got {s!r}.")
        try:
            arr = np.array(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(
                f"{prefix}: {where}[{s!r}] is {v!r}, not a number or a sequence of "
                "numbers."
            ) from None
        if arr.ndim == 0:
            arr = np.full(n_exp, float(arr))
        if arr.shape != (n_exp,):
            raise DataError(
                f"{prefix}: {where}[{s!r}] has shape {arr.shape} but there "
                f"{'is' if n_exp == 1 else 'are'} {n_exp} experiment"
                f"{'s' if n_exp != 1 else ''}; give one number for all experiments "
                "or one per experiment."
            )
        if not np.all(np.isfinite(arr)):
            raise DataError(
                f"{prefix}: {where}[{s!r}] has a value that is NaN or infinite; "
                "leave the species out of initial when its initial concentration "
                "is unknown."
            )
        if np.any(arr < 0):
            raise DataError(
                f"{prefix}: {where}[{s!r}] has a negative concentration "
                f"({_fmt(float(arr.min()))}); concentrations are >= 0."
            )
        out[s] = _readonly(arr)
    return out


# ---------------------------------------------------------------------------------
# Array input
# ---------------------------------------------------------------------------------


def _as_float(x: Any, name: str) -> np.ndarray:
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError):  # ragged nested lists
        raw = None
    kind = raw.dtype.kind if raw is not None else "O"
    what = {"b": "True/False values", "c": "complex numbers", "U": "text", "S": "bytes", "M": "dates",
            "m": "time differences", "V": "records"}.get(kind)
    if what is None and kind == "O":
        bad = next((v for v in raw.ravel() if isinstance(v, (str, bytes, bool, np.bool_))), None) if raw is not None else None
        if isinstance(bad, (str, bytes)):
            what = "text"
        elif bad is not None:
            what = "True/False values"
    if what is not None:
        first = raw.ravel()[0] if raw is not None and raw.size else x
        first = first.item() if isinstance(first, np.generic) else first
        raise DataError(
            f"{name} holds {what} (such as {first!r}), not numbers; pass an array of "
            "numbers (NaN where not measured), converting text with float() first."
        )
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"{name} could not be read as an array of numbers; pass numbers "
            "(NaN where not measured)."
        ) from None


def _split_times(times: Any) -> tuple[list[np.ndarray], bool]:
    """Return the per-experiment time arrays and whether several were given."""
    multi = (
        isinstance(times, (list, tuple))
        and len(times) > 0
        and all(np.ndim(t) >= 1 for t in times)
    )
    parts = list(times) if multi else [times]
    out = []
    for e, t in enumerate(parts):
        name = f"times[{e}]" if multi else "times"
        arr = _as_float(t, name)
        if arr.ndim != 1:
            raise DataError(
                f"{name} has shape {arr.shape} but must be 1-D; pass one 1-D array "
                "per experiment (a list of them for several experiments)."
            )
        if arr.size == 0:
            raise DataError(f"{name} is empty; every experiment needs a time point.")
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{name} has a NaN or infinite time; times must be finite.")
        if np.any(arr < 0):
            i = int(np.flatnonzero(arr < 0)[0])
            raise DataError(
                f"{name}[{i}] is {_fmt(arr[i])}, a negative time; times are measured "
                "from the start of each experiment, t = 0."
            )
        i = _nondecreasing_violation(arr)
        if i is not None:
            raise DataError(
                f"{name} decreases from {_fmt(arr[i - 1])} at index {i - 1} to "
                f"{_fmt(arr[i])} at index {i}; sort the times (and the values with "
                "them)."
            )
        out.append(arr)
    return out, multi


def _split_values(values: Any, multi: bool, n_exp: int) -> list[Any]:
    """Split ``values`` into one entry per experiment, matching ``times``."""
    if isinstance(values, Mapping):
        if multi:
            raise DataError(
                f"times is a list of {n_exp} experiments but values is a single "
                "dict; pass a list of dicts, one per experiment."
            )
        return [values]
    if multi:
        if not isinstance(values, (list, tuple)) or len(values) != n_exp:
            got = (
                f"a list of {len(values)}"
                if isinstance(values, (list, tuple))
                else f"a {type(values).__name__}"
            )
            raise DataError(
                f"times is a list of {n_exp} experiments but values is {got}; pass "
                "one dict or 2-D array per experiment."
            )
        return list(values)
    if (
        isinstance(values, (list, tuple))
        and values
        and all(isinstance(v, Mapping) for v in values)
    ):
        raise DataError(
            f"values is a list of {len(values)} dicts but times is a single 1-D "
            "array; pass times as a list of arrays, one per experiment."
        )
    return [values]


# ---------------------------------------------------------------------------------
# Packing experiments into padded arrays
# ---------------------------------------------------------------------------------


def _pack(per_exp, n_species):
    """Pad per-experiment ``(t, values, mask)`` into ``(E, T[, S])`` arrays."""
    n_times = np.array([len(p[0]) for p in per_exp], dtype=np.int64)
    n_t = int(n_times.max())
    n_exp = len(per_exp)
    times = np.empty((n_exp, n_t))
    values = np.full((n_exp, n_t, n_species), np.nan)
    mask = np.zeros((n_exp, n_t, n_species), dtype=bool)
    for e, (t, v, m) in enumerate(per_exp):
        n = len(t)
        times[e, :n] = t
        times[e, n:] = t[-1]
        values[e, :n] = v
        mask[e, :n] = m
    return times, values, mask, n_times


# ---------------------------------------------------------------------------------
# CSV input
# ---------------------------------------------------------------------------------


def _read_csv(source: str) -> tuple[int, list[str], list[tuple[int, list[str]]]]:
    """Read a file into (header line number, header cells, [(line number, cells)])."""
    p = pathlib.Path(source)
    if not p.exists():
        raise DataError(
            f"{source}: the file does not exist; check the path (relative paths are "
            f"taken from {os.getcwd()}).",
            source=source,
        )
    if not p.is_file():
        raise DataError(
            f"{source}: this is not a file; give the path of a CSV file.", source=source
        )
    header_line, header = 0, None
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                cells = [c.strip() for c in next(csv.reader([line]))]
                if header is None:
                    header_line, header = lineno, cells
                else:
                    rows.append((lineno, cells))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source}: the file is not UTF-8 text ({exc.reason}); save it as a "
            "UTF-8 CSV file.",
            source=source,
        ) from None
    if header is None:
        raise DataError(
            f"{source}: the file is empty (no header line, only blank or '#' comment "
            "lines); write a header such as 'time,A' followed by the data rows.",
            source=source,
        )
    if not rows:
        raise DataError(
            f"{source}, line {header_line}: the file has a header but no data rows; "
            "add one row per measurement below the header.",
            source=source,
            line=header_line,
        )
    return header_line, header, rows


def _find_nonpositive_cell(source: str | None, species: list[str]) -> tuple[int, str, str] | None:
    """(line, column name, cell) of the first zero or negative value of ``species`` in the file ``source``."""
    if not source or not pathlib.Path(source).is_file():
        return None
    try:
        header_line, header, rows = _read_csv(source)
        layout = _Layout.from_header(header, header_line, source)
    except (DataError, OSError):
        return None

    def value(cell: str) -> float | None:
        try:
            x = float(cell)
        except ValueError:
            return None
        return x if math.isfinite(x) else None

    for line, cells in rows:
        if len(cells) != len(header):
            continue
        if layout.long:
            if cells[layout.species_col] in species:
                x = value(cells[layout.value_col])
                if x is not None and x <= 0:
                    return line, header[layout.value_col], cells[layout.value_col]
            continue
        for c in layout.species_cols:
            if header[c] in species:
                x = value(cells[c])
                if x is not None and x <= 0:
                    return line, header[c], cells[c]
    return None


@dataclasses.dataclass
class _Layout:
    """Where the columns of a CSV file are."""

    header: list[str]
    time: int
    experiment: int | None
    long: bool
    species: list[str]  # wide: the species columns' names; long: filled while reading
    species_cols: list[int]  # wide only
    species_col: int | None = None  # long only
    value_col: int | None = None  # long only

    @classmethod
    def from_header(cls, header: list[str], line: int, source: str) -> _Layout:
        at = f"{source}, line {line} (the header)"
        for i, name in enumerate(header):
            if not name:
                raise DataError(
                    f"{at}: column {i + 1} has no name; name every column, and "
                    "remove trailing commas.",
                    source=source,
                    line=line,
                )
        seen: dict[str, int] = {}
        for name in header:
            if name in seen:
                raise DataError(
                    f"{at}: the column name {name!r} appears more than once; give "
                    "each column its own name.",
                    source=source,
                    line=line,
                    column=name,
                )
            seen[name] = 1
        lower = [h.lower() for h in header]

        def role(names: tuple[str, ...], what: str) -> int | None:
            idx = [i for i, h in enumerate(lower) if h in names]
            if len(idx) > 1:
                raise DataError(
                    f"{at}: there are {len(idx)} {what} columns "
                    f"({_names([header[i] for i in idx])}); keep one.",
                    source=source,
                    line=line,
                    column=header[idx[1]],
                )
            return idx[0] if idx else None

        time = role(TIME_COLUMNS, "time")
        if time is None:
            hint = ""
            if len(header) == 1 and any(d in header[0] for d in ";\t|"):
                hint = (
                    " The header looks separated by something other than commas; "
                    "save the file as comma-separated."
                )
            raise DataError(
                f"{at}: there is no time column; the columns are "
                f"{_names(header)}, and the time column must be named 'time' or 't' "
                f"(any case). Rename the time column.{hint}",
                source=source,
                line=line,
            )
        exp = role(EXPERIMENT_COLUMNS, "experiment")
        sp = role(("species",), "species")
        val = role(("value",), "value")
        if sp is not None or val is not None:
            if sp is None or val is None:
                missing = "species" if sp is None else "value"
                raise DataError(
                    f"{at}: the header has a {'value' if sp is None else 'species'!r} "
                    f"column, so this is read as a long file (time, species, value), "
                    f"but it has no {missing!r} column; add it. (A wide file names "
                    "each column after its species; 'species' and 'value' are not "
                    "species names there.)",
                    source=source,
                    line=line,
                )
            extra = [h for i, h in enumerate(header) if i not in (time, exp, sp, val)]
            if extra:
                raise DataError(
                    f"{at}: the long layout has columns time, species, value and an "
                    f"optional experiment column, but this file also has "
                    f"{_names(extra)}; remove {'them' if len(extra) > 1 else 'it'} "
                    "or rename the experiment column to 'experiment', 'exp' or 'run'.",
                    source=source,
                    line=line,
                    column=extra[0],
                )
            return cls(header, time, exp, True, [], [], sp, val)
        cols = [i for i in range(len(header)) if i not in (time, exp)]
        if not cols:
            raise DataError(
                f"{at}: there are no species columns (the columns are "
                f"{_names(header)}); add one column per measured species, named "
                "after the species.",
                source=source,
                line=line,
            )
        return cls(header, time, exp, False, [header[i] for i in cols], cols)


class _RowReader:
    """Shared checks for the rows of both layouts."""

    def __init__(self, layout: _Layout, source: str):
        self.layout = layout
        self.source = source
        self.labels: list[str] = []
        self.per_label: dict[str, list] = {}
        self.last: dict[str, tuple[float, str, int]] = {}

    def at(self, line: int, col: int | None = None) -> str:
        if col is None:
            return f"{self.source}, line {line}"
        return f"{self.source}, line {line}, column {self.layout.header[col]!r}"

    def error(self, line: int, col: int | None, text: str) -> DataError:
        return DataError(
            f"{self.at(line, col)}: {text}",
            source=self.source,
            line=line,
            column=None if col is None else self.layout.header[col],
        )

    def cells(self, line: int, cells: list[str]) -> list[str]:
        n = len(self.layout.header)
        if len(cells) != n:
            raise self.error(
                line,
                None,
                f"the row has {len(cells)} cell{'s' if len(cells) != 1 else ''} but "
                f"the header has {n} columns; give every row one cell per column "
                "(a decimal comma or a stray comma adds a cell; write decimals with "
                "'.').",
            )
        return cells

    def number(self, line: int, col: int, cell: str) -> float | None:
        """Parse a cell; None when it is a missing value."""
        if cell.lower() in MISSING_CELLS:
            return None
        try:
            x = float(cell)
        except ValueError:
            raise self.error(
                line,
                col,
                f"{cell!r} is not a number; write a plain number such as 0.25 or "
                "1.5e-3, with '.' for decimals and no units.",
            ) from None
        if math.isnan(x):
            return None
        if math.isinf(x):
            raise self.error(
                line,
                col,
                f"{cell!r} is infinite; write a finite number, or remove the row.",
            )
        return x

    def time(self, line: int, cells: list[str]) -> tuple[str, float]:
        """Read the experiment label and the time, checking their order."""
        lay = self.layout
        if lay.experiment is None:
            label = "0"
        else:
            label = cells[lay.experiment]
            if label.lower() in MISSING_CELLS:
                raise self.error(
                    line,
                    lay.experiment,
                    "the experiment label is missing; give every row its "
                    "experiment's label.",
                )
        cell = cells[lay.time]
        t = self.number(line, lay.time, cell)
        if t is None:
            raise self.error(
                line,
                lay.time,
                "the time is missing; every row needs a time, so fill it in or "
                "remove the row.",
            )
        if t < 0:
            raise self.error(
                line,
                lay.time,
                f"the time {cell} is negative; times are measured from the start of "
                "each experiment, t = 0, so shift them to start at 0 or later.",
            )
        if label not in self.per_label:
            self.labels.append(label)
            self.per_label[label] = []
        prev = self.last.get(label)
        if prev is not None and t < prev[0]:
            exp = f"in experiment {label!r} " if lay.experiment is not None else ""
            raise self.error(
                line,
                lay.time,
                f"{exp}the time decreases from {prev[1]} (line {prev[2]}) to {cell} "
                f"(line {line}); sort the rows by time"
                f"{' within each experiment' if lay.experiment is not None else ''}.",
            )
        self.last[label] = (t, cell, line)
        return label, t


def _parse_wide(rows, layout: _Layout, source: str):
    reader = _RowReader(layout, source)
    missing: dict[int, list[int]] = {c: [] for c in layout.species_cols}
    for line, cells in rows:
        cells = reader.cells(line, cells)
        label, t = reader.time(line, cells)
        vals = []
        for c in layout.species_cols:
            x = reader.number(line, c, cells[c])
            if x is None:
                missing[c].append(line)
                x = np.nan
            vals.append(x)
        reader.per_label[label].append((t, vals))
    bad = [(c, lines) for c, lines in missing.items() if lines]
    if bad:
        parts = [
            f"column {layout.header[c]!r} has {len(lines)} missing "
            f"value{'s' if len(lines) > 1 else ''} ({_lines(lines)})"
            for c, lines in bad
        ]
        raise DataError(
            f"{source}: {'; '.join(parts)}; fill or remove them, or use the long "
            "format (time, species, value) when a species was not measured at every "
            "time.",
            source=source,
            line=bad[0][1][0],
            column=layout.header[bad[0][0]],
        )
    per_exp = []
    for label in reader.labels:
        pts = reader.per_label[label]
        t = np.array([p[0] for p in pts])
        v = np.array([p[1] for p in pts], dtype=np.float64).reshape(len(pts), -1)
        per_exp.append((t, v, np.ones(v.shape, dtype=bool)))
    return reader.labels, per_exp


def _parse_long(rows, layout: _Layout, source: str):
    reader = _RowReader(layout, source)
    species_index: dict[str, int] = {}
    for line, cells in rows:
        cells = reader.cells(line, cells)
        label, t = reader.time(line, cells)
        name = cells[layout.species_col]
        if not name:
            raise reader.error(
                line,
                layout.species_col,
                "the species name is missing; name the species measured in this row.",
            )
        x = reader.number(line, layout.value_col, cells[layout.value_col])
        if x is None:
            raise reader.error(
                line,
                layout.value_col,
                "the value is missing; remove the row (in the long format a species "
                "not measured at a time simply has no row) or fill in the value.",
            )
        species_index.setdefault(name, len(species_index))
        reader.per_label[label].append((t, species_index[name], x))
    layout.species = list(species_index)
    n_sp = len(species_index)

    per_exp = []
    for label in reader.labels:
        rows_e = reader.per_label[label]
        times, vals, masks = [], [], []
        i = 0
        # Rows at one time form as many time points as the most-replicated species
        # there has replicates; the k-th replicate of a species goes to point k.
        while i < len(rows_e):
            t = rows_e[i][0]
            j = i
            while j < len(rows_e) and rows_e[j][0] == t:
                j += 1
            count = [0] * n_sp
            group_start = len(times)
            for _, s, x in rows_e[i:j]:
                k = count[s]
                count[s] += 1
                if group_start + k == len(times):
                    times.append(t)
                    vals.append([np.nan] * n_sp)
                    masks.append([False] * n_sp)
                vals[group_start + k][s] = x
                masks[group_start + k][s] = True
            i = j
        per_exp.append(
            (
                np.array(times),
                np.array(vals, dtype=np.float64),
                np.array(masks, dtype=bool),
            )
        )
    return reader.labels, per_exp


# ---------------------------------------------------------------------------------
# Bundled data
# ---------------------------------------------------------------------------------


def bundled_path(name: str) -> pathlib.Path:
    """Return the path of a data file bundled with ``vi_models.kinetics``.

    Parameters
    ----------
    name : str
        The file name, e.g. ``"bod.csv"``; see ``data/SOURCES.md`` for what each
        file holds and where it comes from.

    Returns
    -------
    pathlib.Path
        The file's path in the installed package.

    Raises
    ------
    DataError
        If there is no such file; the message lists the bundled files.
    """
    folder = importlib.resources.files("vi_models.kinetics").joinpath("data")
    available = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith((".", "_"))
    )
    if name not in available:
        raise DataError(
            f"There is no bundled data file {name!r}; the bundled files are "
            f"{_names(available)}."
        )
    resource = folder.joinpath(name)
    if not isinstance(resource, pathlib.Path):
        raise DataError(
            f"The bundled file {name!r} is inside an archive, not on disk; install "
            "vifit unzipped to read it by path."
        )
    return resource

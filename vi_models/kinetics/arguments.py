"""Checks of the arguments of the kinetics model builders, before anything is built.

:func:`check_builder_arguments` looks at the types and values of ``priors``, ``initial``,
``solver``, ``noise``, ``conditions`` and the data argument of :func:`vi_models.kinetics.model`
and :meth:`KineticsJob.from_config <vi_models.kinetics.job.KineticsJob.from_config>`. Each
problem is a ``TypeError`` (a value of the wrong kind) or ``ValueError`` (a value out of range)
whose sentence names the place, as a Python argument (``initial['A']``) or a TOML key
(``[initial] A``), and the fix. The builders check what depends on the mechanism and the data
(species and parameter names, shapes per experiment).

>>> check_initial({"A": True})
Traceback (most recent call last):
...
TypeError: initial['A'] is True, which is not a concentration; give a number such as 1.0, one number per experiment, 'infer', or a prior such as 'LogNormal(0, 1)'
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
import numpyro.distributions as dist

__all__ = [
    "check_builder_arguments",
    "check_conditions",
    "check_data_argument",
    "check_initial",
    "check_noise",
    "check_priors",
    "check_solver",
    "place",
]


def place(section: str, key: Any = None) -> str:
    """The place of ``key`` in ``section``: ``"initial['A']"`` (Python) or ``"[initial] A"`` (TOML)."""
    if key is None:
        return section
    if section.startswith("["):
        return f"{section} {key}"
    return f"{section}[{key!r}]"


def _toml(section: str) -> bool:
    return section.startswith("[")


def _example(section: str, key: str, value: str) -> str:
    """An example entry, valid in the notation of ``section`` (``value`` is Python/TOML text)."""
    if _toml(section):
        return f"{section} {key} = {value}"
    return f"{section}={{{key!r}: {value}}}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _quote(section: str, text: str) -> str:
    return f'"{text}"' if _toml(section) else repr(text)


def check_priors(priors: Any, section: str = "priors") -> None:
    """``priors``: None or a mapping of parameter name to prior text or a NumPyro distribution."""
    if priors is None:
        return
    example = _example(section, "k", _quote(section, "LogNormal(log(0.5), 1)"))
    if not isinstance(priors, Mapping):
        raise TypeError(
            f"{section} must be a mapping of parameter name to prior, e.g. {example}, "
            f"got {type(priors).__name__} {_shown(priors)}"
        )
    for name, spec in priors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{section} has the key {name!r}; keys are parameter names (text), e.g. {example}")
        if isinstance(spec, (str, dist.Distribution)):
            continue
        hint = ""
        if _is_number(spec):
            hint = " (a prior is a distribution; a known number belongs in the mechanism or in initial)"
        raise TypeError(
            f"{place(section, name)} must be prior text such as {_quote(section, 'LogNormal(log(0.5), 1)')} "
            f"or a numpyro distribution, got {type(spec).__name__} {_shown(spec)}{hint}"
        )


def _initial_fix(section: str) -> str:
    if _toml(section):
        return 'give a number such as 1.0, one number per experiment ([1.0, 2.0]), "infer", or a prior such as "LogNormal(0, 1)"'
    return "give a number such as 1.0, one number per experiment, 'infer', or a prior such as 'LogNormal(0, 1)'"


def check_initial(initial: Any, section: str = "initial") -> None:
    """``initial``: None or a mapping of species to a concentration, a list of them, text or a distribution."""
    if initial is None:
        return
    if not isinstance(initial, Mapping):
        raise TypeError(
            f"{section} must be a mapping of species to initial concentration, e.g. "
            f"{_example(section, 'A', '1.0')}, got {type(initial).__name__} {_shown(initial)}"
        )
    for species, spec in initial.items():
        where = place(section, species)
        if not isinstance(species, str) or not species:
            raise TypeError(f"{section} has the key {species!r}; keys are species names, e.g. {_example(section, 'A', '1.0')}")
        if isinstance(spec, (str, dist.Distribution)):
            continue
        if isinstance(spec, (bool, np.bool_)):
            shown = ("true" if spec else "false") if _toml(section) else repr(bool(spec))
            raise TypeError(f"{where} is {shown}, which is not a concentration; {_initial_fix(section)}")
        if _is_number(spec):
            values = [spec]
        elif isinstance(spec, (list, tuple, np.ndarray)) and not isinstance(spec, Mapping):
            values = list(np.asarray(spec, dtype=object).ravel()) if isinstance(spec, np.ndarray) else list(spec)
            if not values:
                raise ValueError(f"{where} is an empty list; {_initial_fix(section)}")
            bad = next((v for v in values if not _is_number(v)), None)
            if bad is not None or any(isinstance(v, (bool, np.bool_)) for v in values):
                raise TypeError(f"{where} holds {_shown(bad)}, which is not a concentration; {_initial_fix(section)}")
        else:
            kind = "a table" if isinstance(spec, Mapping) else f"{type(spec).__name__} {_shown(spec)}"
            raise TypeError(f"{where} is {kind}, which is not a concentration; {_initial_fix(section)}")
        for v in values:
            if not math.isfinite(float(v)) or float(v) < 0:
                raise ValueError(
                    f"{where} is {_shown(spec)}; an initial concentration is a finite number at least 0 "
                    f"(a species that is absent at the start starts at 0)"
                )


_SOLVER_TYPES = {
    "stiff": "true or false",
    "rtol": "a positive number such as 1e-6",
    "atol": "a positive number such as 1e-9",
    "max_steps": "a positive whole number such as 4096",
    "gradient": "text",
    "solver": "text",
}


def check_solver(solver: Any, section: str = "solver") -> None:
    """``solver``: None, a solver name, a SolverOptions, or a mapping of its fields with values of the right kind."""
    from .ode import GRADIENT_METHODS, SOLVERS, SolverOptions

    if solver is None or isinstance(solver, (str, SolverOptions)):
        return
    if not isinstance(solver, Mapping):
        raise TypeError(
            f"{section} must be a solver name such as 'kvaerno5', a SolverOptions or a mapping of its options "
            f"(e.g. {_example(section, 'stiff', 'true' if _toml(section) else 'True')}), got {type(solver).__name__}"
        )
    names = [f.name for f in fields(SolverOptions)]
    for key, value in solver.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {', '.join(names)}"
            raise (ValueError if _toml(section) else TypeError)(f"unknown key {key!r} in {section}{hint}")
        where = place(section, key)
        if key == "stiff":
            ok = isinstance(value, (bool, np.bool_))
        elif key in ("rtol", "atol"):
            ok = (value is None and key == "atol") or (_is_number(value) and math.isfinite(value) and value > 0)
        elif key == "max_steps":
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1
        elif key == "gradient":
            ok = isinstance(value, str)
            if ok and value not in GRADIENT_METHODS:
                close = difflib.get_close_matches(value, GRADIENT_METHODS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{where} is {value!r}; {hint}use one of {', '.join(GRADIENT_METHODS)}")
        else:  # solver: a name (or, from Python, a diffrax solver object)
            ok = isinstance(value, str) or not _toml(section)
            if isinstance(value, str) and value.lower() not in SOLVERS:
                close = difflib.get_close_matches(value.lower(), list(SOLVERS), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{where} is {value!r}; {hint}use one of {', '.join(SOLVERS)}")
        if not ok:
            raise (ValueError if _is_number(value) else TypeError)(
                f"{where} must be {_SOLVER_TYPES[key]}, got {_shown(value)}"
            )


def _noise_name(value: Any, where: str) -> None:
    from .model import NOISE_MODELS

    if not isinstance(value, str):
        raise TypeError(f"{where} must be a noise model name ({', '.join(NOISE_MODELS)}), got {_shown(value)}")
    if value not in NOISE_MODELS:
        close = difflib.get_close_matches(value, NOISE_MODELS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{where} is {value!r}, an unknown noise model; {hint}use one of {', '.join(NOISE_MODELS)}")


def check_noise(noise: Any, section: str = "noise") -> None:
    """``noise``: a noise model name, or a mapping of measured column to a name."""
    if isinstance(noise, Mapping):
        for col, kind in noise.items():
            if not isinstance(col, str):
                raise TypeError(f"{section} has the key {col!r}; keys are measured columns")
            _noise_name(kind, place(section, col))
        return
    _noise_name(noise, section)


def check_conditions(conditions: Any, section: str = "conditions") -> None:
    """``conditions``: None, a column name, a list of column names, a mapping or a Conditions."""
    from .conditions import Conditions

    if conditions is None or isinstance(conditions, (str, Mapping, Conditions)):
        return
    example = '["T", "subject"]' if _toml(section) else "['T', 'subject']"
    if not isinstance(conditions, (list, tuple)):
        raise TypeError(
            f"{section} must be a list of column names, e.g. {section.strip('[]')} = {example}, "
            f"got {type(conditions).__name__} {_shown(conditions)}"
        )
    bad = next((c for c in conditions if not isinstance(c, str) or not c), None)
    if bad is not None:
        raise TypeError(f"{section} must hold column names (text), e.g. {example}; got {_shown(bad)}")


def check_data_argument(dataset: Any, name: str = "dataset") -> None:
    """The data: a Dataset, or the path of a CSV file."""
    from .dataset import Dataset

    if isinstance(dataset, (Dataset, str, os.PathLike)):
        return
    raise TypeError(
        f"{name} must be a kinetics.Dataset or the path of a CSV file, got {type(dataset).__name__}; "
        "for arrays in memory build one with kinetics.Dataset.from_arrays(times, {'A': values})"
    )


def check_builder_arguments(
    *,
    dataset: Any = "",
    priors: Any = None,
    initial: Any = None,
    solver: Any = None,
    noise: Any = "normal",
    conditions: Any = None,
    toml: bool = False,
) -> None:
    """Check the arguments of a kinetics model builder (or the sections of a configuration when ``toml``)."""
    wrap = (lambda s: f"[{s}]") if toml else (lambda s: s)
    if not toml:
        check_data_argument(dataset)
    check_priors(priors, wrap("priors"))
    check_initial(initial, wrap("initial"))
    check_solver(solver, wrap("solver"))
    check_noise(noise, wrap("noise") if isinstance(noise, Mapping) else "noise")
    check_conditions(conditions, "conditions")

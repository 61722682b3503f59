"""A kinetics fit described as data: what ``vifit fit`` and ``vifit demo`` run.

This is the kinetics entry point of the command line (entry-point group ``vifit.models``,
name ``kinetics``). A configuration is a mapping, usually read from TOML::

    data = "decay.csv"                 # path, relative to the config file
    mechanism = "A -> B : k"           # text or a built-in name (vifit mechanisms)
    noise = "normal"                   # normal | lognormal | proportional
    time_unit = "min"                  # optional, for plot labels
    concentration_unit = "mM"

    [initial]                          # known numbers, or a prior / "infer" to infer
    A = 1.0

    [priors]                           # optional; defaults are documented in kinetics.model
    k = "LogNormal(log(0.5), 1)"

    [solver]                           # optional
    stiff = false
    max_steps = 4096

    [fit]                              # optional; keyword arguments of inference.fit
    guide = "auto"                     # the default; or a guide name, e.g. "multivariate_normal"
    seed = 0

Real experiments (see ``kinetics.model`` and docs/real-experiments.md) add::

    conditions = ["T", "subject", "dose"]   # per-experiment columns of the data file
    T_ref = 298.15                          # optional reference temperature of arrhenius (K)

    [observables]                      # what a measured column is
    A280 = "eps_A * A + eps_B * B + base"

    [noise]                            # instead of noise = "...": one noise model (and sigma) per column
    A280 = "normal"

    [hierarchy]                        # parameters that vary by group, partially pooled
    ke = "subject"
    V = { group = "subject", covariates = ["weight"], centered = false }

    [[doses]]                          # boluses: amount added to a species at a time
    species = "Central"
    amount = "dose"                    # a number or a condition column
    time = 0
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conditions import read_csv
from .dataset import Dataset, bundled_path
from .mechanism import Mechanism, format_catalogue
from .model import KineticsModel, Trajectories, model

__all__ = ["ConfigError", "KineticsJob", "DEMO_CONFIG"]

TOP_KEYS = (
    "data",
    "mechanism",
    "noise",
    "initial",
    "priors",
    "solver",
    "fit",
    "title",
    "time_unit",
    "concentration_unit",
    "observables",
    "conditions",
    "hierarchy",
    "doses",
    "T_ref",
    "temperature",
)
SOLVER_KEYS = ("solver", "stiff", "rtol", "atol", "max_steps", "gradient")
FIT_KEYS = (
    "guide",
    "objective",
    "num_particles",
    "lr",
    "clip_norm",
    "seed",
    "restarts",
    "restart_spread",
    "min_steps",
    "max_steps",
    "chunk_size",
    "init_scale",
    "nonfinite_limit",
)

DEMO_CONFIG: dict[str, Any] = {
    "title": "Biochemical oxygen demand (Marske 1967)",
    "data": str(bundled_path("bod.csv")),
    "time_unit": "days",
    "concentration_unit": "mg/l",
    # Remaining demand L is consumed into the measured demand Y: dY/dt = k (L0 - Y), so that
    # Y(t) = L0 (1 - exp(-k t)), the classical BOD model; L0 is the ultimate demand.
    "mechanism": "L -> Y : k",
    "noise": "normal",
    "initial": {"L": "infer", "Y": 0.0},
    "fit": {"seed": 0},
}


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key and the fix."""


def _check_keys(section: Mapping, allowed, where: str) -> None:
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the keys are {', '.join(allowed)}"
            raise ConfigError(f"unknown key {key!r} in {where}{hint}")


def _section(config: Mapping, name: str) -> dict:
    value = config.get(name, {}) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] must be a table of key = value lines, got {value!r}")
    return dict(value)


@dataclass(frozen=True)
class KineticsJob:
    """A built kinetics model plus the options of its fit.

    Attributes
    ----------
    model : KineticsModel
    fit_options : dict
        Keyword arguments for :func:`inference.fit`.
    title : str
    config : dict
        The configuration it was built from (paths resolved), for ``fit.json``.
    """

    model: KineticsModel  # or an ExperimentModel
    fit_options: dict = field(default_factory=dict)
    title: str = "kinetics fit"
    config: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, base_dir: str | Path = ".") -> KineticsJob:
        """Build a job from a configuration mapping (see the module docstring)."""
        if not isinstance(config, Mapping):
            raise ConfigError("the configuration must be a table of key = value lines")
        _check_keys(config, TOP_KEYS, "the configuration")
        for required in ("data", "mechanism"):
            if required not in config:
                raise ConfigError(
                    f"the configuration has no {required!r}; add e.g. "
                    + ('data = "measurements.csv"' if required == "data" else 'mechanism = "A -> B : k"')
                )
        data_path = Path(str(config["data"]))
        if not data_path.is_absolute():
            data_path = Path(base_dir) / data_path
        solver = _section(config, "solver")
        _check_keys(solver, SOLVER_KEYS, "[solver]")
        fit_options = _section(config, "fit")
        _check_keys(fit_options, FIT_KEYS, "[fit]")
        mechanism = config["mechanism"]
        if not isinstance(mechanism, str):
            raise ConfigError(f"mechanism must be text such as \"A -> B : k\", got {mechanism!r}")
        conditions = config.get("conditions", []) or []
        if isinstance(conditions, str):
            conditions = [conditions]
        if not isinstance(conditions, list) or not all(isinstance(c, str) for c in conditions):
            raise ConfigError(f'conditions must be a list of column names, e.g. conditions = ["T"], got {conditions!r}')
        noise = config.get("noise", "normal")
        noise = dict(noise) if isinstance(noise, Mapping) else str(noise)
        doses = config.get("doses", []) or []
        if isinstance(doses, Mapping):
            doses = [doses]
        if not isinstance(doses, list) or not all(isinstance(d, Mapping) for d in doses):
            raise ConfigError("doses must be [[doses]] tables with species, amount and time")
        for d in doses:
            _check_keys(d, ("species", "amount", "time"), "[[doses]]")
        hierarchy = _section(config, "hierarchy")
        for name, entry in hierarchy.items():
            if isinstance(entry, Mapping):
                _check_keys(entry, ("group", "covariates", "centered"), f"[hierarchy] {name}")
        observables = _section(config, "observables")
        extended = conditions or doses or hierarchy or observables or isinstance(noise, Mapping)
        uses_laws = "arrhenius" in mechanism or "eyring" in mechanism
        if extended or uses_laws:
            dataset, conds = read_csv(
                data_path,
                conditions,
                time_unit=config.get("time_unit"),
                concentration_unit=config.get("concentration_unit"),
            )
            built = model(
                mechanism,
                dataset,
                priors=_section(config, "priors"),
                noise=noise,
                initial=_section(config, "initial"),
                solver=solver or None,
                observables=observables,
                conditions=conds,
                hierarchy=hierarchy,
                doses=doses,
                T_ref=config.get("T_ref"),
                temperature=str(config.get("temperature", "T")),
            )
        else:
            dataset = Dataset.from_csv(
                data_path,
                time_unit=config.get("time_unit"),
                concentration_unit=config.get("concentration_unit"),
            )
            built = model(
                Mechanism.from_text_or_name(mechanism),
                dataset,
                priors=_section(config, "priors"),
                noise=str(noise),
                initial=_section(config, "initial"),
                solver=solver or None,
            )
        resolved = dict(config)
        resolved["data"] = str(data_path)
        return cls(
            model=built,
            fit_options=fit_options,
            title=str(config.get("title") or f"{mechanism} on {data_path.name}"),
            config=resolved,
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> KineticsJob:
        """Read a TOML configuration file and build the job (paths relative to the file)."""
        import tomllib

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise ConfigError(f"configuration file {str(path)!r} does not exist") from err
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
        return cls.from_config(config, base_dir=path.parent)

    @classmethod
    def demo(cls) -> KineticsJob:
        """The bundled demonstration: BOD data (Marske 1967), first-order uptake."""
        return cls.from_config(DEMO_CONFIG)

    @staticmethod
    def catalogue() -> str:
        """Built-in mechanisms and rate laws, as text."""
        return format_catalogue()

    def curves(self, samples: Mapping[str, Any], *, n_points: int = 120, seed: int = 0) -> Trajectories:
        """Posterior curves and predictive draws on a fine grid (see ``KineticsModel.simulate``)."""
        return self.model.simulate(samples, n_points=n_points, seed=seed)

    def describe(self) -> dict[str, Any]:
        """The job as plain data."""
        return {"title": self.title, "model": self.model.describe(), "fit_options": dict(self.fit_options)}

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
import math
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


_TEXT_EXAMPLES = {"title": "First-order decay", "time_unit": "min", "concentration_unit": "mM", "temperature": "T"}


def _data_path(value: Any, base_dir: str | Path) -> Path:
    """The data file of ``data = "..."``, resolved; a sentence naming the key when it is not a file."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f'data must be the path of one CSV file in quotes, e.g. data = "measurements.csv", got {value!r}')
    path = Path(value)
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.exists():
        where = "" if Path(value).is_absolute() else f" (relative to the configuration's folder, {str(Path(base_dir))!r})"
        raise ConfigError(f'data = "{value}": the file {str(path)!r} does not exist{where}; check the path')
    if path.is_dir():
        raise ConfigError(f'data = "{value}": {str(path)!r} is a folder, not a file; give the path of the CSV file')
    return path


def _check_fit(options: dict) -> None:
    """Validate the [fit] section as the settings of a fit, before anything is built or run."""
    from inference.engine.settings import FitSettings

    try:
        FitSettings.from_keywords(**options)
    except (TypeError, ValueError) as err:
        text = str(err)
        head = text.split(" ", 1)[0]
        prefix = "[fit] " if head in FIT_KEYS else "[fit]: "
        raise ConfigError(prefix + text) from None


def _close(name: str, options) -> str:
    options = list(options)
    same = [o for o in options if o.lower() == str(name).lower()]
    close = same or difflib.get_close_matches(str(name), options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_sections(config: Mapping, mechanism: str) -> None:
    """Types of [priors], [initial], [solver], noise and conditions; names of [initial] and [priors] entries."""
    from .arguments import check_builder_arguments
    from .conditions import expand_temperature_laws

    noise = config.get("noise", "normal")
    try:
        check_builder_arguments(
            priors=_section(config, "priors"),
            initial=_section(config, "initial"),
            solver=_section(config, "solver"),
            noise=dict(noise) if isinstance(noise, Mapping) else noise,
            conditions=config.get("conditions"),
            toml=True,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    text, laws = expand_temperature_laws(mechanism)
    mech = Mechanism.from_text_or_name(text)
    for species in _section(config, "initial"):
        if species not in mech.species:
            raise ConfigError(
                f"[initial] {species}: the mechanism has no species {species!r} (its species are "
                f"{', '.join(mech.species)}){_close(species, mech.species)}"
            )
    extended = any(config.get(k) for k in ("conditions", "doses", "hierarchy", "observables")) or isinstance(
        noise, Mapping
    )
    if not extended and not laws:
        sites = list(mech.parameters) + ["sigma"] + [f"{sp}0" for sp in mech.species]
        for site in _section(config, "priors"):
            if site not in sites:
                raise ConfigError(
                    f"[priors] {site}: {site!r} is not a parameter of this model (the rate constants are "
                    f"{', '.join(mech.parameters)}; 'sigma' is the noise scale and '<species>0' an inferred "
                    f"initial concentration){_close(site, sites)}"
                )


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
        data_path = _data_path(config["data"], base_dir)
        for key in ("title", "time_unit", "concentration_unit", "temperature"):
            if key in config and not isinstance(config[key], str):
                raise ConfigError(
                    f'{key} must be text in quotes, e.g. {key} = "{_TEXT_EXAMPLES[key]}", got {config[key]!r}'
                )
        T_ref = config.get("T_ref")
        if T_ref is not None and (
            isinstance(T_ref, bool) or not isinstance(T_ref, (int, float)) or not (math.isfinite(T_ref) and T_ref > 0)
        ):
            raise ConfigError(f"T_ref is the reference temperature in kelvin, a positive number such as 298.15; got {T_ref!r}")
        solver = _section(config, "solver")
        _check_keys(solver, SOLVER_KEYS, "[solver]")
        fit_options = _section(config, "fit")
        _check_keys(fit_options, FIT_KEYS, "[fit]")
        _check_fit(fit_options)
        mechanism = config["mechanism"]
        if not isinstance(mechanism, str):
            raise ConfigError(f"mechanism must be text such as \"A -> B : k\", got {mechanism!r}")
        _check_sections(config, mechanism)
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
            if noise == "lognormal":
                dataset.require_positive(why='noise = "lognormal"', fix='use noise = "normal" or "proportional"')
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
        if path.is_dir():
            raise ConfigError(f"configuration file {str(path)!r} is a folder; give the path of a TOML file")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise ConfigError(f"configuration file {str(path)!r} does not exist") from err
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{path}: not a text file (byte {err.start} is not UTF-8: {err.reason}); "
                "a configuration is TOML text saved as UTF-8"
            ) from None
        except OSError as err:
            raise ConfigError(f"configuration file {str(path)!r} cannot be read: {err.strerror or err}") from err
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

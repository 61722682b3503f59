"""Reaction kinetics as NumPyro models: mechanisms, data sets, ODE solving, the model builder.

>>> from vi_models import kinetics
>>> mech = kinetics.Mechanism.parse("A -> B : k")
>>> mech.species, mech.parameters
(('A', 'B'), ('k',))
"""

from .conditions import TEMPERATURE_LAWS, Conditions, Dose, read_csv
from .dataset import DataError, Dataset, bundled_path
from .experiments import ExperimentModel
from .expressions import Expression, ExpressionError
from .job import DEMO_CONFIG, ConfigError, KineticsJob
from .mechanism import (
    BUILTIN_MECHANISMS,
    RATE_LAWS,
    Mechanism,
    MechanismError,
    RateLaw,
    Reaction,
    Term,
    format_catalogue,
)
from .model import NOISE_MODELS, KineticsModel, Trajectories, default_priors, model
from .ode import GRADIENT_METHODS, SOLVERS, SolverOptions, make_grid_solver, make_solver, solve, time_increments
from .plate import PlateData, PlateModel, plate_model, read_plate
from .priors import DISTRIBUTIONS, PriorError, as_prior, describe_prior, parse_prior

__all__ = [
    "Mechanism",
    "MechanismError",
    "Reaction",
    "Term",
    "RateLaw",
    "RATE_LAWS",
    "BUILTIN_MECHANISMS",
    "format_catalogue",
    "Dataset",
    "DataError",
    "bundled_path",
    "model",
    "KineticsModel",
    "Trajectories",
    "NOISE_MODELS",
    "default_priors",
    "SolverOptions",
    "SOLVERS",
    "GRADIENT_METHODS",
    "make_grid_solver",
    "make_solver",
    "solve",
    "time_increments",
    "parse_prior",
    "as_prior",
    "describe_prior",
    "PriorError",
    "DISTRIBUTIONS",
    "ExperimentModel",
    "Expression",
    "ExpressionError",
    "Conditions",
    "Dose",
    "read_csv",
    "TEMPERATURE_LAWS",
    "KineticsJob",
    "ConfigError",
    "DEMO_CONFIG",
    "PlateData",
    "PlateModel",
    "plate_model",
    "read_plate",
]

"""vifit inference: fit any NumPyro model by variational inference, check it, hand it to ArviZ."""

from ._jax_setup import setup as _setup

_setup()

from .outputs.arviz_export import to_arviz  # noqa: E402
from .engine.auto import Attempt, fit_auto  # noqa: E402
from .checks.compare import Comparison, compare  # noqa: E402
from .checks.diagnostics import Check, Verdict, diagnose  # noqa: E402
from .engine.fit import fit  # noqa: E402
from .toolkit.decisions import DecisionResult, expected_value, optimize_expectation  # noqa: E402
from .toolkit.gradients import GradientReport, gradient_variance  # noqa: E402
from .engine.guides import GUIDE_NAMES, GUIDES, SpreadInit, WhitenedBNAF, WhitenedIAF, make_guide  # noqa: E402
from .engine.vi import MapResult, find_map  # noqa: E402
from .engine.settings import FitSettings  # noqa: E402
from .engine.target import Target, make_target  # noqa: E402
from .engine.families import FAMILIES, Family, make_family  # noqa: E402
from .engine.posterior import FlatPosterior  # noqa: E402
from .engine.loop import ChunkInfo, LoopState  # noqa: E402
from .checks.nuts import NutsResult, nuts  # noqa: E402
from .engine.objectives import OBJECTIVES, make_objective  # noqa: E402
from .outputs.report import build_report, write_report  # noqa: E402
from .engine.result import FitResult, Summary, Timings  # noqa: E402
from .engine.schedules import exponential_anneal, linear_anneal  # noqa: E402
from .engine.stopping import PlateauRule, StopReason  # noqa: E402
from .checks.two_sample import EnergyTest, energy_distance, energy_test  # noqa: E402
from .engine.devices import experiment_mesh, resolve_devices  # noqa: E402
from .engine.large import site_moments  # noqa: E402
from .engine.minibatch import minibatch_rule, minibatch_verdict, on_full_data  # noqa: E402

__all__ = [
    "fit",
    "fit_auto",
    "FitSettings",
    "Target",
    "make_target",
    "Family",
    "FAMILIES",
    "make_family",
    "FlatPosterior",
    "Attempt",
    "FitResult",
    "Summary",
    "Timings",
    "PlateauRule",
    "StopReason",
    "GUIDES",
    "GUIDE_NAMES",
    "make_guide",
    "SpreadInit",
    "WhitenedIAF",
    "WhitenedBNAF",
    "find_map",
    "MapResult",
    "OBJECTIVES",
    "make_objective",
    "LoopState",
    "ChunkInfo",
    "to_arviz",
    "diagnose",
    "Verdict",
    "Check",
    "nuts",
    "NutsResult",
    "compare",
    "Comparison",
    "build_report",
    "write_report",
    "exponential_anneal",
    "linear_anneal",
    "gradient_variance",
    "GradientReport",
    "optimize_expectation",
    "expected_value",
    "DecisionResult",
    "energy_distance",
    "energy_test",
    "EnergyTest",
    "resolve_devices",
    "experiment_mesh",
    "site_moments",
    "minibatch_rule",
    "minibatch_verdict",
    "on_full_data",
]

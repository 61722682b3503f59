"""Shared fixtures. JAX compiles are slow, so compiled fits are shared per session."""

import os
from pathlib import Path

# Tests use their own compilation cache folder so they neither read nor fill the user's.
os.environ.setdefault("VIFIT_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest-jax-cache"))

import jax  # noqa: E402
import matplotlib  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT / "benchmarks" / "data"


@pytest.fixture(scope="session")
def bench_data() -> Path:
    """Folder of the reference problems (copies of the shared benchmark data)."""
    return BENCH_DATA


@pytest.fixture(scope="session")
def problems() -> dict:
    """Truth, set-up and priors of the reference problems."""
    import json

    return json.loads((BENCH_DATA / "problems.json").read_text())


# -- the reference problems as vifit models, and fits shared by the test files ---------------------
REFERENCE_PROBLEMS = {
    "a": {"file": "a_decay.csv", "mechanism": "A -> B : k", "initial": {"A": 1.0, "B": 0.0}},
    "b": {"file": "b_reversible.csv", "mechanism": "A <=> B : kf, kb", "initial": {"A": 1.0, "B": 0.0}},
    "c": {"file": "c_mm.csv", "mechanism": "S -> P : mm(Vmax, Km)", "initial": {"S": 10.0, "P": 0.0}},
}


def _prior_text(spec) -> str:
    family, *args = spec
    return f"{family}({', '.join(repr(float(a)) for a in args)})"


@pytest.fixture(scope="session")
def reference_model(problems):
    """``reference_model(pid)``: the kinetics model of reference problem a, b or c (cached)."""
    from vi_models import kinetics

    cache = {}

    def build(pid: str):
        if pid not in cache:
            spec = REFERENCE_PROBLEMS[pid]
            priors = {name: _prior_text(problems["priors"][name]) for name in problems["params"][pid]}
            cache[pid] = kinetics.model(
                spec["mechanism"], str(BENCH_DATA / spec["file"]), priors=priors, initial=spec["initial"]
            )
        return cache[pid]

    return build


@pytest.fixture(scope="session")
def fit_a_full_rank(reference_model):
    """Full-rank guide on problem a, two restarts (seed 0)."""
    from inference import fit

    return fit(reference_model("a"), guide="multivariate_normal", restarts=2, seed=0, progress=False)


@pytest.fixture(scope="session")
def fit_c_mean_field(reference_model):
    """Mean-field guide on problem c (seed 0): the known failure on correlated Vmax and Km."""
    from inference import fit

    return fit(reference_model("c"), guide="normal", seed=0, progress=False)


@pytest.fixture(scope="session")
def synthetic():
    """The module ``tests/inference/_synthetic.py``: hand-built InferenceData following docs/arviz.md."""
    import importlib.util

    path = ROOT / "tests" / "inference" / "_synthetic.py"
    spec = importlib.util.spec_from_file_location("_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)``: import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

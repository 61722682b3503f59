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

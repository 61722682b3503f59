"""Every example runs at small size and gives a sensible answer."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {"bod", "first_order_decay", "michaelis_menten"}


def test_bod_example():
    out = load("bod").main(small=True)
    assert 0.2 < out["k"][0] < 1.0 and 15 < out["L0"][0] < 25


def test_first_order_decay_example():
    mean, sd = load("first_order_decay").main(small=True)["k"]
    assert abs(mean - 0.35) < 4 * sd


def test_michaelis_menten_example_shows_mean_field_shrinkage():
    out = load("michaelis_menten").main(small=True)
    assert out["correlation"] > 0.5
    assert out["normal"] < 0.8 * out["multivariate_normal"]

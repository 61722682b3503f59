"""Tests for the safe prior parser."""

# ruff: noqa: D103

import builtins
import math
import pickle

import numpy as np
import numpyro.distributions as dist
import pytest

import vi_models  # noqa: F401  (enables float64)
from vi_models.kinetics.priors import (
    DISTRIBUTIONS,
    PriorError,
    as_prior,
    describe_prior,
    parse_prior,
)


def values(d, *names):
    """Return the named attributes of ``d`` as Python floats."""
    return tuple(float(np.asarray(getattr(d, n))) for n in names)


@pytest.mark.parametrize(
    "text, cls, attrs",
    [
        (
            "LogNormal(log(0.5), 1)",
            dist.LogNormal,
            {"loc": math.log(0.5), "scale": 1.0},
        ),
        ("Normal(loc=0, scale=2)", dist.Normal, {"loc": 0.0, "scale": 2.0}),
        ("Normal(1, scale=0.5)", dist.Normal, {"loc": 1.0, "scale": 0.5}),
        ("Normal(-(+2), 10**-1)", dist.Normal, {"loc": -2.0, "scale": 0.1}),
        ("  Normal( 0 , 1 )  ", dist.Normal, {"loc": 0.0, "scale": 1.0}),
        ("Normal()", dist.Normal, {"loc": 0.0, "scale": 1.0}),
        ("HalfNormal(2*pi)", dist.HalfNormal, {"scale": 2 * math.pi}),
        ("HalfCauchy(sqrt(4))", dist.HalfCauchy, {"scale": 2.0}),
        ("Cauchy(-e, exp(1))", dist.Cauchy, {"loc": -math.e, "scale": math.e}),
        ("StudentT(3, 1, 2)", dist.StudentT, {"df": 3.0, "loc": 1.0, "scale": 2.0}),
        ("Exponential(rate=1/3)", dist.Exponential, {"rate": 1 / 3}),
        ("Gamma(2, 4)", dist.Gamma, {"concentration": 2.0, "rate": 4.0}),
        ("InverseGamma(3, 2)", dist.InverseGamma, {"concentration": 3.0, "rate": 2.0}),
        ("Uniform(-1, 1)", dist.Uniform, {"low": -1.0, "high": 1.0}),
        ("Beta(2, 5)", dist.Beta, {"concentration1": 2.0, "concentration0": 5.0}),
        ("LogUniform(1e-3, log10(100))", dist.LogUniform, {"low": 1e-3, "high": 2.0}),
        ("Normal(2 - 3 * 4 / 8, 2 ** 0.5)", dist.Normal, {"loc": 0.5, "scale": 2**0.5}),
    ],
)
def test_parse_values(text, cls, attrs):
    d = parse_prior(text)
    assert isinstance(d, cls)
    got = values(d, *attrs)
    np.testing.assert_allclose(got, tuple(attrs.values()), rtol=1e-12)


def test_log_normal_example():
    d = parse_prior("LogNormal(log(0.5), 1)")
    assert float(d.loc) == pytest.approx(-0.6931471805599453)
    assert float(d.scale) == 1.0


def test_arguments_are_python_floats():
    d = parse_prior("Normal(1, 2)")
    assert type(d.loc) is float and type(d.scale) is float


def test_truncated_normal():
    d = parse_prior("TruncatedNormal(1, 2, low=0)")
    assert isinstance(d.base_dist, dist.Normal)
    assert values(d.base_dist, "loc", "scale") == (1.0, 2.0)
    assert float(d.low) == 0.0
    d = parse_prior("TruncatedNormal(loc=0, scale=1, low=-1, high=2)")
    assert (float(d.low), float(d.high)) == (-1.0, 2.0)
    assert float(d.log_prob(1.0)) > float(dist.Normal(0.0, 1.0).log_prob(1.0))
    with pytest.warns(UserWarning, match="support"):  # built with validate_args=True
        assert float(d.log_prob(3.0)) == -np.inf


def test_distributions_table():
    assert set(DISTRIBUTIONS) == {
        "Normal", "LogNormal", "HalfNormal", "HalfCauchy", "Cauchy", "StudentT",
        "Exponential", "Gamma", "InverseGamma", "Uniform", "Beta", "TruncatedNormal",
        "LogUniform",
    }  # fmt: skip
    assert DISTRIBUTIONS["Normal"] is dist.Normal
    assert DISTRIBUTIONS["TruncatedNormal"] is dist.TruncatedNormal


def test_prior_is_usable():
    d = parse_prior("LogNormal(0, 1)")
    assert float(d.log_prob(1.0)) == pytest.approx(-0.5 * math.log(2 * math.pi))


@pytest.mark.parametrize(
    "text, fragments",
    [
        (
            "Lognormal(0, 1)",
            ["unknown distribution 'Lognormal'", "'LogNormal'", "Beta"],
        ),
        ("Foo(1)", ["unknown distribution 'Foo'", "known distributions", "Uniform"]),
        ("Normal(0, foo(1))", ["unknown function 'foo'", "exp, log, log10, sqrt"]),
        ("Normal(x, 1)", ["unknown name 'x'", "e, pi"]),
        ("Normal(0, log)", ["'log' is a function"]),
        ("Normal(0, 1, 2)", ["too many positional", "Normal(loc=0, scale=1)"]),
        (
            "Normal(mu=0)",
            ["unexpected keyword argument 'mu'", "Normal(loc=0, scale=1)"],
        ),
        (
            "Gamma()",
            ["missing a required argument: 'concentration'", "Gamma(concentration"],
        ),
        ("Normal(0, -1)", ["'scale' of Normal must be greater than 0", "got -1"]),
        ("HalfNormal(0)", ["'scale' of HalfNormal must be greater than 0"]),
        ("Beta(0.5, 0)", ["'concentration0' of Beta must be greater than 0"]),
        ("LogUniform(-1, 2)", ["'low' of LogUniform must be greater than 0"]),
        ("Uniform(1, 0)", ["'low' of Uniform must be less than 'high'"]),
        ("TruncatedNormal(0, 1, low=2, high=1)", ["must be less than 'high'"]),
        ("TruncatedNormal(0, -1, low=0)", ["'scale' of TruncatedNormal"]),
        ("Normal(0, 1/0)", ["divides by zero"]),
        ("Normal(0, log(-1))", ["undefined"]),
        ("Normal(0, 10**400)", ["too large"]),
        ("Normal(0, 9**9**9)", ["too large"]),
        ("Normal(1e400, 1)", ["not a finite real number"]),
        ("Normal(0, (-8)**(1/3))", ["not a real number"]),
        ("Normal('a', 1)", ["not a number"]),
        ("Normal(True, 1)", ["not a number"]),
        ("Normal(0, validate_args=True)", ["validate_args"]),
        ("Normal(*[1])", ["not allowed"]),
        ("Normal(**{'loc': 1})", ["not allowed"]),
        ("Normal(0, [1, 2])", ["not allowed"]),
        ("Normal(lambda: 1, 1)", ["not allowed"]),
        ("Normal(Normal(0, 1), 1)", ["inside another distribution"]),
        ("Normal(0, sqrt(1, 2))", ["exactly one number"]),
        ("Normal(0, 1", ["not a distribution call", "never closed"]),
        ("", ["empty"]),
        ("3", ["not a distribution call"]),
        ("Normal(0, 1) + 1", ["not a distribution call"]),
        ("dist.Normal(0, 1)", ["attribute access", "'Normal(...)'"]),
        ("Normal(0, 1).sample", ["not a distribution call"]),
        ("Normal(0, 1)\x00", ["null bytes"]),
        ("Normal(0, " + "(" * 5000 + "1" + ")" * 5000 + ")", ["characters long"]),
    ],
)
def test_errors(text, fragments):
    with pytest.raises(PriorError) as info:
        parse_prior(text)
    message = str(info.value)
    assert repr(text) in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        '__import__("os").system("x")',
        "Normal(__import__('os').system('x'), 1)",
        "Normal(0, 1).__class__",
        "Normal(().__class__, 1)",
        "Normal(0, (1).real)",
        "os.system('x')",
        "Normal(0, [c for c in ()])",
        "Normal(0, 1 if 1 else 2)",
        "Normal(0, 1)[0]",
        "Normal(loc=__builtins__, scale=1)",
    ],
)
def test_rejects_code(text, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    with pytest.raises(PriorError):
        parse_prior(text)


def test_no_side_effects(tmp_path):
    target = tmp_path / "pwned"
    text = f"__import__('pathlib').Path({str(target)!r}).touch()"
    with pytest.raises(PriorError):
        parse_prior(text)
    with pytest.raises(PriorError):
        parse_prior(f"Normal(0, {text})")
    assert not target.exists()


def test_parse_prior_needs_text():
    with pytest.raises(TypeError):
        parse_prior(1.0)


def test_as_prior():
    d = dist.Normal(0.0, 1.0)
    assert as_prior(d, name="base", positive=False) is d
    with pytest.raises(PriorError, match="'k' is a positive parameter"):
        as_prior(d, name="k")  # rate constants, noise scales and initial concentrations are positive
    d = dist.LogNormal(0.0, 1.0)
    assert as_prior(d, name="k") is d
    p = as_prior("HalfNormal(3)", name="sigma")
    assert isinstance(p, dist.HalfNormal) and float(p.scale) == 3.0
    with pytest.raises(PriorError) as info:
        as_prior(3, name="k1")
    assert "'k1'" in str(info.value) and "int" in str(info.value)
    assert info.value.name == "k1"
    with pytest.raises(PriorError) as info:
        as_prior(None, name="k1")
    assert "'k1'" in str(info.value)
    with pytest.raises(PriorError) as info:
        as_prior("Normal(0, -1)", name="kd")
    message = str(info.value)
    assert "prior for 'kd'" in message and "'Normal(0, -1)'" in message
    assert "greater than 0" in message
    assert (info.value.name, info.value.text) == ("kd", "Normal(0, -1)")


def test_error_pickles():
    with pytest.raises(PriorError) as info:
        as_prior("Foo(1)", name="k")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.name == "k"


@pytest.mark.parametrize(
    "text, described",
    [
        ("LogNormal(log(0.5), 1)", "LogNormal(loc=-0.693, scale=1)"),
        ("Normal(loc=0, scale=2)", "Normal(loc=0, scale=2)"),
        ("HalfNormal(0.25)", "HalfNormal(scale=0.25)"),
        ("StudentT(3)", "StudentT(df=3, loc=0, scale=1)"),
        ("Gamma(2, 1/3)", "Gamma(concentration=2, rate=0.333)"),
        ("InverseGamma(3, 2)", "InverseGamma(concentration=3, rate=2)"),
        ("Uniform(-1, 1)", "Uniform(low=-1, high=1)"),
        ("Beta(2, 5)", "Beta(concentration1=2, concentration0=5)"),
        ("LogUniform(0.001, 100)", "LogUniform(low=0.001, high=100)"),
        ("Exponential(10)", "Exponential(rate=10)"),
        ("TruncatedNormal(0, 2, low=0)", "TruncatedNormal(loc=0, scale=2, low=0)"),
        ("TruncatedNormal(0, 2, high=1)", "TruncatedNormal(loc=0, scale=2, high=1)"),
        (
            "TruncatedNormal(0, 2, low=-1, high=1)",
            "TruncatedNormal(loc=0, scale=2, low=-1, high=1)",
        ),
    ],
)
def test_describe_prior(text, described):
    assert describe_prior(parse_prior(text)) == described
    assert describe_prior(text) == described


def test_describe_prior_other_distributions():
    assert describe_prior(dist.Normal(0.0, 1.0).expand([3])) == (
        "ExpandedDistribution(Normal(loc=0, scale=1))"
    )
    assert (
        describe_prior(dist.Normal(np.zeros(2), 1.0)) == "Normal(loc=[0., 0.], scale=1)"
    )
    with pytest.raises(TypeError):
        describe_prior(3)
